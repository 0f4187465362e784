//! Streams and consumer groups: the only place that speaks XADD / XREADGROUP / XAUTOCLAIM /
//! XACK.
//!
//! Work streams behave as durable queues: an entry is read into a consumer's pending list,
//! stays there until the hand-off that finishes it acknowledges *and deletes* it (so a stream's
//! length is its backlog), and is reclaimed by another consumer when its owner died
//! (`XAUTOCLAIM` of entries idle longer than `claim_idle_ms`).

use super::entry::{as_string, parse_entries, parse_read, Entry};
use super::outbound::{self, BatchLimit, FollowUp, OutboundRecord};
use super::{DeadLetter, Store, StoreError, StoreResult};
use redis::Value;

/// Everything the BatchProcessor finishes for one chunk of inbound entries, applied as one
/// MULTI/EXEC: either all of it happens or none of it.
#[derive(Debug, Default)]
pub(crate) struct Handoff {
    /// New records for the outbound stream; their idempotency marks ([`marks`](super::marks))
    /// are set with them.
    pub outbound: Vec<OutboundRecord>,
    /// Entries that cannot become records.
    pub dead: Vec<DeadLetter>,
    /// The `after_dead_letter` ends of those whose source wants one (queued with them).
    pub dead_ends: Vec<FollowUp>,
    /// Inbound entry ids to acknowledge and delete (all of the chunk).
    pub done: Vec<String>,
    /// Entries dropped because their key was seen before (counted, not re-sent).
    pub duplicates: u64,
    /// Entries set aside because Graph refuses their mailbox for now (see [`park`](super::park)).
    pub parked: Vec<ParkedEntry>,
}

/// An inbound entry set aside in its mailbox's parked stream, with its fields unchanged.
#[derive(Debug, Clone)]
pub(crate) struct ParkedEntry {
    pub mailbox: String,
    pub fields: Vec<(String, String)>,
}

/// Counter names in the `stats` hash.
pub(crate) mod stat {
    pub(crate) const PROCESSED: &str = "processed";
    pub(crate) const DELIVERED: &str = "delivered";
    pub(crate) const DEAD_LETTERED: &str = "dead_lettered";
    pub(crate) const DUPLICATES: &str = "duplicates";
}

impl Store {
    /// Creates `group` on `stream` (and the stream) unless it exists. The group starts at the
    /// beginning of the stream: entries already finished were deleted, so everything still in
    /// the stream is work.
    pub async fn ensure_group(&self, stream: &str, group: &str) -> StoreResult<()> {
        let res: Result<(), redis::RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(stream)
            .arg(group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut self.conn())
            .await;
        match res {
            Ok(()) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// `XREADGROUP`: new entries (`from = ">"`) or this consumer's own pending ones
    /// (`from = "0"` or the last id seen). `block_ms = None` returns at once.
    pub(crate) async fn read_group(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        from: &str,
        count: usize,
        block_ms: Option<u64>,
    ) -> StoreResult<Vec<Entry>> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(group)
            .arg(consumer)
            .arg("COUNT")
            .arg(count);
        if let Some(ms) = block_ms {
            cmd.arg("BLOCK").arg(ms);
        }
        cmd.arg("STREAMS").arg(stream).arg(from);
        let v: Value = cmd.query_async(&mut self.conn()).await?;
        let (entries, gone) = parse_read(v)?;
        if !gone.is_empty() {
            // Deleted while pending: finished by an earlier hand-off; drop them from the PEL.
            let _: i64 = redis::cmd("XACK")
                .arg(stream)
                .arg(group)
                .arg(&gone)
                .query_async(&mut self.conn())
                .await?;
        }
        Ok(entries)
    }

    /// All entries this consumer already holds (read before a crash or an actor restart and
    /// never acknowledged), oldest first, paging with the last id seen.
    pub(crate) async fn own_pending(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        page: usize,
    ) -> StoreResult<Vec<Entry>> {
        let mut all = Vec::new();
        let mut cursor = "0".to_string();
        loop {
            let got = self
                .read_group(stream, group, consumer, &cursor, page, None)
                .await?;
            match got.last() {
                None => return Ok(all),
                Some(last) => cursor = last.id.clone(),
            }
            all.extend(got);
        }
    }

    /// `XAUTOCLAIM`: takes over entries idle longer than `min_idle_ms` (their consumer died).
    /// Returns the cursor for the next call ("0-0" when the scan wrapped) and the entries.
    pub(crate) async fn autoclaim(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        min_idle_ms: u64,
        cursor: &str,
        count: usize,
    ) -> StoreResult<(String, Vec<Entry>)> {
        let v: Value = redis::cmd("XAUTOCLAIM")
            .arg(stream)
            .arg(group)
            .arg(consumer)
            .arg(min_idle_ms)
            .arg(cursor)
            .arg("COUNT")
            .arg(count)
            .query_async(&mut self.conn())
            .await?;
        let Value::Array(mut parts) = v else {
            return Err(StoreError::Reply("xautoclaim: not an array".into()));
        };
        if parts.len() < 2 {
            return Err(StoreError::Reply("xautoclaim: short reply".into()));
        }
        parts.truncate(2);
        let entries = parts.pop().unwrap_or(Value::Nil);
        let next = as_string(parts.pop().unwrap_or(Value::Nil))?;
        Ok((next, parse_entries(entries)?.0))
    }

    /// Resets the idle time of entries this consumer still holds (a long MS4 retry), so no
    /// other daemon claims them meanwhile.
    pub(crate) async fn touch(
        &self,
        stream: &str,
        group: &str,
        consumer: &str,
        ids: &[String],
    ) -> StoreResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let _: Value = redis::cmd("XCLAIM")
            .arg(stream)
            .arg(group)
            .arg(consumer)
            .arg(0)
            .arg(ids)
            .arg("JUSTID")
            .query_async(&mut self.conn())
            .await?;
        Ok(())
    }

    /// Finishes what the MS4Sender delivered from `ids` (outbound entries, each wholly
    /// delivered or dead-lettered) in one MULTI/EXEC: the records MS4 rejected become dead
    /// letters, the follow-ups of the records it accepted (keys `delivered`) are queued (Graph
    /// messages to mark read, IMAP after-delivery actions), so are the `after_dead_letter` ends
    /// of the rejected ones (`dead_ends`), each record's end is recorded for later copies
    /// ([`copies`](super::copies)), and the entries are acknowledged and deleted. So a follow-up
    /// happens only after MS4 accepted (or refused) the message and is never forgotten, and a
    /// rejected record is dead-lettered exactly once.
    pub(crate) async fn finish_delivery(
        &self,
        ids: &[String],
        delivered: &[&str],
        follow_ups: &[FollowUp],
        dead: &[DeadLetter],
        dead_ends: &[FollowUp],
        (dlq_maxlen, idempotency_ttl_s): (u64, u64),
    ) -> StoreResult<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let outbound = self.keys.outbound();
        let mut pipe = redis::pipe();
        pipe.atomic();
        for d in dead {
            self.push_dead_letter(&mut pipe, d, dlq_maxlen);
        }
        pipe.cmd("XACK")
            .arg(&outbound)
            .arg(super::keys::SENDERS)
            .arg(ids)
            .ignore();
        pipe.cmd("XDEL").arg(&outbound).arg(ids).ignore();
        self.push_counts(
            &mut pipe,
            &[
                (stat::DELIVERED, delivered.len() as u64),
                (stat::DEAD_LETTERED, dead.len() as u64),
            ],
        );
        if !delivered.is_empty() {
            // The console's delivery rate: records per minute, for the last two hours.
            let minute = self.keys.delivered_in_minute(crate::clock::now_ms());
            pipe.cmd("INCRBY")
                .arg(&minute)
                .arg(delivered.len())
                .ignore();
            pipe.cmd("EXPIRE").arg(&minute).arg(7_200).ignore();
        }
        // Where later copies of these messages learn their end (store::copies).
        self.push_ended(&mut pipe, delivered, true, idempotency_ttl_s);
        let dead_keys: Vec<&str> = dead
            .iter()
            .map(|d| d.key.as_str())
            .filter(|k| !k.is_empty())
            .collect();
        self.push_ended(&mut pipe, &dead_keys, false, idempotency_ttl_s);
        for f in follow_ups {
            self.push_follow_up(&mut pipe, f, false);
        }
        for f in dead_ends {
            self.push_follow_up(&mut pipe, f, true);
        }
        let _: Value = pipe.query_async(&mut self.conn()).await?;
        Ok(())
    }

    /// Queues a follow-up in a transaction being built: the after-delivery action, or (with
    /// `dead_lettered`) the source's `after_dead_letter` end, in the same transaction that
    /// writes the dead letter, so it never runs before and is never lost.
    pub(crate) fn push_follow_up(
        &self,
        pipe: &mut redis::Pipeline,
        f: &FollowUp,
        dead_lettered: bool,
    ) {
        use super::schema::follow_up as F;
        let stream = match f.source {
            "imap" => self.keys.imap_done(),
            _ => self.keys.mark_read(),
        };
        pipe.cmd("XADD")
            .arg(stream)
            .arg("*")
            .arg(F::MAILBOX)
            .arg(&f.mailbox)
            .arg(F::MESSAGE_ID)
            .arg(&f.id);
        if dead_lettered {
            pipe.arg(F::END).arg(F::DEAD_LETTERED);
        }
        pipe.ignore();
    }

    /// Dead-letters entries and acknowledges them in one MULTI/EXEC.
    pub(crate) async fn dead_letter_and_ack(
        &self,
        stream: &str,
        group: &str,
        dead: &[DeadLetter],
        ids: &[String],
        dlq_maxlen: u64,
    ) -> StoreResult<()> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for d in dead {
            self.push_dead_letter(&mut pipe, d, dlq_maxlen);
        }
        self.push_counts(&mut pipe, &[(stat::DEAD_LETTERED, dead.len() as u64)]);
        if !ids.is_empty() {
            pipe.cmd("XACK").arg(stream).arg(group).arg(ids).ignore();
            pipe.cmd("XDEL").arg(stream).arg(ids).ignore();
        }
        let _: Value = pipe.query_async(&mut self.conn()).await?;
        Ok(())
    }

    /// Adds to the fleet-wide counters inside a transaction being built.
    fn push_counts(&self, pipe: &mut redis::Pipeline, counts: &[(&str, u64)]) {
        let key = self.keys.stats();
        for (name, n) in counts {
            if *n > 0 {
                pipe.cmd("HINCRBY").arg(&key).arg(*name).arg(*n).ignore();
            }
        }
    }

    /// XADDs one record as an entry of its own (the fields of [`schema::outbound`](super::schema::outbound)).
    fn push_record_entry(&self, pipe: &mut redis::Pipeline, outbound: &str, r: &OutboundRecord) {
        use super::schema::outbound as F;
        pipe.cmd("XADD")
            .arg(outbound)
            .arg("*")
            .arg(F::KEY)
            .arg(&r.key)
            .arg(F::RECORD)
            .arg(&r.json)
            .arg(F::INBOUND_MS)
            .arg(r.inbound_ms);
        if let Some(f) = &r.mark_read {
            pipe.arg(F::FOLLOW_UP_MAILBOX)
                .arg(&f.mailbox)
                .arg(F::FOLLOW_UP_ID)
                .arg(&f.id);
            if f.source != "graph" {
                pipe.arg(F::FOLLOW_UP_SOURCE).arg(f.source);
            }
        }
        pipe.ignore();
    }

    /// The fleet-wide counters.
    pub(crate) async fn counts(&self) -> StoreResult<std::collections::HashMap<String, u64>> {
        Ok(redis::cmd("HGETALL")
            .arg(self.keys.stats())
            .query_async(&mut self.conn())
            .await?)
    }

    /// Applies a BatchProcessor hand-off in one MULTI/EXEC: the records as outbound entries of
    /// one MS4 batch each (`batch`, see [`batch_entry`](super::batch_entry)) + their
    /// idempotency marks + dead letters + XACK/XDEL of the inbound chunk. Returns the
    /// outbound stream's length (entries) right after, which spares the caller a call.
    pub(crate) async fn handoff(
        &self,
        h: &Handoff,
        batch: BatchLimit,
        dlq_maxlen: u64,
    ) -> StoreResult<u64> {
        let inbound = self.keys.inbound();
        let outbound = self.keys.outbound();
        let mut pipe = redis::pipe();
        pipe.atomic();
        for records in outbound::group(&h.outbound, batch) {
            if records.len() == 1 || records.iter().any(|r| r.json.contains('\n')) {
                // One record an entry (a record with a line break cannot share the
                // line-separated field; serde_json never writes one, this only guards it).
                for r in records {
                    self.push_record_entry(&mut pipe, &outbound, r);
                }
            } else {
                pipe.cmd("XADD").arg(&outbound).arg("*");
                for (k, v) in outbound::encode(records) {
                    pipe.arg(k).arg(v);
                }
                pipe.ignore();
            }
        }
        // No intake mark here: a poller that meets one of these messages later (a webhook ref
        // got it first) finds its idempotency mark itself (`poll_page.lua` reads both), which
        // saves a SET per record.
        self.push_marks(&mut pipe, &h.outbound);
        for d in &h.dead {
            self.push_dead_letter(&mut pipe, d, dlq_maxlen);
        }
        for f in &h.dead_ends {
            self.push_follow_up(&mut pipe, f, true);
        }
        for p in &h.parked {
            pipe.cmd("XADD")
                .arg(self.keys.parked_entries(&p.mailbox))
                .arg("*");
            for (k, v) in p.fields.iter().filter(|(k, _)| k != super::park::PROBE) {
                pipe.arg(k).arg(v);
            }
            pipe.ignore();
        }
        self.push_counts(
            &mut pipe,
            &[
                (stat::PROCESSED, h.outbound.len() as u64),
                (stat::DEAD_LETTERED, h.dead.len() as u64),
                (stat::DUPLICATES, h.duplicates),
            ],
        );
        if !h.done.is_empty() {
            pipe.cmd("XACK")
                .arg(&inbound)
                .arg(super::keys::PROCESSORS)
                .arg(&h.done)
                .ignore();
            pipe.cmd("XDEL").arg(&inbound).arg(&h.done).ignore();
        }
        pipe.cmd("XLEN").arg(&outbound);
        let (outbound_len,): (u64,) = pipe.query_async(&mut self.conn()).await?;
        Ok(outbound_len)
    }

    /// `XINFO GROUPS`: each group's name, pending entries and lag (entries not yet delivered
    /// to it; `None` when Redis cannot tell).
    pub async fn groups(&self, stream: &str) -> StoreResult<Vec<(String, u64, Option<u64>)>> {
        let v: Value = match redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(stream)
            .query_async(&mut self.conn())
            .await
        {
            Ok(v) => v,
            Err(e) if e.to_string().contains("no such key") => return Ok(vec![]),
            Err(e) => return Err(e.into()),
        };
        let Value::Array(groups) = v else {
            return Ok(vec![]);
        };
        let mut out = Vec::new();
        for g in groups {
            let (mut name, mut pending, mut lag) = (String::new(), 0, None);
            for (k, v) in super::entry::pairs(g) {
                match (k.as_str(), v) {
                    ("name", v) => name = as_string(v).unwrap_or_default(),
                    ("pending", Value::Int(n)) => pending = n.max(0) as u64,
                    ("lag", Value::Int(n)) => lag = Some(n.max(0) as u64),
                    _ => {}
                }
            }
            out.push((name, pending, lag));
        }
        Ok(out)
    }

    /// What the pipeline holds, as backpressure counts it: inbound entries plus outbound
    /// records, an outbound entry counted as a full batch of `batch_size` (it holds at most
    /// one; counting it full keeps the records held within `pipeline.max_backlog`).
    pub(crate) async fn backlog(&self, batch_size: usize) -> StoreResult<u64> {
        let outbound = self.len(&self.keys.outbound()).await?;
        let inbound = self.len(&self.keys.inbound()).await?;
        Ok(backlog_of(inbound, outbound, batch_size))
    }

    /// `XLEN`.
    pub async fn len(&self, stream: &str) -> StoreResult<u64> {
        Ok(redis::cmd("XLEN")
            .arg(stream)
            .query_async(&mut self.conn())
            .await?)
    }

    /// Adds raw entries to a stream in pipelined chunks (tests, benchmarks).
    pub async fn add_entries(
        &self,
        stream: &str,
        entries: &[Vec<(&str, String)>],
    ) -> StoreResult<()> {
        self.add(stream, None, entries).await
    }

    /// Adds entries to the inbound stream as every producer does, counting the large ones
    /// ([`large`](super::large)), in one MULTI/EXEC per 1,000 (loaders, tests).
    pub async fn add_inbound(&self, entries: &[Vec<(&str, String)>]) -> StoreResult<()> {
        self.mark_counted(&mut self.conn(), false).await?;
        let counter = self.keys.inbound_large();
        self.add(&self.keys.inbound(), Some(&counter), entries)
            .await
    }

    async fn add(
        &self,
        stream: &str,
        large: Option<&str>,
        entries: &[Vec<(&str, String)>],
    ) -> StoreResult<()> {
        for chunk in entries.chunks(1_000) {
            let mut pipe = redis::pipe();
            pipe.atomic();
            for fields in chunk {
                pipe.cmd("XADD").arg(stream).arg("*");
                for (k, v) in fields {
                    pipe.arg(*k).arg(v);
                }
                pipe.ignore();
                let bytes = fields.iter().map(|(k, v)| k.len() + v.len()).sum();
                if let Some(counter) = large.filter(|_| super::large::is_large(bytes)) {
                    pipe.cmd("INCR").arg(counter).ignore();
                }
            }
            let _: Value = pipe.query_async(&mut self.conn()).await?;
        }
        Ok(())
    }
}

/// The backlog as backpressure counts it ([`Store::backlog`]) from the two streams' lengths in
/// entries: an outbound entry counts as a full batch of `batch_size` records.
pub(crate) fn backlog_of(inbound: u64, outbound: u64, batch_size: usize) -> u64 {
    inbound + outbound * batch_size.max(1) as u64
}
