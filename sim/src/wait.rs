//! Waiting for a condition with a deadline, instead of sleeping a guessed time: for the test
//! servers here and the tests that drive them.

use std::time::{Duration, Instant};

/// Polls `cond` every 50 ms until it holds (true) or `timeout` has passed (false).
pub fn until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
