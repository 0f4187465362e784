//! What the WebhookReceiver keeps in Redis: one subscription per mailbox (so a restarted daemon,
//! or the next holder of the mailbox's lease, renews instead of re-creating), the mailbox of
//! each subscription id (any daemon may receive a notification), and notification refs written
//! to the inbound stream.

use super::{Store, StoreResult};
use std::time::Duration;

/// A mailbox's Graph subscription as persisted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredSubscription {
    pub id: String,
    /// RFC 3339.
    pub expiration: String,
}

impl Store {
    pub(crate) async fn load_subscription(
        &self,
        mailbox: &str,
    ) -> StoreResult<Option<StoredSubscription>> {
        let (id, expiration): (Option<String>, Option<String>) = redis::cmd("HMGET")
            .arg(self.keys.subscription(mailbox))
            .arg("id")
            .arg("expiration")
            .query_async(&mut self.conn())
            .await?;
        Ok(match (id, expiration) {
            (Some(id), Some(expiration)) => Some(StoredSubscription { id, expiration }),
            _ => None,
        })
    }

    /// Stores `mailbox`'s subscription and, for `keep`, which mailbox its id belongs to (in one
    /// transaction).
    pub(crate) async fn save_subscription(
        &self,
        mailbox: &str,
        s: &StoredSubscription,
        keep: Duration,
    ) -> StoreResult<()> {
        let _: () = redis::pipe()
            .atomic()
            .cmd("HSET")
            .arg(self.keys.subscription(mailbox))
            .arg("id")
            .arg(&s.id)
            .arg("expiration")
            .arg(&s.expiration)
            .arg("mailbox")
            .arg(mailbox)
            .ignore()
            .cmd("SET")
            .arg(self.keys.subscription_owner(&s.id))
            .arg(mailbox)
            .arg("PX")
            .arg(keep.as_millis().max(1) as u64)
            .ignore()
            .query_async(&mut self.conn())
            .await?;
        Ok(())
    }

    /// The mailboxes of subscription `ids` (`None`: unknown, or expired long ago).
    pub(crate) async fn subscription_mailboxes(
        &self,
        ids: &[String],
    ) -> StoreResult<Vec<Option<String>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut mget = redis::cmd("MGET");
        for id in ids {
            mget.arg(self.keys.subscription_owner(id));
        }
        Ok(mget.query_async(&mut self.conn()).await?)
    }

    pub(crate) async fn forget_subscription(&self, mailbox: &str, id: &str) -> StoreResult<()> {
        let _: i64 = redis::cmd("DEL")
            .arg(self.keys.subscription(mailbox))
            .arg(self.keys.subscription_owner(id))
            .query_async(&mut self.conn())
            .await?;
        Ok(())
    }

    /// Queues notification refs (`(mailbox, message id)`) in the inbound stream in one
    /// script (a transaction): durable before the webhook answers 202. A ref already queued
    /// (its `queued:ref:` mark lives `mark_ttl_s`) is skipped, so a message notified five
    /// times costs one Graph GET. Nothing is written while the backlog (see
    /// [`Store::backlog`]) is above `max_backlog`.
    pub(crate) async fn add_refs(
        &self,
        refs: &[(&str, &str)],
        mark_ttl_s: u64,
        max_backlog: u64,
        batch_size: usize,
    ) -> StoreResult<RefsQueued> {
        let mut inv = REFS.prepare_invoke();
        inv.key(self.keys.inbound())
            .key(self.keys.outbound())
            .key(self.keys.intake_today(crate::clock::now_ms()))
            .key(self.keys.inbound_large())
            .arg(mark_ttl_s)
            .arg(max_backlog)
            .arg(batch_size);
        for (mailbox, id) in refs {
            inv.key(self.keys.ref_queued(mailbox, id))
                .arg(*mailbox)
                .arg(*id);
        }
        let (over, n): (i64, u64) = inv.invoke_async(&mut self.conn()).await?;
        Ok(if over == 1 {
            RefsQueued::Backlogged { backlog: n }
        } else {
            RefsQueued::Added(n)
        })
    }
}

/// What [`Store::add_refs`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefsQueued {
    /// This many refs were new and queued (the others were queued before).
    Added(u64),
    /// Nothing was written: the backlog holds this many entries.
    Backlogged { backlog: u64 },
}

static REFS: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(concat!(
        super::large::lua_prelude!(),
        include_str!("webhook_refs.lua")
    ))
});
