//! The one loop every polling source runs (Graph mailboxes, IMAP folders): follow the session's
//! intake, hold the source's lease, poll on schedule, when triggered, or early when the source
//! itself sees new mail (IMAP IDLE), and back off after failures.
//!
//! - **Intake.** No session: no polling, and the lease is given up for another daemon. A session
//!   that (re)starts polls at once, then every interval (`scheduled`) or only when triggered.
//! - **Lease.** Exactly one daemon polls a source: the lease is taken or renewed before every
//!   poll and at least every third of its TTL while waiting; the source's writes are fenced by
//!   the lease token, so a poller that lost it cannot write.
//! - **Failures.** The source says what a failure calls for ([`Retry`]); transient ones back off
//!   on the source's own `retry_min_ms`/`retry_max_ms`, and a success starts the backoff over.
//!
//! A source implements [`Source`]: how to poll, and (optionally) how to wait; a [`Poller`]
//! is the supervised actor that runs one.

use crate::health::Health;
use crate::messages::{Intake, TriggerPoll};
use crate::retry::Backoff;
use crate::settings::RetryBounds;
use crate::shutdown::Shutdown;
use crate::store::{Store, StoreError};
use crate::supervision::{spawn_work, RestartPacer};
use actix::{Actor, Context, Handler, Supervised};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

/// How a poll ended.
pub(crate) enum Polled {
    /// Caught up; this many new messages queued.
    Done { added: u64 },
    /// Another daemon holds the source now.
    LeaseLost,
    /// It failed (`error`, for the log); when to try again.
    Failed { error: String, retry: Retry },
}

/// When to try again after a failure.
pub(crate) enum Retry {
    /// After the next delay of the backoff (a transient failure).
    Backoff,
    /// After this long (a server's Retry-After, or an interval for a refusal).
    After(Duration),
    /// At once (a Graph delta cursor expired: resync now).
    Now,
    /// At the next scheduled poll (a refusal an operator must fix).
    Schedule,
    /// After this long, and said as a refusal an operator must fix (IMAP: at the poll interval
    /// also when the session polls only when triggered).
    Refused(Duration),
}

/// How a wait ended.
pub(crate) enum Waited {
    /// Poll now: triggered, or the source saw new mail.
    Poll,
    /// The wait's time is up: poll if due, else renew the lease and wait again.
    Timer,
    /// Look again at the intake (it changed).
    Again,
    /// The daemon is draining.
    Shutdown,
    /// The source learned while waiting that another daemon holds it.
    LeaseLost,
    /// The wait failed (an IDLE the server ended): poll after the backoff's next delay.
    Failed,
}

/// What a source's wait may watch.
pub(crate) struct Wait<'a> {
    /// Longest the wait may last (the next poll, or the next lease renewal, is due then).
    pub(crate) until: Duration,
    /// The next scheduled poll (`None`: only when triggered).
    pub(crate) next_poll: Option<Instant>,
    /// This daemon holds the source's lease.
    pub(crate) holding: bool,
    pub(crate) intake: &'a mut watch::Receiver<Intake>,
    pub(crate) wake: &'a Notify,
    pub(crate) shutdown: &'a Shutdown,
}

impl Wait<'_> {
    /// Sleeps until `until`, a trigger, an intake change or shutdown: the wait of a source with
    /// no way to learn of new mail by itself.
    pub(crate) async fn sleep(&mut self) -> Waited {
        tokio::select! {
            _ = tokio::time::sleep(self.until) => Waited::Timer,
            _ = self.wake.notified() => Waited::Poll,
            _ = self.intake.changed() => Waited::Again,
            _ = self.shutdown.raised() => Waited::Shutdown,
        }
    }
}

/// One polling source.
// The futures need not be `Send`: a source lives on one arbiter (awc is `!Send`).
#[allow(async_fn_in_trait)]
pub(crate) trait Source: 'static {
    /// The poller's name in supervision and metrics (`poller`, `imap_poller`).
    const NAME: &'static str;

    /// The span of a poller's work (its fields are journald fields: `MAILBOX=`, `SOURCE=`).
    fn span(name: &str) -> tracing::Span;

    /// The source's key in readiness' `degraded_sources`.
    fn health_key(name: &str) -> String;

    /// Polls until caught up, writing what it found with its cursor (fenced by the lease).
    async fn poll(&mut self) -> Result<Polled, StoreError>;

    /// Waits for a reason to poll before `wait.until`. The default sleeps.
    async fn wait(&mut self, wait: &mut Wait<'_>) -> Result<Waited, StoreError> {
        Ok(wait.sleep().await)
    }

    /// The source is not polling for now (no session, lease lost, drain): let go of
    /// connections.
    async fn let_go(&mut self) {}

    /// Seconds between scheduled polls in this session.
    fn interval(&self, intake: &Intake) -> Duration {
        intake.interval
    }
}

/// Where a source's lease and schedule live.
#[derive(Clone)]
pub(crate) struct Schedule {
    pub(crate) store: Store,
    pub(crate) health: Health,
    /// The source's name in lease keys.
    pub(crate) lease: String,
    /// This daemon's lease token.
    pub(crate) token: String,
    pub(crate) ttl: Duration,
    pub(crate) retry: RetryBounds,
    pub(crate) intake: watch::Receiver<Intake>,
    pub(crate) wake: std::rc::Rc<Notify>,
    pub(crate) shutdown: Shutdown,
}

impl Schedule {
    /// Runs `source` until the daemon drains. Returns a Redis error for the supervisor.
    pub(crate) async fn run(mut self, source: &mut impl Source) -> Result<(), StoreError> {
        let renew_every = self.ttl / 3;
        let mut backoff = Backoff::new(self.retry);
        let mut holding = false;
        let mut was_active = false;
        // When the next scheduled poll is due (`None`: only when triggered).
        let mut next_poll: Option<Instant> = None;
        while !self.shutdown.is_raised() {
            let intake = self.intake.borrow_and_update().clone();
            if !intake.active {
                // No session: no polling, and the lease is free for another daemon.
                if holding {
                    self.release().await;
                    holding = false;
                }
                source.let_go().await;
                was_active = false;
                tokio::select! {
                    _ = self.intake.changed() => {}
                    _ = self.shutdown.raised() => break,
                }
                continue;
            }
            if !was_active {
                // A session (re)started: catch up at once.
                was_active = true;
                next_poll = Some(Instant::now());
            }
            let now = Instant::now();
            if next_poll.is_none_or(|t| t > now) {
                // Wait for the next poll, a trigger, new mail, a session change, or to renew
                // the lease.
                let mut wait = Wait {
                    until: next_poll.map_or(renew_every, |t| t - now).min(renew_every),
                    next_poll,
                    holding,
                    intake: &mut self.intake,
                    wake: &self.wake,
                    shutdown: &self.shutdown,
                };
                match source.wait(&mut wait).await? {
                    Waited::Poll => {}
                    Waited::Timer => {
                        if next_poll.is_none_or(|t| t > Instant::now()) {
                            holding = self.renew(holding).await?;
                            continue;
                        }
                    }
                    Waited::Again => continue,
                    Waited::Shutdown => break,
                    Waited::LeaseLost => {
                        tracing::info!("another daemon polls this source");
                        holding = false;
                        source.let_go().await;
                        continue;
                    }
                    Waited::Failed => {
                        next_poll = Some(Instant::now() + backoff.next_delay());
                        continue;
                    }
                }
            }
            next_poll = intake
                .scheduled
                .then(|| Instant::now() + source.interval(&intake));
            holding = self.renew(holding).await?;
            if !holding {
                source.let_go().await;
                continue;
            }
            match source.poll().await? {
                Polled::Done { added } => {
                    backoff = Backoff::new(self.retry);
                    if added > 0 {
                        tracing::info!(added, session_id = %self.health.session(), "polled new messages");
                    }
                }
                Polled::LeaseLost => {
                    tracing::warn!("lost the lease mid-poll; another daemon took over");
                    holding = false;
                    source.let_go().await;
                }
                Polled::Failed { error, retry } => {
                    let delay = match retry {
                        Retry::Backoff => backoff.next_delay(),
                        Retry::After(d) => d,
                        Retry::Now => Duration::ZERO,
                        // Credentials or permissions: nothing to gain by hammering; readiness
                        // says why, and the other sources keep flowing.
                        Retry::Schedule => {
                            tracing::error!(%error, "poll refused; trying again at the next scheduled poll; other sources keep flowing");
                            continue;
                        }
                        Retry::Refused(d) => {
                            tracing::error!(%error, retry_in_s = d.as_secs(), "poll refused; other sources keep flowing");
                            next_poll = Some(Instant::now() + d);
                            continue;
                        }
                    };
                    tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "poll failed; retrying");
                    next_poll = Some(Instant::now() + delay);
                }
            }
        }
        if holding {
            self.release().await;
        }
        source.let_go().await;
        Ok(())
    }

    /// Takes or renews the lease; says when it changed hands.
    async fn renew(&self, holding: bool) -> Result<bool, StoreError> {
        let held = self
            .store
            .hold_lease(&self.lease, &self.token, self.ttl)
            .await?;
        if held != holding {
            if held {
                tracing::info!("took the poller lease of this source");
            } else {
                tracing::info!("another daemon polls this source");
            }
        }
        Ok(held)
    }

    async fn release(&self) {
        let _ = self.store.release_lease(&self.lease, &self.token).await;
    }
}

/// The supervised actor polling one source: it builds the [`Source`] afresh on every (re)start
/// and runs it on the [`Schedule`]; a [`TriggerPoll`] polls at once.
pub(crate) struct Poller<S: Source> {
    /// The source's name (a Graph mailbox, an IMAP source).
    name: String,
    schedule: Schedule,
    pacer: RestartPacer,
    make: MakeSource<S>,
}

/// Builds a source for a lease token, or says why it cannot.
type MakeSource<S> = Box<dyn Fn(&str) -> Result<S, String>>;

impl<S: Source> Poller<S> {
    /// `lease`: the source's name in lease keys; `make` builds the source for this daemon's
    /// lease token, or says why it cannot (readiness shows it; other sources keep running).
    pub(crate) fn new(
        name: String,
        lease: String,
        ttl: Duration,
        retry: RetryBounds,
        ctx: &PollerContext,
        make: impl Fn(&str) -> Result<S, String> + 'static,
    ) -> Self {
        Self {
            name,
            schedule: Schedule {
                store: ctx.store.clone(),
                health: ctx.health.clone(),
                lease,
                token: format!("{}:{}", ctx.consumer, uuid::Uuid::new_v4().simple()),
                ttl,
                retry,
                intake: ctx.intake.clone(),
                wake: std::rc::Rc::new(Notify::new()),
                shutdown: ctx.shutdown.clone(),
            },
            pacer: RestartPacer::new(S::NAME),
            make: Box::new(make),
        }
    }
}

/// What every poller of a daemon shares.
pub(crate) struct PollerContext {
    pub(crate) store: Store,
    pub(crate) health: Health,
    pub(crate) shutdown: Shutdown,
    pub(crate) intake: watch::Receiver<Intake>,
    /// This daemon instance's consumer name (lease tokens start with it).
    pub(crate) consumer: String,
}

impl<S: Source> Actor for Poller<S> {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let delay = self.pacer.delay(Instant::now());
        let health = self.schedule.health.clone();
        let mut source = match (self.make)(&self.schedule.token) {
            Ok(source) => source,
            Err(reason) => {
                // Validated settings make this rare (a CA file removed since): say why, and
                // leave the other sources running.
                tracing::error!(source = %self.name, error = %reason, "source cannot start");
                health.set_source_error(&S::health_key(&self.name), Some(reason));
                return;
            }
        };
        let schedule = self.schedule.clone();
        let work = async move { schedule.run(&mut source).await };
        spawn_work(
            ctx,
            S::NAME,
            delay,
            S::span(&self.name),
            health,
            work,
            |_, _| {},
        );
    }
}

impl<S: Source> Supervised for Poller<S> {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        self.pacer.on_restart();
    }
}

impl<S: Source> Handler<TriggerPoll> for Poller<S> {
    type Result = ();

    fn handle(&mut self, _: TriggerPoll, _ctx: &mut Context<Self>) {
        self.schedule.wake.notify_one();
    }
}
