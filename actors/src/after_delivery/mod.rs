//! After delivery: what happens to a message in its mailbox once MS4 accepted it — marked read
//! in Graph (unread mode), or the IMAP source's `\Seen` flag or move.
//!
//! The MS4Sender queues each follow-up (`mailbox`, `message_id`) in a stream in the same
//! MULTI/EXEC that acknowledges the delivery, so a follow-up never runs before MS4 has the
//! record and is never forgotten. One [`Worker`] per stream reads it through its consumer
//! group and hands the entries, grouped by target (a Graph mailbox, an IMAP source), to its
//! [`Action`]:
//!
//! - [`mark_read`]: Graph JSON `$batch` of at most 20 `PATCH {"isRead": true}`;
//! - [`imap`]: `UID STORE +FLAGS (\Seen)`, `UID MOVE` or COPY + `\Deleted` + `UID EXPUNGE`.
//!
//! The worker's rules, the same for both:
//! - it first takes back its own pending entries (a restart), and claims entries another
//!   consumer left idle longer than `redis.claim_idle_ms` (a daemon that died for good);
//! - what the action refuses for good is dead-lettered with the reason and acknowledged in one
//!   MULTI/EXEC; what is done is acknowledged;
//! - what fails for now waits in memory, still pending in Redis under this consumer (touched
//!   so no other daemon claims it), and is retried with a backoff **of its own target**: one
//!   unreachable source or one refusing mailbox never holds back the others, and new entries
//!   keep being read while it waits; `/ready` names the waiting target;
//! - every wait ends early on shutdown.

pub(crate) mod imap;
pub(crate) mod mark_read;

use crate::health::Health;
use crate::metrics as m;
use crate::retry::Backoff;
use crate::settings::Settings;
use crate::shutdown::Shutdown;
use crate::store::dlq::Stage;
use crate::store::schema;
use crate::store::{DeadLetter, Entry, Keys, Store, StoreError};
use crate::supervision::{spawn_work, RestartPacer};
use actix::prelude::*;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What became of one follow-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Done, or nothing left to do (the message is gone): acknowledge.
    Done,
    /// Refused for good: dead-letter with the reason and acknowledge.
    Refused { reason: String, status: u16 },
    /// Failed for now (connection, throttling, 5xx): retry with the target's backoff.
    Retry(String),
}

/// One kind of after-delivery work: where its entries come from and how they are done.
// The futures need not be `Send`: a worker and its action live on one arbiter (awc is `!Send`).
#[allow(async_fn_in_trait)]
pub(crate) trait Action: 'static {
    /// Name in logs, metrics and supervision (`graph_mark_read`, `imap_after_delivery`).
    const NAME: &'static str;
    /// The consumer group reading the stream.
    const GROUP: &'static str;
    /// The `source` of its dead letters (`graph`, `imap`).
    const SOURCE: &'static str;
    /// The stream of follow-ups.
    fn stream(keys: &Keys) -> String;
    /// The dead letter's `kind` for `entry` of `target`.
    fn kind(&self, target: &str, entry: &Entry) -> String;
    /// Does `entries` (all of one target); returns one outcome per entry, in order.
    async fn act(&mut self, target: &str, entries: &[Entry]) -> Vec<Outcome>;
    /// Releases connections at shutdown.
    async fn close(&mut self) {}
}

/// Entries read per XREADGROUP, and handed to one `act` at most.
const ROUND: usize = 500;
/// Entries held in memory (waiting for their target) at most; beyond, reading pauses.
const MAX_HELD: usize = 100_000;
/// A target's first retry after a failure, and the longest wait between retries.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(300);

/// The supervised actor running one [`Action`]'s work loop.
pub(crate) struct Worker<A: Action> {
    store: Store,
    settings: Arc<Settings>,
    health: Health,
    shutdown: Shutdown,
    pacer: RestartPacer,
    /// Builds the action afresh on every (re)start.
    make: Box<dyn Fn() -> A>,
}

impl<A: Action> Worker<A> {
    pub(crate) fn new(
        store: Store,
        settings: Arc<Settings>,
        health: Health,
        shutdown: Shutdown,
        make: impl Fn() -> A + 'static,
    ) -> Self {
        Self {
            store,
            settings,
            health,
            shutdown,
            pacer: RestartPacer::new(A::NAME),
            make: Box::new(make),
        }
    }
}

impl<A: Action> Actor for Worker<A> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let delay = self.pacer.delay(Instant::now());
        let run = Run {
            store: self.store.clone(),
            consumer: self.settings.consumer_name(),
            settings: self.settings.clone(),
            health: self.health.clone(),
            shutdown: self.shutdown.clone(),
            action: (self.make)(),
            targets: BTreeMap::new(),
        };
        let span = tracing::info_span!("after_delivery", worker = A::NAME);
        let health = self.health.clone();
        spawn_work(ctx, A::NAME, delay, span, health, run.run(), |_, _| {});
    }
}

impl<A: Action> Supervised for Worker<A> {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        self.pacer.on_restart();
    }
}

/// The entries of one target and when they may be tried again.
struct Target {
    waiting: VecDeque<Entry>,
    retry_at: Instant,
    backoff: Option<Backoff>,
    /// Why the last attempt failed, while it keeps failing.
    failing: Option<String>,
}

impl Target {
    fn new() -> Self {
        Self {
            waiting: VecDeque::new(),
            retry_at: Instant::now(),
            backoff: None,
            failing: None,
        }
    }
}

struct Run<A: Action> {
    store: Store,
    consumer: String,
    settings: Arc<Settings>,
    health: Health,
    shutdown: Shutdown,
    action: A,
    targets: BTreeMap<String, Target>,
}

impl<A: Action> Run<A> {
    async fn run(mut self) -> Result<(), StoreError> {
        let stream = A::stream(self.store.keys());
        let blocking = self.store.blocking()?;
        self.store.ensure_group(&stream, A::GROUP).await?;
        let own = self
            .store
            .own_pending(&stream, A::GROUP, &self.consumer, 1_000)
            .await?;
        if !own.is_empty() {
            tracing::info!(
                entries = own.len(),
                "resuming follow-ups this consumer held"
            );
        }
        self.hold(own);
        let claim_idle = self.settings.redis.claim_idle_ms;
        let claim_every = Duration::from_millis((claim_idle / 2).max(500));
        let mut next_claim = Instant::now();
        let mut claim_cursor = "0-0".to_string();
        let mut next_touch = Instant::now() + claim_every;
        while !self.shutdown.is_raised() {
            self.health.beat(A::NAME);
            let now = Instant::now();
            if now >= next_claim {
                let (next, claimed) = self
                    .store
                    .autoclaim(
                        &stream,
                        A::GROUP,
                        &self.consumer,
                        claim_idle,
                        &claim_cursor,
                        ROUND,
                    )
                    .await?;
                if !claimed.is_empty() {
                    tracing::info!(
                        entries = claimed.len(),
                        "claimed follow-ups a dead consumer left"
                    );
                    self.hold(claimed);
                }
                if next == "0-0" {
                    next_claim = now + claim_every;
                }
                claim_cursor = next;
                continue;
            }
            if now >= next_touch {
                // Still ours while they wait: keep other daemons from claiming them.
                let ids: Vec<String> = self
                    .targets
                    .values()
                    .flat_map(|t| t.waiting.iter().map(|e| e.id.clone()))
                    .collect();
                for chunk in ids.chunks(1_000) {
                    self.store
                        .touch(&stream, A::GROUP, &self.consumer, chunk)
                        .await?;
                }
                next_touch = now + claim_every;
            }
            let due: Vec<String> = self
                .targets
                .iter()
                .filter(|(_, t)| !t.waiting.is_empty() && t.retry_at <= now)
                .map(|(name, _)| name.clone())
                .collect();
            if due.is_empty() {
                self.read_new(&blocking, &stream, now).await?;
                continue;
            }
            for name in due {
                self.work_on(&stream, &name).await?;
            }
        }
        self.action.close().await;
        Ok(())
    }

    /// Reads new follow-ups, waiting at most until the next retry is due.
    async fn read_new(
        &mut self,
        blocking: &Store,
        stream: &str,
        now: Instant,
    ) -> Result<(), StoreError> {
        let next_retry = self
            .targets
            .values()
            .filter(|t| !t.waiting.is_empty())
            .map(|t| t.retry_at)
            .min();
        let mut wait = Duration::from_millis(self.settings.pipeline.block_ms);
        if let Some(at) = next_retry {
            wait = wait.min(
                at.saturating_duration_since(now)
                    .max(Duration::from_millis(10)),
            );
        }
        let held: usize = self.targets.values().map(|t| t.waiting.len()).sum();
        if held >= MAX_HELD {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.shutdown.raised() => {}
            }
            return Ok(());
        }
        let got = blocking
            .read_group(
                stream,
                A::GROUP,
                &self.consumer,
                ">",
                ROUND,
                Some(wait.as_millis().max(1) as u64),
            )
            .await?;
        self.hold(got);
        Ok(())
    }

    fn hold(&mut self, entries: Vec<Entry>) {
        for e in entries {
            let target = e
                .field(schema::follow_up::MAILBOX)
                .unwrap_or_default()
                .to_string();
            self.targets
                .entry(target)
                .or_insert_with(Target::new)
                .waiting
                .push_back(e);
        }
    }

    /// One round on one target: act, then acknowledge what is done, dead-letter what is
    /// refused, keep what failed for the target's next retry.
    async fn work_on(&mut self, stream: &str, name: &str) -> Result<(), StoreError> {
        let round: Vec<Entry> = {
            let t = self.targets.get_mut(name).expect("a due target");
            let n = t.waiting.len().min(ROUND);
            t.waiting.drain(..n).collect()
        };
        let outcomes = self.action.act(name, &round).await;
        let now_ms = crate::clock::now_ms();
        let mut done = Vec::new();
        let mut dead = Vec::new();
        let mut retry = Vec::new();
        let mut why = None;
        for (e, outcome) in round.into_iter().zip(
            outcomes
                .into_iter()
                .chain(std::iter::repeat(Outcome::Retry("no answer".into()))),
        ) {
            match outcome {
                Outcome::Done => done.push(e.id.clone()),
                Outcome::Refused { reason, status } => {
                    done.push(e.id.clone());
                    dead.push(DeadLetter {
                        stage: Stage::AfterDelivery,
                        reason,
                        status,
                        attempts: 1,
                        first_failure_ms: now_ms,
                        last_failure_ms: now_ms,
                        payload: e
                            .field(schema::follow_up::MESSAGE_ID)
                            .unwrap_or_default()
                            .to_string(),
                        mailbox: name.to_string(),
                        key: String::new(),
                        entry_id: e.id.clone(),
                        response: String::new(),
                        kind: self.action.kind(name, &e),
                        source: A::SOURCE.to_string(),
                        // A dead-letter end replays as one.
                        carry: crate::store::dlq::carried(&e, &[schema::follow_up::END]),
                    });
                }
                Outcome::Retry(reason) => {
                    why.get_or_insert(reason);
                    retry.push(e);
                }
            }
        }
        self.store
            .dead_letter_and_ack(
                stream,
                A::GROUP,
                &dead,
                &done,
                self.settings.redis.dlq_maxlen,
            )
            .await?;
        if !dead.is_empty() {
            tracing::warn!(target_name = %name, count = dead.len(), reason = %dead[0].reason, "after-delivery action refused; dead-lettered");
            metrics::counter!(m::DEAD_LETTERED, "stage" => Stage::AfterDelivery.as_str())
                .increment(dead.len() as u64);
        }
        let health_key = format!("{}:{name}", A::NAME);
        let t = self.targets.get_mut(name).expect("a due target");
        match why {
            Some(reason) => {
                for e in retry.into_iter().rev() {
                    t.waiting.push_front(e);
                }
                let delay = t
                    .backoff
                    .get_or_insert_with(|| Backoff::between(RETRY_MIN, RETRY_MAX))
                    .next_delay();
                t.retry_at = Instant::now() + delay;
                if t.failing.is_none() {
                    tracing::warn!(target_name = %name, %reason, retry_in_ms = delay.as_millis() as u64, "after-delivery action failed; this target waits, the others go on");
                }
                self.health.set_source_error(
                    &health_key,
                    Some(format!("{} follow-ups waiting: {reason}", t.waiting.len())),
                );
                t.failing = Some(reason);
            }
            None => {
                if t.failing.take().is_some() {
                    tracing::info!(target_name = %name, "after-delivery actions succeed again");
                    self.health.set_source_error(&health_key, None);
                }
                t.backoff = None;
            }
        }
        let waiting = t.waiting.len();
        metrics::gauge!(m::AFTER_DELIVERY_WAITING, "worker" => A::NAME, "target" => name.to_string())
            .set(waiting as f64);
        if waiting == 0 && t.failing.is_none() {
            self.targets.remove(name);
        }
        Ok(())
    }
}
