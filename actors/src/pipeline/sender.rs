//! The MS4Sender actor: outbound stream → `POST /batch-metadata`.
//!
//! Delivery rules, in the order a batch meets them:
//!
//! - **Batching.** A feeder reads the outbound stream through the `senders` group whenever one
//!   of `ms4.max_in_flight` slots is free: a full batch of `ms4.batch_size`, or a partial one
//!   once `ms4.linger_ms` has passed since its first record (at once when draining).
//! - **Bytes.** The records held (batches in flight and the one being formed) stay within
//!   `ms4.max_in_flight_bytes`: a batch starts only below it and stops growing at it; its
//!   first record may pass it alone. Every read is byte-bounded (`store::read_budget`).
//! - **Admission.** Before each request the batch waits for the gate (circuit breaker and
//!   MS4 authentication state) and for a permit of the shared MS4 rate budget.
//! - **Answers** are classified once ([`Verdict`]) and acted on:
//!   202 → the records are delivered; 400 → split the batch in halves and deliver each, until
//!   single invalid records are isolated and dead-lettered with MS4's answer; 401 → stop all sending, report
//!   not ready, keep everything pending and let one batch probe every `ms4.auth_probe_s`;
//!   429 → pause the whole budget (every sender, every daemon) for Retry-After; 5xx, timeouts and
//!   connection errors → retry with exponential backoff and jitter, counted by the breaker.
//!   A transient failure never dead-letters. Once every record of a batch is delivered or
//!   dead-lettered, one transaction writes its dead letters, queues the delivered records'
//!   follow-ups and acknowledges and deletes its entries.
//! - **Entries.** An outbound entry holds one batch of records ([`outbound`](crate::store::outbound)), so a full
//!   batch is one read of one entry; entries of one record (earlier versions, replays) are
//!   read alike.
//! - **Ownership.** Entries stay pending in Redis until acknowledged. While a batch is being
//!   retried its entries are touched so that no other daemon claims them; entries a dead
//!   consumer left idle longer than `redis.claim_idle_ms` are claimed and sent. After a crash
//!   the same consumer re-sends what it held (MS4 deduplicates by idempotency key).

use crate::clients::ms4::{batch_body, batch_key, classify, Ms4Client, Verdict};
use crate::clock::now_ms;
use crate::health::Health;
use crate::metrics as m;
use crate::pipeline::ratelimiter::{self, Acquire, PauseBudget, RateLimiter};
use crate::retry::{Admission, Backoff, Breaker};
use crate::settings::Settings;
use crate::shutdown::Shutdown;
use crate::store::dlq::Stage;
use crate::store::keys::SENDERS;
use crate::store::outbound;
use crate::store::read_budget::{entry_bytes, within_budget};
use crate::store::schema::outbound as F;
use crate::store::{DeadLetter, Entry, FollowUp, ReadBudget, Scan, Store, StoreError};
use crate::supervision::{spawn_work, RestartPacer};
use actix::prelude::*;
use std::cell::{Cell, RefCell};
use std::collections::{HashSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};
use tracing::Instrument;

/// Wait until in-flight batches are finished and the feeder has stopped.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Drain;

/// A batch the feeder formed; delivered in the actor's context so a restart drops it.
#[derive(Message)]
#[rtype(result = "()")]
struct Deliver {
    generation: u64,
    batch: Vec<Entry>,
    /// The batch's size as budgets count it.
    bytes: u64,
}

pub(crate) struct Ms4Sender {
    store: Store,
    settings: Arc<Settings>,
    limiter: Addr<RateLimiter>,
    health: Health,
    shutdown: Shutdown,
    pacer: RestartPacer,
    generation: u64,
    core: Option<Rc<Core>>,
    stopped: watch::Sender<bool>,
}

impl Ms4Sender {
    pub(crate) fn new(
        store: Store,
        settings: Arc<Settings>,
        limiter: Addr<RateLimiter>,
        health: Health,
        shutdown: Shutdown,
    ) -> Self {
        Self {
            store,
            settings,
            limiter,
            health,
            shutdown,
            pacer: RestartPacer::new("ms4_sender"),
            generation: 0,
            core: None,
            stopped: watch::channel(false).0,
        }
    }
}

impl Actor for Ms4Sender {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.generation += 1;
        let delay = self.pacer.delay(Instant::now());
        let core = Rc::new(Core {
            consumer: self.settings.consumer_name(),
            client: Ms4Client::new(&self.settings.ms4),
            store: self.store.clone(),
            settings: self.settings.clone(),
            limiter: self.limiter.clone(),
            health: self.health.clone(),
            breaker: RefCell::new(Breaker::new(&self.settings.breaker)),
            auth: RefCell::new(AuthGate::default()),
            held: RefCell::new(HashSet::new()),
            in_flight: Cell::new(0),
            in_flight_bytes: Cell::new(0),
            slot_freed: Notify::new(),
            feeding: Cell::new(true),
        });
        self.core = Some(core.clone());
        let addr = ctx.address();
        let generation = self.generation;
        let shutdown = self.shutdown.clone();
        let span = tracing::info_span!("ms4_sender", consumer = %core.consumer);
        let work = feed(core, addr, generation, shutdown);
        let health = self.health.clone();
        spawn_work(
            ctx,
            "ms4_sender",
            delay,
            span,
            health,
            work,
            |act: &mut Self, _| {
                if let Some(core) = &act.core {
                    core.feeding.set(false);
                    if core.in_flight.get() == 0 {
                        act.stopped.send_replace(true);
                    }
                }
            },
        );
    }
}

impl Supervised for Ms4Sender {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        self.pacer.on_restart();
        metrics::gauge!(m::IN_FLIGHT).set(0.0);
    }
}

impl Handler<Deliver> for Ms4Sender {
    type Result = ();

    fn handle(&mut self, msg: Deliver, ctx: &mut Context<Self>) {
        let Some(core) = self.core.clone() else {
            return;
        };
        if msg.generation != self.generation {
            // Formed before a restart; the restarted feeder re-reads these entries itself.
            return;
        }
        let stopped = self.stopped.clone();
        let shutdown = self.shutdown.clone();
        let span = tracing::info_span!("ms4_batch", session_id = %core.health.session(), consumer = %core.consumer, records = msg.batch.len(), correlation_id = %msg.batch.first().map(|e| e.id.as_str()).unwrap_or(""));
        ctx.spawn(
            async move {
                deliver(core.clone(), msg.batch).await;
                core.finish_slot(msg.bytes);
                if shutdown.is_raised() && core.in_flight.get() == 0 && !core.feeding.get() {
                    stopped.send_replace(true);
                }
            }
            .instrument(span)
            .into_actor(self),
        );
    }
}

impl Handler<Drain> for Ms4Sender {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _: Drain, _ctx: &mut Context<Self>) -> Self::Result {
        let core = self.core.clone();
        let stopped = self.stopped.clone();
        let mut rx = self.stopped.subscribe();
        Box::pin(async move {
            if core.is_none_or(|c| c.in_flight.get() == 0 && !c.feeding.get()) {
                stopped.send_replace(true);
            }
            let _ = rx.wait_for(|s| *s).await;
        })
    }
}

/// 401 handling: while blocked, nothing is sent but one probe every `auth_probe_s`.
#[derive(Debug, Default)]
struct AuthGate {
    blocked_until: Option<Instant>,
    probing: bool,
}

/// Which kind of turn a request was admitted on, reported back with its verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Turn {
    Normal,
    BreakerProbe,
    AuthProbe,
}

/// State shared by the feeder and the delivery tasks of one actor generation.
struct Core {
    consumer: String,
    client: Ms4Client,
    store: Store,
    settings: Arc<Settings>,
    limiter: Addr<RateLimiter>,
    health: Health,
    breaker: RefCell<Breaker>,
    auth: RefCell<AuthGate>,
    /// Entry ids held by a batch in flight (not to be claimed twice).
    held: RefCell<HashSet<String>>,
    in_flight: Cell<usize>,
    /// Bytes of the batches in flight (`ms4.max_in_flight_bytes`).
    in_flight_bytes: Cell<u64>,
    slot_freed: Notify,
    /// The feeder is still forming batches (a drain waits for it to stop).
    feeding: Cell<bool>,
}

impl Core {
    fn outbound(&self) -> String {
        self.store.keys().outbound()
    }

    fn finish_slot(&self, bytes: u64) {
        self.in_flight.set(self.in_flight.get().saturating_sub(1));
        self.in_flight_bytes
            .set(self.in_flight_bytes.get().saturating_sub(bytes));
        metrics::gauge!(m::IN_FLIGHT).set(self.in_flight.get() as f64);
        self.slot_freed.notify_one();
    }

    /// Waits until the gate lets a request out.
    async fn wait_turn(&self) -> Turn {
        loop {
            let now = Instant::now();
            let nap = {
                let mut auth = self.auth.borrow_mut();
                match auth.blocked_until {
                    Some(t) if now >= t && !auth.probing => {
                        auth.probing = true;
                        return Turn::AuthProbe;
                    }
                    Some(t) => t
                        .saturating_duration_since(now)
                        .max(Duration::from_millis(50)),
                    None => {
                        let admission = self.breaker.borrow_mut().admit(now);
                        self.health.set_breaker(self.breaker.borrow().state(now));
                        match admission {
                            Admission::Go => return Turn::Normal,
                            Admission::Probe => return Turn::BreakerProbe,
                            Admission::Wait(d) => d,
                        }
                    }
                }
            };
            tokio::time::sleep(nap.min(Duration::from_millis(500))).await;
        }
    }

    /// Updates the gate with what MS4 said on a turn.
    fn report(&self, turn: Turn, verdict: Option<&Verdict>) {
        let now = Instant::now();
        let probe_every = Duration::from_secs(self.settings.ms4.auth_probe_s);
        {
            let mut auth = self.auth.borrow_mut();
            match (turn, verdict) {
                (_, Some(Verdict::Unauthorized { status })) => {
                    if auth.blocked_until.is_none() {
                        tracing::error!(
                            status,
                            probe_every_s = probe_every.as_secs(),
                            "MS4 refuses the API key: delivery paused, everything stays queued; fix ms4.api_key (or MS4's key) and delivery resumes by itself"
                        );
                    }
                    auth.blocked_until = Some(now + probe_every);
                    auth.probing = false;
                    self.health.set_ms4_auth(false);
                }
                (Turn::AuthProbe, Some(Verdict::Accepted | Verdict::Reject { .. })) => {
                    tracing::info!("MS4 accepts the API key again: delivery resumes");
                    auth.blocked_until = None;
                    auth.probing = false;
                    self.health.set_ms4_auth(true);
                }
                (Turn::AuthProbe, _) => {
                    // No word on the key yet (MS4 down, throttled, Redis error): probe again soon.
                    auth.probing = false;
                    auth.blocked_until = Some(now);
                }
                _ => {}
            }
        }
        let mut breaker = self.breaker.borrow_mut();
        match verdict {
            Some(Verdict::Transient(why)) => {
                self.health.set_ms4_error(Some(why.clone()));
                if breaker.on_failure(now, turn == Turn::BreakerProbe) {
                    tracing::warn!(
                        open_ms = self.settings.breaker.open_ms,
                        "MS4 keeps failing: circuit opened, sending only probes"
                    );
                }
            }
            Some(Verdict::RetryAfter(_)) | None => {
                if turn == Turn::BreakerProbe {
                    breaker.abandon_probe();
                }
            }
            Some(_) => {
                self.health.set_ms4_error(None);
                breaker.on_success()
            }
        }
        let state = breaker.state(now);
        self.health.set_breaker(state);
        metrics::gauge!(m::BREAKER).set(state.as_gauge());
    }

    /// Finishes a batch: acknowledges its entries, queuing the follow-ups of the records MS4
    /// accepted and dead-lettering those it rejected, in one transaction; retries Redis until
    /// it answers (MS4 has the records, so giving up would only cause a re-send).
    async fn finish(&self, ids: &[String], outcome: &Outcome) {
        let mut backoff = Backoff::new(self.settings.ms4.retry());
        while let Err(e) = self
            .store
            .finish_delivery(
                ids,
                outcome.delivered,
                &outcome.follow_ups,
                &outcome.dead,
                self.settings.redis.dlq_maxlen,
            )
            .await
        {
            tracing::warn!(error = %e, "could not acknowledge a delivered batch; retrying");
            tokio::time::sleep(backoff.next_delay()).await;
        }
        if !outcome.dead.is_empty() {
            metrics::counter!(m::DEAD_LETTERED, "stage" => Stage::Deliver.as_str())
                .increment(outcome.dead.len() as u64);
        }
    }
}

/// What became of a batch's records so far, written when the whole batch is done.
#[derive(Default)]
struct Outcome {
    /// Records MS4 accepted.
    delivered: u64,
    /// Their follow-ups.
    follow_ups: Vec<FollowUp>,
    /// Records MS4 rejected.
    dead: Vec<DeadLetter>,
}

impl Outcome {
    fn accepted(&mut self, records: &[Entry]) {
        self.delivered += records.len() as u64;
        self.follow_ups
            .extend(records.iter().filter_map(outbound::follow_up_of));
    }

    fn rejected(&mut self, record: &Entry, status: u16, body: &str, attempts: u32, first_ms: u64) {
        tracing::warn!(entry = %record.id, key = record.field(F::KEY).unwrap_or_default(), status, "MS4 rejected a record: dead-lettered");
        self.dead.push(DeadLetter {
            stage: Stage::Deliver,
            reason: format!("MS4 rejected the record ({status})"),
            status,
            attempts,
            first_failure_ms: first_ms,
            last_failure_ms: now_ms(),
            payload: record.field(F::RECORD).unwrap_or_default().to_string(),
            mailbox: record_mailbox(record.field(F::RECORD).unwrap_or_default()),
            key: record.field(F::KEY).unwrap_or_default().to_string(),
            entry_id: record.id.clone(),
            response: body.to_string(),
            kind: "record".into(),
            source: String::new(),
            carry: crate::store::dlq::carried(
                record,
                &[F::FOLLOW_UP_MAILBOX, F::FOLLOW_UP_ID, F::FOLLOW_UP_SOURCE],
            ),
        });
    }
}

fn record_mailbox(record: &str) -> String {
    serde_json::from_str::<serde_json::Value>(record)
        .ok()
        .and_then(|v| {
            v.get("mailbox")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .unwrap_or_default()
}

/// The feeder: forms batches while slots are free and hands them to the actor.
async fn feed(
    core: Rc<Core>,
    addr: Addr<Ms4Sender>,
    generation: u64,
    shutdown: Shutdown,
) -> Result<(), StoreError> {
    if shutdown.is_raised() {
        // Restarted (or started) during a drain: nothing to take on.
        return Ok(());
    }
    let s = &core.settings;
    let outbound = core.outbound();
    let blocking = core.store.blocking()?;
    core.store.ensure_group(&outbound, SENDERS).await?;
    core.health.set_redis(true);

    // Claimed entries waiting for a batch (at most one batch's worth, within the byte budget).
    let mut backlog: VecDeque<Entry> = VecDeque::new();
    // This consumer's own pending entries (held before it stopped) are re-sent first, read in
    // budgeted steps from this cursor; `None` once all were read.
    let mut own: Option<String> = Some("0-0".to_string());
    let claim_idle = s.redis.claim_idle_ms;
    let housekeeping_every = Duration::from_millis((claim_idle / 3).max(300));
    let mut next_housekeeping = Instant::now() + housekeeping_every;
    let mut claim_cursor = "0-0".to_string();

    while !shutdown.is_raised() {
        core.health.beat("ms4_sender");
        if Instant::now() >= next_housekeeping {
            next_housekeeping = Instant::now() + housekeeping_every;
            // Keep what this consumer holds (in flight or waiting here) from looking abandoned.
            let held: Vec<String> = core
                .held
                .borrow()
                .iter()
                .cloned()
                .chain(backlog.iter().map(|e| e.id.clone()))
                .collect();
            core.store
                .touch(&outbound, SENDERS, &core.consumer, &held)
                .await?;
            let free = s
                .ms4
                .max_in_flight_bytes
                .saturating_sub(core.in_flight_bytes.get());
            let (next, claimed) = if backlog.is_empty() && free > 0 {
                core.store
                    .read_budgeted(
                        &outbound,
                        SENDERS,
                        &core.consumer,
                        Scan::Claim {
                            min_idle_ms: claim_idle,
                        },
                        &claim_cursor,
                        ReadBudget::new(s.ms4.batch_size, free),
                    )
                    .await?
            } else {
                (claim_cursor.clone(), Vec::new())
            };
            claim_cursor = next;
            let held = core.held.borrow();
            let fresh: Vec<Entry> = claimed
                .into_iter()
                .filter(|e| !held.contains(&e.id) && !backlog.iter().any(|b| b.id == e.id))
                .collect();
            if !fresh.is_empty() {
                tracing::info!(
                    entries = fresh.len(),
                    "claimed outbound entries a dead consumer left"
                );
            }
            backlog.extend(fresh);
        }
        let bytes_full =
            core.in_flight.get() > 0 && core.in_flight_bytes.get() >= s.ms4.max_in_flight_bytes;
        if core.in_flight.get() >= s.ms4.max_in_flight || bytes_full {
            let _ =
                tokio::time::timeout(Duration::from_millis(200), core.slot_freed.notified()).await;
            continue;
        }
        let batch = form_batch(&core, &blocking, &mut backlog, &mut own, &shutdown).await?;
        if batch.is_empty() {
            continue;
        }
        let bytes = batch.iter().map(entry_bytes).sum::<u64>();
        core.held
            .borrow_mut()
            .extend(batch.iter().map(|e| e.id.clone()));
        core.in_flight.set(core.in_flight.get() + 1);
        core.in_flight_bytes.set(core.in_flight_bytes.get() + bytes);
        metrics::gauge!(m::IN_FLIGHT).set(core.in_flight.get() as f64);
        addr.do_send(Deliver {
            generation,
            batch,
            bytes,
        });
    }
    // Whatever was formed but not sent stays pending and is re-sent on the next start.
    tracing::info!("drained: no longer reading the outbound stream");
    Ok(())
}

/// One batch: claimed entries first, then this consumer's own pending ones, then new entries,
/// until full (`batch_size`, or the bytes left of `max_in_flight_bytes`) or `linger_ms` after
/// the first one. The first record is taken whatever its size; the others only if they fit.
async fn form_batch(
    core: &Core,
    blocking: &Store,
    backlog: &mut VecDeque<Entry>,
    own: &mut Option<String>,
    shutdown: &Shutdown,
) -> Result<Vec<Entry>, StoreError> {
    let s = &core.settings;
    let size = s.ms4.batch_size;
    let budget = ReadBudget::new(
        size,
        s.ms4
            .max_in_flight_bytes
            .saturating_sub(core.in_flight_bytes.get())
            .max(1),
    );
    // Outbound entries (one batch of records each, or one record), exploded into records at
    // the end; `records` counts what they hold.
    let mut batch: Vec<Entry> = Vec::with_capacity(size);
    let (mut records, mut bytes) = (0usize, 0u64);
    // What a read may still add to the batch (`None`: the batch is full). A read counts
    // entries: one that holds several records can take the batch past `batch_size`, and
    // `deliver` then sends it as several requests.
    let left = |records: usize, bytes: u64| {
        if records == 0 {
            Some(budget)
        } else {
            budget.after(records, bytes)
        }
    };
    while let Some(room) = left(records, bytes) {
        let Some(e) = backlog.front() else { break };
        if within_budget(&[entry_bytes(e)], room) == 0 {
            break;
        }
        let e = backlog.pop_front().expect("looked at above");
        bytes += entry_bytes(&e);
        records += outbound::records_in(&e);
        batch.push(e);
    }
    let outbound = core.outbound();
    while let (Some(cursor), Some(room)) = (own.clone(), left(records, bytes)) {
        let (next, got) = core
            .store
            .read_budgeted(&outbound, SENDERS, &core.consumer, Scan::Own, &cursor, room)
            .await?;
        *own = (next != "0-0").then_some(next);
        let held = core.held.borrow();
        let fresh: Vec<Entry> = got
            .into_iter()
            .filter(|e| !held.contains(&e.id) && !batch.iter().any(|b| b.id == e.id))
            .collect();
        if !fresh.is_empty() {
            tracing::info!(
                entries = fresh.len(),
                "re-sending entries this consumer held before it stopped"
            );
        }
        bytes += fresh.iter().map(entry_bytes).sum::<u64>();
        records += fresh.iter().map(outbound::records_in).sum::<usize>();
        batch.extend(fresh);
    }
    let mut largest = batch.iter().map(outbound::records_in).max().unwrap_or(1);
    let mut deadline = (!batch.is_empty()).then(|| Instant::now() + s.ms4.linger());
    while let Some(room) = left(records, bytes) {
        let block_ms = match deadline {
            None => s.pipeline.block_ms,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left < Duration::from_millis(1) || shutdown.is_raised() {
                    break;
                }
                left.as_millis().max(1) as u64
            }
        };
        // An empty batch waits (blocking) for its first record; a top-up read does not block
        // (the record it would wait for might not fit), it looks again shortly.
        let room = ReadBudget {
            max_entries: entries_for(records, largest, size),
            ..room
        };
        let (got, full) = blocking
            .read_new_budgeted(&outbound, SENDERS, &core.consumer, room, Some(block_ms))
            .await?;
        if got.is_empty() {
            if full {
                // The next record does not fit in what is left: the batch is as big as it gets.
                break;
            }
            if deadline.is_none() {
                // Idle: let the feeder do its housekeeping and notice a drain.
                break;
            }
            tokio::time::sleep(Duration::from_millis(block_ms.min(TOP_UP_PAUSE_MS))).await;
            continue;
        }
        if deadline.is_none() {
            deadline = Some(Instant::now() + s.ms4.linger());
        }
        bytes += got.iter().map(entry_bytes).sum::<u64>();
        records += got.iter().map(outbound::records_in).sum::<usize>();
        largest = got
            .iter()
            .map(outbound::records_in)
            .fold(largest, usize::max);
        batch.extend(got);
        if full {
            break;
        }
    }
    Ok(batch.into_iter().flat_map(outbound::explode).collect())
}

/// How many outbound entries the next read of a batch may take: a first read takes one (a
/// whole batch, as the processor writes them), a top-up read as many as the records still
/// missing would fill if each held as many as the largest entry so far (a batch of small
/// entries fills in one read; entries of many records cannot take it far past `batch_size`).
fn entries_for(records: usize, largest: usize, size: usize) -> usize {
    if records == 0 {
        1
    } else {
        size.saturating_sub(records).div_ceil(largest.max(1)).max(1)
    }
}

/// How long a partial batch waits between two looks for more records while it lingers, in ms.
const TOP_UP_PAUSE_MS: u64 = 2;

/// A slice of a batch on its way; 400s split it.
struct Part {
    entries: Vec<Entry>,
    /// Requests that carried these entries so far.
    attempts: u32,
    first_failure_ms: Option<u64>,
}

/// Delivers one batch until every record is accepted or dead-lettered, in requests of at
/// most `ms4.batch_size` records, then finishes its entries in one transaction (a crash before
/// that re-sends the batch: MS4 deduplicates by key, and what it rejects is dead-lettered once).
async fn deliver(core: Rc<Core>, batch: Vec<Entry>) {
    let mut ids: Vec<String> = batch.iter().map(|e| e.id.clone()).collect();
    ids.dedup();
    let size = core.settings.ms4.batch_size.max(1);
    let mut requests: Vec<Vec<Entry>> = Vec::with_capacity(batch.len().div_ceil(size));
    let mut rest = batch.into_iter().peekable();
    while rest.peek().is_some() {
        requests.push(rest.by_ref().take(size).collect());
    }
    // Popped from the end: the first request goes first.
    let mut stack: Vec<Part> = requests
        .into_iter()
        .rev()
        .map(|entries| Part {
            entries,
            attempts: 0,
            first_failure_ms: None,
        })
        .collect();
    let mut outcome = Outcome::default();
    while let Some(part) = stack.pop() {
        deliver_part(&core, part, &mut stack, &mut outcome).await;
    }
    core.finish(&ids, &outcome).await;
    let mut held = core.held.borrow_mut();
    for id in &ids {
        held.remove(id);
    }
}

async fn deliver_part(core: &Core, mut part: Part, stack: &mut Vec<Part>, outcome: &mut Outcome) {
    let mut backoff = Backoff::new(core.settings.ms4.retry());
    loop {
        let turn = core.wait_turn().await;
        match core
            .limiter
            .send(Acquire {
                budget: ratelimiter::MS4,
            })
            .await
        {
            Ok(Ok(_permit)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "rate permit unavailable (redis); retrying");
                core.report(turn, None);
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "rate limiter unavailable; retrying");
                core.report(turn, None);
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        }
        let body = batch_body(
            part.entries
                .iter()
                .map(|e| e.field(F::RECORD).unwrap_or("null")),
        );
        let key = batch_key(part.entries.iter().map(|e| e.field(F::KEY).unwrap_or("")));
        part.attempts += 1;
        let started = Instant::now();
        let answer = core.client.post(body, &key).await;
        let status = answer.as_ref().map(|a| a.status).unwrap_or(0);
        let verdict = classify(answer);
        metrics::histogram!(m::MS4_LATENCY, "status" => status.to_string())
            .record(started.elapsed().as_secs_f64());
        metrics::counter!(m::MS4_REQUESTS, "outcome" => verdict.outcome()).increment(1);
        core.report(turn, Some(&verdict));
        match verdict {
            Verdict::Accepted => {
                outcome.accepted(&part.entries);
                let now = now_ms();
                metrics::counter!(m::DELIVERED).increment(part.entries.len() as u64);
                let latency = metrics::histogram!(m::END_TO_END);
                for e in &part.entries {
                    let ms = e
                        .field(F::INBOUND_MS)
                        .and_then(|t| t.parse::<u64>().ok())
                        .unwrap_or(now);
                    latency.record(now.saturating_sub(ms) as f64 / 1_000.0);
                }
                return;
            }
            Verdict::Reject { status, body } => {
                let first = *part.first_failure_ms.get_or_insert_with(now_ms);
                if part.entries.len() == 1 {
                    outcome.rejected(&part.entries[0], status, &body, part.attempts, first);
                } else {
                    tracing::info!(
                        records = part.entries.len(),
                        status,
                        "MS4 rejected a batch: bisecting to isolate the invalid records"
                    );
                    let right = part.entries.split_off(part.entries.len() / 2);
                    stack.push(Part {
                        entries: right,
                        attempts: part.attempts,
                        first_failure_ms: Some(first),
                    });
                    stack.push(Part {
                        entries: part.entries,
                        attempts: part.attempts,
                        first_failure_ms: Some(first),
                    });
                }
                return;
            }
            Verdict::Unauthorized { .. } => continue,
            Verdict::RetryAfter(delay) => {
                tracing::warn!(
                    retry_after_ms = delay.as_millis() as u64,
                    "MS4 throttled: pausing every sender"
                );
                if let Ok(Err(e)) | Err(e) = core
                    .limiter
                    .send(PauseBudget {
                        budget: ratelimiter::MS4,
                        delay,
                    })
                    .await
                    .map_err(|e| StoreError::Reply(e.to_string()))
                {
                    tracing::warn!(error = %e, "could not record the pause in redis; waiting locally");
                    tokio::time::sleep(delay).await;
                }
            }
            Verdict::Transient(reason) => {
                let delay = backoff.next_delay();
                tracing::warn!(%reason, retry_in_ms = delay.as_millis() as u64, records = part.entries.len(), "MS4 delivery failed; will retry");
                tokio::time::sleep(delay).await;
            }
        }
    }
}
