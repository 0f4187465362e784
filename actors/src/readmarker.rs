//! The ReadMarker actor: marks delivered messages read in Graph (unread mode), only after MS4
//! accepted them.
//!
//! The MS4Sender queues `(mailbox, message id)` in `stream:markread` in the same MULTI/EXEC that
//! acknowledges the delivery. This actor reads that stream through the `markers` group and
//! sends JSON `$batch` requests of at most 20 PATCHes (`{"isRead": true}`) per mailbox. A
//! marked (or vanished, 404) message is acknowledged; a throttled or failed one is retried with
//! backoff; one Graph refuses for good is dead-lettered with the answer. Nothing is dropped.

use crate::clients::graph::{GraphClient, GraphError, BATCH_MAX};
use crate::retry::Backoff;
use crate::settings::Settings;
use crate::shutdown::Shutdown;
use crate::store::dlq::Stage;
use crate::store::keys::MARKERS;
use crate::store::{DeadLetter, Entry, Store, StoreError};
use crate::supervision::RestartPacer;
use crate::{health::Health, metrics as m};
use actix::prelude::*;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

pub struct ReadMarker {
    store: Store,
    settings: Arc<Settings>,
    graph: Rc<GraphClient>,
    health: Health,
    shutdown: Shutdown,
    pacer: RestartPacer,
}

impl ReadMarker {
    pub fn new(
        store: Store,
        settings: Arc<Settings>,
        graph: Rc<GraphClient>,
        health: Health,
        shutdown: Shutdown,
    ) -> Self {
        Self {
            store,
            settings,
            graph,
            health,
            shutdown,
            pacer: RestartPacer::new("read_marker"),
        }
    }
}

impl Actor for ReadMarker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let delay = self.pacer.delay(Instant::now());
        let (store, settings, graph, shutdown) = (
            self.store.clone(),
            self.settings.clone(),
            self.graph.clone(),
            self.shutdown.clone(),
        );
        let fut = async move {
            tokio::time::sleep(delay).await;
            run(store, settings, graph, shutdown).await
        }
        .instrument(tracing::info_span!("read_marker"));
        ctx.spawn(fut.into_actor(self).map(|res, act, ctx| {
            if let Err(e) = res {
                crate::supervision::restart_after_failure("read_marker", &e, &act.health, ctx);
            }
        }));
    }
}

impl Supervised for ReadMarker {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        self.pacer.on_restart();
    }
}

/// What became of one mark-read request.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Done,
    Retry,
    Refused(u16),
}

fn outcome(status: u16) -> Outcome {
    match status {
        200..=299 | 404 => Outcome::Done,
        400 | 405 | 409 | 422 => Outcome::Refused(status),
        _ => Outcome::Retry,
    }
}

async fn run(
    store: Store,
    settings: Arc<Settings>,
    graph: Rc<GraphClient>,
    shutdown: Shutdown,
) -> Result<(), StoreError> {
    let stream = store.keys().mark_read();
    let consumer = settings.consumer_name();
    let blocking = store.blocking()?;
    store.ensure_group(&stream, MARKERS).await?;
    let mut queue: VecDeque<Entry> = store
        .own_pending(&stream, MARKERS, &consumer, 1_000)
        .await?
        .into();
    let mut backoff = Backoff::new(&settings.ms4);
    while !shutdown.is_raised() {
        if queue.is_empty() {
            let got = blocking
                .read_group(
                    &stream,
                    MARKERS,
                    &consumer,
                    ">",
                    200,
                    Some(settings.pipeline.block_ms),
                )
                .await?;
            queue.extend(got);
            continue;
        }
        let round: Vec<Entry> = queue.drain(..queue.len().min(200)).collect();
        let mut by_mailbox: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
        for e in round {
            by_mailbox
                .entry(e.field("mailbox").unwrap_or_default().to_string())
                .or_default()
                .push(e);
        }
        let mut done = Vec::new();
        let mut dead = Vec::new();
        let mut failed = false;
        for (mailbox, entries) in by_mailbox {
            for chunk in entries.chunks(BATCH_MAX) {
                let ids: Vec<String> = chunk
                    .iter()
                    .map(|e| e.field("message_id").unwrap_or_default().to_string())
                    .collect();
                match graph.mark_read(&mailbox, &ids).await {
                    Ok(statuses) => {
                        for (e, status) in chunk.iter().zip(statuses) {
                            match outcome(status) {
                                Outcome::Done => done.push(e.id.clone()),
                                Outcome::Retry => {
                                    failed = true;
                                    queue.push_back(e.clone());
                                }
                                Outcome::Refused(status) => {
                                    dead.push(refused(e, &mailbox, status));
                                    done.push(e.id.clone());
                                }
                            }
                        }
                    }
                    Err(e) => {
                        failed = true;
                        if !e.is_transient() {
                            tracing::error!(%mailbox, error = %e, "cannot mark messages read; retrying later");
                        }
                        if matches!(e, GraphError::Rejected { .. }) {
                            for entry in chunk {
                                dead.push(refused(entry, &mailbox, 400));
                                done.push(entry.id.clone());
                            }
                        } else {
                            queue.extend(chunk.iter().cloned());
                        }
                    }
                }
            }
        }
        let marked = done.len() - dead.len();
        store
            .dead_letter_and_ack(&stream, MARKERS, &dead, &done, settings.redis.dlq_maxlen)
            .await?;
        metrics::counter!(m::MARKED_READ).increment(marked as u64);
        if !dead.is_empty() {
            metrics::counter!(m::DEAD_LETTERED, "stage" => "mark_read")
                .increment(dead.len() as u64);
        }
        if failed {
            let d = backoff.next_delay().min(Duration::from_secs(10));
            tokio::time::sleep(d).await;
        } else {
            backoff = Backoff::new(&settings.ms4);
        }
    }
    Ok(())
}

fn refused(e: &Entry, mailbox: &str, status: u16) -> DeadLetter {
    let now = crate::processor::now_ms();
    DeadLetter {
        stage: Stage::MarkRead,
        reason: format!("Graph refused to mark the message read ({status})"),
        status,
        attempts: 1,
        first_failure_ms: now,
        last_failure_ms: now,
        payload: e.field("message_id").unwrap_or_default().to_string(),
        mailbox: mailbox.to_string(),
        key: String::new(),
        entry_id: e.id.clone(),
        response: String::new(),
        kind: "mark_read".into(),
        source: "graph".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_decide_done_retry_or_refused() {
        assert_eq!(outcome(200), Outcome::Done);
        assert_eq!(outcome(404), Outcome::Done);
        assert_eq!(outcome(429), Outcome::Retry);
        assert_eq!(outcome(503), Outcome::Retry);
        assert_eq!(outcome(0), Outcome::Retry);
        assert_eq!(outcome(401), Outcome::Retry);
        assert_eq!(outcome(400), Outcome::Refused(400));
    }
}
