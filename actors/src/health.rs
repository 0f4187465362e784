//! Readiness as the actors report it, read by `/ready` (and, later, the systemd watchdog).
//!
//! Cheap to clone and to update from any actor; every flag is an atomic.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Shared readiness flags.
#[derive(Clone, Debug)]
pub struct Health(Arc<Flags>);

#[derive(Debug)]
struct Flags {
    redis_ok: AtomicBool,
    ms4_auth_ok: AtomicBool,
    breaker: AtomicU8,
    /// Why the last MS4 request failed, while failures last (cleared by a success).
    ms4_error: Mutex<Option<String>>,
    /// Sources (mailboxes) whose last attempt failed for a reason an operator must fix.
    sources: Mutex<BTreeMap<String, String>>,
    /// Last sign of life of each actor work loop that beats.
    beats: Mutex<BTreeMap<&'static str, Instant>>,
    /// The running session, for log fields (SESSION_ID).
    session: Mutex<String>,
}

impl Default for Health {
    fn default() -> Self {
        Self(Arc::new(Flags {
            redis_ok: AtomicBool::new(false),
            ms4_auth_ok: AtomicBool::new(true),
            breaker: AtomicU8::new(0),
            ms4_error: Mutex::new(None),
            sources: Mutex::new(BTreeMap::new()),
            beats: Mutex::new(BTreeMap::new()),
            session: Mutex::new(String::new()),
        }))
    }
}

/// What `/ready` reports.
#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub struct Readiness {
    pub ready: bool,
    pub redis: bool,
    pub ms4_auth: bool,
    /// `closed`, `open` or `half_open`.
    pub ms4_breaker: &'static str,
    /// Why it is not ready, for an operator.
    pub reasons: Vec<String>,
    /// Sources that fail on their own (other sources keep flowing): source → reason.
    pub degraded_sources: BTreeMap<String, String>,
    /// How many sources are degraded.
    pub degraded_source_count: usize,
}

/// What `/ready` shows a caller without the control token: the states, no text. The reasons
/// and the degraded sources name users, hosts and carry Graph's or the IMAP server's own
/// words; they stay behind the token.
#[derive(Debug, Clone, serde::Serialize, PartialEq)]
pub struct PublicReadiness {
    pub ready: bool,
    pub redis: bool,
    pub ms4_auth: bool,
    pub ms4_breaker: &'static str,
    pub degraded_source_count: usize,
}

impl Readiness {
    /// The states only, for a caller without the control token.
    pub fn public(&self) -> PublicReadiness {
        PublicReadiness {
            ready: self.ready,
            redis: self.redis,
            ms4_auth: self.ms4_auth,
            ms4_breaker: self.ms4_breaker,
            degraded_source_count: self.degraded_source_count,
        }
    }
}

impl Health {
    pub fn set_redis(&self, ok: bool) {
        self.0.redis_ok.store(ok, Ordering::Relaxed);
    }
    pub(crate) fn set_ms4_auth(&self, ok: bool) {
        self.0.ms4_auth_ok.store(ok, Ordering::Relaxed);
    }
    pub(crate) fn set_breaker(&self, state: crate::retry::BreakerState) {
        self.0
            .breaker
            .store(state.as_gauge() as u8, Ordering::Relaxed);
    }

    /// Records why MS4 deliveries fail (or clears it, with `None`, after a success).
    pub(crate) fn set_ms4_error(&self, reason: Option<String>) {
        *self.0.ms4_error.lock().unwrap_or_else(|p| p.into_inner()) = reason;
    }

    /// Records (or clears, with `None`) a source-specific failure such as refused credentials.
    pub(crate) fn set_source_error(&self, source: &str, reason: Option<String>) {
        let mut sources = self.0.sources.lock().unwrap_or_else(|p| p.into_inner());
        match reason {
            Some(r) => {
                sources.insert(source.to_string(), r);
            }
            None => {
                sources.remove(source);
            }
        }
    }

    /// Records the running session's id ("" when none) for log fields.
    pub(crate) fn set_session(&self, id: &str) {
        *self.0.session.lock().unwrap_or_else(|p| p.into_inner()) = id.to_string();
    }

    /// The running session's id, "" when none.
    pub(crate) fn session(&self) -> String {
        self.0
            .session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// An actor's work loop is alive (called once per iteration).
    pub(crate) fn beat(&self, actor: &'static str) {
        self.0
            .beats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(actor, Instant::now());
    }

    /// Actors that beat once and then fell silent for longer than `max_age` (a stuck loop).
    pub fn stalled(&self, max_age: Duration) -> Vec<&'static str> {
        self.0
            .beats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(_, t)| t.elapsed() > max_age)
            .map(|(a, _)| *a)
            .collect()
    }

    pub fn readiness(&self) -> Readiness {
        let redis = self.0.redis_ok.load(Ordering::Relaxed);
        let ms4_auth = self.0.ms4_auth_ok.load(Ordering::Relaxed);
        let breaker = match self.0.breaker.load(Ordering::Relaxed) {
            0 => "closed",
            1 => "open",
            _ => "half_open",
        };
        let mut reasons = Vec::new();
        if !redis {
            reasons.push("redis is not reachable".to_string());
        }
        if !ms4_auth {
            reasons.push("MS4 rejects the API key (401): check ms4.api_key".to_string());
        }
        if breaker == "open" {
            let last = self
                .0
                .ms4_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            reasons.push(match last {
                Some(why) => format!("MS4 circuit breaker is open: MS4 keeps failing ({why})"),
                None => "MS4 circuit breaker is open: MS4 keeps failing".to_string(),
            });
        }
        let degraded_sources = self
            .0
            .sources
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        Readiness {
            ready: reasons.is_empty(),
            redis,
            ms4_auth,
            ms4_breaker: breaker,
            reasons,
            degraded_source_count: degraded_sources.len(),
            degraded_sources,
        }
    }
}
