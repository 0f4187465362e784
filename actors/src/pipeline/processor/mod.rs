//! The BatchProcessor actor: inbound stream → MS4 records → outbound stream.
//!
//! It reads the inbound stream in chunks through the `processors` consumer group, turns each
//! entry into an [`Ms4Record`](crate::model::Ms4Record) with the pure transform in
//! [`model`](crate::model), and finishes the chunk with one MULTI/EXEC
//! ([`Store::handoff`]): new records go to the outbound stream with their idempotency marks,
//! malformed entries go to the dead-letter stream with the reason, entries whose key was seen
//! before are only acknowledged (and counted), and the whole chunk is acknowledged and deleted.
//! A crash anywhere before EXEC leaves the chunk pending; the daemon (or another one, after
//! `claim_idle_ms`) reads it again.
//!
//! On (re)start it first re-reads its own pending entries, then claims entries that a dead
//! consumer left idle, then reads new ones. While the outbound backlog is above
//! `pipeline.max_backlog` it waits instead of piling more work onto Redis.

use crate::clients::graph::GraphError;
use crate::clients::graph_tenants::GraphTenants;
use crate::model::TransformOptions;
use crate::pipeline::ratelimiter::RateLimiter;
use crate::retry::Backoff;
use crate::settings::{Oversize, Settings};
use crate::shutdown::Shutdown;
use crate::store::copies::Copy;
use crate::store::dlq::Stage;
use crate::store::keys::PROCESSORS;
use crate::store::large::FastRead;
use crate::store::outbound::BatchLimit;
use crate::store::park::ParkState;
use crate::store::read_budget::entry_bytes;
use crate::store::{Entry, Handoff, OutboundRecord, ReadBudget, Scan, Store, StoreError};
use crate::supervision::{spawn_work, RestartPacer};
use crate::{health::Health, metrics as m};
use actix::prelude::*;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

mod parking;
mod plan;
mod resolve;

use parking::PARK_TEND_EVERY;
use plan::plan_chunk;
use resolve::Resolution;

/// Wait until the processor has finished its current chunk and stopped reading.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Drain;

pub(crate) struct BatchProcessor {
    store: Store,
    settings: Arc<Settings>,
    limiter: Addr<RateLimiter>,
    consumer: String,
    health: Health,
    shutdown: Shutdown,
    pacer: RestartPacer,
    /// True once the work loop has returned after a drain.
    stopped: watch::Sender<bool>,
}

impl BatchProcessor {
    pub(crate) fn new(
        store: Store,
        settings: Arc<Settings>,
        limiter: Addr<RateLimiter>,
        health: Health,
        shutdown: Shutdown,
    ) -> Self {
        Self {
            consumer: settings.consumer_name(),
            store,
            settings,
            limiter,
            health,
            shutdown,
            pacer: RestartPacer::new("batch_processor"),
            stopped: watch::channel(false).0,
        }
    }
}

impl Actor for BatchProcessor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let delay = self.pacer.delay(Instant::now());
        let work = Work {
            store: self.store.clone(),
            settings: self.settings.clone(),
            consumer: self.consumer.clone(),
            health: self.health.clone(),
            shutdown: self.shutdown.clone(),
            // Built here, on the processor's own thread (awc is not Send).
            graph: GraphTenants::new(
                &self.settings,
                &RateLimiter::graph_budget(&self.limiter),
                &self.health,
                &self.consumer,
            )
            .map(Rc::new),
            parked: Default::default(),
        };
        let span = tracing::info_span!("batch_processor", consumer = %self.consumer);
        let health = self.health.clone();
        spawn_work(
            ctx,
            "batch_processor",
            delay,
            span,
            health,
            work.run(),
            |act: &mut Self, _| {
                act.stopped.send_replace(true);
            },
        );
    }
}

impl Supervised for BatchProcessor {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        self.pacer.on_restart();
    }
}

impl Handler<Drain> for BatchProcessor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Drain, _ctx: &mut Context<Self>) -> Self::Result {
        let mut rx = self.stopped.subscribe();
        Box::pin(async move {
            let _ = rx.wait_for(|s| *s).await;
        })
    }
}

/// The work loop and what it needs; owns no actor state, so a restart rebuilds it from Redis.
struct Work {
    store: Store,
    settings: Arc<Settings>,
    consumer: String,
    health: Health,
    shutdown: Shutdown,
    /// Graph, for webhook refs and attachment metadata (none when no mailbox is configured).
    graph: Option<Rc<GraphTenants>>,
    /// Parked mailboxes as last read from Redis (shared by every daemon).
    parked: std::cell::RefCell<BTreeMap<String, ParkState>>,
}

impl Work {
    async fn run(self) -> Result<(), StoreError> {
        if self.shutdown.is_raised() {
            // Restarted (or started) during a drain: nothing to take on.
            return Ok(());
        }
        let keys = self.store.keys().clone();
        let inbound = keys.inbound();
        let outbound = keys.outbound();
        let p = &self.settings.pipeline;
        let claim_idle = self.settings.redis.claim_idle_ms;
        let blocking = self.store.blocking()?;
        self.store.ensure_group(&inbound, PROCESSORS).await?;
        self.store
            .ensure_group(&outbound, crate::store::keys::SENDERS)
            .await?;
        self.health.set_redis(true);

        // Every read is bounded in bytes as well as in entries (store::read_budget); new
        // entries are read plainly while none of them is large (store::large).
        let budget = ReadBudget::new(p.read_chunk, p.read_max_bytes);
        let mut fast = FastRead::start(&self.store).await?;
        let mut own = "0-0".to_string();
        loop {
            let (next, pending) = self
                .store
                .read_budgeted(
                    &inbound,
                    PROCESSORS,
                    &self.consumer,
                    Scan::Own,
                    &own,
                    budget,
                )
                .await?;
            if !pending.is_empty() {
                tracing::info!(
                    entries = pending.len(),
                    "resuming entries this consumer held"
                );
                self.process(pending).await?;
            }
            if next == "0-0" {
                break;
            }
            own = next;
        }

        let claim_every = Duration::from_millis((claim_idle / 2).max(500));
        let mut next_claim = Instant::now();
        let mut claim_cursor = "0-0".to_string();
        let mut next_tend = Instant::now();
        let (mut next_drain, mut drain_cursor) = (Instant::now(), "0".to_string());
        // The chunk planned last, its hand-off not yet applied: it is handed off while the
        // next chunk is planned (Redis applies one while the daemon transforms the other).
        let mut planned: Option<Prepared> = None;
        // The outbound stream's length as the last hand-off left it (it answers with it).
        let mut outbound_len: Option<u64> = None;
        while !self.shutdown.is_raised() {
            self.health.beat("batch_processor");
            let tend = self.graph.is_some() && Instant::now() >= next_tend;
            let claim = Instant::now() >= next_claim;
            let drain = Instant::now() >= next_drain;
            // An outbound entry holds up to one batch of records: count it as a full one.
            let entries = match outbound_len.take() {
                Some(n) => n,
                None => self.store.len(&outbound).await?,
            };
            let backlog = entries * self.settings.ms4.batch_size as u64;
            if let Some(chunk) = planned.take() {
                // The planned chunk's records count as outbound already: no chunk is read ahead
                // when they take the backlog past the limit.
                let after = backlog + chunk.plan.records.len() as u64;
                if tend || claim || drain || after > p.max_backlog {
                    outbound_len = Some(self.finish(chunk).await?);
                } else {
                    // Read what fits beside it in the byte budget, without waiting for new
                    // mail (the planned chunk would wait with it), and plan that while the
                    // planned one is handed off.
                    let room = budget.after(0, chunk.bytes());
                    let next = async {
                        let Some(room) = room else {
                            return Ok(None);
                        };
                        let (entries, _) = blocking
                            .read_new_fast(
                                fast.as_mut(),
                                &inbound,
                                PROCESSORS,
                                &self.consumer,
                                room,
                                None,
                            )
                            .await?;
                        self.prepare(entries).await
                    };
                    let (done, next) = futures_util::future::join(self.finish(chunk), next).await;
                    outbound_len = Some(done?);
                    planned = next?;
                    continue;
                }
            }
            if tend {
                self.tend_parked().await?;
                next_tend = Instant::now() + PARK_TEND_EVERY;
            }
            if drain {
                drain_cursor = self.follow_up_waiting_copies(&drain_cursor).await?;
                self.sweep_marks().await?;
                next_drain = Instant::now() + DRAIN_EVERY;
            }
            if backlog > p.max_backlog {
                tracing::debug!(backlog, "outbound backlog above max_backlog; waiting");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            if claim {
                let claim = Scan::Claim {
                    min_idle_ms: claim_idle,
                };
                let (next, claimed) = self
                    .store
                    .read_budgeted(
                        &inbound,
                        PROCESSORS,
                        &self.consumer,
                        claim,
                        &claim_cursor,
                        budget,
                    )
                    .await?;
                if !claimed.is_empty() {
                    tracing::info!(
                        entries = claimed.len(),
                        "claimed entries a dead consumer left"
                    );
                    self.process(claimed).await?;
                }
                if next == "0-0" {
                    next_claim = Instant::now() + claim_every;
                }
                claim_cursor = next;
                continue;
            }
            let (entries, _) = blocking
                .read_new_fast(
                    fast.as_mut(),
                    &inbound,
                    PROCESSORS,
                    &self.consumer,
                    budget,
                    Some(p.block_ms),
                )
                .await?;
            planned = self.prepare(entries).await?;
        }
        if let Some(chunk) = planned {
            self.finish(chunk).await?;
        }
        tracing::info!("drained: no longer reading the inbound stream");
        Ok(())
    }

    /// One step through the later copies waiting for their first copy's end (store::copies);
    /// returns the cursor for the next step.
    async fn follow_up_waiting_copies(&self, cursor: &str) -> Result<String, StoreError> {
        let ttl = self.settings.redis.idempotency_ttl_s;
        let drained = self.store.drain_waiting(ttl, cursor).await?;
        for (end, n) in [
            ("followed_up", drained.followed_up),
            ("first_dead_lettered", drained.first_dead_lettered),
            ("given_up", drained.given_up),
        ] {
            metrics::counter!(m::COPIES, "end" => end).increment(n);
        }
        if drained.given_up > 0 {
            tracing::warn!(copies = drained.given_up, ttl_s = ttl, "later copies waited longer than idempotency marks live for their first copy to end: left as they are");
        }
        Ok(drained.cursor)
    }

    /// One step of the idempotency marks' sweep (store::marks): removes up to
    /// [`MARKS_SWEPT_EACH`] marks older than `redis.idempotency_ttl_s`.
    async fn sweep_marks(&self) -> Result<(), StoreError> {
        let ttl = self.settings.redis.idempotency_ttl_s;
        let swept = self.store.sweep_marks(ttl, MARKS_SWEPT_EACH).await?;
        if swept > 0 {
            tracing::debug!(
                swept,
                ttl_s = ttl,
                "idempotency marks older than their TTL removed"
            );
        }
        Ok(())
    }

    /// Finishes one chunk with a single hand-off.
    async fn process(&self, entries: Vec<Entry>) -> Result<(), StoreError> {
        match self.prepare(entries).await? {
            Some(chunk) => self.finish(chunk).await.map(drop),
            None => Ok(()),
        }
    }

    /// What a chunk becomes, before Redis is asked which keys it has seen. Entries that need
    /// Graph (webhook refs, attachment metadata) are resolved first; while Graph fails
    /// transiently the chunk is retried with backoff and stays pending (`None` when a drain
    /// began meanwhile: the chunk is left pending for the next start).
    async fn prepare(&self, entries: Vec<Entry>) -> Result<Option<Prepared>, StoreError> {
        if entries.is_empty() {
            return Ok(None);
        }
        let opts = TransformOptions {
            include_raw: self.settings.ms4.include_raw,
            oversize_dead_letter: self.settings.imap.oversize == Oversize::DeadLetter,
        };
        let g = &self.settings.graph;
        let mut backoff = Backoff::new(self.settings.graph.retry());
        // Results survive a failed attempt: only what is still missing is fetched again, so a
        // throttled mailbox makes progress instead of restarting the chunk. What still fails
        // after `graph.park_after_attempts` is parked with its mailbox, so one mailbox Graph
        // keeps failing never holds back the rest of the chunk.
        let mut partial: Vec<Option<Resolution>> = vec![None; entries.len()];
        let mut attempt = 0;
        let resolved = loop {
            attempt += 1;
            let last_try = attempt >= g.park_after_attempts;
            match self.resolve(&entries, &mut partial, last_try).await {
                None => {
                    break partial
                        .into_iter()
                        .map(Option::unwrap_or_default)
                        .collect::<Vec<_>>()
                }
                Some(e) => {
                    let d = match e {
                        GraphError::Throttled(d) => d.min(MAX_CHUNK_WAIT),
                        _ => backoff.next_delay(),
                    };
                    tracing::warn!(error = %e, attempt, retry_in_ms = d.as_millis() as u64, "cannot resolve entries from Graph yet; retrying what is missing");
                    self.health.beat("batch_processor");
                    // Still ours: keep another daemon from claiming the chunk as abandoned.
                    let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
                    let inbound = self.store.keys().inbound();
                    self.store
                        .touch(&inbound, PROCESSORS, &self.consumer, &ids)
                        .await?;
                    tokio::select! {
                        _ = tokio::time::sleep(d) => {}
                        _ = self.shutdown.raised() => {}
                    }
                    if self.shutdown.is_raised() {
                        // Left pending: picked up again on the next start.
                        return Ok(None);
                    }
                }
            }
        };
        let plan = plan_chunk(&entries, &resolved, opts);
        Ok(Some(Prepared {
            entries,
            resolved,
            plan,
        }))
    }

    /// Hands a prepared chunk off: asks Redis which of its keys were seen before, then applies
    /// the hand-off in one MULTI/EXEC. Returns the outbound stream's length (entries) after.
    async fn finish(&self, chunk: Prepared) -> Result<u64, StoreError> {
        let Prepared {
            entries,
            resolved,
            plan,
        } = chunk;
        let mut handoff = Handoff {
            dead: plan.dead,
            dead_ends: plan
                .dead_targets
                .into_iter()
                .filter(|f| self.settings.ends_dead_letters(f.source, &f.mailbox))
                .collect(),
            done: entries.iter().map(|e| e.id.clone()).collect(),
            outbound: Vec::with_capacity(plan.records.len()),
            duplicates: 0,
            parked: plan.parked,
        };
        let mut copies = plan.copies_in_chunk;
        let ttl_s = self.settings.redis.idempotency_ttl_s;
        let keys: Vec<&str> = plan.records.iter().map(|r| r.key.as_str()).collect();
        let marks = self.store.marks(&keys, ttl_s).await?;
        let mut conflicts = Vec::new();
        for (rec, mark) in plan.records.into_iter().zip(marks) {
            match mark {
                None => handoff.outbound.push(rec),
                Some(m) if m == rec.digest || m == LEGACY_MARK => copies.push(copy_of(rec)),
                // The key names a message with other content: this one is another message.
                Some(_) => conflicts.push(renamed(rec)),
            }
        }
        // Each message that reused a key is delivered once, under the key and its digest.
        let keys: Vec<&str> = conflicts.iter().map(|r| r.key.as_str()).collect();
        let marks = self.store.marks(&keys, ttl_s).await?;
        let mut key_conflicts = plan.key_conflicts;
        for (rec, mark) in conflicts.into_iter().zip(marks) {
            if mark.is_some() {
                copies.push(copy_of(rec));
            } else {
                key_conflicts += 1;
                tracing::warn!(key = %rec.key, "a Message-ID arrived again with other content (sender, subject or date): delivered as a message of its own under the key and its content digest");
                handoff.outbound.push(rec);
            }
        }
        if key_conflicts > 0 {
            metrics::counter!(m::KEY_CONFLICTS).increment(key_conflicts);
        }
        // Later copies end as their first copy does (store::copies), before the hand-off: a
        // crash between the two leaves only the hand-off to do again.
        handoff.duplicates = copies.len() as u64;
        if !copies.is_empty() {
            let ended = self
                .store
                .end_copies(&copies, self.settings.redis.idempotency_ttl_s)
                .await?;
            for (end, n) in [
                ("followed_up", ended.followed_up),
                ("waiting", ended.waiting),
                ("first_dead_lettered", ended.first_dead_lettered),
            ] {
                metrics::counter!(m::COPIES, "end" => end).increment(n);
            }
        }
        let duplicates = handoff.duplicates;
        let outbound_len = self
            .store
            .handoff(
                &handoff,
                outbound_batch(&self.settings),
                self.settings.redis.dlq_maxlen,
            )
            .await?;
        metrics::counter!(m::RECEIVED).increment(entries.len() as u64);
        metrics::counter!(m::PROCESSED).increment(handoff.outbound.len() as u64);
        metrics::counter!(m::DUPLICATES).increment(duplicates);
        if !handoff.dead.is_empty() {
            metrics::counter!(m::DEAD_LETTERED, "stage" => Stage::Process.as_str())
                .increment(handoff.dead.len() as u64);
            for d in &handoff.dead {
                tracing::warn!(entry = %d.entry_id, mailbox = %d.mailbox, reason = %d.reason, "dead-lettered an entry");
            }
        }
        self.after_parking(&entries, &resolved).await?;
        Ok(outbound_len)
    }
}

/// How the hand-off groups records into outbound entries: one MS4 batch each (the sender reads
/// one entry as one batch), and no more bytes than one of `ms4.max_in_flight` batches may hold
/// (a record bigger than that gets an entry of its own, as before batches were entries).
fn outbound_batch(settings: &Settings) -> BatchLimit {
    let ms4 = &settings.ms4;
    BatchLimit {
        records: ms4.batch_size.max(1),
        bytes: (ms4.max_in_flight_bytes / ms4.max_in_flight.max(1) as u64).max(1),
    }
}

/// A record whose key was delivered before: a later copy of that message.
fn copy_of(rec: OutboundRecord) -> Copy {
    Copy {
        entry_id: rec.entry,
        key: rec.key,
        follow_up: rec.mark_read,
    }
}

/// A chunk planned and waiting for its hand-off.
struct Prepared {
    entries: Vec<Entry>,
    resolved: Vec<Resolution>,
    plan: plan::ChunkPlan,
}

impl Prepared {
    /// The chunk's entries as the read budget counts them.
    fn bytes(&self) -> u64 {
        self.entries.iter().map(entry_bytes).sum()
    }
}

/// The value of idempotency marks written before marks carried content digests: it matches
/// any content.
const LEGACY_MARK: &str = "1";

/// A record whose key already names a message with other content, renamed to the key and its
/// content digest (the JSON MS4 receives carries the new key).
fn renamed(mut rec: OutboundRecord) -> OutboundRecord {
    rec.key = crate::model::conflict_key(&rec.key, &rec.digest);
    let mut v: serde_json::Value =
        serde_json::from_str(&rec.json).expect("a record this processor serialized");
    v["idempotency_key"] = serde_json::Value::String(rec.key.clone());
    rec.json = v.to_string();
    rec
}

/// How often the processor looks for later copies whose first copy has ended, and sweeps
/// idempotency marks.
const DRAIN_EVERY: Duration = Duration::from_secs(2);

/// Idempotency marks one sweep step removes at most (a few milliseconds of Redis).
const MARKS_SWEPT_EACH: usize = 20_000;

/// Longest a chunk waits on a throttled mailbox before trying again (a longer Retry-After
/// parks the mailbox's entries after `graph.park_after_attempts` instead of stalling the rest).
const MAX_CHUNK_WAIT: Duration = Duration::from_secs(5);
