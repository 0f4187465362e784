//! The outbound stream's records, one entry per MS4 batch.
//!
//! The BatchProcessor writes the records of a hand-off as entries of up to `ms4.batch_size`
//! records each (and at most a byte bound, so a batch of large records is split), and the
//! MS4Sender reads one entry as one batch. Per record, Redis then does no `XADD`, no pending
//! list entry, no `XACK`/`XDEL` and no byte-budget look in Lua (a full batch is one entry, read
//! with a plain `XREADGROUP … COUNT 1`): the per-record work of the outbound stream becomes
//! per-batch work.
//!
//! An entry with [`COUNT`](F::COUNT) holds several records; an entry without it is one record
//! in the fields of [`outbound`](super::schema::outbound) (what earlier versions wrote and a
//! dead-letter replay still writes). [`explode`] turns either into one record entry per record,
//! all with the id of the entry that holds them, so the sender handles both alike.

use super::schema::outbound as F;
use super::Entry;

/// A record on its way to the outbound stream.
#[derive(Debug, Clone)]
pub(crate) struct OutboundRecord {
    /// The inbound entry it was made from.
    pub entry: String,
    /// The record's idempotency key (also the field of its idempotency mark).
    pub key: String,
    /// The record's content digest: the value of its idempotency and `queued:` marks, which
    /// tells a repeat from another message that reuses the key.
    pub digest: String,
    /// The record as MS4 will receive it (JSON object).
    pub json: String,
    /// When its source entry entered the inbound stream (ms since the epoch).
    pub inbound_ms: u64,
    /// Work due once MS4 accepted the record (mark read in Graph, an IMAP action).
    pub mark_read: Option<FollowUp>,
}

/// Work due on a message once MS4 accepted its record: mark it read in Graph (unread mode), or
/// the IMAP source's after-delivery action (`\Seen` or move).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FollowUp {
    /// `graph` or `imap`.
    pub source: &'static str,
    /// The Graph mailbox, or the IMAP source's name.
    pub mailbox: String,
    /// The Graph message id, or `{uidvalidity}:{uid}` in the IMAP folder.
    pub id: String,
}

/// How many records, and how many bytes of them, one outbound entry holds at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchLimit {
    pub records: usize,
    /// A record bigger than this still gets an entry of its own.
    pub bytes: u64,
}

/// The records in entries of at most `limit` each, in order.
pub(crate) fn group(records: &[OutboundRecord], limit: BatchLimit) -> Vec<&[OutboundRecord]> {
    let mut groups = Vec::new();
    let (mut start, mut bytes) = (0, 0u64);
    for (i, r) in records.iter().enumerate() {
        let size = r.json.len() as u64;
        let full = i - start >= limit.records.max(1) || (i > start && bytes + size > limit.bytes);
        if full {
            groups.push(&records[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < records.len() {
        groups.push(&records[start..]);
    }
    groups
}

/// The fields of one entry holding `records` (at least one).
pub(crate) fn encode(records: &[OutboundRecord]) -> Vec<(&'static str, String)> {
    let mut json = String::with_capacity(records.iter().map(|r| r.json.len() + 1).sum());
    for (i, r) in records.iter().enumerate() {
        if i > 0 {
            json.push('\n');
        }
        json.push_str(&r.json);
    }
    let keys: Vec<&str> = records.iter().map(|r| r.key.as_str()).collect();
    let times: Vec<String> = records.iter().map(|r| r.inbound_ms.to_string()).collect();
    let follow_ups: Vec<Option<[&str; 3]>> = records
        .iter()
        .map(|r| {
            r.mark_read
                .as_ref()
                .map(|f| [f.source, f.mailbox.as_str(), f.id.as_str()])
        })
        .collect();
    let mut fields = vec![
        (F::COUNT, records.len().to_string()),
        (F::RECORDS, json),
        (
            F::KEYS,
            serde_json::to_string(&keys).expect("strings serialize"),
        ),
        (F::INBOUND_MS_LIST, times.join(" ")),
    ];
    if follow_ups.iter().any(Option::is_some) {
        fields.push((
            F::FOLLOW_UPS,
            serde_json::to_string(&follow_ups).expect("strings serialize"),
        ));
    }
    fields
}

/// How many records an outbound entry holds.
pub(crate) fn records_in(e: &Entry) -> usize {
    e.field(F::COUNT)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
        .max(1)
}

/// One record entry per record of `e` (itself when it is one already), each with `e`'s id.
/// An entry whose fields do not agree with its count is returned whole: the sender then sends
/// what it holds and MS4's answer (a 400 for a record that is not one) dead-letters it, rather
/// than the entry being dropped here.
pub(crate) fn explode(e: Entry) -> Vec<Entry> {
    let Some(n) = e.field(F::COUNT).and_then(|n| n.parse::<usize>().ok()) else {
        return vec![e];
    };
    match split(&e, n) {
        Some(records) => records,
        None => {
            tracing::warn!(entry = %e.id, "an outbound batch entry does not hold the records it counts: sent as it is");
            vec![e]
        }
    }
}

fn split(e: &Entry, n: usize) -> Option<Vec<Entry>> {
    let json: Vec<&str> = e.field(F::RECORDS)?.split('\n').collect();
    let keys: Vec<String> = serde_json::from_str(e.field(F::KEYS)?).ok()?;
    let times: Vec<&str> = e.field(F::INBOUND_MS_LIST)?.split(' ').collect();
    let follow_ups: Vec<Option<[String; 3]>> = match e.field(F::FOLLOW_UPS) {
        Some(f) => serde_json::from_str(f).ok()?,
        None => vec![None; n],
    };
    if [json.len(), keys.len(), times.len(), follow_ups.len()] != [n; 4] {
        return None;
    }
    let mut out = Vec::with_capacity(n);
    for (((record, key), t), follow_up) in json.into_iter().zip(keys).zip(times).zip(follow_ups) {
        let mut fields = vec![
            (F::KEY.to_string(), key),
            (F::RECORD.to_string(), record.to_string()),
            (F::INBOUND_MS.to_string(), t.to_string()),
        ];
        if let Some([source, mailbox, id]) = follow_up {
            fields.push((F::FOLLOW_UP_MAILBOX.to_string(), mailbox));
            fields.push((F::FOLLOW_UP_ID.to_string(), id));
            if source != "graph" {
                fields.push((F::FOLLOW_UP_SOURCE.to_string(), source));
            }
        }
        out.push(Entry {
            id: e.id.clone(),
            fields,
        });
    }
    Some(out)
}

/// The follow-up a record entry carries.
pub(crate) fn follow_up_of(e: &Entry) -> Option<FollowUp> {
    let source = match e.field(F::FOLLOW_UP_SOURCE).unwrap_or("graph") {
        "imap" => "imap",
        _ => "graph",
    };
    Some(FollowUp {
        source,
        mailbox: e.field(F::FOLLOW_UP_MAILBOX)?.to_string(),
        id: e.field(F::FOLLOW_UP_ID)?.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str, json: &str, follow_up: Option<(&'static str, &str)>) -> OutboundRecord {
        OutboundRecord {
            entry: "1-0".into(),
            key: key.into(),
            digest: "d".into(),
            json: json.into(),
            inbound_ms: 7,
            mark_read: follow_up.map(|(source, id)| FollowUp {
                source,
                mailbox: "m@x.example".into(),
                id: id.into(),
            }),
        }
    }

    #[test]
    fn a_batch_entry_explodes_into_the_record_entries_it_was_made_of() {
        let records = vec![
            record("<a>", r#"{"id":"a","s":"x\ny"}"#, Some(("graph", "AAMk=="))),
            record("<b\"q>", r#"{"id":"b"}"#, None),
            record("<c>", r#"{"id":"c"}"#, Some(("imap", "7:42"))),
        ];
        let fields = encode(&records);
        let entry = Entry {
            id: "5-1".into(),
            fields: fields
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        };
        assert_eq!(records_in(&entry), 3);
        let got = explode(entry);
        assert_eq!(got.len(), 3);
        for (e, r) in got.iter().zip(&records) {
            assert_eq!(e.id, "5-1");
            assert_eq!(e.field(F::KEY), Some(r.key.as_str()));
            assert_eq!(e.field(F::RECORD), Some(r.json.as_str()));
            assert_eq!(e.field(F::INBOUND_MS), Some("7"));
            assert_eq!(follow_up_of(e), r.mark_read);
        }
    }

    #[test]
    fn a_record_entry_is_itself_and_a_broken_batch_entry_is_not_dropped() {
        let single = Entry {
            id: "1-0".into(),
            fields: vec![("k".into(), "<a>".into()), ("r".into(), "{}".into())],
        };
        assert_eq!(records_in(&single), 1);
        assert_eq!(explode(single.clone()), vec![single]);
        let broken = Entry {
            id: "2-0".into(),
            fields: vec![
                (F::COUNT.into(), "2".into()),
                (F::RECORDS.into(), "{}".into()),
                (F::KEYS.into(), r#"["<a>","<b>"]"#.into()),
                (F::INBOUND_MS_LIST.into(), "1 2".into()),
            ],
        };
        assert_eq!(explode(broken.clone()), vec![broken]);
    }

    #[test]
    fn records_are_grouped_by_count_and_by_bytes() {
        let small: Vec<OutboundRecord> =
            (0..7).map(|i| record(&i.to_string(), "{}", None)).collect();
        let limit = BatchLimit {
            records: 3,
            bytes: 1 << 20,
        };
        let sizes: Vec<usize> = group(&small, limit).iter().map(|g| g.len()).collect();
        assert_eq!(sizes, [3, 3, 1]);
        let big = "x".repeat(600);
        let mixed = vec![
            record("a", &big, None),
            record("b", &big, None),
            record("c", "{}", None),
            record("d", &"y".repeat(5_000), None),
        ];
        let limit = BatchLimit {
            records: 50,
            bytes: 1_000,
        };
        let sizes: Vec<usize> = group(&mixed, limit).iter().map(|g| g.len()).collect();
        assert_eq!(sizes, [1, 2, 1], "a record above the bound goes alone");
        assert!(group(&[], limit).is_empty());
    }
}
