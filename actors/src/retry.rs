//! Retry schedules and the circuit breaker in front of MS4.
//!
//! [`Backoff`] is the exponential schedule with jitter for one batch's transient failures
//! (built on `backon`). [`Breaker`] is the shared closed → open → half-open state machine: after
//! `failure_threshold` consecutive transient failures the circuit opens, no request goes out for
//! `open_ms`, then exactly one probe is let through; its success closes the circuit, its
//! failure opens it again. Time is passed in, so the state machine is tested without sleeping.

use crate::settings::{BreakerSettings, RetryBounds};
use backon::{BackoffBuilder, ExponentialBuilder};
use std::time::{Duration, Instant};

/// Exponential delays with jitter between a section's `retry_min_ms` and `retry_max_ms`,
/// forever: a transient failure is retried until it succeeds (or the daemon drains), never
/// dropped.
pub(crate) struct Backoff {
    inner: backon::ExponentialBackoff,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(bounds: RetryBounds) -> Self {
        Self::between(bounds.min, bounds.max)
    }

    /// Exponential delays with jitter between `min` and `max`, forever.
    pub(crate) fn between(min: Duration, max: Duration) -> Self {
        let inner = ExponentialBuilder::new()
            .with_jitter()
            .with_factor(2.0)
            .with_min_delay(min)
            .with_max_delay(max)
            .without_max_times()
            .build();
        Self { inner, max }
    }

    pub(crate) fn next_delay(&mut self) -> Duration {
        self.inner.next().unwrap_or(self.max)
    }
}

/// The breaker's state, also exported as a gauge (0 closed, 1 open, 2 half-open).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub(crate) fn as_gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::Open => 1.0,
            BreakerState::HalfOpen => 2.0,
        }
    }
}

/// What the breaker lets a caller do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Send normally.
    Go,
    /// Send: this request is the one probe of a half-open circuit.
    Probe,
    /// Do not send; ask again after this long.
    Wait(Duration),
}

#[derive(Debug)]
pub(crate) struct Breaker {
    threshold: u32,
    open_for: Duration,
    failures: u32,
    open_until: Option<Instant>,
    probing: bool,
}

impl Breaker {
    pub(crate) fn new(s: &BreakerSettings) -> Self {
        Self {
            threshold: s.failure_threshold,
            open_for: Duration::from_millis(s.open_ms),
            failures: 0,
            open_until: None,
            probing: false,
        }
    }

    pub(crate) fn state(&self, now: Instant) -> BreakerState {
        match self.open_until {
            None => BreakerState::Closed,
            Some(t) if now < t => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }

    /// May a request go out now?
    pub(crate) fn admit(&mut self, now: Instant) -> Admission {
        match self.open_until {
            None => Admission::Go,
            Some(t) if now < t => Admission::Wait(t - now),
            Some(_) if self.probing => Admission::Wait(Duration::from_millis(50)),
            Some(_) => {
                self.probing = true;
                Admission::Probe
            }
        }
    }

    /// MS4 answered (anything but a transient failure): the service is up.
    pub(crate) fn on_success(&mut self) {
        self.failures = 0;
        self.open_until = None;
        self.probing = false;
    }

    /// A transient failure (5xx, timeout, connection error). Returns true when it opened the
    /// circuit.
    pub(crate) fn on_failure(&mut self, now: Instant, was_probe: bool) -> bool {
        self.failures = self.failures.saturating_add(1);
        if was_probe {
            self.probing = false;
            self.open_until = Some(now + self.open_for);
            return true;
        }
        if self.open_until.is_none() && self.failures >= self.threshold {
            self.open_until = Some(now + self.open_for);
            return true;
        }
        false
    }

    /// A probe ended without an answer that says anything about MS4 (e.g. a Redis error).
    pub(crate) fn abandon_probe(&mut self) {
        self.probing = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(&BreakerSettings {
            failure_threshold: 3,
            open_ms: 1_000,
        })
    }

    #[test]
    fn the_circuit_opens_after_the_threshold_and_lets_one_probe_through() {
        let t0 = Instant::now();
        let mut b = breaker();
        assert!(!b.on_failure(t0, false));
        assert!(!b.on_failure(t0, false));
        assert_eq!(b.admit(t0), Admission::Go);
        assert!(b.on_failure(t0, false));
        assert_eq!(b.state(t0), BreakerState::Open);
        assert_eq!(b.admit(t0), Admission::Wait(Duration::from_secs(1)));
        let later = t0 + Duration::from_millis(1_001);
        assert_eq!(b.state(later), BreakerState::HalfOpen);
        assert_eq!(b.admit(later), Admission::Probe);
        assert!(
            matches!(b.admit(later), Admission::Wait(_)),
            "only one probe"
        );
        b.on_success();
        assert_eq!(b.state(later), BreakerState::Closed);
        assert_eq!(b.admit(later), Admission::Go);
    }

    #[test]
    fn a_failed_probe_opens_the_circuit_again() {
        let t0 = Instant::now();
        let mut b = breaker();
        for _ in 0..3 {
            b.on_failure(t0, false);
        }
        let later = t0 + Duration::from_secs(2);
        assert_eq!(b.admit(later), Admission::Probe);
        assert!(b.on_failure(later, true));
        assert_eq!(b.state(later), BreakerState::Open);
        assert_eq!(b.admit(later), Admission::Wait(Duration::from_secs(1)));
    }

    #[test]
    fn success_resets_the_failure_count() {
        let t0 = Instant::now();
        let mut b = breaker();
        b.on_failure(t0, false);
        b.on_failure(t0, false);
        b.on_success();
        assert!(!b.on_failure(t0, false));
        assert_eq!(b.state(t0), BreakerState::Closed);
    }

    #[test]
    fn backoff_grows_within_bounds() {
        let mut b = Backoff::new(RetryBounds::from_ms(100, 1_000));
        let delays: Vec<Duration> = (0..12).map(|_| b.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(100));
        // Jitter adds up to one more delay on top of the capped value.
        assert!(delays.iter().all(|d| *d <= Duration::from_millis(2_000)));
        assert!(delays[8] >= Duration::from_millis(1_000));
    }
}
