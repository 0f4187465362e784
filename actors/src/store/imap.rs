//! What the IMAP pollers keep in Redis: per source, the folder's UIDVALIDITY and the last UID
//! queued (`cursor:imap:{name}`), written in one atomic step with the messages of each chunk,
//! and fenced by the source's lease (`lease:poller:imap:{name}`).
//!
//! On a single server a chunk is one MULTI/EXEC under WATCH of the lease and the cursor, on a
//! connection of the poller's own ([`ChunkLink`]): the lease and the cursor are read, and the
//! transaction runs only if neither changed (nor expired) since, so it is fenced exactly as a
//! script would be. A script would copy every message into Lua, where Redis hashes each string
//! byte by byte: the biggest cost of the whole write. On a cluster (whose connections reconnect
//! and reroute underneath, which a WATCH cannot survive) `imap_page.lua` does the same in one
//! call.

use super::large;
use super::lease::LeaseLost;
use super::schema::inbound as field;
use super::{Store, StoreResult};
use redis::aio::MultiplexedConnection;
use redis::Script;
use std::time::Duration;

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
    /// The raw message (its header only when `omitted`): the bytes themselves when `plain`,
    /// else base64.
    pub payload: String,
    /// `payload` is the message's own bytes, not base64 (they are UTF-8).
    pub plain: bool,
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
    /// The source has an after-delivery or an after-dead-letter action (its messages carry
    /// their follow-up target).
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

    /// Where a poller writes its chunks: a connection of its own on a single server, the
    /// script on a cluster. Made once per connection; after any error, make a new one.
    pub(crate) async fn chunk_link(&self) -> StoreResult<ChunkLink> {
        Ok(match self.watched_connection().await? {
            Some(conn) => ChunkLink::Watched(conn),
            None => ChunkLink::Script,
        })
    }

    /// Writes a chunk and the cursor after it atomically, fenced by the lease, and renews the
    /// lease for `ttl`. Returns the messages added (UIDs at or below the stored cursor are
    /// skipped) and, on a single server, the backlog right after.
    pub(crate) async fn write_imap_chunk(
        &self,
        link: &mut ChunkLink,
        chunk: &FetchedChunk<'_>,
        token: &str,
        ttl: Duration,
        now_ms: u64,
    ) -> StoreResult<Result<Written, LeaseLost>> {
        let written = match link {
            ChunkLink::Watched(conn) => self.write_watched(conn, chunk, token, ttl, now_ms).await?,
            ChunkLink::Script
                if !self
                    .hold_lease(&lease_name(chunk.source), token, ttl)
                    .await? =>
            {
                None
            }
            ChunkLink::Script => {
                let added = self.write_by_script(chunk, token, now_ms).await?;
                added.map(|added| Written {
                    added,
                    backlog: None,
                })
            }
        };
        Ok(written.ok_or_else(|| LeaseLost(chunk.source.to_string())))
    }

    /// The chunk as one MULTI/EXEC, run only while the lease and the cursor are as read; it
    /// also reads the backlog (inbound + outbound entries), which spares the poller a call.
    async fn write_watched(
        &self,
        conn: &mut MultiplexedConnection,
        chunk: &FetchedChunk<'_>,
        token: &str,
        ttl: Duration,
        now_ms: u64,
    ) -> StoreResult<Option<Written>> {
        let name = lease_name(chunk.source);
        let (lease, cursor) = (self.keys.poller_lease(&name), self.keys.cursor(&name));
        loop {
            let (holder, (uidvalidity, last_uid)): (Option<String>, (Option<u32>, Option<u32>)) =
                redis::pipe()
                    .cmd("WATCH")
                    .arg(&lease)
                    .arg(&cursor)
                    .ignore()
                    .cmd("GET")
                    .arg(&lease)
                    .cmd("HMGET")
                    .arg(&cursor)
                    .arg("uidvalidity")
                    .arg("last_uid")
                    .query_async(conn)
                    .await?;
            if holder.as_deref() != Some(token) {
                redis::cmd("UNWATCH").query_async::<()>(conn).await?;
                return Ok(None);
            }
            let floor = match (uidvalidity, last_uid) {
                (Some(uv), Some(last)) if uv == chunk.uidvalidity => last,
                _ => 0,
            };
            let (mut tx, added) = self.chunk_transaction(chunk, floor, now_ms);
            // The lease is this poller's at EXEC (WATCH): renewed as every step of a poll does.
            tx.cmd("PEXPIRE")
                .arg(&lease)
                .arg(ttl.as_millis() as u64)
                .ignore();
            tx.cmd("XLEN").arg(self.keys.inbound());
            tx.cmd("XLEN").arg(self.keys.outbound());
            // Nil: the lease or the cursor changed since WATCH (a renewal, a takeover): look again.
            let done: Option<(i64, u64, u64)> = tx.query_async(conn).await?;
            if let Some((_, inbound, outbound)) = done {
                return Ok(Some(Written {
                    added,
                    backlog: Some((inbound, outbound)),
                }));
            }
        }
    }

    /// MULTI: the chunk's messages above `floor` into the inbound stream, the cursor after it,
    /// today's intake count; EXEC. Also returns the number of messages it adds.
    fn chunk_transaction(
        &self,
        chunk: &FetchedChunk<'_>,
        floor: u32,
        now_ms: u64,
    ) -> (redis::Pipeline, u64) {
        let name = lease_name(chunk.source);
        let inbound = self.keys.inbound();
        let mut tx = redis::pipe();
        tx.atomic();
        let mut added = 0;
        for m in chunk.mails.iter().filter(|m| m.uid > floor) {
            let xadd = tx.cmd("XADD").arg(&inbound).arg("*");
            // No `kind`: `message` is what readers take by default.
            xadd.arg(field::SOURCE).arg("imap");
            xadd.arg(field::MAILBOX).arg(chunk.source);
            xadd.arg(field::UID).arg(m.uid);
            xadd.arg(field::UIDVALIDITY).arg(chunk.uidvalidity);
            if !m.internal_date.is_empty() {
                xadd.arg(field::INTERNAL_DATE).arg(&m.internal_date);
            }
            if chunk.after_delivery {
                xadd.arg(field::FOLLOW_UP).arg("1");
            }
            if let Some(o) = &m.omitted {
                xadd.arg(field::OVERSIZE)
                    .arg(format!("{}:{}", o.size, o.limit))
                    .arg(field::ATTACHMENTS)
                    .arg(&o.attachments);
            }
            if m.plain {
                xadd.arg(field::PLAIN).arg("1");
            }
            xadd.arg(field::PAYLOAD).arg(&m.payload).ignore();
            // The payload, the attachments and the folder's name, and 200 bytes for the rest.
            let bytes = m.payload.len()
                + m.omitted.as_ref().map_or(0, |o| o.attachments.len())
                + chunk.source.len()
                + 200;
            if large::is_large(bytes) {
                tx.cmd("INCR").arg(self.keys.inbound_large()).ignore();
            }
            added += 1;
        }
        tx.cmd("HSET")
            .arg(self.keys.cursor(&name))
            .arg("uidvalidity")
            .arg(chunk.uidvalidity)
            .arg("last_uid")
            .arg(chunk.last_uid.max(floor))
            .arg("updated_ms")
            .arg(now_ms);
        if added > 0 {
            let intake = self.keys.intake_today(now_ms);
            tx.cmd("HINCRBY")
                .arg(&intake)
                .arg(chunk.source)
                .arg(added)
                .ignore();
            tx.cmd("EXPIRE").arg(&intake).arg(INTAKE_TTL_S).ignore();
        }
        (tx, added)
    }

    /// The chunk through `imap_page.lua` (a cluster).
    async fn write_by_script(
        &self,
        chunk: &FetchedChunk<'_>,
        token: &str,
        now_ms: u64,
    ) -> StoreResult<Option<u64>> {
        let name = lease_name(chunk.source);
        let mut inv = self.imap_page.prepare_invoke();
        inv.key(self.keys.poller_lease(&name))
            .key(self.keys.inbound())
            .key(self.keys.cursor(&name))
            .key(self.keys.intake_today(now_ms))
            .key(self.keys.inbound_large())
            .arg(token)
            .arg(chunk.uidvalidity)
            .arg(chunk.last_uid)
            .arg(now_ms)
            .arg(chunk.source)
            .arg(if chunk.after_delivery { "1" } else { "" });
        for m in &chunk.mails {
            inv.arg(m.uid)
                .arg(&m.internal_date)
                .arg(&m.payload)
                .arg(if m.plain { "1" } else { "" });
            match &m.omitted {
                Some(o) => inv
                    .arg(format!("{}:{}", o.size, o.limit))
                    .arg(&o.attachments),
                None => inv.arg("").arg(""),
            };
        }
        let added: i64 = inv.invoke_async(&mut self.conn()).await?;
        Ok(u64::try_from(added).ok())
    }
}

/// What a chunk's write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Written {
    /// Messages added to the inbound stream.
    pub added: u64,
    /// Entries in the inbound and outbound streams right after, when the write read them (see
    /// [`backlog_of`](super::streams::backlog_of)).
    pub backlog: Option<(u64, u64)>,
}

/// How long a day's intake counts are kept (s): two days, as `imap_page.lua` keeps them.
const INTAKE_TTL_S: u64 = 172_800;

/// Where an IMAP poller writes its chunks ([`Store::chunk_link`]).
pub(crate) enum ChunkLink {
    /// A single server: a connection of the poller's own, for WATCH and MULTI/EXEC.
    Watched(MultiplexedConnection),
    /// A cluster: `imap_page.lua` on the store's connection.
    Script,
}

pub(super) fn imap_page_script() -> Script {
    Script::new(concat!(
        super::large::lua_prelude!(),
        include_str!("imap_page.lua")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_chunk_counts_its_large_messages_in_the_same_transaction() {
        // Opening makes no connection (it connects lazily).
        let store = Store::open("redis://127.0.0.1:1", "t:").unwrap();
        let mail = |uid, size| FetchedMail {
            uid,
            internal_date: String::new(),
            payload: "x".repeat(size),
            plain: true,
            omitted: None,
        };
        let chunk = FetchedChunk {
            source: "invoices",
            uidvalidity: 7,
            last_uid: 3,
            after_delivery: false,
            mails: vec![mail(1, 1_000), mail(2, 70_000), mail(3, 100_000)],
        };
        let (tx, added) = store.chunk_transaction(&chunk, 0, 0);
        assert_eq!(added, 3);
        let packed = String::from_utf8_lossy(&tx.get_packed_pipeline()).into_owned();
        let incr = "$4\r\nINCR\r\n$22\r\nt:stream:inbound:large\r\n";
        assert_eq!(packed.matches(incr).count(), 2, "the two large messages");
        // Above the floor only: what is not written is not counted.
        let (tx, added) = store.chunk_transaction(&chunk, 2, 0);
        assert_eq!(added, 1);
        let packed = String::from_utf8_lossy(&tx.get_packed_pipeline()).into_owned();
        assert_eq!(packed.matches(incr).count(), 1);
    }
}
