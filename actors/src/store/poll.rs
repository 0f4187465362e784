//! What the pollers keep in Redis: per-mailbox leases (exactly one poller per mailbox across
//! daemons), delta cursors, and the atomic page write.

use super::{Store, StoreResult};
use redis::Script;
use std::time::Duration;

/// Where a mailbox's poll stands.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cursor {
    /// The link to read next: a nextLink in the middle of a sync, the deltaLink between polls.
    pub link: Option<String>,
    /// `sync` (following nextLinks) or `delta` (at rest on a deltaLink).
    pub phase: String,
}

/// One polled page, ready to be written.
#[derive(Debug, Default)]
pub struct PolledPage<'a> {
    pub mailbox: &'a str,
    /// `(idempotency key, content digest, message JSON)` of each message on the page.
    pub messages: Vec<(String, String, &'a str)>,
    /// Cursor after this page (`None` clears it: the next poll starts a full sync).
    pub next: Option<&'a str>,
    pub phase: &'a str,
    /// Deliveries of these messages must be followed by marking them read (unread mode).
    pub mark_read: bool,
}

#[derive(Clone)]
pub(crate) struct PollScripts {
    lease: Script,
    release: Script,
    page: Script,
    pub(super) imap_page: Script,
}

impl PollScripts {
    pub(crate) fn new() -> Self {
        Self {
            lease: Script::new(include_str!("lease.lua")),
            release: Script::new(include_str!("lease_release.lua")),
            page: Script::new(include_str!("poll_page.lua")),
            imap_page: super::imap::imap_page_script(),
        }
    }
}

/// The page write was refused: another daemon holds the mailbox now.
#[derive(Debug, thiserror::Error)]
#[error("lost the poller lease of {0}")]
pub struct LeaseLost(pub String);

impl Store {
    /// Takes or renews the poller lease of `mailbox` for `token`. True while held.
    pub async fn hold_lease(&self, mailbox: &str, token: &str, ttl: Duration) -> StoreResult<bool> {
        let held: i64 = self
            .poll
            .lease
            .key(self.keys.poller_lease(mailbox))
            .arg(token)
            .arg(ttl.as_millis() as u64)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(held == 1)
    }

    /// Gives the lease up (drain), if still held.
    pub async fn release_lease(&self, mailbox: &str, token: &str) -> StoreResult<()> {
        let _: i64 = self
            .poll
            .release
            .key(self.keys.poller_lease(mailbox))
            .arg(token)
            .invoke_async(&mut self.conn())
            .await?;
        Ok(())
    }

    pub async fn cursor(&self, mailbox: &str) -> StoreResult<Cursor> {
        let (link, phase): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(self.keys.cursor(mailbox))
            .arg("link")
            .arg("phase")
            .query_async(&mut self.conn())
            .await?;
        Ok(Cursor {
            link,
            phase: phase.unwrap_or_default(),
        })
    }

    /// Writes a page and its cursor atomically, fenced by the lease. Returns the messages
    /// added (keys queued before are skipped).
    pub async fn write_page(
        &self,
        page: &PolledPage<'_>,
        token: &str,
        now_ms: u64,
        mark_ttl_s: u64,
    ) -> StoreResult<Result<u64, LeaseLost>> {
        let mut inv = self.poll.page.prepare_invoke();
        inv.key(self.keys.poller_lease(page.mailbox))
            .key(self.keys.inbound())
            .key(self.keys.cursor(page.mailbox))
            .arg(token)
            .arg(page.next.unwrap_or(""))
            .arg(page.phase)
            .arg(now_ms)
            .arg(page.mailbox)
            .arg(if page.mark_read { "1" } else { "" })
            .arg(mark_ttl_s);
        // Each message's intake mark is a declared key (a cluster checks it against the
        // script's slot); its JSON is the argument at the same position.
        for (key, digest, json) in &page.messages {
            inv.key(self.keys.queued(key)).arg(*json).arg(digest);
        }
        let added: i64 = inv.invoke_async(&mut self.conn()).await?;
        Ok(if added < 0 {
            Err(LeaseLost(page.mailbox.to_string()))
        } else {
            Ok(added as u64)
        })
    }
}
