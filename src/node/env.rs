//! The clock and the entropy a node draws on. A running node uses the operating system's
//! ([`OsEnv`]); the simulator gives each node a simulated, possibly skewed clock and a seeded
//! generator, so that one seed reproduces a whole run (keys, incarnations, change timestamps).
//! Nothing else in a [`super::Node`] reads the clock or the OS RNG.

use super::NodeError;

/// Where a node reads the time and draws random bytes.
pub trait Env: Send + Sync {
    /// Seconds since the Unix epoch, as this site's clock reads them (write timestamps, events).
    fn now_secs(&self) -> i64;
    /// Milliseconds on a monotonic clock (how long something took, waits between retries).
    fn millis(&self) -> u64;
    /// Fills `out` with random bytes (keys, incarnations, record uuids).
    fn fill_random(&self, out: &mut [u8]) -> Result<(), NodeError>;
}

/// Seconds since the Unix epoch on the operating system's clock (for [`OsEnv`], and for the
/// CLI's "x s ago"; node code reads its own [`Env`]).
pub fn now_secs() -> i64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// The operating system's clock and RNG.
#[derive(Clone, Copy, Debug, Default)]
pub struct OsEnv;

impl Env for OsEnv {
    fn now_secs(&self) -> i64 {
        now_secs()
    }

    fn millis(&self) -> u64 {
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        START.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64
    }

    fn fill_random(&self, out: &mut [u8]) -> Result<(), NodeError> {
        getrandom::fill(out).map_err(|e| NodeError::Io {
            path: "/dev/urandom".into(),
            source: std::io::Error::other(e.to_string()),
        })
    }
}
