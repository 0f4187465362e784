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

use crate::model::{entry_to_record, InboundFields, TransformOptions};
use crate::settings::Settings;
use crate::shutdown::Shutdown;
use crate::store::dlq::Stage;
use crate::store::keys::PROCESSORS;
use crate::store::{DeadLetter, Entry, Handoff, OutboundRecord, Store, StoreError};
use crate::supervision::RestartPacer;
use crate::{health::Health, metrics as m};
use actix::prelude::*;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tracing::Instrument;

/// Field names of an inbound entry.
pub mod inbound_fields {
    pub const SOURCE: &str = "source";
    pub const MAILBOX: &str = "mailbox";
    pub const PAYLOAD: &str = "payload";
}

/// Wait until the processor has finished its current chunk and stopped reading.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Drain;

pub struct BatchProcessor {
    store: Store,
    settings: Arc<Settings>,
    consumer: String,
    health: Health,
    shutdown: Shutdown,
    pacer: RestartPacer,
    /// True once the work loop has returned after a drain.
    stopped: watch::Sender<bool>,
}

impl BatchProcessor {
    pub fn new(store: Store, settings: Arc<Settings>, health: Health, shutdown: Shutdown) -> Self {
        Self {
            consumer: settings.consumer_name(),
            store,
            settings,
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
                tracing::error!(actor = "batch_processor", error = %e, "processing failed; restarting");
                act.health.set_redis(false);
                ctx.stop();
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
}

impl Work {
    async fn run(self) -> Result<(), StoreError> {
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

        let pending = self
            .store
            .own_pending(&inbound, PROCESSORS, &self.consumer, p.read_chunk)
            .await?;
        if !pending.is_empty() {
            tracing::info!(
                entries = pending.len(),
                "resuming entries this consumer held"
            );
        }
        for chunk in pending.chunks(p.read_chunk) {
            self.process(chunk).await?;
        }

        let claim_every = Duration::from_millis((claim_idle / 2).max(500));
        let mut next_claim = Instant::now();
        let mut claim_cursor = "0-0".to_string();
        while !self.shutdown.is_raised() {
            let backlog = self.store.len(&outbound).await?;
            if backlog > p.max_backlog {
                tracing::debug!(backlog, "outbound backlog above max_backlog; waiting");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            if Instant::now() >= next_claim {
                let (next, claimed) = self
                    .store
                    .autoclaim(
                        &inbound,
                        PROCESSORS,
                        &self.consumer,
                        claim_idle,
                        &claim_cursor,
                        p.read_chunk,
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
            let entries = blocking
                .read_group(
                    &inbound,
                    PROCESSORS,
                    &self.consumer,
                    ">",
                    p.read_chunk,
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

    /// Finishes one chunk with a single hand-off.
    async fn process(&self, entries: &[Entry]) -> Result<(), StoreError> {
        let opts = TransformOptions {
            include_raw: self.settings.ms4.include_raw,
        };
        let plan = plan_chunk(entries, opts);
        let keys: Vec<&str> = plan.records.iter().map(|r| r.key.as_str()).collect();
        let seen = self.store.seen(&keys).await?;
        let mut handoff = Handoff {
            dead: plan.dead,
            done: entries.iter().map(|e| e.id.clone()).collect(),
            outbound: Vec::with_capacity(plan.records.len()),
        };
        let mut duplicates = plan.duplicates_in_chunk;
        for (rec, was_seen) in plan.records.into_iter().zip(seen) {
            if was_seen {
                duplicates += 1;
            } else {
                handoff.outbound.push(rec);
            }
        }
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
                tracing::warn!(entry = %d.entry_id, mailbox = %d.mailbox, reason = %d.reason, "dead-lettered a malformed entry");
            }
        }
        Ok(())
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

fn plan_chunk(entries: &[Entry], opts: TransformOptions) -> ChunkPlan {
    let now = now_ms();
    let mut plan = ChunkPlan::default();
    let mut keys_in_chunk = HashSet::with_capacity(entries.len());
    for e in entries {
        let fields = InboundFields {
            source: e.field(inbound_fields::SOURCE),
            mailbox: e.field(inbound_fields::MAILBOX),
            payload: e.field(inbound_fields::PAYLOAD),
        };
        match entry_to_record(&fields, opts) {
            Ok(record) => {
                if !keys_in_chunk.insert(record.idempotency_key.clone()) {
                    plan.duplicates_in_chunk += 1;
                    continue;
                }
                let json = serde_json::to_string(&record).expect("a record always serializes");
                plan.records.push(OutboundRecord {
                    key: record.idempotency_key,
                    json,
                    inbound_ms: e.added_ms(),
                });
            }
            Err(reason) => plan.dead.push(DeadLetter {
                stage: Stage::Process,
                reason: reason.to_string(),
                status: 0,
                attempts: 1,
                first_failure_ms: now,
                last_failure_ms: now,
                payload: fields.payload.unwrap_or_default().to_string(),
                mailbox: fields.mailbox.unwrap_or_default().to_string(),
                key: String::new(),
                entry_id: e.id.clone(),
                response: String::new(),
            }),
        }
    }
    plan
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
        let plan = plan_chunk(&entries, Default::default());
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
