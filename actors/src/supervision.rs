//! Restart pacing for supervised actors.
//!
//! `actix::Supervisor` restarts a stopped actor at once; an actor whose dependency is down
//! (Redis restarting) would spin. Each actor keeps a [`RestartPacer`] and waits the delay it
//! gives before starting its work again: nothing the first time, then 100 ms doubling to 10 s,
//! back to nothing once a run has lasted a minute.

use std::time::{Duration, Instant};

const FIRST: Duration = Duration::from_millis(100);
const MAX: Duration = Duration::from_secs(10);
const HEALTHY_RUN: Duration = Duration::from_secs(60);

#[derive(Debug)]
pub(crate) struct RestartPacer {
    actor: &'static str,
    restarts: u32,
    started: Option<Instant>,
}

impl RestartPacer {
    pub(crate) fn new(actor: &'static str) -> Self {
        Self {
            actor,
            restarts: 0,
            started: None,
        }
    }

    /// Called from `restarting`: counts the restart.
    pub(crate) fn on_restart(&mut self) {
        metrics::counter!(crate::metrics::RESTARTS, "actor" => self.actor).increment(1);
        let healthy = self.started.is_some_and(|t| t.elapsed() >= HEALTHY_RUN);
        self.restarts = if healthy { 1 } else { self.restarts + 1 };
    }

    /// Called from `started`: how long to wait before working.
    pub(crate) fn delay(&mut self, now: Instant) -> Duration {
        self.started = Some(now);
        delay_for(self.restarts)
    }
}

/// Starts an actor's work loop: after `delay` (its [`RestartPacer`]'s), inside `span`. When the
/// loop returns `Ok`, `done` runs; an error restarts the actor ([`restart_after_failure`]).
pub(crate) fn spawn_work<A, E>(
    ctx: &mut actix::Context<A>,
    name: &'static str,
    delay: Duration,
    span: tracing::Span,
    health: crate::health::Health,
    work: impl std::future::Future<Output = Result<(), E>> + 'static,
    done: impl FnOnce(&mut A, &mut actix::Context<A>) + 'static,
) where
    A: actix::Actor<Context = actix::Context<A>>,
    E: std::fmt::Display + 'static,
{
    use actix::{ActorFutureExt, AsyncContext};
    use tracing::Instrument;
    let fut = async move {
        tokio::time::sleep(delay).await;
        work.await
    }
    .instrument(span);
    ctx.spawn(
        actix::fut::wrap_future::<_, A>(fut).map(move |res, act, ctx| match res {
            Ok(()) => done(act, ctx),
            Err(e) => restart_after_failure(name, &e, &health, ctx),
        }),
    );
}

/// A work loop ended in error: log it, mark Redis as suspect for `/ready` (every loop's errors
/// are Redis errors), and stop the actor so that its supervisor restarts it, paced by the
/// actor's [`RestartPacer`].
pub(crate) fn restart_after_failure<A>(
    actor: &'static str,
    error: &dyn std::fmt::Display,
    health: &crate::health::Health,
    ctx: &mut actix::Context<A>,
) where
    A: actix::Actor<Context = actix::Context<A>>,
{
    use actix::ActorContext;
    tracing::error!(actor, error = %error, "work loop failed; restarting");
    health.set_redis(false);
    ctx.stop();
}

fn delay_for(restarts: u32) -> Duration {
    if restarts == 0 {
        return Duration::ZERO;
    }
    FIRST
        .saturating_mul(1u32 << (restarts - 1).min(16))
        .min(MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_up_to_ten_seconds() {
        assert_eq!(delay_for(0), Duration::ZERO);
        assert_eq!(delay_for(1), Duration::from_millis(100));
        assert_eq!(delay_for(2), Duration::from_millis(200));
        assert_eq!(delay_for(8), Duration::from_secs(10));
        assert_eq!(delay_for(40), Duration::from_secs(10));
    }
}
