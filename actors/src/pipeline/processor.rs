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

use crate::clients::graph::{GraphClient, GraphError};
use crate::model::{
    entry_to_record, graph_needs_attachments, AttachmentMeta, InboundFields, OmittedBody,
    TransformOptions,
};
use crate::pipeline::ratelimiter::RateLimiter;
use crate::retry::Backoff;
use crate::settings::{Oversize, Settings};
use crate::shutdown::Shutdown;
use crate::store::dlq::Stage;
use crate::store::keys::PROCESSORS;
use crate::store::park::{ParkState, PROBE};
use crate::store::streams::ParkedEntry;
use crate::store::{
    DeadLetter, Entry, FollowUp, Handoff, OutboundRecord, ReadBudget, Scan, Store, StoreError,
};
use crate::supervision::RestartPacer;
use crate::{control::health::Health, metrics as m};
use actix::prelude::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::Instrument;

/// What the processor learned from Graph about one entry before transforming it.
#[derive(Debug, Clone, Default)]
enum Resolution {
    /// Nothing to fetch.
    #[default]
    AsIs,
    /// A webhook ref, now fetched (message JSON and, if any, its attachments).
    Fetched {
        payload: String,
        attachments: Option<Vec<AttachmentMeta>>,
    },
    /// A polled message whose attachment metadata was fetched.
    Attachments(Vec<AttachmentMeta>),
    /// Cannot be resolved, for a reason of its own (dead letter).
    Dead { reason: String, status: u16 },
    /// Graph refuses the entry's mailbox for now: set aside in its parked stream.
    Park { reason: String },
}

/// Wait until the processor has finished its current chunk and stopped reading.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain;

pub struct BatchProcessor {
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
    pub fn new(
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
            graph: (!self.settings.graph.mailboxes.is_empty()).then(|| {
                // Built here, on the processor's own thread (awc is not Send).
                Rc::new(
                    GraphClient::new(
                        &self.settings.graph.base_url,
                        Rc::new(crate::clients::oauth::graph_tokens(&self.settings)),
                        RateLimiter::graph_budget(&self.limiter),
                        self.settings.graph.request_timeout(),
                        self.settings.graph.max_concurrent_per_mailbox,
                    )
                    .with_attachments(self.settings.graph.fetch_attachments)
                    .with_agent(crate::clients::graph::user_agent(&self.consumer)),
                )
            }),
            parked: Default::default(),
        };
        let span = tracing::info_span!("batch_processor", consumer = %self.consumer);
        let fut = async move {
            tokio::time::sleep(delay).await;
            work.run().await
        }
        .instrument(span);
        ctx.spawn(fut.into_actor(self).map(|res, act, ctx| match res {
            Ok(()) => {
                act.stopped.send_replace(true);
            }
            Err(e) => {
                crate::supervision::restart_after_failure("batch_processor", &e, &act.health, ctx);
            }
        }));
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
    graph: Option<Rc<GraphClient>>,
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

        // Every read is bounded in bytes as well as in entries (store::read_budget).
        let budget = ReadBudget::new(p.read_chunk, p.read_max_bytes);
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
                self.process(&pending).await?;
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
        while !self.shutdown.is_raised() {
            self.health.beat("batch_processor");
            if self.graph.is_some() && Instant::now() >= next_tend {
                self.tend_parked().await?;
                next_tend = Instant::now() + PARK_TEND_EVERY;
            }
            let backlog = self.store.len(&outbound).await?;
            if backlog > p.max_backlog {
                tracing::debug!(backlog, "outbound backlog above max_backlog; waiting");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            if Instant::now() >= next_claim {
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
                    self.process(&claimed).await?;
                }
                if next == "0-0" {
                    next_claim = Instant::now() + claim_every;
                }
                claim_cursor = next;
                continue;
            }
            let (entries, _) = blocking
                .read_new_budgeted(
                    &inbound,
                    PROCESSORS,
                    &self.consumer,
                    budget,
                    Some(p.block_ms),
                )
                .await?;
            if !entries.is_empty() {
                self.process(&entries).await?;
            }
        }
        tracing::info!("drained: no longer reading the inbound stream");
        Ok(())
    }

    /// Finishes one chunk with a single hand-off. Entries that need Graph (webhook refs,
    /// attachment metadata) are resolved first; while Graph fails transiently the chunk is
    /// retried with backoff and stays pending.
    async fn process(&self, entries: &[Entry]) -> Result<(), StoreError> {
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
            match self.resolve(entries, &mut partial, last_try).await {
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
                        return Ok(());
                    }
                }
            }
        };
        let plan = plan_chunk(entries, &resolved, opts);
        let mut handoff = Handoff {
            dead: plan.dead,
            done: entries.iter().map(|e| e.id.clone()).collect(),
            outbound: Vec::with_capacity(plan.records.len()),
            duplicates: plan.duplicates_in_chunk,
            parked: plan.parked,
        };
        let keys: Vec<&str> = plan.records.iter().map(|r| r.key.as_str()).collect();
        let marks = self.store.marks(&keys).await?;
        let mut conflicts = Vec::new();
        for (rec, mark) in plan.records.into_iter().zip(marks) {
            match mark {
                None => handoff.outbound.push(rec),
                Some(m) if m == rec.digest || m == LEGACY_MARK => handoff.duplicates += 1,
                // The key names a message with other content: this one is another message.
                Some(_) => conflicts.push(renamed(rec)),
            }
        }
        // Each message that reused a key is delivered once, under the key and its digest.
        let keys: Vec<&str> = conflicts.iter().map(|r| r.key.as_str()).collect();
        let marks = self.store.marks(&keys).await?;
        let mut key_conflicts = plan.key_conflicts;
        for (rec, mark) in conflicts.into_iter().zip(marks) {
            if mark.is_some() {
                handoff.duplicates += 1;
            } else {
                key_conflicts += 1;
                tracing::warn!(key = %rec.key, "a Message-ID arrived again with other content (sender, subject or date): delivered as a message of its own under the key and its content digest");
                handoff.outbound.push(rec);
            }
        }
        if key_conflicts > 0 {
            metrics::counter!(m::KEY_CONFLICTS).increment(key_conflicts);
        }
        let duplicates = handoff.duplicates;
        self.store
            .handoff(
                &handoff,
                self.settings.redis.idempotency_ttl_s,
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
        self.after_parking(entries, &resolved).await
    }

    /// Updates the parked mailboxes after a hand-off: a mailbox whose entries were parked
    /// gets (or keeps) its retry schedule, a failed probe pushes it further out, and a mailbox
    /// Graph served again is un-parked whole.
    async fn after_parking(
        &self,
        entries: &[Entry],
        resolved: &[Resolution],
    ) -> Result<(), StoreError> {
        use crate::store::schema::inbound as f;
        let mut refused: BTreeMap<&str, (&str, bool)> = BTreeMap::new();
        let mut served: BTreeSet<&str> = BTreeSet::new();
        for (e, r) in entries.iter().zip(resolved) {
            let mailbox = e.field(f::MAILBOX).unwrap_or_default();
            let probe = e.field(PROBE) == Some("1");
            match r {
                Resolution::Park { reason } => {
                    metrics::counter!(m::PARKED, "mailbox" => mailbox.to_string()).increment(1);
                    let slot = refused.entry(mailbox).or_insert((reason, false));
                    slot.1 |= probe;
                }
                Resolution::Fetched { .. } | Resolution::Attachments(_) => {
                    served.insert(mailbox);
                }
                _ => {}
            }
        }
        // A mailbox with entries refused in this chunk stays parked even if others were served
        // (one message Graph refuses must not bring the whole mailbox back round and round).
        served.retain(|m| !refused.contains_key(m));
        let now = now_ms();
        for (mailbox, (reason, probe_failed)) in refused {
            let known = self.parked.borrow().get(mailbox).cloned();
            let state = match known {
                None => {
                    tracing::error!(%mailbox, %reason, "Graph refuses this mailbox: its entries are parked in Redis and retried on a schedule; every other mailbox keeps flowing");
                    ParkState {
                        reason: reason.to_string(),
                        since_ms: now,
                        attempts: 0,
                        next_ms: now + self.park_delay_ms(0),
                    }
                }
                Some(mut s) if probe_failed => {
                    s.attempts += 1;
                    s.reason = reason.to_string();
                    s.next_ms = now + self.park_delay_ms(s.attempts);
                    tracing::warn!(%mailbox, %reason, attempts = s.attempts, retry_in_s = (s.next_ms - now) / 1_000, "a parked mailbox is still refused");
                    s
                }
                Some(s) => {
                    self.store.keep_park_state(mailbox, &s).await?;
                    continue;
                }
            };
            self.store.set_park_state(mailbox, &state).await?;
            self.show_parked(mailbox, &state).await?;
            self.parked.borrow_mut().insert(mailbox.to_string(), state);
        }
        for mailbox in served {
            if self.parked.borrow().contains_key(mailbox) {
                self.unpark_all(mailbox).await?;
            }
        }
        Ok(())
    }

    fn park_delay_ms(&self, failed: u32) -> u64 {
        self.settings.graph.park_retry_after(failed).as_millis() as u64
    }

    /// Graph serves a parked mailbox again: every parked entry goes back to the inbound stream.
    async fn unpark_all(&self, mailbox: &str) -> Result<(), StoreError> {
        self.store.clear_park_state(mailbox).await?;
        self.parked.borrow_mut().remove(mailbox);
        let mut moved = 0;
        loop {
            let n = self.store.unpark(mailbox, 1_000, false).await?;
            moved += n;
            if n == 0 {
                break;
            }
        }
        tracing::info!(%mailbox, entries = moved, "Graph serves the mailbox again: its parked entries are back in the inbound stream");
        self.health.set_source_error(&park_key(mailbox), None);
        metrics::gauge!(m::PARKED_ENTRIES, "mailbox" => mailbox.to_string()).set(0.0);
        Ok(())
    }

    /// Reads the parked mailboxes (another daemon may have parked or un-parked one), sends one
    /// probe back for each mailbox whose retry is due, and shows them in `/ready` and metrics.
    async fn tend_parked(&self) -> Result<(), StoreError> {
        let states = self.store.park_states().await?;
        let now = now_ms();
        let gone: Vec<String> = self
            .parked
            .borrow()
            .keys()
            .filter(|m| !states.contains_key(*m))
            .cloned()
            .collect();
        for mailbox in gone {
            self.health.set_source_error(&park_key(&mailbox), None);
            metrics::gauge!(m::PARKED_ENTRIES, "mailbox" => mailbox).set(0.0);
        }
        for (mailbox, mut state) in states.clone() {
            if state.next_ms <= now {
                if self.store.parked_len(&mailbox).await? == 0 {
                    // Nothing left to retry (replayed, purged, or un-parked elsewhere).
                    self.store.clear_park_state(&mailbox).await?;
                    self.health.set_source_error(&park_key(&mailbox), None);
                    continue;
                }
                // The next probe only after this one had its chance.
                state.next_ms = now + self.park_delay_ms(state.attempts);
                self.store.set_park_state(&mailbox, &state).await?;
                self.store.unpark(&mailbox, 1, true).await?;
                tracing::info!(%mailbox, "retrying a parked mailbox with one probe entry");
            }
            self.show_parked(&mailbox, &state).await?;
        }
        *self.parked.borrow_mut() = states;
        Ok(())
    }

    async fn show_parked(&self, mailbox: &str, state: &ParkState) -> Result<(), StoreError> {
        let n = self.store.parked_len(mailbox).await?;
        metrics::gauge!(m::PARKED_ENTRIES, "mailbox" => mailbox.to_string()).set(n as f64);
        let retry_in = state.next_ms.saturating_sub(now_ms()) / 1_000;
        self.health.set_source_error(
            &park_key(mailbox),
            Some(format!(
                "{n} entries parked: {}; next retry in {retry_in} s",
                state.reason
            )),
        );
        Ok(())
    }

    /// Fetches what the chunk's entries need from Graph, concurrently (the RateLimiter keeps
    /// each mailbox within its limits). An entry of a parked mailbox is parked again without a
    /// request (unless it is the mailbox's probe); a refusal (401/403, a refused credential)
    /// parks the entry at once; a transient failure leaves it unresolved, to be tried again —
    /// or parked when `last_try`. Returns the first transient failure, if any is left.
    async fn resolve(
        &self,
        entries: &[Entry],
        done: &mut [Option<Resolution>],
        last_try: bool,
    ) -> Option<GraphError> {
        use crate::store::schema::inbound as f;
        let mut work = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            if done[i].is_some() {
                continue;
            }
            if e.field(f::SOURCE).unwrap_or("graph") != "graph" {
                done[i] = Some(Resolution::AsIs);
                continue;
            }
            let mailbox = e.field(f::MAILBOX).unwrap_or_default();
            let id = if e.field(f::KIND) == Some("ref") {
                Some((e.field(f::MESSAGE_ID).unwrap_or_default().to_string(), true))
            } else if self.settings.graph.fetch_attachments && self.graph.is_some() {
                e.field(f::PAYLOAD)
                    .and_then(graph_needs_attachments)
                    .map(|id| (id, false))
            } else {
                None
            };
            let Some((id, is_ref)) = id else {
                done[i] = Some(Resolution::AsIs);
                continue;
            };
            if e.field(PROBE) != Some("1") {
                if let Some(state) = self.parked.borrow().get(mailbox) {
                    done[i] = Some(Resolution::Park {
                        reason: state.reason.clone(),
                    });
                    continue;
                }
            }
            work.push((i, mailbox, id, is_ref));
        }
        if work.is_empty() {
            return None;
        }
        let Some(graph) = self.graph.clone() else {
            for (i, ..) in work {
                done[i] = Some(Resolution::Dead {
                    reason: "a webhook ref, but no Graph mailbox is configured to fetch it from"
                        .into(),
                    status: 0,
                });
            }
            return None;
        };
        let fetch_attachments = self.settings.graph.fetch_attachments;
        let jobs = work.into_iter().map(|(i, mailbox, id, is_ref)| {
            let graph = graph.clone();
            async move {
                let r = if is_ref {
                    fetch_ref(&graph, mailbox, &id, fetch_attachments).await
                } else {
                    match graph.attachments(mailbox, &id).await {
                        Ok(a) => Ok(Resolution::Attachments(a)),
                        Err(e) => gone_or(e),
                    }
                };
                (i, r)
            }
        });
        let mut first_error = None;
        for (i, r) in futures_util::future::join_all(jobs).await {
            match r {
                Ok(resolution) => done[i] = Some(resolution),
                Err(e) if refuses_mailbox(&e) || last_try => {
                    done[i] = Some(Resolution::Park {
                        reason: e.to_string(),
                    })
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error
    }
}

/// Graph refuses the mailbox (not one message): access denied, a refused credential.
fn refuses_mailbox(e: &GraphError) -> bool {
    matches!(
        e,
        GraphError::Unauthorized(..)
            | GraphError::Token(crate::clients::oauth::OAuthError::Rejected { .. })
    )
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

/// The `/ready` name of a parked mailbox.
fn park_key(mailbox: &str) -> String {
    format!("parked:{mailbox}")
}

/// Longest a chunk waits on a throttled mailbox before trying again (a longer Retry-After
/// parks the mailbox's entries after `graph.park_after_attempts` instead of stalling the rest).
const MAX_CHUNK_WAIT: Duration = Duration::from_secs(5);

/// How often the processor looks at the parked mailboxes (due probes, `/ready`).
const PARK_TEND_EVERY: Duration = Duration::from_secs(1);

/// Fetches a message a webhook notified, and its attachment metadata.
async fn fetch_ref(
    graph: &GraphClient,
    mailbox: &str,
    id: &str,
    fetch_attachments: bool,
) -> Result<Resolution, GraphError> {
    if mailbox.is_empty() || id.is_empty() {
        return Ok(Resolution::Dead {
            reason: "webhook ref without mailbox or message_id".into(),
            status: 0,
        });
    }
    let body = match graph.message(mailbox, id).await {
        Ok(b) => b,
        Err(e) => return gone_or(e),
    };
    let payload = String::from_utf8_lossy(&body).into_owned();
    let attachments = match graph_needs_attachments(&payload) {
        Some(_) if fetch_attachments => match graph.attachments(mailbox, id).await {
            Ok(a) => Some(a),
            Err(e) => return gone_or(e),
        },
        _ => None,
    };
    Ok(Resolution::Fetched {
        payload,
        attachments,
    })
}

/// A message that is gone (404) or that Graph refuses to serve (other 4xx) is dead-lettered;
/// anything else is retried.
fn gone_or(e: GraphError) -> Result<Resolution, GraphError> {
    match e {
        GraphError::NotFound => Ok(Resolution::Dead {
            reason: "the message no longer exists in the mailbox (404)".into(),
            status: 404,
        }),
        GraphError::Rejected { status, body } => Ok(Resolution::Dead {
            reason: format!("Graph refused to serve the message ({status}): {body}"),
            status,
        }),
        other => Err(other),
    }
}

/// What one chunk becomes, before Redis is asked which keys it has seen.
#[derive(Debug, Default)]
struct ChunkPlan {
    records: Vec<OutboundRecord>,
    dead: Vec<DeadLetter>,
    parked: Vec<ParkedEntry>,
    /// Records renamed because an earlier entry of the chunk had their key and other content.
    key_conflicts: u64,
    /// Entries whose key appears earlier in the same chunk.
    duplicates_in_chunk: u64,
}

fn plan_chunk(entries: &[Entry], resolved: &[Resolution], opts: TransformOptions) -> ChunkPlan {
    use crate::store::schema::inbound as f;
    let now = now_ms();
    let mut plan = ChunkPlan::default();
    // Key → content digest of the records planned so far.
    let mut keys_in_chunk: HashMap<String, String> = HashMap::with_capacity(entries.len());
    for (e, resolution) in entries.iter().zip(resolved) {
        let omitted = e
            .field(f::OVERSIZE)
            .and_then(|o| OmittedBody::parse(o, e.field(f::ATTACHMENTS)));
        let mut fields = InboundFields {
            source: e.field(f::SOURCE),
            mailbox: e.field(f::MAILBOX),
            payload: e.field(f::PAYLOAD),
            attachments: None,
            internal_date: e.field(f::INTERNAL_DATE),
            omitted: omitted.as_ref(),
        };
        let dead = |reason: String, status: u16, payload: &str| DeadLetter {
            stage: Stage::Process,
            reason,
            status,
            attempts: 1,
            first_failure_ms: now,
            last_failure_ms: now,
            payload: payload.to_string(),
            mailbox: e.field(f::MAILBOX).unwrap_or_default().to_string(),
            key: String::new(),
            entry_id: e.id.clone(),
            response: String::new(),
            kind: e.field(f::KIND).unwrap_or("message").to_string(),
            source: e.field(f::SOURCE).unwrap_or("graph").to_string(),
            carry: crate::store::dlq::carried(
                e,
                &[
                    f::FOLLOW_UP,
                    f::UID,
                    f::UIDVALIDITY,
                    f::INTERNAL_DATE,
                    f::OVERSIZE,
                    f::ATTACHMENTS,
                ],
            ),
        };
        match resolution {
            Resolution::AsIs => {}
            Resolution::Fetched {
                payload,
                attachments,
            } => {
                fields.payload = Some(payload);
                fields.attachments = attachments.as_deref();
            }
            Resolution::Attachments(a) => fields.attachments = Some(a),
            Resolution::Park { .. } => {
                plan.parked.push(ParkedEntry {
                    mailbox: e.field(f::MAILBOX).unwrap_or_default().to_string(),
                    fields: e.fields.clone(),
                });
                continue;
            }
            Resolution::Dead { reason, status } => {
                let what = e
                    .field(f::MESSAGE_ID)
                    .or(fields.payload)
                    .unwrap_or_default();
                plan.dead.push(dead(reason.clone(), *status, what));
                continue;
            }
        }
        match entry_to_record(&fields, opts) {
            Ok(mut record) => {
                match keys_in_chunk.get(&record.idempotency_key) {
                    None => {}
                    Some(digest) if *digest == record.content_digest => {
                        plan.duplicates_in_chunk += 1;
                        continue;
                    }
                    Some(_) => {
                        record.idempotency_key = crate::model::conflict_key(
                            &record.idempotency_key,
                            &record.content_digest,
                        );
                        if keys_in_chunk.contains_key(&record.idempotency_key) {
                            plan.duplicates_in_chunk += 1;
                            continue;
                        }
                        tracing::warn!(key = %record.idempotency_key, "a Message-ID arrived again with other content (sender, subject or date): delivered as a message of its own under the key and its content digest");
                        plan.key_conflicts += 1;
                    }
                }
                keys_in_chunk.insert(
                    record.idempotency_key.clone(),
                    record.content_digest.clone(),
                );
                let json = serde_json::to_string(&record).expect("a record always serializes");
                let mark_read = (e.field(f::FOLLOW_UP) == Some("1"))
                    .then(|| follow_up(e, &record))
                    .flatten();
                plan.records.push(OutboundRecord {
                    key: record.idempotency_key,
                    digest: record.content_digest,
                    json,
                    inbound_ms: e.added_ms(),
                    mark_read,
                });
            }
            Err(reason) => plan.dead.push(dead(
                reason.to_string(),
                0,
                fields.payload.unwrap_or_default(),
            )),
        }
    }
    plan
}

/// What to do with a delivered message: mark it read in Graph, or the IMAP source's action on
/// its UID (`None` when an IMAP entry lacks its UID: nothing can be acted on).
fn follow_up(e: &Entry, record: &crate::model::Ms4Record) -> Option<FollowUp> {
    use crate::store::schema::inbound as f;
    match record.source {
        crate::model::Source::Graph => Some(FollowUp {
            source: "graph",
            mailbox: record.mailbox.clone(),
            id: record.id.clone(),
        }),
        crate::model::Source::Imap => Some(FollowUp {
            source: "imap",
            mailbox: record.mailbox.clone(),
            id: format!("{}:{}", e.field(f::UIDVALIDITY)?, e.field(f::UID)?),
        }),
    }
}

pub(crate) use crate::clock::now_ms;

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, payload: &str) -> Entry {
        Entry {
            id: id.into(),
            fields: vec![
                ("mailbox".into(), "m@x.example".into()),
                ("payload".into(), payload.into()),
            ],
        }
    }

    fn msg(imid: &str) -> String {
        format!(
            r#"{{"id":"{imid}","internetMessageId":"{imid}","from":{{"emailAddress":{{"address":"a@b.example"}}}},"receivedDateTime":"2026-01-01T00:00:00Z"}}"#
        )
    }

    #[test]
    fn a_chunk_splits_into_records_dead_letters_and_in_chunk_duplicates() {
        let entries = vec![
            entry("1-0", &msg("<a>")),
            entry("2-0", "{broken"),
            entry("3-0", &msg("<a>")),
            entry("4-0", &msg("<b>")),
        ];
        let plan = plan_chunk(&entries, &vec![Resolution::AsIs; 4], Default::default());
        assert_eq!(plan.records.len(), 2);
        assert_eq!(plan.records[0].key, "<a>");
        assert_eq!(plan.records[0].inbound_ms, 1);
        assert_eq!(plan.records[1].key, "<b>");
        assert_eq!(plan.duplicates_in_chunk, 1);
        assert_eq!(plan.dead.len(), 1);
        assert_eq!(plan.dead[0].entry_id, "2-0");
        assert_eq!(plan.dead[0].payload, "{broken");
        assert!(plan.dead[0].reason.contains("not a Graph message"));
    }
}
