//! Poller leases: exactly one poller per mailbox or IMAP source across daemons. The lease
//! token fences every write of a page or chunk: a poller that lost its lease cannot write.

use super::{Store, StoreResult};
use redis::Script;
use std::time::Duration;

#[derive(Clone)]
pub(crate) struct LeaseScripts {
    take: Script,
    release: Script,
}

impl LeaseScripts {
    pub(crate) fn new() -> Self {
        Self {
            take: Script::new(include_str!("lease.lua")),
            release: Script::new(include_str!("lease_release.lua")),
        }
    }
}

/// What a lease check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeaseState {
    /// The caller holds it (taken now, or renewed).
    Held,
    /// Another daemon holds it.
    Other,
    /// Nobody holds it, and the caller only looked.
    Free,
}

/// The write was refused: another daemon holds the mailbox (or source) now.
#[derive(Debug, thiserror::Error)]
#[error("lost the poller lease of {0}")]
pub(crate) struct LeaseLost(pub String);

impl Store {
    /// Takes or renews the poller lease of `mailbox` for `token`. True while held.
    pub(crate) async fn hold_lease(
        &self,
        mailbox: &str,
        token: &str,
        ttl: Duration,
    ) -> StoreResult<bool> {
        Ok(self.check_lease(mailbox, token, ttl, true).await? == LeaseState::Held)
    }

    /// Renews the lease of `mailbox` if `token` holds it; a free lease is taken only when
    /// `take`, else reported [`LeaseState::Free`] (one call either way).
    pub(crate) async fn check_lease(
        &self,
        mailbox: &str,
        token: &str,
        ttl: Duration,
        take: bool,
    ) -> StoreResult<LeaseState> {
        let found: i64 = self
            .lease
            .take
            .key(self.keys.poller_lease(mailbox))
            .arg(token)
            .arg(ttl.as_millis() as u64)
            .arg(if take { "1" } else { "0" })
            .invoke_async(&mut self.conn())
            .await?;
        match found {
            1 => Ok(LeaseState::Held),
            0 => Ok(LeaseState::Other),
            2 => Ok(LeaseState::Free),
            other => Err(super::StoreError::Reply(format!("lease check: {other}"))),
        }
    }

    /// Gives the lease up (drain), if still held.
    pub(crate) async fn release_lease(&self, mailbox: &str, token: &str) -> StoreResult<()> {
        let _: i64 = self
            .lease
            .release
            .key(self.keys.poller_lease(mailbox))
            .arg(token)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(())
    }
}
