//! A dialled peer's sync loop between rounds: when the next round is due (the sync interval
//! after a complete round; exponential backoff with jitter after a failed one) and what the
//! node records of each round (the peer's state and the failures registry). `serve`'s loops and
//! the simulator's both use [`DialSchedule`]; the jitter comes from the node's own entropy, so a
//! simulated node's schedule follows its seed.

use super::Node;
use super::session_host::SessionReport;
use crate::id::NodeId;
use crate::store::failures::{Attempt, Operation};

/// First retry delay after a failed session, in milliseconds; doubles per failure.
pub const BACKOFF_BASE_MS: u64 = 1_000;
/// Longest retry delay, in milliseconds.
pub const BACKOFF_MAX_MS: u64 = 300_000;
/// How long a dial may take before it counts as a failure.
pub const CONNECT_TIMEOUT_MS: u64 = 10_000;

/// Delay before retry number `failures` (1-based): doubling from `BACKOFF_BASE_MS`, capped,
/// with ±25 % jitter from `jitter` (a uniform random u32).
pub fn backoff_ms(failures: u32, cap_ms: u64, jitter: u32) -> u64 {
    let exp = BACKOFF_BASE_MS.saturating_mul(1u64 << failures.saturating_sub(1).min(20));
    let base = exp.min(cap_ms).min(BACKOFF_MAX_MS);
    let spread = base / 2;
    base - base / 4 + (u64::from(jitter) % (spread + 1))
}

/// One dialled peer's loop state: failed rounds in a row.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DialSchedule {
    pub failures: u32,
}

impl DialSchedule {
    /// A round with `peer` ended as `rep`: records the next retry and the attempt, and returns
    /// how long until the next round, in milliseconds.
    pub fn round_done(
        &mut self,
        node: &Node,
        peer: NodeId,
        rep: &SessionReport,
        interval_ms: u64,
    ) -> u64 {
        let delay = self.next(rep.complete, interval_ms, node.random_u32());
        self.record(node, peer, rep, delay);
        delay
    }

    /// How long until the next round after one that was `complete` (or not), in milliseconds;
    /// counts the failures in a row. `jitter` is a uniform random u32.
    pub fn next(&mut self, complete: bool, interval_ms: u64, jitter: u32) -> u64 {
        if complete {
            self.failures = 0;
            interval_ms
        } else {
            self.failures += 1;
            backoff_ms(self.failures, interval_ms.max(BACKOFF_BASE_MS), jitter)
        }
    }

    /// Records a round that ended as `rep` with the next one in `delay_ms`: the peer's next
    /// retry and failures in a row, and the attempt in the failures registry (blocking).
    pub fn record(&self, node: &Node, peer: NodeId, rep: &SessionReport, delay_ms: u64) {
        let now = node.now();
        let next = now + (delay_ms / 1000) as i64;
        let failures = self.failures;
        let op = Operation::Sync { peer };
        let result = if rep.complete { Ok(()) } else { Err(rep.outcome.as_str()) };
        let recorded = node
            .store
            .update_peer_state(&peer, |s| {
                s.next_retry = next;
                s.failures = failures;
            })
            .and_then(|()| {
                node.store.record_attempt(&Attempt {
                    op: &op,
                    result,
                    time: now,
                    next_retry: Some(next),
                    give_up_after: node.config.failures.give_up_after,
                })
            });
        if let Err(e) = recorded {
            tracing::error!(%peer, "recording the sync round: {e}");
        }
    }
}

/// A dial that reached no session: the peer's last error is `why`; returns the round's report.
pub fn dial_failed(node: &Node, peer: NodeId, why: String, millis: u64) -> SessionReport {
    let recorded = node.store.update_peer_state(&peer, |s| s.last_error = Some(why.clone()));
    if let Err(e) = recorded {
        tracing::error!(%peer, "recording the failed dial: {e}");
    }
    tracing::warn!(%peer, outcome = %why, "sync failed");
    SessionReport::failed(peer, why, millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_is_capped_and_jittered() {
        let at = |f, j| backoff_ms(f, 60_000, j);
        assert!((750..=1_250).contains(&at(1, 0)) && (750..=1_250).contains(&at(1, u32::MAX)));
        assert!((1_500..=2_500).contains(&at(2, 7)));
        assert!((45_000..=75_000).contains(&at(30, 12345)));
        assert_ne!(at(5, 1), at(5, 9_999));
    }
}
