//! Fleet membership: the daemons sharing one Redis and one source list, each a member of a
//! sorted set (`fleet:{digest}`) scored by when its heartbeat expires (Redis `TIME`, so the
//! daemons' clocks do not matter). One heartbeat per daemon, not per mailbox: it renews the
//! daemon's own entry, removes the entries that expired (daemons that died), and reads the
//! rest, in one script.

use super::{Store, StoreResult};
use redis::Script;
use std::sync::LazyLock;
use std::time::Duration;

static BEAT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("fleet_beat.lua")));

impl Store {
    /// Renews `member`'s heartbeat in `fleet` for `ttl` and returns the live members (sorted,
    /// `member` among them).
    pub(crate) async fn fleet_beat(
        &self,
        fleet: &str,
        member: &str,
        ttl: Duration,
    ) -> StoreResult<Vec<String>> {
        let members: Vec<String> = BEAT
            .key(self.keys.fleet(fleet))
            .arg(member)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(members)
    }

    /// Leaves `fleet` (drain): the others need not wait for the heartbeat to expire.
    pub(crate) async fn leave_fleet(&self, fleet: &str, member: &str) -> StoreResult<()> {
        let _: i64 = redis::cmd("ZREM")
            .arg(self.keys.fleet(fleet))
            .arg(member)
            .query_async(&mut self.conn())
            .await?;
        Ok(())
    }
}
