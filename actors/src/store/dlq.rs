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
    /// What the payload is: `message` (a source message), `ref` (a message id to fetch),
    /// `record` (an MS4 record) or `mark_read` (a message id to mark read).
    pub kind: String,
    /// `graph` or `imap`.
    pub source: String,
    /// Fields of the failed entry that its replay needs back, unchanged: what to do after
    /// delivery (`mark_read`, the IMAP `uid`/`uidvalidity`; the outbound `mb`/`mid`/`ms`) and
    /// the IMAP `internal_date`. Stored as `carry.{name}`.
    pub carry: Vec<(String, String)>,
}

/// Prefix of the dead-letter fields that go back into the replayed entry.
pub const CARRY: &str = "carry.";

/// The fields of `entry` named in `names`, to carry through a dead letter.
pub fn carried(entry: &super::Entry, names: &[&str]) -> Vec<(String, String)> {
    names
        .iter()
        .filter_map(|n| Some((n.to_string(), entry.field(n)?.to_string())))
        .collect()
}

impl DeadLetter {
    pub fn fields(&self) -> Vec<(String, String)> {
        let mut fields: Vec<(String, String)> = vec![
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
            ("kind", self.kind.clone()),
            ("source", self.source.clone()),
            ("payload", self.payload.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        fields.extend(
            self.carry
                .iter()
                .map(|(k, v)| (format!("{CARRY}{k}"), v.clone())),
        );
        fields
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

/// Which dead letters an operation applies to.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterFilter {
    /// Exactly these entry ids (when set, the other criteria still apply).
    pub ids: Option<Vec<String>>,
    pub stage: Option<String>,
    pub mailbox: Option<String>,
    /// Substring of the reason.
    pub reason: Option<String>,
}

impl DeadLetterFilter {
    pub fn matches(&self, e: &super::Entry) -> bool {
        let f = |k: &str| e.field(k).unwrap_or("");
        self.ids.as_ref().is_none_or(|ids| ids.contains(&e.id))
            && self.stage.as_deref().is_none_or(|s| f("stage") == s)
            && self.mailbox.as_deref().is_none_or(|m| f("mailbox") == m)
            && self
                .reason
                .as_deref()
                .is_none_or(|r| f("reason").contains(r))
    }
}

impl Store {
    /// One dead letter.
    pub async fn dlq_get(&self, id: &str) -> StoreResult<Option<super::Entry>> {
        let v: redis::Value = redis::cmd("XRANGE")
            .arg(self.keys.dlq())
            .arg(id)
            .arg(id)
            .query_async(&mut self.conn())
            .await?;
        Ok(super::streams::parse_entries_public(v)?.into_iter().next())
    }

    /// Dead letters matching `filter`, oldest first, at most `limit`.
    pub async fn dlq_select(
        &self,
        filter: &DeadLetterFilter,
        limit: usize,
    ) -> StoreResult<Vec<super::Entry>> {
        if let Some(ids) = &filter.ids {
            let mut out = Vec::new();
            for id in ids.iter().take(limit) {
                if let Some(e) = self.dlq_get(id).await?.filter(|e| filter.matches(e)) {
                    out.push(e);
                }
            }
            return Ok(out);
        }
        let mut out = Vec::new();
        let mut start = "-".to_string();
        loop {
            let page = self.dlq_range(&start, 1_000).await?;
            let Some(last) = page.last() else { break };
            start = format!("({}", last.id);
            let full = page.len() == 1_000;
            out.extend(page.into_iter().filter(|e| filter.matches(e)));
            if out.len() >= limit || !full {
                break;
            }
        }
        out.truncate(limit);
        Ok(out)
    }

    /// Deletes dead letters by id; returns how many existed.
    pub async fn dlq_delete(&self, ids: &[String]) -> StoreResult<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        Ok(redis::cmd("XDEL")
            .arg(self.keys.dlq())
            .arg(ids)
            .query_async(&mut self.conn())
            .await?)
    }

    /// Puts dead letters back where they failed (inbound, outbound, markread or imapdone) and removes
    /// them from the DLQ, each in one MULTI/EXEC. Returns how many were replayed.
    pub async fn dlq_replay(&self, entries: &[super::Entry]) -> StoreResult<u64> {
        use super::schema::inbound as f;
        use super::schema::outbound as o;
        let mut replayed = 0;
        for chunk in entries.chunks(200) {
            let mut pipe = redis::pipe();
            pipe.atomic();
            for e in chunk {
                let field = |k: &str| e.field(k).unwrap_or("").to_string();
                let payload = field("payload");
                match (field("stage").as_str(), field("kind").as_str()) {
                    ("deliver", _) => {
                        pipe.cmd("XADD")
                            .arg(self.keys.outbound())
                            .arg("*")
                            .arg(o::KEY)
                            .arg(field("key"))
                            .arg(o::RECORD)
                            .arg(&payload)
                            .arg(o::INBOUND_MS)
                            .arg(crate::clock::now_ms());
                        push_carried(&mut pipe, e);
                        pipe.ignore();
                    }
                    ("mark_read", _) => {
                        let stream = match field("source").as_str() {
                            "imap" => self.keys.imap_done(),
                            _ => self.keys.mark_read(),
                        };
                        pipe.cmd("XADD")
                            .arg(stream)
                            .arg("*")
                            .arg(super::schema::follow_up::MAILBOX)
                            .arg(field("mailbox"))
                            .arg(super::schema::follow_up::MESSAGE_ID)
                            .arg(&payload)
                            .ignore();
                    }
                    (_, "ref") => {
                        pipe.cmd("XADD")
                            .arg(self.keys.inbound())
                            .arg("*")
                            .arg(f::SOURCE)
                            .arg(field("source"))
                            .arg(f::KIND)
                            .arg("ref")
                            .arg(f::MAILBOX)
                            .arg(field("mailbox"))
                            .arg(f::MESSAGE_ID)
                            .arg(&payload);
                        push_carried(&mut pipe, e);
                        pipe.ignore();
                    }
                    _ => {
                        let source = field("source");
                        pipe.cmd("XADD")
                            .arg(self.keys.inbound())
                            .arg("*")
                            .arg(f::SOURCE)
                            .arg(if source.is_empty() {
                                "graph".into()
                            } else {
                                source
                            })
                            .arg(f::KIND)
                            .arg("message")
                            .arg(f::MAILBOX)
                            .arg(field("mailbox"))
                            .arg(f::PAYLOAD)
                            .arg(&payload);
                        push_carried(&mut pipe, e);
                        pipe.ignore();
                    }
                }
                pipe.cmd("XDEL").arg(self.keys.dlq()).arg(&e.id).ignore();
                replayed += 1;
            }
            let _: redis::Value = pipe.query_async(&mut self.conn()).await?;
        }
        Ok(replayed)
    }
}

/// Appends a dead letter's carried fields to the XADD being built.
fn push_carried(pipe: &mut redis::Pipeline, e: &super::Entry) {
    for (k, v) in &e.fields {
        if let Some(name) = k.strip_prefix(CARRY) {
            pipe.arg(name).arg(v);
        }
    }
}
