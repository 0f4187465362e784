//! The keys a message is known by: its idempotency key (the same for the pollers' intake marks
//! and the records), the content digest that tells two messages with one key apart, and the key
//! of such a conflict.

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
