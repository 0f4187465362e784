//! An inbound stream entry into a record: the source decides which transform reads the payload.

use super::graph::graph_to_record;
use super::mime::mime_to_record;
use super::record::{AttachmentMeta, BodyOmitted, Malformed, Ms4Record, TransformOptions};
use chrono::{DateTime, Utc};

/// Turns one inbound stream entry (its fields) into a record.
///
/// Fields: `source` (`graph` or `imap`; default `graph`), `mailbox`, `payload` (a Graph message
/// as JSON, or for IMAP the raw RFC 5322 message: its own bytes when `plain`, else base64, since
/// stream fields are read as text and mail may hold bytes that are not UTF-8) and, for IMAP,
/// `internal_date` (RFC 3339).
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
            let raw = if fields.plain {
                std::borrow::Cow::Borrowed(payload.as_bytes())
            } else {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(payload.trim())
                    .map_err(|e| Malformed::NotMime(format!("payload is not base64: {e}")))?;
                std::borrow::Cow::Owned(decoded)
            };
            let internal_date = fields
                .internal_date
                .and_then(|d| DateTime::parse_from_rfc3339(d).ok())
                .map(|d| d.with_timezone(&Utc));
            let Some(omitted) = fields.omitted else {
                return mime_to_record(mailbox, &raw, internal_date, opts);
            };
            if opts.oversize_dead_letter {
                return Err(Malformed::TooLarge {
                    size: omitted.size,
                    limit: omitted.limit,
                });
            }
            // `raw` is the header only: a record of it, with the attachments the server's
            // BODYSTRUCTURE listed, no preview and no raw message.
            let mut record = mime_to_record(mailbox, &raw, internal_date, opts)?;
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
    /// IMAP: `payload` is the message's own bytes, not base64.
    pub plain: bool,
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
    pub(crate) fn parse(oversize: &str, attachments: Option<&str>) -> Option<Self> {
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
