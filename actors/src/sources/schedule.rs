//! The one loop every polling source runs (Graph mailboxes, IMAP folders): follow the session's
//! intake, hold the source's lease if this daemon should, poll on schedule, when triggered, or
//! early when the source itself sees new mail (IMAP IDLE), and back off after failures.
//!
//! - **Intake.** No session: no polling, and the lease is given up for another daemon. A session
//!   that (re)starts polls as soon as the lease is held, then every interval (`scheduled`) or
//!   only when triggered.
//! - **Lease.** Exactly one daemon polls a source: the lease is renewed before every poll and
//!   every third of its TTL while waiting; the source's writes are fenced by the lease token,
//!   so a poller that lost it cannot write. Which daemon takes it follows the
//!   [fleet](super::fleet): the source's preferred owner takes a free lease at its first check
//!   (every TTL/3); another daemon only when it saw it free at two checks in a row (every TTL):
//!   a fallback for views that differ, so nothing stays unowned. A holder that is not the
//!   preferred owner gives the lease up at its next renewal (never mid-poll), once per view,
//!   and the preferred owner takes it: each source moves once, directly. A lease newly taken
//!   polls at once (the last holder may have died mid-poll).
//! - **Takeover bound.** A daemon killed at `t` leaves its leases free by `t + ttl` and the
//!   fleet views of the others by `t + fleet ttl + fleet ttl/3` (fleet ttl ≤ lease ttl); the
//!   new preferred owner checks every TTL/3, so it holds the lease by `t + 5/3 ttl` and polls
//!   at once: within `2 × ttl + one poll interval`, as docs/RELIABILITY.md promises.
//! - **No stampede.** Each poller has a random phase in `[0, stagger)` (the daemon's stagger
//!   grows with its number of sources, up to TTL/3): its first lease check after start or a
//!   session (re)start waits that long, so the checks, renewals and first polls of 2,000
//!   pollers spread out instead of arriving together.
//! - **Failures.** The source says what a failure calls for ([`Retry`]); transient ones back off
//!   on the source's own `retry_min_ms`/`retry_max_ms`, and a success starts the backoff over.
//!
//! A source implements [`Source`]: how to poll, and (optionally) how to wait; a [`Poller`]
//! is the supervised actor that runs one.

use super::fleet::{FleetView, HeldSources};
use crate::health::Health;
use crate::messages::{Intake, TriggerPoll};
use crate::retry::Backoff;
use crate::settings::RetryBounds;
use crate::shutdown::Shutdown;
use crate::store::lease::LeaseState;
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
    /// The wait's time is up: poll if due, else check the lease and wait again.
    Timer,
    /// Look again at the intake (it changed).
    Again,
    /// The fleet changed (only while not holding): this daemon may be the preferred owner now.
    Fleet,
    /// The daemon is draining.
    Shutdown,
    /// The source learned while waiting that another daemon holds it.
    LeaseLost,
    /// The wait failed (an IDLE the server ended): poll after the backoff's next delay.
    Failed,
}

/// What a source's wait may watch.
pub(crate) struct Wait<'a> {
    /// Longest the wait may last (the next poll, or the next lease check, is due then).
    pub(crate) until: Duration,
    /// The next scheduled poll (`None`: only when triggered).
    pub(crate) next_poll: Option<Instant>,
    /// This daemon holds the source's lease.
    pub(crate) holding: bool,
    pub(crate) intake: &'a mut watch::Receiver<Intake>,
    pub(crate) wake: &'a Notify,
    pub(crate) shutdown: &'a Shutdown,
    pub(crate) fleet: &'a mut watch::Receiver<FleetView>,
    /// The source's name in lease keys (its name for the fleet's preferences).
    pub(crate) lease: &'a str,
    /// The view generation in which this poller offered the source to its preferred owner.
    pub(crate) offered_in: Option<u64>,
}

impl Wait<'_> {
    /// Sleeps until `until`, a trigger, an intake change or shutdown (or, while not holding,
    /// a fleet change): the wait of a source with no way to learn of new mail by itself.
    pub(crate) async fn sleep(&mut self) -> Waited {
        let holding = self.holding;
        tokio::select! {
            _ = tokio::time::sleep(self.until) => Waited::Timer,
            _ = self.wake.notified() => Waited::Poll,
            _ = self.intake.changed() => Waited::Again,
            _ = self.shutdown.raised() => Waited::Shutdown,
            Ok(()) = self.fleet.changed(), if !holding => Waited::Fleet,
        }
    }

    /// The holder should give the source to its preferred owner at its next lease check (a
    /// long wait, such as IDLE, ends early for it).
    pub(crate) fn hand_over_due(&self) -> bool {
        self.holding && self.fleet.borrow().hands_over(self.lease, self.offered_in)
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
    /// This daemon's lease token (its fleet id).
    pub(crate) token: String,
    pub(crate) ttl: Duration,
    pub(crate) retry: RetryBounds,
    pub(crate) intake: watch::Receiver<Intake>,
    pub(crate) wake: std::rc::Rc<Notify>,
    pub(crate) shutdown: Shutdown,
    /// The daemon's fleet view, refreshed by its heartbeat.
    pub(crate) fleet: watch::Receiver<FleetView>,
    /// This poller's offset in `[0, stagger)`: its first lease check waits that long.
    pub(crate) phase: Duration,
    /// The sources this daemon holds (the webhook receiver follows them).
    pub(crate) held: HeldSources,
}

/// This poller's side of its source's lease.
struct LeaseWatch {
    holding: bool,
    /// The last check found the lease free (and did not take it).
    seen_free: bool,
    /// When to check it next (renew, or look for it free).
    next_check: Instant,
    /// The view generation in which the lease was offered to its preferred owner.
    offered_in: Option<u64>,
}

/// What a lease check does, decided from the view before calling Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Renew the lease held.
    Renew,
    /// Give it up for the preferred owner.
    HandOver,
    /// Take it if free (preferred owner, or a second sighting of it free).
    Take,
    /// Only look whether it is free.
    Look,
}

impl Step {
    fn decide(lease: &LeaseWatch, view: &FleetView, source: &str) -> Self {
        match (lease.holding, view.prefers_me(source) || lease.seen_free) {
            (true, _) if view.hands_over(source, lease.offered_in) => Step::HandOver,
            (true, _) => Step::Renew,
            (false, true) => Step::Take,
            (false, false) => Step::Look,
        }
    }
}

/// What a lease check changed.
#[derive(Debug, PartialEq, Eq)]
enum Checked {
    /// Held before and still held, or not held before nor now.
    Same,
    /// Taken now: catch up at once.
    Taken,
    /// Held before, not now (another took it, or it was handed over): let go of the source.
    Gone,
}

impl Schedule {
    /// Runs `source` until the daemon drains. Returns a Redis error for the supervisor.
    pub(crate) async fn run(mut self, source: &mut impl Source) -> Result<(), StoreError> {
        tokio::select! {
            _ = self.fleet.wait_for(FleetView::is_ready) => {}
            _ = self.shutdown.raised() => return Ok(()),
        }
        let mut backoff = Backoff::new(self.retry);
        let mut lease = LeaseWatch {
            holding: false,
            seen_free: false,
            next_check: Instant::now(),
            offered_in: None,
        };
        let mut was_active = false;
        // When the next scheduled poll is due (`None`: only when triggered).
        let mut next_poll: Option<Instant> = None;
        while !self.shutdown.is_raised() {
            self.mark(lease.holding);
            let intake = self.intake.borrow_and_update().clone();
            if !intake.active {
                // No session: no polling, and the lease is free for another daemon.
                if lease.holding {
                    self.release().await;
                    lease.holding = false;
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
                // A session (re)started: check the lease after this poller's phase (the first
                // poll follows at once when it is held).
                was_active = true;
                lease.next_check = Instant::now() + self.phase;
            }
            let now = Instant::now();
            if lease.next_check <= now {
                match self.check(&mut lease).await? {
                    Checked::Taken => next_poll = Some(Instant::now()),
                    Checked::Gone => source.let_go().await,
                    Checked::Same => {}
                }
                continue;
            }
            let poll_due = lease.holding && next_poll.is_some_and(|t| t <= now);
            if !poll_due {
                let to_check = lease.next_check - now;
                let until = match (lease.holding, next_poll) {
                    (true, Some(t)) => (t - now).min(to_check),
                    _ => to_check,
                };
                let mut wait = Wait {
                    until,
                    next_poll,
                    holding: lease.holding,
                    intake: &mut self.intake,
                    wake: &self.wake,
                    shutdown: &self.shutdown,
                    fleet: &mut self.fleet,
                    lease: &self.lease,
                    offered_in: lease.offered_in,
                };
                match source.wait(&mut wait).await? {
                    Waited::Poll if lease.holding => {}
                    Waited::Poll | Waited::Fleet => {
                        // Not holding: the preferred owner checks within its phase (a fleet
                        // change wakes many pollers at once; their checks stay spread).
                        if self.fleet.borrow_and_update().prefers_me(&self.lease) {
                            lease.next_check = lease.next_check.min(Instant::now() + self.phase);
                        }
                        continue;
                    }
                    Waited::Timer | Waited::Again => continue,
                    Waited::Shutdown => break,
                    Waited::LeaseLost => {
                        tracing::info!("another daemon polls this source");
                        lease.holding = false;
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
            // Renewed (or handed over) before every poll.
            if self.check(&mut lease).await? == Checked::Gone || !lease.holding {
                source.let_go().await;
                continue;
            }
            self.report("polling", None).await;
            match source.poll().await? {
                Polled::Done { added } => {
                    self.report("idle", None).await;
                    backoff = Backoff::new(self.retry);
                    if added > 0 {
                        tracing::info!(added, session_id = %self.health.session(), "polled new messages");
                    }
                }
                Polled::LeaseLost => {
                    tracing::warn!("lost the lease mid-poll; another daemon took over");
                    lease.holding = false;
                    source.let_go().await;
                }
                Polled::Failed { error, retry } => {
                    let refused = matches!(retry, Retry::Schedule | Retry::Refused(_));
                    let state = if refused { "refused" } else { "retrying" };
                    self.report(state, Some(&error)).await;
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
        if lease.holding {
            self.release().await;
        }
        self.mark(false);
        source.let_go().await;
        Ok(())
    }

    /// Records what the poller is doing for the operator (`GET /sources`, the console), on
    /// every daemon's view: `polling`, `idle`, `retrying` or `refused` and why. A write that
    /// fails is only a stale display: the next poll writes it again.
    async fn report(&self, state: &str, reason: Option<&str>) {
        let at = crate::clock::now_ms();
        if let Err(e) = self
            .store
            .record_poller(&self.lease, state, reason, at)
            .await
        {
            tracing::debug!(error = %e, "could not record the poller's state");
        }
    }

    /// Tells the daemon (its webhook receiver) whether this source's lease is held.
    fn mark(&self, holding: bool) {
        self.held.send_if_modified(|held| match holding {
            true => held.insert(self.lease.clone()),
            false => held.remove(&self.lease),
        });
    }

    /// Checks the lease as the fleet view says ([`Step`]) and schedules the next check: TTL/3
    /// for a holder or the preferred owner, the whole TTL for the others (they are only the
    /// fallback, and cost one call per TTL per idle source).
    async fn check(&mut self, lease: &mut LeaseWatch) -> Result<Checked, StoreError> {
        let view = self.fleet.borrow_and_update().clone();
        let step = Step::decide(lease, &view, &self.lease);
        let was_holding = lease.holding;
        let found = match step {
            Step::HandOver => {
                tracing::info!(to = ?view.preferred(&self.lease), "handing this source over to its preferred daemon");
                self.release().await;
                lease.offered_in = Some(view.generation);
                LeaseState::Other
            }
            Step::Renew | Step::Take | Step::Look => {
                let take = step != Step::Look;
                self.store
                    .check_lease(&self.lease, &self.token, self.ttl, take)
                    .await?
            }
        };
        lease.holding = found == LeaseState::Held;
        lease.seen_free = found == LeaseState::Free;
        let often = lease.holding || view.prefers_me(&self.lease);
        lease.next_check = Instant::now() + if often { self.ttl / 3 } else { self.ttl };
        Ok(match (was_holding, lease.holding) {
            (false, true) => {
                tracing::info!(
                    preferred = view.prefers_me(&self.lease),
                    "took the poller lease of this source"
                );
                Checked::Taken
            }
            (true, false) => {
                if step != Step::HandOver {
                    tracing::info!("another daemon polls this source");
                }
                Checked::Gone
            }
            _ => Checked::Same,
        })
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
                token: ctx.fleet.borrow().me.to_string(),
                ttl,
                retry,
                intake: ctx.intake.clone(),
                wake: std::rc::Rc::new(Notify::new()),
                shutdown: ctx.shutdown.clone(),
                fleet: ctx.fleet.clone(),
                held: ctx.held.clone(),
                phase: ctx.stagger.min(ttl / 3).mul_f64(rand::random::<f64>()),
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
    /// The daemon's fleet view; its `me` is every lease token of this daemon.
    pub(crate) fleet: watch::Receiver<FleetView>,
    /// The span over which the pollers' first lease checks spread (see [`stagger`]).
    pub(crate) stagger: Duration,
    pub(crate) held: HeldSources,
}

/// How long the first lease checks of `sources` pollers spread over: [`STAGGER_PER_SOURCE`]
/// each (a burst of at most 200 lease calls and polls a second), and never more than a lease
/// renewal period (the pollers cap it at TTL/3). Three mailboxes start within 15 ms, 2,000
/// within 10 s.
pub(crate) fn stagger(sources: usize) -> Duration {
    STAGGER_PER_SOURCE * sources as u32
}

/// See [`stagger`].
const STAGGER_PER_SOURCE: Duration = Duration::from_millis(5);

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

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holding: bool, seen_free: bool, offered_in: Option<u64>) -> LeaseWatch {
        LeaseWatch {
            holding,
            seen_free,
            next_check: Instant::now(),
            offered_in,
        }
    }

    /// A view of daemons `a:1` (this one) and `b:2`, and a source each prefers.
    fn two_daemons() -> (FleetView, String, String) {
        let view = FleetView::new("a:1".into()).with_members(vec!["a:1".into(), "b:2".into()]);
        let mine = (0..)
            .map(|i| format!("m{i}@x"))
            .find(|s| view.prefers_me(s))
            .unwrap();
        let theirs = (0..)
            .map(|i| format!("m{i}@x"))
            .find(|s| !view.prefers_me(s))
            .unwrap();
        (view, mine, theirs)
    }

    #[test]
    fn the_preferred_owner_takes_at_once_the_others_at_the_second_sighting() {
        let (view, mine, theirs) = two_daemons();
        assert_eq!(
            Step::decide(&lease(false, false, None), &view, &mine),
            Step::Take
        );
        assert_eq!(
            Step::decide(&lease(false, false, None), &view, &theirs),
            Step::Look
        );
        assert_eq!(
            Step::decide(&lease(false, true, None), &view, &theirs),
            Step::Take
        );
    }

    #[test]
    fn a_holder_hands_over_to_the_preferred_owner_once_per_view() {
        let (view, mine, theirs) = two_daemons();
        assert_eq!(
            Step::decide(&lease(true, false, None), &view, &mine),
            Step::Renew
        );
        assert_eq!(
            Step::decide(&lease(true, false, None), &view, &theirs),
            Step::HandOver
        );
        let offered = Some(view.generation);
        assert_eq!(
            Step::decide(&lease(true, false, offered), &view, &theirs),
            Step::Renew
        );
    }

    #[test]
    fn two_thousand_sources_start_within_ten_seconds() {
        assert_eq!(stagger(3), Duration::from_millis(15));
        assert_eq!(stagger(2_000), Duration::from_secs(10));
    }
}
