//! What the SessionManager keeps in Redis: `session:current`, `session:{id}` for each session,
//! and `sessions` (ids by start time) for the history.

use super::{Store, StoreResult};
use std::collections::HashMap;

impl Store {
    pub(crate) async fn load_session(&self) -> StoreResult<Option<HashMap<String, String>>> {
        let map: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys.session_current())
            .query_async(&mut self.conn())
            .await?;
        Ok((!map.is_empty()).then_some(map))
    }

    pub(crate) async fn load_past_session(
        &self,
        id: &str,
    ) -> StoreResult<Option<HashMap<String, String>>> {
        let map: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys.session(id))
            .query_async(&mut self.conn())
            .await?;
        Ok((!map.is_empty()).then_some(map))
    }

    /// Replaces a session hash with `fields`, in one MULTI/EXEC.
    pub(crate) async fn save_session(
        &self,
        key: &str,
        fields: &[(String, String)],
    ) -> StoreResult<()> {
        let mut pipe = redis::pipe();
        pipe.atomic().cmd("DEL").arg(key).ignore();
        pipe.cmd("HSET").arg(key);
        for (k, v) in fields {
            pipe.arg(k).arg(v);
        }
        pipe.ignore();
        let _: redis::Value = pipe.query_async(&mut self.conn()).await?;
        Ok(())
    }

    pub(crate) async fn index_session(&self, id: &str, started_ms: u64) -> StoreResult<()> {
        let _: i64 = redis::cmd("ZADD")
            .arg(self.keys.sessions())
            .arg(started_ms)
            .arg(id)
            .query_async(&mut self.conn())
            .await?;
        Ok(())
    }

    /// Session ids, newest first.
    pub(crate) async fn session_ids(&self, limit: usize) -> StoreResult<Vec<String>> {
        Ok(redis::cmd("ZREVRANGE")
            .arg(self.keys.sessions())
            .arg(0)
            .arg(limit.saturating_sub(1))
            .query_async(&mut self.conn())
            .await?)
    }

    /// Atomically takes `session:current` for a new session, unless one is running.
    pub(crate) async fn claim_session_start(&self, id: &str) -> StoreResult<bool> {
        let claimed: i64 = redis::Script::new(include_str!("session_claim.lua"))
            .key(self.keys.session_current())
            .arg(id)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(claimed == 1)
    }
}
