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

use crate::clients::ms4::{Ms4Client, Verdict};
use crate::health::Health;
use crate::metrics as m;
use crate::pipeline::ratelimiter::RateLimiter;
use crate::retry::{Admission, Breaker};
use crate::settings::Settings;
use crate::shutdown::Shutdown;
use crate::store::keys::SENDERS;
use crate::store::outbound;
use crate::store::read_budget::{entry_bytes, within_budget};
use crate::store::{Entry, ReadBudget, Scan, Store, StoreError};
use crate::supervision::{spawn_work, RestartPacer};
use actix::prelude::*;
use std::cell::{Cell, RefCell};
use std::collections::{HashSet, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};
use tracing::Instrument;

mod delivery;
use delivery::deliver;

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

    // Entries waiting for a batch: claimed ones (at most one batch's worth, within the byte
    // budget), or read ahead for the free slots (within the bytes free).
    let mut backlog: VecDeque<Entry> = VecDeque::new();
    // This consumer's own pending entries (held before it stopped) are re-sent first, read in
    // budgeted steps from this cursor; `None` once all were read.
    let mut own: Option<String> = Some("0-0".to_string());
    let claim_idle = s.redis.claim_idle_ms;
    let housekeeping_every = Duration::from_millis((claim_idle / 3).max(300));
    let mut next_housekeeping = Instant::now() + housekeeping_every;
    let mut claim_cursor = "0-0".to_string();

    // On a drain, what was read (claimed or read ahead) is still sent; nothing new is read.
    while !shutdown.is_raised() || !backlog.is_empty() {
        core.health.beat("ms4_sender");
        if !shutdown.is_raised() && Instant::now() >= next_housekeeping {
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
        let slots = s.ms4.max_in_flight - core.in_flight.get();
        if backlog.is_empty() && own.is_none() && slots > 1 && !shutdown.is_raised() {
            // An outbound entry holds a batch: read one for each free slot in one call (within
            // the bytes free), instead of one call a slot. While the processor hands off large
            // chunks, each call waits behind one in Redis; at batch 50 these reads were what
            // held deliveries back.
            let free = s
                .ms4
                .max_in_flight_bytes
                .saturating_sub(core.in_flight_bytes.get());
            let (ahead, _) = core
                .store
                .read_new_budgeted(
                    &outbound,
                    SENDERS,
                    &core.consumer,
                    ReadBudget::new(slots, free.max(1)),
                    None,
                )
                .await?;
            backlog.extend(ahead);
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
