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
    graph: Script,
}

impl Scripts {
    pub(crate) fn new() -> Self {
        Self {
            take: Script::new(include_str!("gcra_take.lua")),
            pause: Script::new(include_str!("gcra_pause.lua")),
            graph: Script::new(include_str!("graph_acquire.lua")),
        }
    }
}

/// Graph's limits: a mailbox's, and an app's across every tenant.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GraphLimits {
    pub max_concurrent: u32,
    pub per_window: u32,
    pub window: Duration,
    pub app_per_window: u32,
    pub app_window: Duration,
    /// How long a permit holds its slot if never released (a crashed daemon).
    pub lease: Duration,
}

impl Store {
    /// Tries to take one permit of `budget`, spaced `interval` apart; a caller up to
    /// `tolerance` late keeps the schedule. `None`: granted; `Some(d)`: ask again after `d`.
    pub(crate) async fn take_permit(
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
            .key(self.keys.rate_log(budget))
            .arg(interval.as_micros() as u64)
            .arg(tolerance.as_micros() as u64)
            .invoke_async(&mut self.conn())
            .await?;
        Ok((wait_us > 0).then(|| Duration::from_micros(wait_us as u64)))
    }

    /// Tries to take a Graph permit `id` for `mailbox` of `app` standing for `cost` requests.
    /// `None`: granted; `Some(d)`: ask again after `d`.
    pub(crate) async fn take_graph_permit(
        &self,
        mailbox: &str,
        app: &str,
        id: &str,
        cost: u32,
        limits: GraphLimits,
    ) -> StoreResult<Option<Duration>> {
        let wait_us: i64 = self
            .ratelimit
            .graph
            .key(self.keys.graph_in_flight(mailbox))
            .key(self.keys.graph_window(mailbox))
            .key(self.keys.rate_pause(&graph_budget(mailbox)))
            .key(self.keys.graph_app_window(app))
            .arg(limits.max_concurrent)
            .arg(limits.per_window)
            .arg(limits.window.as_micros() as u64)
            .arg(limits.lease.as_micros() as u64)
            .arg(id)
            .arg(cost.max(1))
            .arg(limits.app_per_window)
            .arg(limits.app_window.as_micros() as u64)
            .invoke_async(&mut self.conn())
            .await?;
        Ok((wait_us > 0).then(|| Duration::from_micros(wait_us as u64)))
    }

    /// Frees a Graph permit's concurrency slot.
    pub(crate) async fn release_graph_permit(&self, mailbox: &str, id: &str) -> StoreResult<()> {
        let _: i64 = redis::cmd("ZREM")
            .arg(self.keys.graph_in_flight(mailbox))
            .arg(id)
            .query_async(&mut self.conn())
            .await?;
        Ok(())
    }

    /// Pauses every holder of `budget` for `d` (never shortens a longer pause).
    pub(crate) async fn pause_budget(&self, budget: &str, d: Duration) -> StoreResult<()> {
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

/// Budget name of a mailbox's Graph pause key.
pub(crate) fn graph_budget(mailbox: &str) -> String {
    format!("graph:{mailbox}")
}
