//! The domain: what an e-mail is on its way in, what MS4 receives, and the pure transform
//! between the two.
//!
//! An inbound stream entry holds a source message (today a Microsoft Graph message as JSON, as
//! CONTRACTS.md shows it) together with the mailbox it came from. [`to_record`] turns it into one
//! [`Ms4Record`] or says precisely why it cannot ([`Malformed`]); it does no I/O so it is unit
//! tested here and fuzzed later.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

/// Longest `bodyPreview` sent to MS4, in characters.
pub const PREVIEW_CHARS: usize = 255;

/// Where a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Graph,
    Imap,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Graph => "graph",
            Source::Imap => "imap",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "graph" => Some(Source::Graph),
            "imap" => Some(Source::Imap),
            _ => None,
        }
    }
}

/// One attachment's metadata (never its content).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentMeta {
    pub name: String,
    #[serde(rename = "contentType")]
    pub content_type: String,
    pub size: u64,
}

/// One record of `POST /batch-metadata`: the seed's `/metadata` shape plus the fields MS4 needs
/// to deduplicate and route (CONTRACTS.md, "MS4 Persistence API").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ms4Record {
    pub id: String,
    pub subject: String,
    #[serde(rename = "hasAttachments")]
    pub has_attachments: bool,
    pub sender: String,
    #[serde(rename = "receivedDateTime")]
    pub received_date_time: String,
    pub raw_message: Option<String>,
    pub idempotency_key: String,
    pub source: Source,
    pub mailbox: String,
    pub recipients: Vec<String>,
    #[serde(rename = "bodyPreview")]
    pub body_preview: String,
    pub attachments: Vec<AttachmentMeta>,
    /// What the sender chose besides the Message-ID ([`content_digest`]): two messages with one
    /// key and different digests are two messages (a forged or reused Message-ID), not a
    /// repeat. Not sent to MS4.
    #[serde(skip)]
    pub content_digest: String,
    /// Present only on a record made without the message's body (an IMAP message above
    /// `imap.max_message_bytes`, `imap.oversize = "headers"`): its size and the limit.
    #[serde(
        rename = "bodyOmitted",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub body_omitted: Option<BodyOmitted>,
}

/// Why a record has no body: the message's size (RFC822.SIZE) was above the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BodyOmitted {
    pub size: u64,
    pub limit: u64,
}

/// A digest of what tells two messages with the same Message-ID apart: the sender (case
/// ignored), the subject and the date the sender gave (`sentDateTime` in Graph, the `Date`
/// header in IMAP). Copies of one mail (delivered directly and through a distribution list, or
/// into two mailboxes) share all three; a mail that reuses another's Message-ID does not. The
/// size is left out on purpose: each copy has its own `Received` headers.
pub fn content_digest(sender: &str, subject: &str, sent: &str) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(sender.trim().to_lowercase().as_bytes());
    h.update([0u8]);
    h.update(subject.as_bytes());
    h.update([0u8]);
    h.update(sent.trim().as_bytes());
    hex::encode(&h.finalize()[..8])
}

/// The key a record is delivered under when its idempotency key already names a message with
/// other content: the key and the content digest, so each such message is delivered once.
pub fn conflict_key(key: &str, digest: &str) -> String {
    format!("{key}#{digest}")
}

/// The idempotency key of a Graph message: its `internetMessageId` (trimmed), else
/// `graph:{mailbox}:{id}`. The one rule for the pollers' intake marks and the records alike.
pub fn graph_key(internet_message_id: Option<&str>, mailbox: &str, id: &str) -> String {
    match internet_message_id.map(str::trim) {
        Some(imid) if !imid.is_empty() => imid.to_string(),
        _ => format!("graph:{mailbox}:{id}"),
    }
}

/// Why an inbound entry cannot become a record. The text goes into the dead letter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("entry has no `{0}` field")]
    MissingField(&'static str),
    #[error("unknown source `{0}`")]
    UnknownSource(String),
    #[error("payload is not a Graph message: {0}")]
    NotJson(String),
    #[error("message has no `{0}`")]
    MissingProperty(&'static str),
    #[error("receivedDateTime `{0}` is not an ISO 8601 date-time")]
    BadDate(String),
    #[error("not a MIME message: {0}")]
    NotMime(String),
    #[error("message of {size} bytes is above imap.max_message_bytes ({limit}): its body was not fetched (imap.oversize = \"dead_letter\"; the payload is its header)")]
    TooLarge { size: u64, limit: u64 },
}

/// The Graph message properties ms1 selects (`$select` in CONTRACTS.md), as Graph sends them.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GraphMessage {
    id: Option<String>,
    internet_message_id: Option<String>,
    subject: Option<String>,
    from: Option<GraphRecipient>,
    #[serde(default)]
    to_recipients: Option<Vec<GraphRecipient>>,
    received_date_time: Option<String>,
    #[serde(default)]
    sent_date_time: Option<String>,
    #[serde(default)]
    has_attachments: Option<bool>,
    #[serde(default)]
    body_preview: Option<String>,
    /// Attachment metadata, filled in by the poller for messages that have attachments.
    #[serde(default)]
    attachments: Option<Vec<GraphAttachment>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GraphRecipient {
    email_address: Option<GraphEmailAddress>,
}

#[derive(Debug, Deserialize)]
struct GraphEmailAddress {
    address: Option<String>,
}

/// An attachment as Graph lists it (inside a message or from `/attachments`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GraphAttachment {
    name: Option<String>,
    content_type: Option<String>,
    size: Option<u64>,
}

impl From<GraphAttachment> for AttachmentMeta {
    fn from(a: GraphAttachment) -> Self {
        AttachmentMeta {
            name: a.name.unwrap_or_default(),
            content_type: a
                .content_type
                .unwrap_or_else(|| "application/octet-stream".into()),
            size: a.size.unwrap_or(0),
        }
    }
}

/// Options of the transform that come from configuration.
#[derive(Debug, Clone, Copy, Default)]
pub struct TransformOptions {
    /// Copy the whole source payload into `raw_message`.
    pub include_raw: bool,
    /// An IMAP message whose body was not fetched (too large) becomes a dead letter instead of
    /// a record without body (`imap.oversize = "dead_letter"`).
    pub oversize_dead_letter: bool,
}

/// Turns a Graph message (JSON) from `mailbox` into an MS4 record. `fetched` is attachment
/// metadata read separately from Graph (it wins over an `attachments` array in the payload).
pub fn graph_to_record(
    mailbox: &str,
    payload: &str,
    fetched: Option<&[AttachmentMeta]>,
    opts: TransformOptions,
) -> Result<Ms4Record, Malformed> {
    let msg: GraphMessage =
        serde_json::from_str(payload).map_err(|e| Malformed::NotJson(e.to_string()))?;
    let id = non_empty(msg.id).ok_or(Malformed::MissingProperty("id"))?;
    let sender = msg
        .from
        .and_then(|f| f.email_address)
        .and_then(|a| non_empty(a.address))
        .ok_or(Malformed::MissingProperty("from.emailAddress.address"))?;
    let received =
        non_empty(msg.received_date_time).ok_or(Malformed::MissingProperty("receivedDateTime"))?;
    let received_date_time = normalize_date(&received)?;
    let recipients = msg
        .to_recipients
        .unwrap_or_default()
        .into_iter()
        .filter_map(|r| r.email_address.and_then(|a| non_empty(a.address)))
        .collect();
    let attachments: Vec<AttachmentMeta> = match fetched {
        Some(list) => list.to_vec(),
        None => msg
            .attachments
            .unwrap_or_default()
            .into_iter()
            .map(AttachmentMeta::from)
            .collect(),
    };
    let idempotency_key = graph_key(msg.internet_message_id.as_deref(), mailbox, &id);
    let subject = msg.subject.unwrap_or_default();
    let content_digest = content_digest(
        &sender,
        &subject,
        msg.sent_date_time.as_deref().unwrap_or(""),
    );
    Ok(Ms4Record {
        has_attachments: msg.has_attachments.unwrap_or(!attachments.is_empty()),
        subject,
        content_digest,
        sender,
        received_date_time,
        raw_message: opts.include_raw.then(|| payload.to_string()),
        idempotency_key,
        source: Source::Graph,
        mailbox: mailbox.to_string(),
        recipients,
        body_preview: preview(msg.body_preview.as_deref().unwrap_or("")),
        attachments,
        body_omitted: None,
        id,
    })
}

/// Turns one inbound stream entry (its fields) into a record.
///
/// Fields: `source` (`graph` or `imap`; default `graph`), `mailbox`, `payload` (a Graph message
/// as JSON, or for IMAP the raw RFC 5322 message in base64, since stream fields are read as
/// text and mail may hold 8-bit bytes) and, for IMAP, `internal_date` (RFC 3339).
pub fn entry_to_record(
    fields: &InboundFields<'_>,
    opts: TransformOptions,
) -> Result<Ms4Record, Malformed> {
    let mailbox = fields.mailbox.ok_or(Malformed::MissingField("mailbox"))?;
    let payload = fields.payload.ok_or(Malformed::MissingField("payload"))?;
    match fields.source.unwrap_or("graph") {
        "graph" => graph_to_record(mailbox, payload, fields.attachments, opts),
        "imap" => {
            use base64::Engine;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(payload.trim())
                .map_err(|e| Malformed::NotMime(format!("payload is not base64: {e}")))?;
            let internal_date = fields
                .internal_date
                .and_then(|d| DateTime::parse_from_rfc3339(d).ok())
                .map(|d| d.with_timezone(&Utc));
            let Some(omitted) = fields.omitted else {
                return crate::mime::mime_to_record(mailbox, &raw, internal_date, opts);
            };
            if opts.oversize_dead_letter {
                return Err(Malformed::TooLarge {
                    size: omitted.size,
                    limit: omitted.limit,
                });
            }
            // `raw` is the header only: a record of it, with the attachments the server's
            // BODYSTRUCTURE listed, no preview and no raw message.
            let mut record = crate::mime::mime_to_record(mailbox, &raw, internal_date, opts)?;
            record.raw_message = None;
            record.body_preview = String::new();
            record.attachments = omitted.attachments.to_vec();
            record.has_attachments = !record.attachments.is_empty();
            record.body_omitted = Some(BodyOmitted {
                size: omitted.size,
                limit: omitted.limit,
            });
            Ok(record)
        }
        other => Err(Malformed::UnknownSource(other.to_string())),
    }
}

/// The fields of an inbound stream entry, borrowed from the Redis reply.
#[derive(Debug, Default, Clone, Copy)]
pub struct InboundFields<'a> {
    pub source: Option<&'a str>,
    pub mailbox: Option<&'a str>,
    pub payload: Option<&'a str>,
    /// Attachment metadata fetched for this message, if any.
    pub attachments: Option<&'a [AttachmentMeta]>,
    /// IMAP INTERNALDATE (RFC 3339): the date of a message without a usable Date header.
    pub internal_date: Option<&'a str>,
    /// IMAP: the body was not fetched (the message is too large); `payload` is its header.
    pub omitted: Option<&'a OmittedBody>,
}

/// What an inbound IMAP entry says of a message whose body was not fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OmittedBody {
    /// RFC822.SIZE.
    pub size: u64,
    /// `imap.max_message_bytes` when it was polled.
    pub limit: u64,
    /// From the server's BODYSTRUCTURE.
    pub attachments: Vec<AttachmentMeta>,
}

impl OmittedBody {
    /// From the entry's `oversize` (`{size}:{limit}`) and `attachments` (JSON) fields.
    pub fn parse(oversize: &str, attachments: Option<&str>) -> Option<Self> {
        let (size, limit) = oversize.split_once(':')?;
        Some(Self {
            size: size.parse().ok()?,
            limit: limit.parse().ok()?,
            attachments: attachments
                .and_then(|a| serde_json::from_str(a).ok())
                .unwrap_or_default(),
        })
    }
}

/// Whether a Graph message needs its attachment metadata fetched: it has attachments and
/// the payload does not list them. Returns its id.
pub fn graph_needs_attachments(payload: &str) -> Option<String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Head {
        id: Option<String>,
        #[serde(default)]
        has_attachments: bool,
        attachments: Option<serde::de::IgnoredAny>,
    }
    let head: Head = serde_json::from_str(payload).ok()?;
    (head.has_attachments && head.attachments.is_none())
        .then_some(head.id)
        .flatten()
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|v| !v.trim().is_empty())
}

/// Graph sends `2026-11-21T10:00:00Z`; other sources may carry offsets or fractions. MS4 gets
/// RFC 3339 in UTC, whole seconds.
pub fn normalize_date(s: &str) -> Result<String, Malformed> {
    DateTime::parse_from_rfc3339(s.trim())
        .map(|d| {
            d.with_timezone(&Utc)
                .to_rfc3339_opts(SecondsFormat::Secs, true)
        })
        .map_err(|_| Malformed::BadDate(s.chars().take(64).collect()))
}

/// At most [`PREVIEW_CHARS`] characters, cut on a character boundary, whitespace collapsed.
pub fn preview(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(PREVIEW_CHARS * 2));
    let mut count = 0;
    let mut last_space = true;
    for c in text.chars() {
        if count == PREVIEW_CHARS {
            break;
        }
        if c.is_whitespace() {
            if last_space {
                continue;
            }
            out.push(' ');
            last_space = true;
        } else {
            out.push(c);
            last_space = false;
        }
        count += 1;
    }
    let trimmed = out.trim_end().len();
    out.truncate(trimmed);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &str = r#"{
        "id": "AAMkAD-1",
        "internetMessageId": "<inv-1042@vendor.example>",
        "subject": "Invoice INV-1042",
        "from": {"emailAddress": {"name": "Billing", "address": "billing@vendor.example"}},
        "toRecipients": [{"emailAddress": {"address": "invoices@contoso.example"}},
                         {"emailAddress": {"address": "ap@contoso.example"}}],
        "receivedDateTime": "2026-11-21T10:00:00Z",
        "hasAttachments": true,
        "bodyPreview": "Please find attached",
        "attachments": [{"name": "INV-1042.pdf", "contentType": "application/pdf", "size": 48213}]
    }"#;

    #[test]
    fn a_graph_message_becomes_the_contract_record() {
        let r = graph_to_record("invoices@contoso.example", MSG, None, Default::default()).unwrap();
        assert_eq!(r.id, "AAMkAD-1");
        assert_eq!(r.idempotency_key, "<inv-1042@vendor.example>");
        assert_eq!(r.sender, "billing@vendor.example");
        assert_eq!(
            r.recipients,
            vec!["invoices@contoso.example", "ap@contoso.example"]
        );
        assert_eq!(r.received_date_time, "2026-11-21T10:00:00Z");
        assert!(r.has_attachments);
        assert_eq!(r.raw_message, None);
        assert_eq!(r.attachments[0].name, "INV-1042.pdf");
        let json = serde_json::to_value(&r).unwrap();
        for field in [
            "id",
            "subject",
            "hasAttachments",
            "sender",
            "receivedDateTime",
            "raw_message",
            "idempotency_key",
            "source",
            "mailbox",
            "recipients",
            "bodyPreview",
            "attachments",
        ] {
            assert!(json.get(field).is_some(), "missing {field}");
        }
        assert_eq!(json["source"], "graph");
        assert_eq!(json["attachments"][0]["contentType"], "application/pdf");
    }

    #[test]
    fn without_internet_message_id_the_key_is_source_mailbox_id() {
        let msg = r#"{"id":"X1","from":{"emailAddress":{"address":"a@b.example"}},
                      "receivedDateTime":"2026-01-01T00:00:00Z"}"#;
        let r = graph_to_record("mb@x.example", msg, None, Default::default()).unwrap();
        assert_eq!(r.idempotency_key, "graph:mb@x.example:X1");
        assert_eq!(r.attachments, vec![]);
        assert!(!r.has_attachments);
        assert_eq!(r.subject, "");
    }

    #[test]
    fn include_raw_copies_the_payload() {
        let r = graph_to_record(
            "m",
            MSG,
            None,
            TransformOptions {
                include_raw: true,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(r.raw_message.as_deref(), Some(MSG));
    }

    #[test]
    fn dates_are_normalized_to_utc_seconds() {
        assert_eq!(
            normalize_date("2026-11-21T12:00:00.123+02:00").unwrap(),
            "2026-11-21T10:00:00Z"
        );
        assert!(matches!(
            normalize_date("yesterday"),
            Err(Malformed::BadDate(_))
        ));
    }

    #[test]
    fn preview_is_cut_at_255_characters_on_a_char_boundary() {
        let long = "é".repeat(300);
        let p = preview(&long);
        assert_eq!(p.chars().count(), 255);
        assert_eq!(preview("  a \n\n b  "), "a b");
    }

    #[test]
    fn malformed_messages_say_what_is_missing() {
        let cases = [
            ("not json", "not a Graph message"),
            (r#"{"from":{"emailAddress":{"address":"a@b"}}}"#, "`id`"),
            (
                r#"{"id":"1","receivedDateTime":"2026-01-01T00:00:00Z"}"#,
                "from.emailAddress.address",
            ),
            (
                r#"{"id":"1","from":{"emailAddress":{"address":"a@b"}}}"#,
                "receivedDateTime",
            ),
            (
                r#"{"id":"1","from":{"emailAddress":{"address":"a@b"}},"receivedDateTime":"x"}"#,
                "ISO 8601",
            ),
            ("[1,2]", "not a Graph message"),
        ];
        for (payload, want) in cases {
            let err = graph_to_record("m", payload, None, Default::default()).unwrap_err();
            assert!(err.to_string().contains(want), "{payload}: {err}");
        }
    }

    #[test]
    fn fetched_attachments_win_and_are_needed_only_when_missing() {
        let msg = r#"{"id":"X1","hasAttachments":true,"from":{"emailAddress":{"address":"a@b.example"}},
                      "receivedDateTime":"2026-01-01T00:00:00Z"}"#;
        assert_eq!(graph_needs_attachments(msg).as_deref(), Some("X1"));
        assert_eq!(graph_needs_attachments(MSG), None, "listed already");
        let fetched = [AttachmentMeta {
            name: "a.pdf".into(),
            content_type: "application/pdf".into(),
            size: 9,
        }];
        let r = graph_to_record("m", msg, Some(&fetched), Default::default()).unwrap();
        assert_eq!(r.attachments, fetched.to_vec());
        assert!(r.has_attachments);
    }

    #[test]
    fn imap_entries_carry_the_raw_message_in_base64() {
        use base64::Engine;
        let raw = b"From: a@b.example\r\nSubject: caf\xe9\r\n\r\nbody \xff\r\n";
        let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
        let f = InboundFields {
            source: Some("imap"),
            mailbox: Some("gmail"),
            payload: Some(&b64),
            internal_date: Some("2026-03-04T05:06:07+01:00"),
            ..Default::default()
        };
        let r = entry_to_record(&f, Default::default()).unwrap();
        assert_eq!(r.source, Source::Imap);
        assert_eq!(r.received_date_time, "2026-03-04T04:06:07Z");
        let f = InboundFields {
            payload: Some("%%% not base64"),
            ..f
        };
        let err = entry_to_record(&f, Default::default()).unwrap_err();
        assert!(err.to_string().contains("base64"), "{err}");
    }

    #[test]
    fn an_oversized_imap_entry_becomes_a_flagged_record_without_body_or_a_dead_letter() {
        use base64::Engine;
        let header = b"From: a@b.example\r\nSubject: big\r\nMessage-ID: <big@b.example>\r\nDate: Sat, 21 Nov 2026 10:00:00 +0000\r\n\r\n";
        let b64 = base64::engine::general_purpose::STANDARD.encode(header);
        let omitted = OmittedBody::parse(
            "31457280:26214400",
            Some(r#"[{"name":"scan.pdf","contentType":"application/pdf","size":31000000}]"#),
        )
        .unwrap();
        let f = InboundFields {
            source: Some("imap"),
            mailbox: Some("gmail"),
            payload: Some(&b64),
            omitted: Some(&omitted),
            ..Default::default()
        };
        let opts = TransformOptions {
            include_raw: true,
            ..Default::default()
        };
        let r = entry_to_record(&f, opts).unwrap();
        assert_eq!(r.idempotency_key, "<big@b.example>");
        assert_eq!(r.raw_message, None);
        assert_eq!(r.body_preview, "");
        assert!(r.has_attachments);
        assert_eq!(r.attachments[0].name, "scan.pdf");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["bodyOmitted"]["size"], 31457280);
        assert_eq!(json["bodyOmitted"]["limit"], 26214400);
        let opts = TransformOptions {
            oversize_dead_letter: true,
            ..Default::default()
        };
        let err = entry_to_record(&f, opts).unwrap_err().to_string();
        assert!(
            err.contains("31457280 bytes") && err.contains("26214400"),
            "{err}"
        );
        // A normal record carries no bodyOmitted at all.
        let normal = InboundFields { omitted: None, ..f };
        let json =
            serde_json::to_value(entry_to_record(&normal, Default::default()).unwrap()).unwrap();
        assert!(json.get("bodyOmitted").is_none());
    }

    #[test]
    fn entries_need_mailbox_payload_and_a_known_source() {
        let f = InboundFields {
            source: Some("fax"),
            mailbox: Some("m"),
            payload: Some(MSG),
            ..Default::default()
        };
        assert_eq!(
            entry_to_record(&f, Default::default()).unwrap_err(),
            Malformed::UnknownSource("fax".into())
        );
        let f = InboundFields {
            payload: Some(MSG),
            ..Default::default()
        };
        assert_eq!(
            entry_to_record(&f, Default::default()).unwrap_err(),
            Malformed::MissingField("mailbox")
        );
    }
}
