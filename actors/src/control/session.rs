//! The SessionManager actor: one ingestion session at a time, fleet-wide, kept in Redis.
//!
//! States: `idle` (no session yet) → `running` → `draining` → `stopped` (or `error`). Starting a
//! session opens the intake (pollers poll — on a schedule or only when triggered — and webhook
//! subscriptions are created); stopping it closes the intake, lets the pipeline deliver what is
//! queued (up to `pipeline.drain_timeout_ms`), and records the session in the history. The
//! delivery pipeline itself always runs: what is queued is delivered whatever the session does.
//!
//! Counters are the difference between the fleet-wide `stats` hash (updated in the same
//! MULTI/EXEC as the work it counts) now and when the session started, so they are exact, shared
//! by every daemon, and survive restarts. A restarted daemon resumes the session that was running;
//! with `session.autostart` it starts one when none has ever existed. Daemons on one Redis follow
//! `session:current` within a couple of seconds.

use crate::clock::now_ms;
use crate::messages::{Intake, TriggerPoll};
use crate::settings::Settings;
use crate::sources::webhook::{SetIntake, WebhookReceiver};
use crate::store::streams::stat;
use crate::store::{Store, StoreError};
use actix::prelude::*;
use chrono::{SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PollingMode {
    Scheduled,
    Manual,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SessionState {
    Idle,
    Running,
    Draining,
    Stopped,
    Error,
}

impl SessionState {
    fn parse(s: &str) -> Self {
        match s {
            "running" => Self::Running,
            "draining" => Self::Draining,
            "stopped" => Self::Stopped,
            "error" => Self::Error,
            _ => Self::Idle,
        }
    }
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Running => "running",
            Self::Draining => "draining",
            Self::Stopped => "stopped",
            Self::Error => "error",
        }
    }
}

/// One session as stored in Redis.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Session {
    pub session_id: String,
    pub status: SessionState,
    pub polling_mode: PollingMode,
    pub polling_interval: u64,
    pub enable_webhook: bool,
    pub started_ms: u64,
    pub stopped_ms: u64,
    pub stop_reason: String,
    /// The fleet-wide counters when the session started.
    #[serde(skip)]
    base: HashMap<String, u64>,
    /// Final counters of a stopped session.
    #[serde(skip)]
    last: HashMap<String, u64>,
}

/// Counters of a session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SessionCounts {
    pub emails_processed: u64,
    pub emails_delivered: u64,
    pub emails_failed: u64,
    pub emails_dead_lettered: u64,
    pub emails_duplicate: u64,
}

/// A session with its counters and the queue, as the control API reports it.
#[derive(Debug, Clone, Serialize)]
pub struct SessionReport {
    pub session_id: Option<String>,
    pub status: SessionState,
    pub polling_mode: Option<PollingMode>,
    pub polling_interval: Option<u64>,
    pub enable_webhook: Option<bool>,
    pub started_at: Option<String>,
    pub stopped_at: Option<String>,
    pub stop_reason: Option<String>,
    #[serde(flatten)]
    pub counts: SessionCounts,
    /// Entries waiting in the inbound and outbound streams.
    pub queue_depth: u64,
    pub dead_letter_depth: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("a session is already running ({0}); stop it first")]
    AlreadyRunning(String),
    #[error("no session is running")]
    NotRunning,
    #[error("{0}")]
    Invalid(String),
    #[error("redis: {0}")]
    Store(#[from] StoreError),
}

#[derive(Message)]
#[rtype(result = "Result<Session, SessionError>")]
pub struct StartSession {
    pub polling_mode: PollingMode,
    pub polling_interval: u64,
    pub enable_webhook: bool,
}

#[derive(Message)]
#[rtype(result = "Result<Session, SessionError>")]
pub struct StopSession {
    pub reason: String,
}

#[derive(Message)]
#[rtype(result = "Result<SessionReport, SessionError>")]
pub struct GetStatus;

#[derive(Message)]
#[rtype(result = "Result<Vec<SessionReport>, SessionError>")]
pub struct GetHistory {
    pub limit: usize,
}

/// Poll now (one mailbox or all). Needs a running session.
#[derive(Message)]
#[rtype(result = "Result<usize, SessionError>")]
pub struct TriggerPolling {
    pub mailbox: Option<String>,
}

pub struct SessionManager {
    store: Store,
    settings: Arc<Settings>,
    intake: Arc<watch::Sender<Intake>>,
    pollers: BTreeMap<String, Recipient<TriggerPoll>>,
    webhook: Option<Addr<WebhookReceiver>>,
    current: Option<Session>,
    drain_started: Option<std::time::Instant>,
    health: crate::health::Health,
    /// Paces restarts after the session could not be read (Redis down), so the supervisor
    /// does not spin.
    pacer: crate::supervision::RestartPacer,
}

fn rfc3339(ms: u64) -> Option<String> {
    (ms > 0)
        .then(|| Utc.timestamp_millis_opt(ms as i64).single())
        .flatten()
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
}

impl SessionManager {
    pub(crate) fn new(
        store: Store,
        settings: Arc<Settings>,
        intake: Arc<watch::Sender<Intake>>,
        pollers: BTreeMap<String, Recipient<TriggerPoll>>,
        webhook: Option<Addr<WebhookReceiver>>,
        health: crate::health::Health,
    ) -> Self {
        Self {
            health,
            store,
            settings,
            intake,
            pollers,
            webhook,
            current: None,
            drain_started: None,
            pacer: crate::supervision::RestartPacer::new("session_manager"),
        }
    }

    /// Opens or closes the intake to match the current session.
    fn apply(&self) {
        self.health.set_session(
            self.current
                .as_ref()
                .filter(|s| matches!(s.status, SessionState::Running | SessionState::Draining))
                .map_or("", |s| s.session_id.as_str()),
        );
        let intake = match &self.current {
            Some(s) if s.status == SessionState::Running => Intake {
                active: true,
                scheduled: s.polling_mode == PollingMode::Scheduled,
                interval: Duration::from_secs(s.polling_interval.max(1)),
                webhook: s.enable_webhook,
            },
            _ => Intake::closed(),
        };
        let changed = *self.intake.borrow() != intake;
        if changed {
            if let Some(w) = &self.webhook {
                w.do_send(SetIntake(intake.active && intake.webhook));
            }
            self.intake.send_replace(intake);
        }
    }
}

/// Stores `session` as current (and in the history when it ended).
async fn save(store: &Store, s: &Session) -> Result<(), StoreError> {
    let keys = store.keys();
    let mut fields: Vec<(String, String)> = vec![
        ("id".into(), s.session_id.clone()),
        ("status".into(), s.status.as_str().into()),
        (
            "polling_mode".into(),
            match s.polling_mode {
                PollingMode::Scheduled => "scheduled",
                PollingMode::Manual => "manual",
            }
            .into(),
        ),
        ("polling_interval".into(), s.polling_interval.to_string()),
        ("enable_webhook".into(), s.enable_webhook.to_string()),
        ("started_ms".into(), s.started_ms.to_string()),
        ("stopped_ms".into(), s.stopped_ms.to_string()),
        ("stop_reason".into(), s.stop_reason.clone()),
    ];
    for (k, v) in &s.base {
        fields.push((format!("base_{k}"), v.to_string()));
    }
    for (k, v) in &s.last {
        fields.push((format!("last_{k}"), v.to_string()));
    }
    store.save_session(&keys.session_current(), &fields).await?;
    store
        .save_session(&keys.session(&s.session_id), &fields)
        .await?;
    store.index_session(&s.session_id, s.started_ms).await
}

fn parse(map: &HashMap<String, String>) -> Option<Session> {
    let id = map.get("id")?.clone();
    let num = |k: &str| map.get(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let prefixed = |p: &str| {
        map.iter()
            .filter_map(|(k, v)| Some((k.strip_prefix(p)?.to_string(), v.parse().ok()?)))
            .collect::<HashMap<String, u64>>()
    };
    Some(Session {
        session_id: id,
        status: SessionState::parse(map.get("status").map(String::as_str).unwrap_or("")),
        polling_mode: if map.get("polling_mode").map(String::as_str) == Some("manual") {
            PollingMode::Manual
        } else {
            PollingMode::Scheduled
        },
        polling_interval: num("polling_interval"),
        enable_webhook: map.get("enable_webhook").map(String::as_str) == Some("true"),
        started_ms: num("started_ms"),
        stopped_ms: num("stopped_ms"),
        stop_reason: map.get("stop_reason").cloned().unwrap_or_default(),
        base: prefixed("base_"),
        last: prefixed("last_"),
    })
}

fn counts(now: &HashMap<String, u64>, base: &HashMap<String, u64>) -> SessionCounts {
    let d = |k: &str| {
        now.get(k)
            .copied()
            .unwrap_or(0)
            .saturating_sub(base.get(k).copied().unwrap_or(0))
    };
    SessionCounts {
        emails_processed: d(stat::PROCESSED),
        emails_delivered: d(stat::DELIVERED),
        emails_failed: d(stat::DEAD_LETTERED),
        emails_dead_lettered: d(stat::DEAD_LETTERED),
        emails_duplicate: d(stat::DUPLICATES),
    }
}

async fn report(store: &Store, s: Option<&Session>) -> Result<SessionReport, StoreError> {
    let keys = store.keys().clone();
    let queue_depth = store.len(&keys.inbound()).await? + store.len(&keys.outbound()).await?;
    let dead_letter_depth = store.len(&keys.dlq()).await?;
    let Some(s) = s else {
        return Ok(SessionReport {
            session_id: None,
            status: SessionState::Idle,
            polling_mode: None,
            polling_interval: None,
            enable_webhook: None,
            started_at: None,
            stopped_at: None,
            stop_reason: None,
            counts: SessionCounts::default(),
            queue_depth,
            dead_letter_depth,
        });
    };
    let now = if s.last.is_empty() {
        store.counts().await?
    } else {
        s.last.clone()
    };
    Ok(SessionReport {
        session_id: Some(s.session_id.clone()),
        status: s.status,
        polling_mode: Some(s.polling_mode),
        polling_interval: Some(s.polling_interval),
        enable_webhook: Some(s.enable_webhook),
        started_at: rfc3339(s.started_ms),
        stopped_at: rfc3339(s.stopped_ms),
        stop_reason: (!s.stop_reason.is_empty()).then(|| s.stop_reason.clone()),
        counts: counts(&now, &s.base),
        queue_depth,
        dead_letter_depth,
    })
}

impl Actor for SessionManager {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let store = self.store.clone();
        let autostart = self.settings.session.autostart;
        let defaults = StartSession {
            polling_mode: PollingMode::Scheduled,
            polling_interval: self.settings.graph.poll_interval_s,
            enable_webhook: self.settings.webhook.enabled,
        };
        let delay = self.pacer.delay(std::time::Instant::now());
        ctx.wait(
            async move {
                tokio::time::sleep(delay).await;
                store.load_session().await
            }
                .into_actor(self)
                .map(move |loaded, act, ctx| {
                    match loaded {
                        Ok(Some(map)) => {
                            act.current = parse(&map);
                            if let Some(s) = &act.current {
                                tracing::info!(session_id = %s.session_id, status = s.status.as_str(), "resuming the session found in redis");
                            }
                        }
                        Ok(None) if autostart => {
                            tracing::info!("no session yet: starting one (session.autostart)");
                            ctx.notify(AutoStart(defaults));
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::error!(error = %e, "cannot read the session; retrying");
                            ctx.stop();
                            return;
                        }
                    }
                    act.apply();
                }),
        );
        ctx.run_interval(Duration::from_secs(2), |act, ctx| act.tick(ctx));
    }
}

impl Supervised for SessionManager {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        self.pacer.on_restart();
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct AutoStart(StartSession);

impl Handler<AutoStart> for SessionManager {
    type Result = ();
    fn handle(&mut self, msg: AutoStart, ctx: &mut Context<Self>) {
        let addr = ctx.address();
        actix::spawn(async move {
            if let Ok(Err(e)) = addr.send(msg.0).await {
                tracing::warn!(error = %e, "autostart");
            }
        });
    }
}

impl SessionManager {
    /// Follows `session:current` (other daemons may change it) and finishes a drain.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        let store = self.store.clone();
        let drain_for = Duration::from_millis(self.settings.pipeline.drain_timeout_ms);
        let draining_since = self.drain_started;
        ctx.spawn(
            async move {
                let map = store.load_session().await?;
                let mut session = map.as_ref().and_then(parse);
                if let Some(s) = session
                    .as_mut()
                    .filter(|s| s.status == SessionState::Draining)
                {
                    let keys = store.keys().clone();
                    let backlog =
                        store.len(&keys.inbound()).await? + store.len(&keys.outbound()).await?;
                    let overdue = draining_since.is_some_and(|t| t.elapsed() > drain_for);
                    if backlog == 0 || overdue {
                        s.status = SessionState::Stopped;
                        s.stopped_ms = now_ms();
                        s.last = store.counts().await?;
                        save(&store, s).await?;
                    }
                }
                Ok::<_, StoreError>(session)
            }
            .into_actor(self)
            .map(|res, act, _ctx| match res {
                Ok(session) => {
                    if session.as_ref().map(|s| s.status) != Some(SessionState::Draining) {
                        act.drain_started = None;
                    }
                    act.current = session;
                    act.apply();
                }
                Err(e) => tracing::warn!(error = %e, "cannot refresh the session"),
            }),
        );
    }
}

impl Handler<StartSession> for SessionManager {
    type Result = ResponseActFuture<Self, Result<Session, SessionError>>;

    fn handle(&mut self, msg: StartSession, _ctx: &mut Context<Self>) -> Self::Result {
        let store = self.store.clone();
        let webhook_configured = self.settings.webhook.enabled;
        Box::pin(
            async move {
                if msg.enable_webhook && !webhook_configured {
                    return Err(SessionError::Invalid(
                        "enable_webhook: webhooks are not configured on this daemon (webhook.enabled = false)".into(),
                    ));
                }
                if !(1..=86_400).contains(&msg.polling_interval) {
                    return Err(SessionError::Invalid(
                        "polling_interval: must be between 1 and 86400 seconds".into(),
                    ));
                }
                if let Some(cur) = store.load_session().await?.as_ref().and_then(parse) {
                    if matches!(cur.status, SessionState::Running | SessionState::Draining) {
                        return Err(SessionError::AlreadyRunning(cur.session_id));
                    }
                }
                let s = Session {
                    session_id: uuid::Uuid::new_v4().to_string(),
                    status: SessionState::Running,
                    polling_mode: msg.polling_mode,
                    polling_interval: msg.polling_interval,
                    enable_webhook: msg.enable_webhook,
                    started_ms: now_ms(),
                    stopped_ms: 0,
                    stop_reason: String::new(),
                    base: store.counts().await?,
                    last: HashMap::new(),
                };
                if !store.claim_session_start(&s.session_id).await? {
                    return Err(SessionError::AlreadyRunning("another start won".into()));
                }
                save(&store, &s).await?;
                Ok(s)
            }
            .into_actor(self)
            .map(|res, act, _ctx| {
                if let Ok(s) = &res {
                    tracing::info!(session_id = %s.session_id, mode = ?s.polling_mode, interval_s = s.polling_interval, webhook = s.enable_webhook, "session started");
                    act.current = Some(s.clone());
                    act.drain_started = None;
                    act.apply();
                }
                res
            }),
        )
    }
}

impl Handler<StopSession> for SessionManager {
    type Result = ResponseActFuture<Self, Result<Session, SessionError>>;

    fn handle(&mut self, msg: StopSession, _ctx: &mut Context<Self>) -> Self::Result {
        let store = self.store.clone();
        Box::pin(
            async move {
                let mut s = store
                    .load_session()
                    .await?
                    .as_ref()
                    .and_then(parse)
                    .filter(|s| s.status == SessionState::Running)
                    .ok_or(SessionError::NotRunning)?;
                s.status = SessionState::Draining;
                s.stop_reason = msg.reason.chars().take(200).collect();
                save(&store, &s).await?;
                Ok(s)
            }
            .into_actor(self)
            .map(|res, act, _ctx| {
                if let Ok(s) = &res {
                    tracing::info!(session_id = %s.session_id, reason = %s.stop_reason, "session stopping: intake closed, draining the queue");
                    act.current = Some(s.clone());
                    act.drain_started = Some(std::time::Instant::now());
                    act.apply();
                }
                res
            }),
        )
    }
}

impl Handler<GetStatus> for SessionManager {
    type Result = ResponseFuture<Result<SessionReport, SessionError>>;

    fn handle(&mut self, _: GetStatus, _ctx: &mut Context<Self>) -> Self::Result {
        let store = self.store.clone();
        Box::pin(async move {
            let s = store.load_session().await?.as_ref().and_then(parse);
            Ok(report(&store, s.as_ref()).await?)
        })
    }
}

impl Handler<GetHistory> for SessionManager {
    type Result = ResponseFuture<Result<Vec<SessionReport>, SessionError>>;

    fn handle(&mut self, msg: GetHistory, _ctx: &mut Context<Self>) -> Self::Result {
        let store = self.store.clone();
        Box::pin(async move {
            let mut out = Vec::new();
            for id in store.session_ids(msg.limit.clamp(1, 1_000)).await? {
                if let Some(s) = store.load_past_session(&id).await?.as_ref().and_then(parse) {
                    out.push(report(&store, Some(&s)).await?);
                }
            }
            Ok(out)
        })
    }
}

impl Handler<TriggerPolling> for SessionManager {
    type Result = Result<usize, SessionError>;

    fn handle(&mut self, msg: TriggerPolling, _ctx: &mut Context<Self>) -> Self::Result {
        if self.current.as_ref().map(|s| s.status) != Some(SessionState::Running) {
            return Err(SessionError::NotRunning);
        }
        let mut n = 0;
        for (mb, p) in &self.pollers {
            if msg.mailbox.as_deref().is_none_or(|m| m == mb) {
                p.do_send(TriggerPoll);
                n += 1;
            }
        }
        if n == 0 && msg.mailbox.is_some() {
            return Err(SessionError::Invalid(
                "mailbox: not a Graph mailbox (graph.mailboxes, graph.tenants) or IMAP source (imap.sources)".into(),
            ));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_differences_from_the_session_start() {
        let base: HashMap<String, u64> =
            [("processed".to_string(), 10), ("delivered".into(), 7)].into();
        let now: HashMap<String, u64> = [
            ("processed".to_string(), 25),
            ("delivered".into(), 20),
            ("dead_lettered".into(), 2),
        ]
        .into();
        let c = counts(&now, &base);
        assert_eq!(c.emails_processed, 15);
        assert_eq!(c.emails_delivered, 13);
        assert_eq!(c.emails_failed, 2);
    }

    #[test]
    fn a_stored_session_parses_back() {
        let map: HashMap<String, String> = [
            ("id", "s1"),
            ("status", "draining"),
            ("polling_mode", "manual"),
            ("polling_interval", "30"),
            ("enable_webhook", "true"),
            ("started_ms", "1000"),
            ("base_processed", "5"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let s = parse(&map).unwrap();
        assert_eq!(s.status, SessionState::Draining);
        assert_eq!(s.polling_mode, PollingMode::Manual);
        assert_eq!(s.base["processed"], 5);
        assert!(s.enable_webhook);
    }
}
