//! Parked entries: inbound entries of one mailbox that Graph refuses to serve for now (an
//! application access policy that excludes the mailbox, a refused credential, a mailbox that
//! keeps failing), set aside so that every other mailbox and source keeps flowing.
//!
//! An entry is parked in the BatchProcessor's hand-off ([`Handoff::parked`](super::Handoff)):
//! the same MULTI/EXEC that acknowledges the chunk XADDs it to the mailbox's parked stream
//! (`stream:parked:{mailbox}`), so it is never lost. The mailbox's [`ParkState`] (why, since
//! when, how many retries, when the next one is due) lives in the `parked` hash, shared by every
//! daemon. When a retry is due one entry goes back to the inbound stream as a probe
//! ([`Store::unpark`], a Lua script: the move is atomic); when Graph serves a probe, the whole
//! mailbox goes back.

use super::{Store, StoreResult};
use redis::{Script, Value};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Field of an inbound entry moved back as a probe: tried against Graph even while its mailbox
/// is parked.
pub(crate) const PROBE: &str = "probe";

/// Why and until when a mailbox's entries are parked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ParkState {
    /// What Graph answered, for `/ready` and the logs.
    pub reason: String,
    /// When the first entry was parked (ms since the epoch).
    pub since_ms: u64,
    /// Retries that failed so far.
    pub attempts: u32,
    /// When the next probe is due (ms since the epoch).
    pub next_ms: u64,
}

impl Store {
    /// Every parked mailbox and its state (an unreadable state counts as due now).
    pub(crate) async fn park_states(&self) -> StoreResult<BTreeMap<String, ParkState>> {
        let raw: BTreeMap<String, String> = redis::cmd("HGETALL")
            .arg(self.keys.parked())
            .query_async(&mut self.conn())
            .await?;
        Ok(raw
            .into_iter()
            .map(|(mailbox, json)| {
                let state = serde_json::from_str(&json).unwrap_or(ParkState {
                    reason: "unknown".into(),
                    since_ms: 0,
                    attempts: 0,
                    next_ms: 0,
                });
                (mailbox, state)
            })
            .collect())
    }

    /// Records a mailbox's state.
    pub(crate) async fn set_park_state(&self, mailbox: &str, state: &ParkState) -> StoreResult<()> {
        self.write_park_state("HSET", mailbox, state).await
    }

    /// Records a mailbox's state unless one is there (another daemon may have cleared it while
    /// this one parked more of its entries: they must not stay without a schedule).
    pub(crate) async fn keep_park_state(
        &self,
        mailbox: &str,
        state: &ParkState,
    ) -> StoreResult<()> {
        self.write_park_state("HSETNX", mailbox, state).await
    }

    async fn write_park_state(
        &self,
        command: &str,
        mailbox: &str,
        state: &ParkState,
    ) -> StoreResult<()> {
        let json = serde_json::to_string(state).expect("a park state serializes");
        let _: Value = redis::cmd(command)
            .arg(self.keys.parked())
            .arg(mailbox)
            .arg(json)
            .query_async(&mut self.conn())
            .await?;
        Ok(())
    }

    /// Forgets a mailbox's state (Graph serves it again).
    pub(crate) async fn clear_park_state(&self, mailbox: &str) -> StoreResult<()> {
        let _: Value = redis::cmd("HDEL")
            .arg(self.keys.parked())
            .arg(mailbox)
            .query_async(&mut self.conn())
            .await?;
        Ok(())
    }

    /// Moves up to `count` of a mailbox's oldest parked entries back to the inbound stream
    /// (flagged as probes with `probe`); returns how many moved.
    pub(crate) async fn unpark(
        &self,
        mailbox: &str,
        count: usize,
        probe: bool,
    ) -> StoreResult<u64> {
        let script = Script::new(concat!(
            super::large::lua_prelude!(),
            include_str!("unpark.lua")
        ));
        let moved: i64 = script
            .key(self.keys.parked_entries(mailbox))
            .key(self.keys.inbound())
            .key(self.keys.inbound_large())
            .arg(count)
            .arg(if probe { "1" } else { "0" })
            .invoke_async(&mut self.conn())
            .await?;
        Ok(moved.max(0) as u64)
    }

    /// How many entries of a mailbox are parked.
    pub(crate) async fn parked_len(&self, mailbox: &str) -> StoreResult<u64> {
        self.len(&self.keys.parked_entries(mailbox)).await
    }
}
