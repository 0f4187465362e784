//! Graph messages (JSON, as CONTRACTS.md shows them) into MS4 records.

use super::keys::{content_digest, graph_key};
use super::record::{
    non_empty, normalize_date, preview, AttachmentMeta, Malformed, Ms4Record, Source,
    TransformOptions,
};
use serde::Deserialize;

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
