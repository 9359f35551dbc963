//! A node's clock and entropy inside the simulator: the simulated time (shared by every site)
//! plus the site's clock skew, and a seeded generator per site.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use sitesync::node::{Env, NodeError};

use crate::rng::Rng;

/// Seconds since the Unix epoch at simulated time zero (2026-01-05, a Monday).
pub const EPOCH_SECS: i64 = 1_767_571_200;

/// The simulated time in milliseconds, readable by every site's [`SimEnv`].
#[derive(Clone, Default)]
pub struct Clock(Arc<AtomicU64>);

impl Clock {
    pub fn set(&self, ms: u64) {
        self.0.store(ms, Ordering::Relaxed);
    }

    pub fn ms(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// One site's view of time and its random stream.
pub struct SimEnv {
    clock: Clock,
    skew_secs: i64,
    rng: Mutex<Rng>,
}

impl SimEnv {
    pub fn new(clock: Clock, skew_secs: i64, rng: Rng) -> SimEnv {
        SimEnv { clock, skew_secs, rng: Mutex::new(rng) }
    }
}

impl Env for SimEnv {
    fn now_secs(&self) -> i64 {
        EPOCH_SECS + (self.clock.ms() / 1000) as i64 + self.skew_secs
    }

    fn millis(&self) -> u64 {
        self.clock.ms()
    }

    fn fill_random(&self, out: &mut [u8]) -> Result<(), NodeError> {
        match self.rng.lock() {
            Ok(mut r) => r.fill(out),
            Err(poisoned) => poisoned.into_inner().fill(out),
        }
        Ok(())
    }
}
