//! Throttling per mailbox (requests in flight, the sliding window, Retry-After, storms on
//! demand) and per application across all tenants; and the counters of what clients did wrong.

use super::answers::GraphError;
use super::state::{lock, Shared};
use serde::Serialize;
use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// A request that arrives this long after a 429 was sent cannot have been in flight already:
/// if it falls inside the Retry-After, the client ignored it (same rule as the MS4 simulator).
const RETRY_AFTER_GRACE: Duration = Duration::from_millis(100);

/// Per-mailbox request budget: concurrency, the sliding window, Retry-After, storms; and the
/// counters of what clients did.
#[derive(Debug, Default)]
pub(super) struct Budget {
    pub(super) in_flight: usize,
    /// The admitted requests inside the window.
    window: SlidingWindow,
    /// When the last throttled answer was sent and until when it asked the client to wait.
    retry_after: Option<(Instant, Instant)>,
    pub(super) storm: Option<Storm>,
    pub(super) counters: BudgetCounters,
}

/// Throttled answers on demand (`/_sim/throttle`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Storm {
    pub(super) remaining: u64,
    pub(super) retry_after_s: u64,
    pub(super) status: u16,
}

#[derive(Debug, Default, Clone, Serialize)]
pub(super) struct BudgetCounters {
    requests: u64,
    throttled: u64,
    /// Most requests in flight at once, counted on arrival (refused ones included).
    max_concurrent: usize,
    /// Requests that arrived while the limit was already in flight.
    pub(super) concurrency_exceeded: u64,
    /// Requests that arrived while the window's budget was spent (storms excluded).
    pub(super) window_exceeded: u64,
    /// Requests that arrived inside a Retry-After this simulator gave (after the grace).
    pub(super) requests_during_retry_after: u64,
    max_requests_in_window: usize,
}

/// The limits a budget applies.
#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub(super) concurrency: usize,
    pub(super) window_limit: usize,
    pub(super) window: Duration,
}

/// Whether a request may proceed.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Admission {
    Admit,
    Refuse(GraphError),
}

impl Budget {
    /// A request arrives; it is in flight (refused or not) until [`Budget::depart`].
    pub(super) fn arrive(&mut self, now: Instant, limits: &Limits) -> Admission {
        let c = &mut self.counters;
        c.requests += 1;
        if self
            .retry_after
            .is_some_and(|(sent, until)| now >= sent + RETRY_AFTER_GRACE && now < until)
        {
            c.requests_during_retry_after += 1;
        }
        let already = self.in_flight;
        self.in_flight += 1;
        c.max_concurrent = c.max_concurrent.max(self.in_flight);
        if let Some(storm) = self.storm.as_mut() {
            storm.remaining = storm.remaining.saturating_sub(1);
            let storm = *storm;
            if storm.remaining == 0 {
                self.storm = None;
            }
            let (code, message) = if storm.status == 503 {
                (
                    "ServiceUnavailable",
                    "The service is temporarily unavailable.",
                )
            } else {
                (
                    "ApplicationThrottled",
                    "Application is over its MailboxConcurrency limit.",
                )
            };
            return self.throttle(now, storm.status, code, message.into(), storm.retry_after_s);
        }
        if limits.concurrency > 0 && already >= limits.concurrency {
            self.counters.concurrency_exceeded += 1;
            return self.throttle(
                now,
                429,
                "ApplicationThrottled",
                "Application is over its MailboxConcurrency limit.".into(),
                1,
            );
        }
        match self.window.admit(now, limits.window_limit, limits.window) {
            Ok(in_window) => {
                let c = &mut self.counters;
                c.max_requests_in_window = c.max_requests_in_window.max(in_window);
            }
            Err(wait) => {
                self.counters.window_exceeded += 1;
                let message = format!(
                    "Application is over its limit of {} requests per {} s for this mailbox.",
                    limits.window_limit,
                    limits.window.as_secs()
                );
                return self.throttle(now, 429, "ApplicationThrottled", message, seconds(wait));
            }
        }
        Admission::Admit
    }

    /// Refuses the request with `status` and Retry-After `secs`, and remembers the wait.
    fn throttle(
        &mut self,
        now: Instant,
        status: u16,
        code: &'static str,
        message: String,
        secs: u64,
    ) -> Admission {
        self.counters.throttled += 1;
        let until = now + Duration::from_secs(secs);
        // Keep a longer wait already running: the client learnt of it earlier.
        let keep = self
            .retry_after
            .is_some_and(|(_, running)| running >= until);
        if !keep {
            self.retry_after = Some((now, until));
        }
        Admission::Refuse(GraphError::throttled(status, code, message, secs))
    }

    /// A request was answered.
    pub(super) fn depart(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }
}

/// A Retry-After in whole seconds: the wait rounded up, at least one.
fn seconds(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// The requests admitted within a sliding window.
#[derive(Debug, Default)]
pub(super) struct SlidingWindow {
    arrivals: VecDeque<Instant>,
}

impl SlidingWindow {
    /// Admits a request at `now` unless `limit` (0: none) were admitted within `window`
    /// already. Ok: how many the window holds now; Err: the wait until its oldest leaves it.
    pub(super) fn admit(
        &mut self,
        now: Instant,
        limit: usize,
        window: Duration,
    ) -> Result<usize, Duration> {
        while self
            .arrivals
            .front()
            .is_some_and(|t| now.duration_since(*t) >= window)
        {
            self.arrivals.pop_front();
        }
        if limit > 0 && self.arrivals.len() >= limit {
            let oldest = *self.arrivals.front().expect("the window is full");
            return Err(window.saturating_sub(now.duration_since(oldest)));
        }
        self.arrivals.push_back(now);
        Ok(self.arrivals.len())
    }
}

/// Graph's global limit, per application across all tenants (`--app-limit` requests per
/// `--app-window-ms`): every request, `$batch` items one by one, counts against the app its
/// token was issued to.
#[derive(Debug)]
pub(super) struct AppBudgets {
    pub(super) limit: usize,
    pub(super) window: Duration,
    apps: BTreeMap<String, AppBudget>,
}

/// One application's window and counters.
#[derive(Debug, Default)]
struct AppBudget {
    window: SlidingWindow,
    counters: AppCounters,
}

#[derive(Debug, Default, Clone, Serialize)]
pub(super) struct AppCounters {
    pub(super) requests: u64,
    /// Requests that arrived while the app's budget was spent (answered 429).
    pub(super) exceeded: u64,
    pub(super) max_requests_in_window: usize,
}

impl AppBudgets {
    pub(super) fn new(limit: usize, window: Duration) -> Self {
        Self {
            limit,
            window,
            apps: BTreeMap::new(),
        }
    }

    /// A request of `app` arrives at `now`: admitted, or refused 429 with the wait.
    pub(super) fn arrive(&mut self, app: &str, now: Instant) -> Result<(), GraphError> {
        let (limit, window) = (self.limit, self.window);
        let budget = self.apps.entry(app.to_string()).or_default();
        budget.counters.requests += 1;
        match budget.window.admit(now, limit, window) {
            Ok(in_window) => {
                let c = &mut budget.counters;
                c.max_requests_in_window = c.max_requests_in_window.max(in_window);
                Ok(())
            }
            Err(wait) => {
                budget.counters.exceeded += 1;
                let message = format!(
                    "Application is over its limit of {limit} requests per {} s across all tenants.",
                    window.as_secs_f64()
                );
                Err(GraphError::throttled(
                    429,
                    "ApplicationThrottled",
                    message,
                    seconds(wait),
                ))
            }
        }
    }

    /// Each app's counters, by app (client) id.
    pub(super) fn counters(&self) -> BTreeMap<&str, &AppCounters> {
        self.apps
            .iter()
            .map(|(app, b)| (app.as_str(), &b.counters))
            .collect()
    }

    /// Requests refused over every app's budget.
    pub(super) fn exceeded(&self) -> u64 {
        self.apps.values().map(|b| b.counters.exceeded).sum()
    }
}

/// Decrements the mailbox's in-flight count when the request's answer is done (dropped at the
/// end of the handler, whatever path it took).
pub(super) struct InFlight {
    pub(super) state: Shared,
    pub(super) mailbox: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        lock(&self.state).mailboxes[self.mailbox].budget.depart();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(concurrency: usize, window_limit: usize, window_ms: u64) -> Limits {
        Limits {
            concurrency,
            window_limit,
            window: Duration::from_millis(window_ms),
        }
    }

    /// A budget in a storm of `remaining` throttled answers.
    fn in_a_storm(remaining: u64, retry_after_s: u64, status: u16) -> Budget {
        Budget {
            storm: Some(Storm {
                remaining,
                retry_after_s,
                status,
            }),
            ..Budget::default()
        }
    }

    /// The error a request got; panics if it was admitted.
    #[track_caller]
    fn refused(admission: Admission) -> GraphError {
        match admission {
            Admission::Refuse(e) => e,
            Admission::Admit => panic!("admitted"),
        }
    }

    #[test]
    fn requests_beyond_the_concurrency_limit_are_refused_and_counted_until_others_depart() {
        let mut b = Budget::default();
        let l = limits(4, 0, 1000);
        let t = Instant::now();
        for _ in 0..4 {
            assert_eq!(b.arrive(t, &l), Admission::Admit);
        }
        let e = refused(b.arrive(t, &l)); // the fifth is refused
        assert_eq!(
            (e.status, e.code, e.retry_after_s),
            (429, "ApplicationThrottled", Some(1))
        );
        assert_eq!(
            b.counters.max_concurrent, 5,
            "counted on arrival, refused included"
        );
        assert_eq!(b.counters.concurrency_exceeded, 1);
        b.depart(); // the refused one is answered
        b.depart(); // and one admitted request
        assert_eq!(b.arrive(t, &l), Admission::Admit);
        assert_eq!(b.counters.throttled, 1);
    }

    #[test]
    fn the_window_refuses_with_the_seconds_until_the_oldest_request_leaves_it() {
        let mut b = Budget::default();
        let l = limits(0, 3, 10_000);
        let t = Instant::now();
        for i in 0..3 {
            assert_eq!(b.arrive(t + Duration::from_secs(i), &l), Admission::Admit);
            b.depart();
        }
        let e = refused(b.arrive(t + Duration::from_millis(4_500), &l)); // the window is full
        assert_eq!(e.retry_after_s, Some(6), "5.5 s rounded up");
        b.depart();
        assert_eq!(b.arrive(t + Duration::from_secs(10), &l), Admission::Admit);
        assert_eq!(b.counters.max_requests_in_window, 3);
        assert_eq!(
            b.counters.window_exceeded, 1,
            "a request over Graph's limit"
        );
    }

    #[test]
    fn a_storm_is_not_a_request_over_the_limits() {
        let mut b = in_a_storm(1, 1, 429);
        let _ = refused(b.arrive(Instant::now(), &limits(4, 10, 1000)));
        let c = &b.counters;
        assert_eq!(
            (c.throttled, c.window_exceeded, c.concurrency_exceeded),
            (1, 0, 0)
        );
    }

    #[test]
    fn each_app_has_its_own_window_across_every_mailbox_and_a_wait_rounded_up() {
        let mut apps = AppBudgets::new(2, Duration::from_millis(10_000));
        let t = Instant::now();
        assert!(apps.arrive("a", t).is_ok());
        assert!(apps.arrive("a", t + Duration::from_millis(500)).is_ok());
        let e = apps
            .arrive("a", t + Duration::from_millis(1_000))
            .unwrap_err();
        assert_eq!((e.status, e.retry_after_s), (429, Some(9)));
        assert!(apps.arrive("b", t).is_ok(), "another app is not throttled");
        assert!(
            apps.arrive("a", t + Duration::from_secs(10)).is_ok(),
            "the first left"
        );
        assert_eq!(apps.exceeded(), 1);
        let a = apps.counters()["a"];
        assert_eq!(
            (a.requests, a.exceeded, a.max_requests_in_window),
            (4, 1, 2)
        );
        let mut unlimited = AppBudgets::new(0, Duration::from_millis(1));
        assert!(
            (0..100).all(|_| unlimited.arrive("a", t).is_ok()),
            "0: no limit"
        );
    }

    #[test]
    fn a_request_inside_a_retry_after_is_a_violation_unless_it_was_already_in_flight() {
        let mut b = in_a_storm(1, 2, 503);
        let l = limits(0, 0, 1000);
        let t = Instant::now();
        let e = refused(b.arrive(t, &l)); // the storm throttles
        assert_eq!((e.status, e.retry_after_s), (503, Some(2)));
        b.depart();
        // Within the grace: it was on its way before the client saw the 503.
        assert_eq!(
            b.arrive(t + Duration::from_millis(50), &l),
            Admission::Admit
        );
        assert_eq!(b.counters.requests_during_retry_after, 0);
        assert_eq!(
            b.arrive(t + Duration::from_millis(500), &l),
            Admission::Admit
        );
        assert_eq!(b.counters.requests_during_retry_after, 1);
        assert_eq!(b.arrive(t + Duration::from_secs(2), &l), Admission::Admit);
        assert_eq!(
            b.counters.requests_during_retry_after, 1,
            "the wait is over"
        );
        assert_eq!(b.counters.throttled, 1, "the storm was one request long");
    }

    #[test]
    fn a_429_storm_throttles_count_requests_and_a_shorter_wait_does_not_cut_a_longer_one() {
        let mut b = in_a_storm(2, 30, 429);
        let l = limits(1, 0, 1000);
        let t = Instant::now();
        for _ in 0..2 {
            let e = refused(b.arrive(t, &l)); // the storm throttles
            assert_eq!(
                (e.status, e.code, e.retry_after_s),
                (429, "ApplicationThrottled", Some(30))
            );
            b.depart();
        }
        assert_eq!(b.storm, None, "the storm is over");
        assert_eq!(
            b.arrive(t + Duration::from_millis(50), &l),
            Admission::Admit
        );
        let e = refused(b.arrive(t + Duration::from_millis(60), &l)); // over the concurrency limit
        assert_eq!(e.retry_after_s, Some(1));
        b.depart();
        b.depart();
        assert_eq!(
            b.counters.requests_during_retry_after, 0,
            "within the grace"
        );
        assert_eq!(b.arrive(t + Duration::from_secs(10), &l), Admission::Admit);
        assert_eq!(
            b.counters.requests_during_retry_after, 1,
            "the 30 s wait still ran"
        );
    }
}
