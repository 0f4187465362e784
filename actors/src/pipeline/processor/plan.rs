//! What one chunk becomes: records, dead letters, parked entries and in-chunk duplicates,
//! decided without I/O before the hand-off asks Redis which keys it has seen.

use super::resolve::Resolution;
use crate::clock::now_ms;
use crate::model::{entry_to_record, InboundFields, OmittedBody, TransformOptions};
use crate::store::copies::Copy;
use crate::store::dlq::Stage;
use crate::store::streams::ParkedEntry;
use crate::store::{DeadLetter, Entry, FollowUp, OutboundRecord};
use std::collections::HashMap;

/// What one chunk becomes, before Redis is asked which keys it has seen.
#[derive(Debug, Default)]
pub(super) struct ChunkPlan {
    pub(super) records: Vec<OutboundRecord>,
    pub(super) dead: Vec<DeadLetter>,
    /// The follow-up targets of the dead letters that have one (the message in its mailbox),
    /// for the sources' `after_dead_letter`.
    pub(super) dead_targets: Vec<FollowUp>,
    pub(super) parked: Vec<ParkedEntry>,
    /// Records renamed because an earlier entry of the chunk had their key and other content.
    pub(super) key_conflicts: u64,
    /// Entries whose key appears earlier in the same chunk (with their content): later copies.
    pub(super) copies_in_chunk: Vec<Copy>,
}

pub(super) fn plan_chunk(
    entries: &[Entry],
    resolved: &[Resolution],
    opts: TransformOptions,
) -> ChunkPlan {
    use crate::store::schema::inbound as f;
    let now = now_ms();
    let mut plan = ChunkPlan::default();
    // Key → content digest of the records planned so far.
    let mut keys_in_chunk: HashMap<String, String> = HashMap::with_capacity(entries.len());
    for (e, resolution) in entries.iter().zip(resolved) {
        let omitted = e
            .field(f::OVERSIZE)
            .and_then(|o| OmittedBody::parse(o, e.field(f::ATTACHMENTS)));
        let mut fields = InboundFields {
            source: e.field(f::SOURCE),
            mailbox: e.field(f::MAILBOX),
            payload: e.field(f::PAYLOAD),
            plain: e.field(f::PLAIN) == Some("1"),
            attachments: None,
            internal_date: e.field(f::INTERNAL_DATE),
            omitted: omitted.as_ref(),
        };
        let dead = |reason: String, status: u16, payload: &str| DeadLetter {
            stage: Stage::Process,
            reason,
            status,
            attempts: 1,
            first_failure_ms: now,
            last_failure_ms: now,
            payload: payload.to_string(),
            mailbox: e.field(f::MAILBOX).unwrap_or_default().to_string(),
            key: String::new(),
            entry_id: e.id.clone(),
            response: String::new(),
            kind: e.field(f::KIND).unwrap_or("message").to_string(),
            source: e.field(f::SOURCE).unwrap_or("graph").to_string(),
            carry: crate::store::dlq::carried(
                e,
                &[
                    f::FOLLOW_UP,
                    f::UID,
                    f::UIDVALIDITY,
                    f::INTERNAL_DATE,
                    f::OVERSIZE,
                    f::ATTACHMENTS,
                    f::PLAIN,
                ],
            ),
        };
        match resolution {
            Resolution::AsIs => {}
            Resolution::Fetched {
                payload,
                attachments,
            } => {
                fields.payload = Some(payload);
                fields.attachments = attachments.as_deref();
            }
            Resolution::Attachments(a) => fields.attachments = Some(a),
            Resolution::Park { .. } => {
                plan.parked.push(ParkedEntry {
                    mailbox: e.field(f::MAILBOX).unwrap_or_default().to_string(),
                    fields: e.fields.clone(),
                });
                continue;
            }
            Resolution::Dead { reason, status } => {
                let what = e
                    .field(f::MESSAGE_ID)
                    .or(fields.payload)
                    .unwrap_or_default();
                plan.dead_targets.extend(dead_target(e, fields.payload));
                plan.dead.push(dead(reason.clone(), *status, what));
                continue;
            }
        }
        match entry_to_record(&fields, opts) {
            Ok(mut record) => {
                match keys_in_chunk.get(&record.idempotency_key) {
                    None => {}
                    Some(digest) if *digest == record.content_digest => {
                        plan.copies_in_chunk.push(copy_of(e, &record));
                        continue;
                    }
                    Some(_) => {
                        record.idempotency_key = crate::model::conflict_key(
                            &record.idempotency_key,
                            &record.content_digest,
                        );
                        if keys_in_chunk.contains_key(&record.idempotency_key) {
                            plan.copies_in_chunk.push(copy_of(e, &record));
                            continue;
                        }
                        tracing::warn!(key = %record.idempotency_key, "a Message-ID arrived again with other content (sender, subject or date): delivered as a message of its own under the key and its content digest");
                        plan.key_conflicts += 1;
                    }
                }
                keys_in_chunk.insert(
                    record.idempotency_key.clone(),
                    record.content_digest.clone(),
                );
                let json = serde_json::to_string(&record).expect("a record always serializes");
                let mark_read = (e.field(f::FOLLOW_UP) == Some("1"))
                    .then(|| follow_up(e, &record))
                    .flatten();
                plan.records.push(OutboundRecord {
                    entry: e.id.clone(),
                    key: record.idempotency_key,
                    digest: record.content_digest,
                    json,
                    inbound_ms: e.added_ms(),
                    mark_read,
                });
            }
            Err(reason) => {
                plan.dead_targets.extend(dead_target(e, fields.payload));
                plan.dead.push(dead(
                    reason.to_string(),
                    0,
                    fields.payload.unwrap_or_default(),
                ));
            }
        }
    }
    plan
}

/// An entry whose key was seen before, with the follow-up its source wants once delivered.
fn copy_of(e: &Entry, record: &crate::model::Ms4Record) -> Copy {
    use crate::store::schema::inbound as f;
    Copy {
        entry_id: e.id.clone(),
        key: record.idempotency_key.clone(),
        follow_up: (e.field(f::FOLLOW_UP) == Some("1"))
            .then(|| follow_up(e, record))
            .flatten(),
    }
}

/// What to do with a delivered message: mark it read in Graph, or the IMAP source's action on
/// its UID (`None` when an IMAP entry lacks its UID: nothing can be acted on).
pub(super) fn follow_up(e: &Entry, record: &crate::model::Ms4Record) -> Option<FollowUp> {
    use crate::store::schema::inbound as f;
    match record.source {
        crate::model::Source::Graph => Some(FollowUp {
            source: "graph",
            mailbox: record.mailbox.clone(),
            id: record.id.clone(),
        }),
        crate::model::Source::Imap => Some(FollowUp {
            source: "imap",
            mailbox: record.mailbox.clone(),
            id: format!("{}:{}", e.field(f::UIDVALIDITY)?, e.field(f::UID)?),
        }),
    }
}

/// Where a message that cannot be a record is in its mailbox, when its source has follow-ups:
/// the IMAP UID, or the Graph id (the ref's, else the `id` of the message, if it has one).
fn dead_target(e: &Entry, payload: Option<&str>) -> Option<FollowUp> {
    use crate::store::schema::inbound as f;
    if e.field(f::FOLLOW_UP) != Some("1") {
        return None;
    }
    let mailbox = e.field(f::MAILBOX)?.to_string();
    if e.field(f::SOURCE) == Some("imap") {
        return Some(FollowUp {
            source: "imap",
            mailbox,
            id: format!("{}:{}", e.field(f::UIDVALIDITY)?, e.field(f::UID)?),
        });
    }
    let id = match e.field(f::MESSAGE_ID) {
        Some(id) => id.to_string(),
        None => serde_json::from_str::<serde_json::Value>(payload?)
            .ok()?
            .get("id")?
            .as_str()?
            .to_string(),
    };
    (!id.is_empty()).then_some(FollowUp {
        source: "graph",
        mailbox,
        id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn entry(id: &str, payload: &str) -> Entry {
        Entry {
            id: id.into(),
            fields: vec![
                ("mailbox".into(), "m@x.example".into()),
                ("payload".into(), payload.into()),
            ],
        }
    }

    pub(super) fn msg(imid: &str) -> String {
        format!(
            r#"{{"id":"{imid}","internetMessageId":"{imid}","from":{{"emailAddress":{{"address":"a@b.example"}}}},"receivedDateTime":"2026-01-01T00:00:00Z"}}"#
        )
    }

    #[test]
    pub(super) fn a_chunk_splits_into_records_dead_letters_and_in_chunk_duplicates() {
        let entries = vec![
            entry("1-0", &msg("<a>")),
            entry("2-0", "{broken"),
            entry("3-0", &msg("<a>")),
            entry("4-0", &msg("<b>")),
        ];
        let plan = plan_chunk(&entries, &vec![Resolution::AsIs; 4], Default::default());
        assert_eq!(plan.records.len(), 2);
        assert_eq!(plan.records[0].key, "<a>");
        assert_eq!(plan.records[0].inbound_ms, 1);
        assert_eq!(plan.records[1].key, "<b>");
        assert_eq!(plan.copies_in_chunk.len(), 1);
        assert_eq!(plan.copies_in_chunk[0].entry_id, "3-0");
        assert_eq!(plan.copies_in_chunk[0].key, "<a>");
        assert_eq!(plan.dead.len(), 1);
        assert_eq!(plan.dead[0].entry_id, "2-0");
        assert_eq!(plan.dead[0].payload, "{broken");
        assert!(plan.dead[0].reason.contains("not a Graph message"));
        assert!(plan.dead_targets.is_empty(), "no follow-up asked for");
    }

    #[test]
    fn a_message_that_cannot_be_a_record_keeps_where_it_is_for_its_dead_letter_end() {
        let with = |mut e: Entry, fields: &[(&str, &str)]| {
            e.fields.push(("mark_read".into(), "1".into()));
            e.fields
                .extend(fields.iter().map(|(k, v)| (k.to_string(), v.to_string())));
            e
        };
        let no_from = r#"{"id":"AAMk1","receivedDateTime":"2026-01-01T00:00:00Z"}"#;
        let entries = vec![
            with(entry("1-0", no_from), &[]),
            with(entry("2-0", "{broken"), &[]),
            with(
                entry("3-0", "not mime"),
                &[("source", "imap"), ("uid", "42"), ("uidvalidity", "7")],
            ),
        ];
        let plan = plan_chunk(&entries, &vec![Resolution::AsIs; 3], Default::default());
        assert_eq!(plan.dead.len(), 3);
        let ids: Vec<(&str, &str)> = plan
            .dead_targets
            .iter()
            .map(|f| (f.source, f.id.as_str()))
            .collect();
        assert_eq!(ids, [("graph", "AAMk1"), ("imap", "7:42")]);
    }
}
