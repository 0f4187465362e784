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
    /// The after-delivery action (Graph mark-read, IMAP `\Seen` or move) was refused.
    AfterDelivery,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Process => "process",
            Stage::Deliver => "deliver",
            Stage::AfterDelivery => "after_delivery",
        }
    }

    /// A stage by name; also `mark_read`, what dead letters written before the after-delivery
    /// worker served IMAP call that stage.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "process" => Some(Stage::Process),
            "deliver" => Some(Stage::Deliver),
            "after_delivery" | "mark_read" => Some(Stage::AfterDelivery),
            _ => None,
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

pub(crate) use super::schema::dead_letter::CARRY;

/// The fields of `entry` named in `names`, to carry through a dead letter.
pub(crate) fn carried(entry: &super::Entry, names: &[&str]) -> Vec<(String, String)> {
    names
        .iter()
        .filter_map(|n| Some((n.to_string(), entry.field(n)?.to_string())))
        .collect()
}

impl DeadLetter {
    pub(crate) fn fields(&self) -> Vec<(String, String)> {
        use super::schema::dead_letter as d;
        let mut fields: Vec<(String, String)> = vec![
            (d::STAGE, self.stage.as_str().to_string()),
            (d::REASON, self.reason.clone()),
            (d::STATUS, self.status.to_string()),
            (d::ATTEMPTS, self.attempts.to_string()),
            (d::FIRST_FAILURE_MS, self.first_failure_ms.to_string()),
            (d::LAST_FAILURE_MS, self.last_failure_ms.to_string()),
            (d::MAILBOX, self.mailbox.clone()),
            (d::KEY, self.key.clone()),
            (d::ENTRY_ID, self.entry_id.clone()),
            (d::RESPONSE, self.response.clone()),
            (d::KIND, self.kind.clone()),
            (d::SOURCE, self.source.clone()),
            (d::PAYLOAD, self.payload.clone()),
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
    pub(crate) async fn dlq_range(
        &self,
        start: &str,
        count: usize,
    ) -> StoreResult<Vec<super::Entry>> {
        let v: redis::Value = redis::cmd("XRANGE")
            .arg(self.keys.dlq())
            .arg(start)
            .arg("+")
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.conn())
            .await?;
        super::entry::parse_entries_public(v)
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
    /// Dead-lettered at or after / before this time (ms since the epoch; the entry id's).
    pub since_ms: Option<u64>,
    pub until_ms: Option<u64>,
}

impl DeadLetterFilter {
    /// The entry id's time (`<ms>-<seq>`) is within `since_ms`..`until_ms`.
    fn in_time(&self, id: &str) -> bool {
        let at = id.split('-').next().and_then(|ms| ms.parse::<u64>().ok());
        match (self.since_ms, self.until_ms, at) {
            (None, None, _) => true,
            (since, until, Some(at)) => {
                since.is_none_or(|s| at >= s) && until.is_none_or(|u| at < u)
            }
            (_, _, None) => false,
        }
    }

    pub(crate) fn matches(&self, e: &super::Entry) -> bool {
        use super::schema::dead_letter as d;
        let f = |k: &str| e.field(k).unwrap_or("");
        self.ids.as_ref().is_none_or(|ids| ids.contains(&e.id))
            && self.stage.as_deref().is_none_or(|s| {
                Stage::parse(s).is_some_and(|want| Stage::parse(f(d::STAGE)) == Some(want))
            })
            && self.mailbox.as_deref().is_none_or(|m| f(d::MAILBOX) == m)
            && self
                .reason
                .as_deref()
                .is_none_or(|r| f(d::REASON).contains(r))
            && self.in_time(&e.id)
    }
}

impl Store {
    /// One dead letter.
    pub(crate) async fn dlq_get(&self, id: &str) -> StoreResult<Option<super::Entry>> {
        let v: redis::Value = redis::cmd("XRANGE")
            .arg(self.keys.dlq())
            .arg(id)
            .arg(id)
            .query_async(&mut self.conn())
            .await?;
        Ok(super::entry::parse_entries_public(v)?.into_iter().next())
    }

    /// Dead letters matching `filter`, oldest first, at most `limit`.
    pub(crate) async fn dlq_select(
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
    pub(crate) async fn dlq_delete(&self, ids: &[String]) -> StoreResult<u64> {
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
    pub(crate) async fn dlq_replay(&self, entries: &[super::Entry]) -> StoreResult<u64> {
        use super::schema::dead_letter as d;
        use super::schema::inbound as f;
        use super::schema::outbound as o;
        let mut replayed = 0;
        for chunk in entries.chunks(200) {
            let mut pipe = redis::pipe();
            pipe.atomic();
            for e in chunk {
                let field = |k: &str| e.field(k).unwrap_or("").to_string();
                let payload = field(d::PAYLOAD);
                let stage = Stage::parse(&field(d::STAGE));
                match (stage, field(d::KIND).as_str()) {
                    (Some(Stage::Deliver), _) => {
                        pipe.cmd("XADD")
                            .arg(self.keys.outbound())
                            .arg("*")
                            .arg(o::KEY)
                            .arg(field(d::KEY))
                            .arg(o::RECORD)
                            .arg(&payload)
                            .arg(o::INBOUND_MS)
                            .arg(crate::clock::now_ms());
                        push_carried(&mut pipe, e);
                        pipe.ignore();
                    }
                    (Some(Stage::AfterDelivery), _) => {
                        let stream = match field(d::SOURCE).as_str() {
                            "imap" => self.keys.imap_done(),
                            _ => self.keys.mark_read(),
                        };
                        pipe.cmd("XADD")
                            .arg(stream)
                            .arg("*")
                            .arg(super::schema::follow_up::MAILBOX)
                            .arg(field(d::MAILBOX))
                            .arg(super::schema::follow_up::MESSAGE_ID)
                            .arg(&payload);
                        // A refused dead-letter end comes back as one (`end`).
                        push_carried(&mut pipe, e);
                        pipe.ignore();
                    }
                    (_, "ref") => {
                        pipe.cmd("XADD")
                            .arg(self.keys.inbound())
                            .arg("*")
                            .arg(f::SOURCE)
                            .arg(field(d::SOURCE))
                            .arg(f::KIND)
                            .arg("ref")
                            .arg(f::MAILBOX)
                            .arg(field(d::MAILBOX))
                            .arg(f::MESSAGE_ID)
                            .arg(&payload);
                        push_carried(&mut pipe, e);
                        pipe.ignore();
                    }
                    _ => {
                        let source = field(d::SOURCE);
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
                            .arg(field(d::MAILBOX))
                            .arg(f::PAYLOAD)
                            .arg(&payload);
                        push_carried(&mut pipe, e);
                        pipe.ignore();
                    }
                }
                let to_inbound = !matches!(stage, Some(Stage::Deliver | Stage::AfterDelivery));
                if to_inbound && super::large::is_large(super::read_budget::entry_bytes(e) as usize)
                {
                    // The dead letter's size bounds the entry's (it carries more fields).
                    pipe.cmd("INCR").arg(self.keys.inbound_large()).ignore();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_read_back_by_name_including_the_first_versions_mark_read() {
        for stage in [Stage::Process, Stage::Deliver, Stage::AfterDelivery] {
            assert_eq!(Stage::parse(stage.as_str()), Some(stage));
        }
        assert_eq!(Stage::parse("mark_read"), Some(Stage::AfterDelivery));
        assert_eq!(Stage::parse("deliverx"), None);
    }

    #[test]
    fn a_stage_filter_matches_old_and_new_names_of_one_stage() {
        let entry = |stage: &str| crate::store::Entry {
            id: "1-0".into(),
            fields: vec![(
                crate::store::schema::dead_letter::STAGE.into(),
                stage.into(),
            )],
        };
        let filter = |stage: &str| DeadLetterFilter {
            stage: Some(stage.into()),
            ..Default::default()
        };
        assert!(filter("after_delivery").matches(&entry("mark_read")));
        assert!(filter("mark_read").matches(&entry("after_delivery")));
        assert!(!filter("deliver").matches(&entry("after_delivery")));
        assert!(!filter("nonsense").matches(&entry("nonsense")));
    }
}
