//! The one schema of the stream entries: every field name the daemon writes or reads, by
//! stream. Code that builds or reads an entry names its fields from here, never as literals.

/// An inbound entry (`stream:inbound`): what a source brought in.
pub mod inbound {
    /// `graph` (default) or `imap`. Writers leave out a default (`source` of a Graph entry,
    /// `kind` of a message): every field costs Redis and the processor a copy and a parse.
    pub const SOURCE: &str = "source";
    /// `message` (default: `payload` is the message) or `ref` (a webhook notification: only
    /// `message_id`; the processor fetches the message).
    pub const KIND: &str = "kind";
    pub const MAILBOX: &str = "mailbox";
    pub const PAYLOAD: &str = "payload";
    pub const MESSAGE_ID: &str = "message_id";
    /// `1`: the message has a follow-up once MS4 accepted it: marked read in Graph (unread
    /// mode), or the IMAP source's after-delivery action (`\Seen` or move). (The name is the
    /// first version's; entries in flight across an upgrade keep it.)
    pub const FOLLOW_UP: &str = "mark_read";
    /// IMAP: the message's UID and its folder's UIDVALIDITY, and its INTERNALDATE (RFC 3339).
    pub const UID: &str = "uid";
    pub const UIDVALIDITY: &str = "uidvalidity";
    pub const INTERNAL_DATE: &str = "internal_date";
    /// IMAP, a message above `imap.max_message_bytes`: `{size}:{limit}`; `payload` is then its
    /// header only, and `attachments` (JSON) what its BODYSTRUCTURE lists.
    pub(crate) const OVERSIZE: &str = "oversize";
    pub(crate) const ATTACHMENTS: &str = "attachments";
    /// IMAP: `1` when `payload` is the message's own bytes (they were UTF-8, as 7-bit mail
    /// always is); absent when `payload` is the message in base64 (bytes that are not UTF-8,
    /// and every entry written before this field existed).
    pub const PLAIN: &str = "plain";
}

/// An outbound entry (`stream:outbound`): an MS4 record waiting for delivery.
pub(crate) mod outbound {
    pub(crate) const KEY: &str = "k";
    pub(crate) const RECORD: &str = "r";
    pub(crate) const INBOUND_MS: &str = "t";
    /// Present when the message has a follow-up after delivery: its mailbox and id, and its
    /// source when that is not Graph (see [`FollowUp`](crate::store::FollowUp)).
    pub(crate) const FOLLOW_UP_MAILBOX: &str = "mb";
    pub(crate) const FOLLOW_UP_ID: &str = "mid";
    pub(crate) const FOLLOW_UP_SOURCE: &str = "ms";
    /// An entry that holds one MS4 batch ([`outbound`](crate::store::outbound)) has,
    /// instead of the fields above: its number of records, the records (one JSON object a
    /// line), their keys (a JSON array), their inbound times (separated by spaces) and, when
    /// any has one, their follow-ups (a JSON array of `null` or `[source, mailbox, id]`).
    pub(crate) const COUNT: &str = "n";
    pub(crate) const RECORDS: &str = "rs";
    pub(crate) const KEYS: &str = "ks";
    pub(crate) const INBOUND_MS_LIST: &str = "ts";
    pub(crate) const FOLLOW_UPS: &str = "fs";
}

/// A follow-up entry (`stream:markread`, `stream:imapdone`): what to do in the mailbox once
/// MS4 accepted the message, or once it was dead-lettered.
pub mod follow_up {
    /// The Graph mailbox, or the IMAP source's name.
    pub const MAILBOX: &str = "mailbox";
    /// The Graph message id, or `{uidvalidity}:{uid}` in the IMAP folder.
    pub const MESSAGE_ID: &str = "message_id";
    /// Which end is due: absent after delivery (MS4 accepted the message), [`DEAD_LETTERED`]
    /// once the message was dead-lettered (its source's `after_dead_letter`).
    pub const END: &str = "end";
    pub const DEAD_LETTERED: &str = "dead_letter";
}

/// A dead letter (`stream:dlq`): what failed, why, and what a replay puts back.
pub mod dead_letter {
    /// `process`, `deliver` or `after_delivery`.
    pub const STAGE: &str = "stage";
    pub const REASON: &str = "reason";
    pub const STATUS: &str = "status";
    pub const ATTEMPTS: &str = "attempts";
    pub const FIRST_FAILURE_MS: &str = "first_failure_ms";
    pub const LAST_FAILURE_MS: &str = "last_failure_ms";
    pub const MAILBOX: &str = "mailbox";
    pub const KEY: &str = "key";
    pub const ENTRY_ID: &str = "entry_id";
    pub const RESPONSE: &str = "response";
    pub const KIND: &str = "kind";
    pub const SOURCE: &str = "source";
    pub const PAYLOAD: &str = "payload";
    /// Prefix of the fields that go back into the replayed entry (`carry.{field}`).
    pub(crate) const CARRY: &str = "carry.";
}
