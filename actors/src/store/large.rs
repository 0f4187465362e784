//! Large inbound entries, counted where they are written, so that the BatchProcessor reads the
//! small ones with a plain `XREADGROUP`.
//!
//! A read of the inbound stream is bounded in bytes ([`read_budget`](super::read_budget)), and
//! the only way Redis offers to bound one is to look at each entry first, in Lua: that copy
//! cost more than everything else Redis did for an e-mail (issue 14: ~5 of ~14 µs). Instead,
//! every producer of inbound entries (the Graph page script, the IMAP chunk write and its
//! script, the unpark script, the webhook-refs script, dead-letter replays, the loader) adds 1 to
//! a counter (`inbound:large`) in the same atomic step as an entry whose field names and values
//! pass [`LARGE_ENTRY_BYTES`]. While the counter is 0 (or absent) every entry after the group's
//! last-delivered id is smaller than that, so a plain read of
//! `max_bytes / (LARGE_ENTRY_BYTES + ID_BYTES)` entries stays within the budget: [`FastRead`]
//! does it as `WATCH counter; GET counter; MULTI; XREADGROUP …; EXEC`, which runs only if no
//! large entry arrived between the look and the read. Otherwise the budgeted script reads, and
//! it clears the counter once it has taken every entry up to the end of the stream (nothing
//! large is left unread then; a script runs as one transaction, so no producer comes between).
//!
//! The counter errs only upwards (a large entry read by a plain first read, or dead-lettered
//! unread, still counts until a budgeted read reaches the end), which costs speed, never memory.
//! Entries written before any producer counted (by an older version: the upgrade rule in
//! docs/OPERATIONS.md stops every daemon of a Redis first) are covered once: the first reader
//! to start on a Redis without the `inbound:large:counted` mark sets it and, when entries are
//! waiting, adds 1, so the budgeted script reads everything that was there until it reaches the
//! end. (A counting writer that finds the stream empty sets the mark too: nothing uncounted can
//! be there.) On a cluster (whose connections reroute underneath, which a WATCH cannot
//! survive) every read is budgeted, as before.

use super::entry::{parse_read, Entry};
use super::{Store, StoreResult};
use redis::aio::MultiplexedConnection;
use redis::{Script, Value};
use std::sync::LazyLock;

/// Field names and values of an inbound entry above which it counts as large (64 KiB). A
/// literal macro, so that the Lua scripts get the same number ([`lua_prelude`]).
macro_rules! large_entry_bytes {
    () => {
        65536
    };
}
pub(crate) use large_entry_bytes;

/// See the module.
pub const LARGE_ENTRY_BYTES: u64 = large_entry_bytes!();

/// Most bytes of a stream id (`{ms}-{seq}`, two u64s), which budgets count with the entry.
const ID_BYTES: u64 = 41;

/// Lua producers' prelude: `xadd_inbound(stream, counter, fields)` XADDs `fields` (names and
/// values) and counts the entry in `counter` when it is large.
macro_rules! lua_prelude {
    () => {
        concat!(
            "local LARGE_ENTRY_BYTES = ",
            $crate::store::large::large_entry_bytes!(),
            "\n",
            include_str!("large.lua")
        )
    };
}
pub(crate) use lua_prelude;

/// Whether an entry whose field names and values take `bytes` is large (see the module); a
/// writer may count generously (e.g. a dead letter's size for the entry replayed from it).
pub(crate) fn is_large(bytes: usize) -> bool {
    bytes as u64 > LARGE_ENTRY_BYTES
}

/// How many entries a plain read may take within `max_bytes` while no large one is there.
pub(crate) fn plain_count(max_entries: usize, max_bytes: u64) -> usize {
    max_entries.min((max_bytes / (LARGE_ENTRY_BYTES + ID_BYTES)) as usize)
}

/// A reader's connection of its own for plain reads of new inbound entries (see the module).
pub struct FastRead {
    /// Never reconnected underneath: a WATCH lives and dies with its connection.
    conn: MultiplexedConnection,
    counter: String,
}

impl FastRead {
    /// A fast reader on a single server (`None` on a cluster). The first on a Redis counts as
    /// if a large entry had arrived (see the module).
    pub async fn start(store: &Store) -> StoreResult<Option<Self>> {
        let Some(mut conn) = store.watched_connection().await? else {
            return Ok(None);
        };
        store.mark_counted(&mut conn, true).await?;
        let counter = store.keys().inbound_large();
        Ok(Some(Self { conn, counter }))
    }

    /// Up to `count` new entries with a plain `XREADGROUP` (never blocking), or `None` when a
    /// large entry may be among them (the caller reads with the budget then).
    pub async fn read(
        &mut self,
        stream: &str,
        group: &str,
        consumer: &str,
        count: usize,
    ) -> StoreResult<Option<Vec<Entry>>> {
        if count == 0 {
            return Ok(None);
        }
        let (large,): (Option<i64>,) = redis::pipe()
            .cmd("WATCH")
            .arg(&self.counter)
            .ignore()
            .cmd("GET")
            .arg(&self.counter)
            .query_async(&mut self.conn)
            .await?;
        if large.unwrap_or(0) != 0 {
            redis::cmd("UNWATCH")
                .query_async::<()>(&mut self.conn)
                .await?;
            return Ok(None);
        }
        // Nil: the counter changed since WATCH (a large entry arrived).
        let read: Option<(Value,)> = redis::pipe()
            .atomic()
            .cmd("XREADGROUP")
            .arg("GROUP")
            .arg(group)
            .arg(consumer)
            .arg("COUNT")
            .arg(count)
            .arg("STREAMS")
            .arg(stream)
            .arg(">")
            .query_async(&mut self.conn)
            .await?;
        match read {
            // New entries ('>') are never deleted ones: `gone` is empty.
            Some((v,)) => Ok(Some(parse_read(v)?.0)),
            None => Ok(None),
        }
    }
}

/// Sets the `inbound:large:counted` mark when it is missing (see the module): a reader adds 1 to
/// the counter if entries are waiting; a writer sets it only on an empty stream.
static MARK: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
-- KEYS[1] the mark, KEYS[2] the counter, KEYS[3] the inbound stream; ARGV[1] now ms,
-- ARGV[2] 'reader' or 'writer'.
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local waiting = redis.call('XLEN', KEYS[3])
if waiting > 0 and ARGV[2] ~= 'reader' then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1])
if waiting > 0 then
  redis.call('INCR', KEYS[2])
end
return 1",
    )
});

impl Store {
    /// See [`MARK`].
    pub(crate) async fn mark_counted<C: redis::aio::ConnectionLike>(
        &self,
        conn: &mut C,
        reader: bool,
    ) -> StoreResult<()> {
        let _: i64 = MARK
            .key(self.keys().inbound_large_counted())
            .key(self.keys().inbound_large())
            .key(self.keys().inbound())
            .arg(crate::clock::now_ms())
            .arg(if reader { "reader" } else { "writer" })
            .invoke_async(conn)
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_large_past_64_kib_of_names_and_values() {
        assert!(!is_large(65_536));
        assert!(is_large(65_537));
    }

    #[test]
    fn a_plain_read_takes_what_fits_entries_of_the_largest_small_size() {
        assert_eq!(plain_count(500, 64 * 1024 * 1024), 500);
        assert_eq!(plain_count(500, 8 * 1024 * 1024), 127);
        assert_eq!(plain_count(500, 1024), 0);
    }
}
