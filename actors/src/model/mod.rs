//! The domain: what an e-mail is on its way in, what MS4 receives, and the pure transform
//! between the two.
//!
//! An inbound stream entry holds a source message (today a Microsoft Graph message as JSON, as
//! CONTRACTS.md shows it) together with the mailbox it came from. [`to_record`] turns it into one
//! [`Ms4Record`] or says precisely why it cannot ([`Malformed`]); it does no I/O so it is unit
//! tested here and fuzzed later.

mod entry;
mod graph;
mod keys;
pub mod mime;
mod record;
#[cfg(test)]
mod tests;

pub use entry::{entry_to_record, InboundFields, OmittedBody};
pub use graph::{graph_needs_attachments, graph_to_record, GraphAttachment};
pub use keys::{conflict_key, content_digest, graph_key};
pub use record::{
    normalize_date, preview, AttachmentMeta, BodyOmitted, Malformed, Ms4Record, Source,
    TransformOptions, PREVIEW_CHARS,
};
