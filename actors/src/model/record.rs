//! The record MS4 receives and what it is made of: the source, attachment metadata, why an entry
//! cannot become one, and the small normalisations every source shares (dates, previews).

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

/// Options of the transform that come from configuration.
#[derive(Debug, Clone, Copy, Default)]
pub struct TransformOptions {
    /// Copy the whole source payload into `raw_message`.
    pub include_raw: bool,
    /// An IMAP message whose body was not fetched (too large) becomes a dead letter instead of
    /// a record without body (`imap.oversize = "dead_letter"`).
    pub oversize_dead_letter: bool,
}

pub(crate) fn non_empty(s: Option<String>) -> Option<String> {
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
