//! What the IMAP pollers keep in Redis: per source, the folder's UIDVALIDITY and the last UID
//! queued (`cursor:imap:{name}`), written in one atomic step with the messages of each chunk,
//! and fenced by the source's lease (`lease:poller:imap:{name}`).

use super::lease::LeaseLost;
use super::{Store, StoreResult};
use redis::Script;

/// Where a source's folder stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UidCursor {
    pub uidvalidity: u32,
    pub last_uid: u32,
}

/// One fetched message, ready to be queued.
#[derive(Debug)]
pub(crate) struct FetchedMail {
    pub uid: u32,
    /// INTERNALDATE, RFC 3339 (empty when the server sent none).
    pub internal_date: String,
    /// The raw message, base64 (its header only when `omitted`).
    pub payload: String,
    /// The body was not fetched: the message is above `imap.max_message_bytes`.
    pub omitted: Option<Omitted>,
}

/// A message fetched without its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Omitted {
    /// RFC822.SIZE.
    pub size: u64,
    /// `imap.max_message_bytes`.
    pub limit: u64,
    /// Attachment metadata from BODYSTRUCTURE, as JSON (`[{"name","contentType","size"}]`).
    pub attachments: String,
}

/// One chunk of a folder, ready to be written.
#[derive(Debug)]
pub(crate) struct FetchedChunk<'a> {
    pub source: &'a str,
    pub uidvalidity: u32,
    /// The cursor after this chunk: every UID up to it was fetched (or does not exist).
    pub last_uid: u32,
    /// The source has an after-delivery action.
    pub after_delivery: bool,
    pub mails: Vec<FetchedMail>,
}

/// The Redis name of a source in lease and cursor keys (apart from Graph mailboxes).
pub(crate) fn lease_name(source: &str) -> String {
    format!("imap:{source}")
}

impl Store {
    pub(crate) async fn uid_cursor(&self, source: &str) -> StoreResult<Option<UidCursor>> {
        let (uv, last): (Option<u32>, Option<u32>) = redis::cmd("HMGET")
            .arg(self.keys.cursor(&lease_name(source)))
            .arg("uidvalidity")
            .arg("last_uid")
            .query_async(&mut self.conn())
            .await?;
        Ok(uv.map(|uidvalidity| UidCursor {
            uidvalidity,
            last_uid: last.unwrap_or(0),
        }))
    }

    /// Writes a chunk and the cursor after it atomically, fenced by the lease. Returns the
    /// messages added (UIDs at or below the stored cursor are skipped).
    pub(crate) async fn write_imap_chunk(
        &self,
        chunk: &FetchedChunk<'_>,
        token: &str,
        now_ms: u64,
    ) -> StoreResult<Result<u64, LeaseLost>> {
        let name = lease_name(chunk.source);
        let mut inv = self.imap_page.prepare_invoke();
        inv.key(self.keys.poller_lease(&name))
            .key(self.keys.inbound())
            .key(self.keys.cursor(&name))
            .key(self.keys.intake_today(now_ms))
            .arg(token)
            .arg(chunk.uidvalidity)
            .arg(chunk.last_uid)
            .arg(now_ms)
            .arg(chunk.source)
            .arg(if chunk.after_delivery { "1" } else { "" });
        for m in &chunk.mails {
            inv.arg(m.uid).arg(&m.internal_date).arg(&m.payload);
            match &m.omitted {
                Some(o) => inv
                    .arg(format!("{}:{}", o.size, o.limit))
                    .arg(&o.attachments),
                None => inv.arg("").arg(""),
            };
        }
        let added: i64 = inv.invoke_async(&mut self.conn()).await?;
        Ok(if added < 0 {
            Err(LeaseLost(chunk.source.to_string()))
        } else {
            Ok(added as u64)
        })
    }
}

pub(super) fn imap_page_script() -> Script {
    Script::new(include_str!("imap_page.lua"))
}
