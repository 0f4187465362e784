//! What the WebhookReceiver keeps in Redis: one subscription per mailbox (so a restarted daemon
//! renews instead of re-creating), and notification refs written to the inbound stream.

use super::{Store, StoreResult};
use crate::processor::inbound_fields as f;

/// A mailbox's Graph subscription as persisted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSubscription {
    pub id: String,
    /// RFC 3339.
    pub expiration: String,
}

impl Store {
    pub async fn load_subscription(
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

    pub async fn save_subscription(
        &self,
        mailbox: &str,
        s: &StoredSubscription,
    ) -> StoreResult<()> {
        let _: () = redis::cmd("HSET")
            .arg(self.keys.subscription(mailbox))
            .arg("id")
            .arg(&s.id)
            .arg("expiration")
            .arg(&s.expiration)
            .arg("mailbox")
            .arg(mailbox)
            .query_async(&mut self.conn())
            .await?;
        Ok(())
    }

    pub async fn forget_subscription(&self, mailbox: &str) -> StoreResult<()> {
        let _: i64 = redis::cmd("DEL")
            .arg(self.keys.subscription(mailbox))
            .query_async(&mut self.conn())
            .await?;
        Ok(())
    }

    /// Writes notification refs (`(mailbox, message id)`) to the inbound stream in one
    /// MULTI/EXEC: durable before the webhook answers 202.
    pub async fn add_refs(&self, refs: &[(&str, &str)]) -> StoreResult<()> {
        if refs.is_empty() {
            return Ok(());
        }
        let inbound = self.keys.inbound();
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (mailbox, id) in refs {
            pipe.cmd("XADD")
                .arg(&inbound)
                .arg("*")
                .arg(f::SOURCE)
                .arg("graph")
                .arg(f::KIND)
                .arg("ref")
                .arg(f::MAILBOX)
                .arg(*mailbox)
                .arg(f::MESSAGE_ID)
                .arg(*id)
                .ignore();
        }
        let _: redis::Value = pipe.query_async(&mut self.conn()).await?;
        Ok(())
    }
}
