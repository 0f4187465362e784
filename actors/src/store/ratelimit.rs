//! Shared rate budgets, kept in Redis so that every daemon on the same Redis draws from one
//! budget. The algorithm is GCRA with no burst allowance: one permit per emission interval,
//! which keeps any sliding 60-second window at or under the limit (a token bucket that allows a
//! full burst on top of the steady rate would break MS4's sliding-window count).

use super::{Store, StoreResult};
use redis::Script;
use std::time::Duration;

#[derive(Clone)]
pub(crate) struct Scripts {
    take: Script,
    pause: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Self {
            take: Script::new(include_str!("gcra_take.lua")),
            pause: Script::new(include_str!("gcra_pause.lua")),
        }
    }
}

impl Store {
    /// Tries to take one permit of `budget`, spaced `interval` apart; a caller up to
    /// `tolerance` late keeps the schedule. `None`: granted; `Some(d)`: ask again after `d`.
    pub async fn take_permit(
        &self,
        budget: &str,
        interval: Duration,
        tolerance: Duration,
    ) -> StoreResult<Option<Duration>> {
        let wait_us: i64 = self
            .ratelimit
            .take
            .key(self.keys.rate_tat(budget))
            .key(self.keys.rate_pause(budget))
            .arg(interval.as_micros() as u64)
            .arg(tolerance.as_micros() as u64)
            .invoke_async(&mut self.conn())
            .await?;
        Ok((wait_us > 0).then(|| Duration::from_micros(wait_us as u64)))
    }

    /// Pauses every holder of `budget` for `d` (never shortens a longer pause).
    pub async fn pause_budget(&self, budget: &str, d: Duration) -> StoreResult<()> {
        let _: i64 = self
            .ratelimit
            .pause
            .key(self.keys.rate_pause(budget))
            .arg(d.as_micros() as u64)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(())
    }
}
