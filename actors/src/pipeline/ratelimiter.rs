//! The RateLimiter actor: hands out permits for outbound requests from budgets shared in Redis.
//!
//! Today it serves MS4's budget (`ms4.rate_limit_per_min`, one permit per `(60 s + margin) /
//! limit`, so any 60-second window holds at most the limit even with some clock skew and
//! network jitter). A 429's Retry-After pauses the whole budget in Redis: every holder on every
//! daemon waits it out. The state lives in Redis, so a restarted limiter has nothing to
//! rebuild.

use crate::messages::{
    AcquireGraph, BudgetUnavailable, GraphBudget, GraphPermit, PauseGraph, ReleaseGraph,
};
use crate::store::Store;
use crate::supervision::RestartPacer;
use actix::prelude::*;
use std::time::{Duration, Instant};

/// Budget name of MS4 requests.
pub(crate) const MS4: &str = "ms4";
/// Longest single sleep between two asks, so a drain is noticed quickly.
const MAX_NAP: Duration = Duration::from_millis(500);

/// Proof that a request may go out now.
#[derive(Debug)]
pub(crate) struct Permit;

/// Ask for one permit of a budget; resolves when granted.
#[derive(Message)]
#[rtype(result = "Result<Permit, crate::store::StoreError>")]
pub(crate) struct Acquire {
    pub budget: &'static str,
}

/// A Retry-After: pause every holder of the budget.
#[derive(Message)]
#[rtype(result = "Result<(), crate::store::StoreError>")]
pub(crate) struct PauseBudget {
    pub budget: &'static str,
    pub delay: Duration,
}

pub(crate) struct RateLimiter {
    store: Store,
    graph: crate::store::ratelimit::GraphLimits,
    /// Emission interval of MS4 permits; zero for no limit.
    ms4_interval: Duration,
    /// Lateness that keeps the schedule: a quarter of the margin or of the interval.
    ms4_tolerance: Duration,
    pacer: RestartPacer,
}

impl RateLimiter {
    /// `per_min = 0` means no limit (permits are still checked against a Retry-After pause).
    /// Graph's budgets of this limiter, for a Graph client.
    pub(crate) fn graph_budget(limiter: &Addr<Self>) -> GraphBudget {
        GraphBudget {
            acquire: limiter.clone().recipient(),
            pause: limiter.clone().recipient(),
        }
    }

    pub(crate) fn new(
        store: Store,
        ms4_per_min: u32,
        margin: Duration,
        graph: crate::store::ratelimit::GraphLimits,
    ) -> Self {
        let ms4_interval = if ms4_per_min > 0 {
            (Duration::from_secs(60) + margin) / ms4_per_min
        } else {
            Duration::ZERO
        };
        Self {
            store,
            graph,
            ms4_interval,
            ms4_tolerance: (margin / 4).min(ms4_interval / 4),
            pacer: RestartPacer::new("rate_limiter"),
        }
    }

    fn schedule(&self, budget: &str) -> (Duration, Duration) {
        match budget {
            MS4 => (self.ms4_interval, self.ms4_tolerance),
            _ => (Duration::ZERO, Duration::ZERO),
        }
    }
}

impl Actor for RateLimiter {
    type Context = Context<Self>;

    fn started(&mut self, _ctx: &mut Context<Self>) {
        self.pacer.delay(Instant::now());
    }
}

impl Supervised for RateLimiter {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        self.pacer.on_restart();
    }
}

impl Handler<Acquire> for RateLimiter {
    type Result = ResponseFuture<Result<Permit, crate::store::StoreError>>;

    fn handle(&mut self, msg: Acquire, _ctx: &mut Context<Self>) -> Self::Result {
        let store = self.store.clone();
        let (interval, tolerance) = self.schedule(msg.budget);
        Box::pin(async move {
            let started = Instant::now();
            loop {
                match store.take_permit(msg.budget, interval, tolerance).await? {
                    None => {
                        let waited = started.elapsed();
                        metrics::histogram!(crate::metrics::RATE_WAIT, "budget" => msg.budget)
                            .record(waited.as_secs_f64());
                        return Ok(Permit);
                    }
                    Some(wait) => tokio::time::sleep(wait.min(MAX_NAP)).await,
                }
            }
        })
    }
}

impl Handler<PauseBudget> for RateLimiter {
    type Result = ResponseFuture<Result<(), crate::store::StoreError>>;

    fn handle(&mut self, msg: PauseBudget, _ctx: &mut Context<Self>) -> Self::Result {
        let store = self.store.clone();
        Box::pin(async move { store.pause_budget(msg.budget, msg.delay).await })
    }
}

impl Handler<AcquireGraph> for RateLimiter {
    type Result = ResponseFuture<Result<GraphPermit, BudgetUnavailable>>;

    fn handle(&mut self, msg: AcquireGraph, ctx: &mut Context<Self>) -> Self::Result {
        let store = self.store.clone();
        let limits = self.graph;
        let release = ctx.address().recipient();
        Box::pin(async move {
            let started = Instant::now();
            let id = uuid::Uuid::new_v4().simple().to_string();
            let cost = msg
                .cost
                .clamp(1, limits.per_window.min(limits.app_per_window));
            loop {
                match store
                    .take_graph_permit(&msg.mailbox, &msg.app, &id, cost, limits)
                    .await
                    .map_err(|e| BudgetUnavailable(e.to_string()))?
                {
                    None => {
                        let waited = started.elapsed();
                        metrics::histogram!(crate::metrics::RATE_WAIT, "budget" => "graph")
                            .record(waited.as_secs_f64());
                        return Ok(GraphPermit {
                            release,
                            mailbox: msg.mailbox,
                            id,
                        });
                    }
                    Some(wait) => tokio::time::sleep(wait.min(MAX_NAP)).await,
                }
            }
        })
    }
}

impl Handler<ReleaseGraph> for RateLimiter {
    type Result = ();

    fn handle(&mut self, msg: ReleaseGraph, ctx: &mut Context<Self>) {
        let store = self.store.clone();
        ctx.spawn(
            async move {
                if let Err(e) = store.release_graph_permit(&msg.mailbox, &msg.id).await {
                    // The lease expires by itself; the slot is only held a little longer.
                    tracing::debug!(error = %e, "could not release a Graph permit");
                }
            }
            .into_actor(self),
        );
    }
}

impl Handler<PauseGraph> for RateLimiter {
    type Result = ResponseFuture<Result<(), BudgetUnavailable>>;

    fn handle(&mut self, msg: PauseGraph, _ctx: &mut Context<Self>) -> Self::Result {
        let store = self.store.clone();
        Box::pin(async move {
            store
                .pause_budget(
                    &crate::store::ratelimit::graph_budget(&msg.mailbox),
                    msg.delay,
                )
                .await
                .map_err(|e| BudgetUnavailable(e.to_string()))
        })
    }
}
