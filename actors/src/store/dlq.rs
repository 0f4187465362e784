//! The dead-letter stream: entries that cannot be processed or that MS4 rejected, with
//! everything an operator needs to decide what to do with them.

use super::{Store, StoreResult};

/// Where in the pipeline an entry failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Inbound entry could not become an MS4 record.
    Process,
    /// MS4 refused the record.
    Deliver,
    /// Graph refused to mark a delivered message read.
    MarkRead,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Process => "process",
            Stage::Deliver => "deliver",
            Stage::MarkRead => "mark_read",
        }
    }
}

/// One dead letter.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub stage: Stage,
    /// Why, in words an operator can act on.
    pub reason: String,
    /// HTTP status of the answer that condemned it (0 when none).
    pub status: u16,
    /// Attempts made (requests that carried it).
    pub attempts: u32,
    pub first_failure_ms: u64,
    pub last_failure_ms: u64,
    /// The original payload: the inbound message, or the record for MS4.
    pub payload: String,
    /// Mailbox it came from, when known.
    pub mailbox: String,
    /// Idempotency key, when known.
    pub key: String,
    /// The id of the stream entry it was.
    pub entry_id: String,
    /// The response body that condemned it (truncated), when any.
    pub response: String,
}

impl DeadLetter {
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        vec![
            ("stage", self.stage.as_str().to_string()),
            ("reason", self.reason.clone()),
            ("status", self.status.to_string()),
            ("attempts", self.attempts.to_string()),
            ("first_failure_ms", self.first_failure_ms.to_string()),
            ("last_failure_ms", self.last_failure_ms.to_string()),
            ("mailbox", self.mailbox.clone()),
            ("key", self.key.clone()),
            ("entry_id", self.entry_id.clone()),
            ("response", self.response.clone()),
            ("payload", self.payload.clone()),
        ]
    }
}

impl Store {
    pub(crate) fn push_dead_letter(&self, pipe: &mut redis::Pipeline, d: &DeadLetter, maxlen: u64) {
        let dlq = self.keys.dlq();
        pipe.cmd("XADD").arg(&dlq);
        if maxlen > 0 {
            pipe.arg("MAXLEN").arg("~").arg(maxlen);
        }
        pipe.arg("*");
        for (k, v) in d.fields() {
            pipe.arg(k).arg(v);
        }
        pipe.ignore();
    }

    /// Dead letters, oldest first, from `start` (inclusive stream id, `-` for the beginning).
    pub async fn dlq_range(&self, start: &str, count: usize) -> StoreResult<Vec<super::Entry>> {
        let v: redis::Value = redis::cmd("XRANGE")
            .arg(self.keys.dlq())
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.conn())
            .await?;
        super::streams::parse_entries_public(v)
    }
}
