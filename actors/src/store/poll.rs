//! What the Graph pollers keep in Redis: delta cursors, unread mode's listing marks, and the
//! atomic page write, fenced by the mailbox's [lease](super::lease).

use super::lease::LeaseLost;
use super::{Store, StoreResult};
use redis::Script;

/// Where a mailbox's poll stands.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Cursor {
    /// The link to read next: a nextLink in the middle of a sync, the deltaLink between polls.
    pub link: Option<String>,
    /// `sync` (following nextLinks) or `delta` (at rest on a deltaLink).
    pub phase: String,
}

/// Where unread mode's listings of a mailbox stand: the fields `unread_floor_ms`,
/// `unread_listed_ms` and `unread_swept_ms` of its cursor hash, written with the last page of a
/// complete listing (a listing cut short leaves them as they were).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct UnreadMark {
    /// A time Graph's clock had certainly passed when the last complete listing started (ms
    /// since the epoch, Graph's receivedDateTime scale); `None` before any message was seen.
    pub floor_ms: Option<i64>,
    /// When that listing started, on the daemon's clock (ms).
    pub listed_ms: Option<i64>,
    /// When the last complete listing of the whole folder (a sweep) started (ms).
    pub swept_ms: Option<i64>,
}

/// One polled page, ready to be written.
#[derive(Debug, Default)]
pub(crate) struct PolledPage<'a> {
    pub mailbox: &'a str,
    /// The messages on the page.
    pub messages: Vec<PolledMessage<'a>>,
    /// Cursor after this page (`None` clears it: the next poll starts a full sync).
    pub next: Option<&'a str>,
    pub phase: &'a str,
    /// Deliveries of these messages must be followed by marking them read (unread mode).
    pub mark_read: bool,
    /// Unread mode, the last page of a listing: the mark after it (its `None` fields are left
    /// as they are).
    pub unread_mark: Option<UnreadMark>,
}

/// One message of a polled page.
#[derive(Debug)]
pub(crate) struct PolledMessage<'a> {
    /// Its idempotency key.
    pub key: String,
    /// Its content digest (sender, subject, the sender's date).
    pub digest: String,
    /// Its Graph id.
    pub id: &'a str,
    /// The message as Graph returned it (JSON).
    pub json: &'a str,
}

#[derive(Clone)]
pub(crate) struct PollScripts {
    page: Script,
}

impl PollScripts {
    pub(crate) fn new() -> Self {
        Self {
            page: Script::new(concat!(
                super::large::lua_prelude!(),
                include_str!("copies_ended.lua"),
                include_str!("poll_page.lua")
            )),
        }
    }
}

impl Store {
    pub(crate) async fn cursor(&self, mailbox: &str) -> StoreResult<Cursor> {
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

    /// Where unread mode's listings of `mailbox` stand.
    pub(crate) async fn unread_mark(&self, mailbox: &str) -> StoreResult<UnreadMark> {
        let (floor_ms, listed_ms, swept_ms) = redis::cmd("HMGET")
            .arg(self.keys.cursor(mailbox))
            .arg("unread_floor_ms")
            .arg("unread_listed_ms")
            .arg("unread_swept_ms")
            .query_async(&mut self.conn())
            .await?;
        Ok(UnreadMark {
            floor_ms,
            listed_ms,
            swept_ms,
        })
    }

    /// Writes a page and its cursor atomically, fenced by the lease. Returns the messages
    /// added (keys queued before are skipped).
    pub(crate) async fn write_page(
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
            .key(self.keys.intake_today(now_ms))
            .key(self.keys.mark_read())
            .key(self.keys.follow_ups_waiting())
            .key(self.keys.inbound_large())
            .key(self.keys.marks());
        // Where a later copy learns how its first copy ended (unread mode only: in delta mode
        // a copy has nothing to end, and each argument costs Redis a copy into Lua).
        let days = if page.mark_read {
            self.ended_days(now_ms, mark_ttl_s)
        } else {
            Vec::new()
        };
        // The marks of versions before while they may live (store::marks; not asked for a page
        // without messages: nothing to look up).
        let legacy = !page.messages.is_empty() && self.legacy_marks(now_ms, mark_ttl_s).await?;
        for day in &days {
            inv.key(day);
        }
        inv.arg(token)
            .arg(page.next.unwrap_or(""))
            .arg(page.phase)
            .arg(now_ms)
            .arg(page.mailbox)
            .arg(if page.mark_read { "1" } else { "" })
            .arg(mark_ttl_s)
            .arg(days.len());
        let mark = page.unread_mark.unwrap_or_default();
        let field = |v: Option<i64>| v.map_or_else(String::new, |v| v.to_string());
        inv.arg(field(mark.floor_ms.and(mark.listed_ms)))
            .arg(field(mark.listed_ms.and(mark.floor_ms)))
            .arg(field(mark.swept_ms))
            .arg(if legacy { "1" } else { "" });
        // Each message's intake mark (and its mark of a version before) is a declared key (a
        // cluster checks it against the script's slot); its JSON is the argument at the same
        // position.
        for m in &page.messages {
            let id = if page.mark_read { m.id } else { "" };
            inv.key(self.keys.queued(&m.key));
            if legacy {
                inv.key(self.keys.legacy_seen(&m.key));
            }
            inv.arg(m.json).arg(&m.digest).arg(&m.key).arg(id);
        }
        let added: i64 = inv.invoke_async(&mut self.conn()).await?;
        Ok(if added < 0 {
            Err(LeaseLost(page.mailbox.to_string()))
        } else {
            Ok(added as u64)
        })
    }
}
