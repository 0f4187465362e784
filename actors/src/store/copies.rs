//! Later copies of a message end in the state of its first copy.
//!
//! A copy is an entry whose key was seen before: the same mail again in another mailbox or
//! folder, a message a recreated IMAP folder brought back under a new UID, the copy a
//! distribution list delivered beside the direct one. It is not delivered again, but its
//! follow-up (Graph mark read, IMAP `\Seen` or move) is due as soon as the first copy's is:
//! when MS4 has accepted the first copy, never before. So the MS4Sender records each record's
//! end (`ended:{day}`: `1` accepted, `0` dead-lettered) in the transaction that finishes its
//! batch, and a copy's follow-up is queued at once when its first copy has ended accepted,
//! its dead-letter end (the source's `after_dead_letter`, nothing with `leave`) when the first
//! was dead-lettered, so the copy ends as the first one did, and otherwise waits
//! (`followups:waiting`) until [`Store::drain_waiting`] finds the first copy's end.

use super::keys::DAY_MS;
use super::{FollowUp, Store, StoreResult};
use redis::Script;
use std::sync::LazyLock;

static END: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("copies_ended.lua"),
        include_str!("copies_end.lua")
    ))
});
static DRAIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("copies_ended.lua"),
        include_str!("drain_waiting.lua")
    ))
});

/// An inbound entry whose key was seen before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Copy {
    pub entry_id: String,
    pub key: String,
    /// What its source does once it is delivered, if anything.
    pub follow_up: Option<FollowUp>,
}

/// What [`Store::end_copies`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CopiesEnded {
    /// Follow-ups queued now: their first copy was accepted by MS4.
    pub followed_up: u64,
    /// Follow-ups waiting for their first copy's end.
    pub waiting: u64,
    /// Copies whose first copy was dead-lettered: their dead-letter end is queued.
    pub first_dead_lettered: u64,
}

/// What one [`Store::drain_waiting`] step did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Drained {
    /// Where the next step goes on (`0` once the hash was walked).
    pub cursor: String,
    pub followed_up: u64,
    pub first_dead_lettered: u64,
    /// Waited longer than the idempotency marks live: the first copy's end is not known.
    pub given_up: u64,
}

impl Store {
    /// The end-state hashes a first copy may be recorded in (today's first), for marks that
    /// live `ttl_s`.
    pub(super) fn ended_days(&self, now_ms: u64, ttl_s: u64) -> Vec<String> {
        let days = ttl_s.saturating_mul(1_000).div_ceil(DAY_MS) + 1;
        (0..=days)
            .map(|d| self.keys.ended_on(now_ms.saturating_sub(d * DAY_MS)))
            .collect()
    }

    /// Records in a transaction being built that the records under `keys` ended: accepted by
    /// MS4 (`accepted`) or dead-lettered, for as long as idempotency marks live.
    pub(crate) fn push_ended(
        &self,
        pipe: &mut redis::Pipeline,
        keys: &[&str],
        accepted: bool,
        ttl_s: u64,
    ) {
        if keys.is_empty() {
            return;
        }
        let day = self.keys.ended_on(crate::clock::now_ms());
        let state = if accepted { "1" } else { "0" };
        pipe.cmd("HSET").arg(&day);
        for key in keys {
            pipe.arg(*key).arg(state);
        }
        pipe.ignore();
        pipe.cmd("EXPIRE")
            .arg(&day)
            .arg(ttl_s + DAY_MS / 1_000)
            .ignore();
    }

    /// Ends `copies` (see the module) and acknowledges and deletes their inbound entries, in
    /// one script each 500.
    pub(crate) async fn end_copies(&self, copies: &[Copy], ttl_s: u64) -> StoreResult<CopiesEnded> {
        let mut total = CopiesEnded::default();
        let now = crate::clock::now_ms();
        for chunk in copies.chunks(500) {
            let mut inv = END.prepare_invoke();
            inv.key(self.keys.inbound())
                .key(self.keys.mark_read())
                .key(self.keys.imap_done())
                .key(self.keys.follow_ups_waiting());
            for day in self.ended_days(now, ttl_s) {
                inv.key(day);
            }
            inv.arg(super::keys::PROCESSORS).arg(now);
            for c in chunk {
                inv.arg(&c.entry_id).arg(&c.key);
                match &c.follow_up {
                    Some(f) => inv.arg(f.source).arg(&f.mailbox).arg(&f.id),
                    None => inv.arg("").arg("").arg(""),
                };
            }
            let (followed_up, waiting, dead): (u64, u64, u64) =
                inv.invoke_async(&mut self.conn()).await?;
            total.followed_up += followed_up;
            total.waiting += waiting;
            total.first_dead_lettered += dead;
        }
        Ok(total)
    }

    /// One step through the follow-ups waiting for their first copy, from `cursor` (`0` to
    /// start): queues those whose first copy was accepted, the dead-letter ends of those whose
    /// first copy was dead-lettered, and drops those that waited longer than `ttl_s`.
    pub(crate) async fn drain_waiting(&self, ttl_s: u64, cursor: &str) -> StoreResult<Drained> {
        let now = crate::clock::now_ms();
        let mut inv = DRAIN.prepare_invoke();
        inv.key(self.keys.follow_ups_waiting())
            .key(self.keys.mark_read())
            .key(self.keys.imap_done());
        for day in self.ended_days(now, ttl_s) {
            inv.key(day);
        }
        inv.arg(now)
            .arg(ttl_s.saturating_mul(1_000))
            .arg(200)
            .arg(cursor);
        let (cursor, followed_up, first_dead_lettered, given_up): (String, u64, u64, u64) =
            inv.invoke_async(&mut self.conn()).await?;
        Ok(Drained {
            cursor,
            followed_up,
            first_dead_lettered,
            given_up,
        })
    }
}
