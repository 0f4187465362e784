//! Stream reads bounded in bytes as well as in entries.
//!
//! `XREADGROUP`, `XAUTOCLAIM` and the re-read of a consumer's own pending entries count
//! entries, not bytes: 500 entries of a 30 MB message each answer 15 GB, enough to get the daemon
//! OOM-killed, restarted, and killed again on the same entries. Every read of the BatchProcessor
//! and the MS4Sender goes through here instead, with a [`ReadBudget`]: a Lua script
//! (`read_budget.lua`) looks at each next entry inside Redis before taking it and stops before the
//! one that would pass the byte budget. The first entry of a read is always taken, so an entry
//! bigger than the whole budget still moves, alone: a read returns at most
//! `max(max_bytes, one entry)` ([`within_budget`] is the rule, unit-tested).

use super::entry::{parse_entries_public, Entry};
use super::large::{plain_count, FastRead};
use super::{Store, StoreError, StoreResult};
use redis::{Script, Value};
use std::sync::LazyLock;

static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("read_budget.lua")));

/// How much one read may return.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadBudget {
    /// Most entries (the old `COUNT`).
    pub max_entries: usize,
    /// Most bytes (ids, field names and values), unless the first entry alone is bigger.
    pub max_bytes: u64,
    /// The first entry is taken whatever its size (so that a big entry moves, alone). False
    /// for a read that tops up work already held: then every entry must fit.
    pub at_least_one: bool,
}

impl ReadBudget {
    pub fn new(max_entries: usize, max_bytes: u64) -> Self {
        Self {
            max_entries,
            max_bytes,
            at_least_one: true,
        }
    }

    /// What is left once `entries` of `bytes` are held (`None`: nothing), for a top-up read.
    pub fn after(self, entries: usize, bytes: u64) -> Option<Self> {
        (entries < self.max_entries && bytes < self.max_bytes).then(|| Self {
            max_entries: self.max_entries - entries,
            max_bytes: self.max_bytes - bytes,
            at_least_one: false,
        })
    }
}

/// Which entries a budgeted read walks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scan {
    /// Entries never delivered to the group (`XREADGROUP >`).
    New,
    /// This consumer's own pending entries (read before a restart and never acknowledged).
    Own,
    /// Entries of any consumer idle longer than this many ms, claimed for this one.
    Claim { min_idle_ms: u64 },
}

/// The size of an entry as budgets count it: its id, field names and values.
pub fn entry_bytes(e: &Entry) -> u64 {
    (e.id.len()
        + e.fields
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>()) as u64
}

/// How many of the next entries (their sizes, in order) a read takes: as many as fit in
/// `budget`, and the first one whatever its size when `budget.at_least_one`. The script
/// applies the same rule inside Redis.
pub(crate) fn within_budget(sizes: &[u64], budget: ReadBudget) -> usize {
    let mut bytes = 0u64;
    let mut n = 0;
    for &size in sizes.iter().take(budget.max_entries) {
        if (n > 0 || !budget.at_least_one) && bytes + size > budget.max_bytes {
            break;
        }
        bytes += size;
        n += 1;
    }
    n
}

impl Store {
    /// One budgeted read of `scan` after `cursor` (`"0-0"` to start a scan). Returns the cursor
    /// for the next call of the same scan (`"0-0"` once it reached the end; meaningless for
    /// [`Scan::New`]) and the entries. Pending entries whose stream entry was deleted (finished
    /// by an earlier hand-off) are acknowledged on the way.
    pub async fn read_budgeted(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        scan: Scan,
        cursor: &str,
        budget: ReadBudget,
    ) -> StoreResult<(String, Vec<Entry>)> {
        let (mode, min_idle) = match scan {
            Scan::New => ("new", 0),
            Scan::Own => ("own", 0),
            Scan::Claim { min_idle_ms } => ("claim", min_idle_ms),
        };
        let mut inv = SCRIPT.prepare_invoke();
        inv.key(stream);
        if stream == self.keys.inbound() {
            // Cleared once a read reaches the end (store::large).
            inv.key(self.keys.inbound_large());
        }
        inv.arg(group)
            .arg(consumer)
            .arg(mode)
            .arg(cursor)
            .arg(budget.max_entries.max(1))
            .arg(budget.max_bytes)
            .arg(min_idle)
            .arg(if budget.at_least_one { "" } else { "1" });
        let v: Value = inv.invoke_async(&mut self.conn()).await?;
        let Value::Array(mut parts) = v else {
            return Err(StoreError::Reply("read_budget: not an array".into()));
        };
        if parts.len() < 2 {
            return Err(StoreError::Reply("read_budget: short reply".into()));
        }
        parts.truncate(3);
        let text = |v: Option<Value>| match v {
            Some(Value::BulkString(b)) => Ok(String::from_utf8_lossy(&b).into_owned()),
            Some(Value::SimpleString(s)) => Ok(s),
            other => Err(StoreError::Reply(format!("read_budget: {other:?}"))),
        };
        if scan == Scan::New {
            // {full, n, before}: the n entries delivered are this consumer's pending entries
            // after `before`.
            let before = text(parts.pop())?;
            let n = match parts.pop() {
                Some(Value::Int(n)) => n.max(0) as usize,
                other => return Err(StoreError::Reply(format!("read_budget count: {other:?}"))),
            };
            let full = text(parts.pop())?;
            let entries = if n == 0 {
                Vec::new()
            } else {
                self.read_group(stream, group, consumer, &before, n, None)
                    .await?
            };
            return Ok((full, entries));
        }
        parts.truncate(2);
        let entries = parse_entries_public(parts.pop().unwrap_or(Value::Nil))?;
        let next = text(parts.pop())?;
        Ok((next, entries))
    }

    /// New entries within `budget`, and whether a next entry was there that did not fit (the
    /// budget, not the stream, ended the read).
    ///
    /// A read that may take a first entry whatever its size (`budget.at_least_one`) takes it
    /// with a plain `XREADGROUP … COUNT 1` (blocking up to `block_ms` when given: call it on a
    /// [`Store::blocking`] store then), and tops up with the script only while there is room for
    /// another entry like it: the script has to copy each entry it looks at, so a run of large
    /// entries is read one plain read at a time. A top-up read (`!budget.at_least_one`) never
    /// blocks.
    pub async fn read_new_budgeted(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        budget: ReadBudget,
        block_ms: Option<u64>,
    ) -> StoreResult<(Vec<Entry>, bool)> {
        if !budget.at_least_one {
            let (cursor, got) = self
                .read_budgeted(stream, group, consumer, Scan::New, "0-0", budget)
                .await?;
            return Ok((got, cursor == "full"));
        }
        let mut first = self
            .read_group(stream, group, consumer, ">", 1, block_ms)
            .await?;
        let used = first.iter().map(entry_bytes).sum::<u64>();
        let room = budget
            .after(first.len(), used)
            .filter(|r| !first.is_empty() && used <= r.max_bytes);
        let Some(rest) = room else {
            let full = !first.is_empty();
            return Ok((first, full));
        };
        let (cursor, more) = self
            .read_budgeted(stream, group, consumer, Scan::New, "0-0", rest)
            .await?;
        first.extend(more);
        Ok((first, cursor == "full"))
    }
}

impl Store {
    /// New entries of the inbound stream within `budget`, as [`Store::read_new_budgeted`]
    /// reads them, but with a plain `XREADGROUP` on `fast`'s connection while no large entry is
    /// there ([`large`](super::large)); without `fast` (a cluster), always as that does.
    pub async fn read_new_fast(
        &self,
        fast: Option<&mut FastRead>,
        stream: &str,
        group: &str,
        consumer: &str,
        budget: ReadBudget,
        block_ms: Option<u64>,
    ) -> StoreResult<(Vec<Entry>, bool)> {
        let Some(fast) = fast else {
            return self
                .read_new_budgeted(stream, group, consumer, budget, block_ms)
                .await;
        };
        let n = plain_count(budget.max_entries, budget.max_bytes);
        match fast.read(stream, group, consumer, n).await? {
            Some(got) if !got.is_empty() || block_ms.is_none() => {
                let full = got.len() == n;
                Ok((got, full))
            }
            Some(_) => {
                // Nothing new: wait for a first entry, then top up plainly while no large
                // entry is there (then the first one is small too: the count allows for it).
                let mut got = self
                    .read_group(stream, group, consumer, ">", 1, block_ms)
                    .await?;
                if got.is_empty() {
                    return Ok((got, false));
                }
                if let Some(more) = fast.read(stream, group, consumer, n - 1).await? {
                    got.extend(more);
                    let full = got.len() == n;
                    return Ok((got, full));
                }
                let used = got.iter().map(entry_bytes).sum::<u64>();
                let Some(rest) = budget.after(got.len(), used) else {
                    return Ok((got, true));
                };
                let (more, full) = self
                    .read_new_budgeted(stream, group, consumer, rest, None)
                    .await?;
                got.extend(more);
                Ok((got, full))
            }
            None => {
                self.read_new_budgeted(stream, group, consumer, budget, block_ms)
                    .await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(max_entries: usize, max_bytes: u64) -> ReadBudget {
        ReadBudget::new(max_entries, max_bytes)
    }

    #[test]
    fn a_read_takes_what_fits_in_bytes_and_in_count() {
        let mb = 1 << 20;
        // 3 MB entries, 8 MB budget: two of them.
        assert_eq!(within_budget(&[3 * mb; 10], budget(500, 8 * mb)), 2);
        // Small entries: the count binds.
        assert_eq!(within_budget(&[1_000; 800], budget(500, 8 * mb)), 500);
        // Exactly at the budget still fits.
        assert_eq!(within_budget(&[4 * mb, 4 * mb, 1], budget(500, 8 * mb)), 2);
        assert_eq!(within_budget(&[], budget(500, 8 * mb)), 0);
    }

    #[test]
    fn an_entry_bigger_than_the_budget_moves_alone_unless_topping_up() {
        let mb = 1 << 20;
        assert_eq!(within_budget(&[30 * mb, 1_000], budget(500, 8 * mb)), 1);
        assert_eq!(within_budget(&[1_000, 30 * mb], budget(500, 8 * mb)), 1);
        let top_up = budget(500, 40 * mb).after(1, 32 * mb).unwrap();
        assert_eq!(top_up.max_bytes, 8 * mb);
        assert_eq!(within_budget(&[30 * mb], top_up), 0);
        assert_eq!(within_budget(&[mb, 30 * mb], top_up), 1);
        assert_eq!(budget(2, 8 * mb).after(2, 0), None);
        assert_eq!(budget(500, 8 * mb).after(1, 8 * mb), None);
    }

    #[test]
    fn an_entry_is_measured_by_its_id_names_and_values() {
        let e = Entry {
            id: "1-0".into(),
            fields: vec![
                ("payload".into(), "x".repeat(100)),
                ("k".into(), "v".into()),
            ],
        };
        assert_eq!(entry_bytes(&e), 3 + 7 + 100 + 1 + 1);
    }
}
