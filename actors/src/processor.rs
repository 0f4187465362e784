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
use crate::ratelimiter::RateLimiter;
use crate::retry::Backoff;
use crate::settings::{Oversize, Settings};
use crate::shutdown::Shutdown;
use crate::store::dlq::Stage;
use crate::store::keys::PROCESSORS;
use crate::store::{
    DeadLetter, Entry, FollowUp, Handoff, OutboundRecord, ReadBudget, Scan, Store, StoreError,
};
use crate::supervision::RestartPacer;
use crate::{health::Health, metrics as m};
use actix::prelude::*;
use std::collections::HashSet;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::Instrument;

/// Field names of an inbound entry.
pub mod inbound_fields {
    /// `graph` (default) or `imap`.
    pub const SOURCE: &str = "source";
    /// `message` (default: `payload` is the message) or `ref` (a webhook notification: only
    /// `message_id`; the processor fetches the message).
    pub const KIND: &str = "kind";
    pub const MAILBOX: &str = "mailbox";
    pub const PAYLOAD: &str = "payload";
    pub const MESSAGE_ID: &str = "message_id";
    /// `1`: mark the message read in Graph once MS4 accepted it (unread mode); for IMAP, run
    /// the source's after-delivery action (`\Seen` or move).
    pub const MARK_READ: &str = "mark_read";
    /// IMAP: the message's UID and its folder's UIDVALIDITY, and its INTERNALDATE (RFC 3339).
    pub const UID: &str = "uid";
    pub const UIDVALIDITY: &str = "uidvalidity";
    pub const INTERNAL_DATE: &str = "internal_date";
    /// IMAP, a message above `imap.max_message_bytes`: `{size}:{limit}`; `payload` is then its
    /// header only, and `attachments` (JSON) what its BODYSTRUCTURE lists.
    pub const OVERSIZE: &str = "oversize";
    pub const ATTACHMENTS: &str = "attachments";
}

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
                        Rc::new(crate::poller::graph_tokens(&self.settings)),
                        self.limiter.clone(),
                        self.settings.graph.request_timeout(),
                        self.settings.graph.max_concurrent_per_mailbox,
                    )
                    .with_attachments(self.settings.graph.fetch_attachments)
                    .with_agent(crate::clients::graph::user_agent(&self.consumer)),
                )
            }),
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
        while !self.shutdown.is_raised() {
            self.health.beat("batch_processor");
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
        let mut backoff = Backoff::new(&self.settings.ms4);
        // Results survive a failed attempt: only what is still missing is fetched again, so a
        // throttled mailbox makes progress instead of restarting the chunk.
        let mut partial: Vec<Option<Resolution>> = vec![None; entries.len()];
        let resolved = loop {
            match self.resolve(entries, &mut partial).await {
                Ok(()) => {
                    break partial
                        .into_iter()
                        .map(Option::unwrap_or_default)
                        .collect::<Vec<_>>()
                }
                Err(e) => {
                    let d = match e {
                        GraphError::Throttled(d) => d,
                        _ => backoff.next_delay(),
                    };
                    tracing::warn!(error = %e, retry_in_ms = d.as_millis() as u64, "cannot resolve entries from Graph yet; retrying the chunk");
                    self.health.beat("batch_processor");
                    // Still ours: keep another daemon from claiming the chunk as abandoned.
                    let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
                    let inbound = self.store.keys().inbound();
                    self.store
                        .touch(&inbound, PROCESSORS, &self.consumer, &ids)
                        .await?;
                    tokio::time::sleep(d).await;
                    if self.shutdown.is_raised() {
                        // Left pending: picked up again on the next start.
                        return Ok(());
                    }
                }
            }
        };
        let plan = plan_chunk(entries, &resolved, opts);
        let keys: Vec<&str> = plan.records.iter().map(|r| r.key.as_str()).collect();
        let seen = self.store.seen(&keys).await?;
        let mut handoff = Handoff {
            dead: plan.dead,
            done: entries.iter().map(|e| e.id.clone()).collect(),
            outbound: Vec::with_capacity(plan.records.len()),
            duplicates: plan.duplicates_in_chunk,
        };
        for (rec, was_seen) in plan.records.into_iter().zip(seen) {
            if was_seen {
                handoff.duplicates += 1;
            } else {
                handoff.outbound.push(rec);
            }
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
            metrics::counter!(m::DEAD_LETTERED, "stage" => "process")
                .increment(handoff.dead.len() as u64);
            for d in &handoff.dead {
                tracing::warn!(entry = %d.entry_id, mailbox = %d.mailbox, reason = %d.reason, "dead-lettered an entry");
            }
        }
        Ok(())
    }

    /// Fetches what the chunk's entries need from Graph, concurrently (the RateLimiter keeps
    /// each mailbox within its limits). A transient failure fails the whole chunk.
    async fn resolve(
        &self,
        entries: &[Entry],
        done: &mut [Option<Resolution>],
    ) -> Result<(), GraphError> {
        use inbound_fields as f;
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
            if e.field(f::KIND) == Some("ref") {
                let id = e.field(f::MESSAGE_ID).unwrap_or_default();
                work.push((i, mailbox, id.to_string(), true));
            } else if self.settings.graph.fetch_attachments && self.graph.is_some() {
                match e.field(f::PAYLOAD).and_then(graph_needs_attachments) {
                    Some(id) => work.push((i, mailbox, id, false)),
                    None => done[i] = Some(Resolution::AsIs),
                }
            } else {
                done[i] = Some(Resolution::AsIs);
            }
        }
        if work.is_empty() {
            return Ok(());
        }
        let Some(graph) = self.graph.clone() else {
            for (i, ..) in work {
                done[i] = Some(Resolution::Dead {
                    reason: "a webhook ref, but no Graph mailbox is configured to fetch it from"
                        .into(),
                    status: 0,
                });
            }
            return Ok(());
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
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

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
    /// Entries whose key appears earlier in the same chunk.
    duplicates_in_chunk: u64,
}

fn plan_chunk(entries: &[Entry], resolved: &[Resolution], opts: TransformOptions) -> ChunkPlan {
    use inbound_fields as f;
    let now = now_ms();
    let mut plan = ChunkPlan::default();
    let mut keys_in_chunk = HashSet::with_capacity(entries.len());
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
            Ok(record) => {
                if !keys_in_chunk.insert(record.idempotency_key.clone()) {
                    plan.duplicates_in_chunk += 1;
                    continue;
                }
                let json = serde_json::to_string(&record).expect("a record always serializes");
                let mark_read = (e.field(f::MARK_READ) == Some("1"))
                    .then(|| follow_up(e, &record))
                    .flatten();
                plan.records.push(OutboundRecord {
                    key: record.idempotency_key,
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
    use inbound_fields as f;
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

pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

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
