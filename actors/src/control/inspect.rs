//! The Inspector actor: what the operator looks at, for `GET /queues`, `GET /sources` and
//! `GET /rates` (and the web console, which reads only those): every stream with its groups
//! and consumers, every source with its state, the delivery rate and the MS4 budget in use.
//! Reads only.

use crate::health::Health;
use crate::settings::Settings;
use crate::store::inspect::{SourceRecord, StreamInfo};
use crate::store::{Store, StoreError};
use actix::prelude::*;
use std::sync::Arc;

pub struct Inspector {
    store: Store,
    settings: Arc<Settings>,
    health: Health,
}

impl Inspector {
    pub(crate) fn new(store: Store, settings: Arc<Settings>, health: Health) -> Self {
        Self {
            store,
            settings,
            health,
        }
    }
}

impl Actor for Inspector {
    type Context = Context<Self>;
}

impl Supervised for Inspector {}

/// Every stream: the pipeline's, the follow-ups', the dead letters and each parked mailbox's.
#[derive(Message)]
#[rtype(result = "Result<Vec<StreamInfo>, StoreError>")]
pub struct GetQueues;

/// Every configured source with its state.
#[derive(Message)]
#[rtype(result = "Result<Vec<SourceReport>, StoreError>")]
pub struct GetSources;

/// The delivery rate of the last `minutes` and the MS4 budget in use.
#[derive(Message)]
#[rtype(result = "Result<Rates, StoreError>")]
pub struct GetRates {
    pub minutes: u64,
}

/// One source as the operator sees it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SourceReport {
    pub name: String,
    /// `graph` or `imap`.
    pub kind: &'static str,
    /// The Graph tenant it belongs to.
    pub tenant: Option<String>,
    /// `parked` (Graph keeps refusing or failing it: its entries wait), `degraded` (its
    /// polls are refused for a reason an operator must fix), `retrying` (its last poll failed
    /// for a passing reason), `unowned` (no daemon holds its lease yet), `polling` (a poll is
    /// under way) or `idle` (waiting for its next poll, or in IMAP IDLE), by `lease_holder`.
    pub state: String,
    /// Why it is parked or degraded (as this daemon sees it; the holder's own `/ready` says
    /// more for a source another daemon polls).
    pub reason: Option<String>,
    /// The source's key in readiness' degraded sources.
    pub health_key: String,
    /// Its last poll that got through, and how long ago (ms).
    pub last_poll_ms: Option<u64>,
    pub cursor_age_ms: Option<u64>,
    #[serde(flatten)]
    pub record: SourceRecord,
}

/// The delivery rate and the MS4 budget in use.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Rates {
    /// Records delivered per minute, oldest first: `[minute start ms, count]`.
    pub delivered_per_minute: Vec<(u64, u64)>,
    /// MS4 requests granted in the last 60 s, across every daemon.
    pub ms4_requests_last_60s: u64,
    /// MS4's limit per minute (`ms4.rate_limit_per_min`; 0: none).
    pub ms4_limit_per_min: u32,
}

impl Handler<GetQueues> for Inspector {
    type Result = ResponseFuture<Result<Vec<StreamInfo>, StoreError>>;

    fn handle(&mut self, _: GetQueues, _ctx: &mut Context<Self>) -> Self::Result {
        let store = self.store.clone();
        Box::pin(async move {
            let now = crate::clock::now_ms();
            let mut names: Vec<String> = ["inbound", "outbound", "markread", "imapdone", "dlq"]
                .map(String::from)
                .to_vec();
            names.extend(store.parked_streams().await?);
            let mut out = Vec::with_capacity(names.len());
            for name in names {
                out.push(store.stream_info(&name, now).await?);
            }
            Ok(out)
        })
    }
}

impl Handler<GetSources> for Inspector {
    type Result = ResponseFuture<Result<Vec<SourceReport>, StoreError>>;

    fn handle(&mut self, _: GetSources, _ctx: &mut Context<Self>) -> Self::Result {
        let store = self.store.clone();
        let health = self.health.readiness().degraded_sources;
        // (name, lease name, kind, tenant, health key)
        let mut sources: Vec<(String, String, &'static str, Option<String>, String)> = self
            .settings
            .graph
            .tenants()
            .into_iter()
            .flat_map(|t| {
                let tenant = t.name;
                t.mailboxes
                    .into_iter()
                    .map(move |m| (m.clone(), m.clone(), "graph", Some(tenant.clone()), m))
            })
            .collect();
        sources.extend(self.settings.imap.sources.iter().map(|s| {
            let lease = crate::store::imap::lease_name(&s.name);
            (s.name.clone(), lease.clone(), "imap", None, lease)
        }));
        Box::pin(async move {
            let now = crate::clock::now_ms();
            let keys: Vec<(String, String)> = sources
                .iter()
                .map(|(name, lease, ..)| (name.clone(), lease.clone()))
                .collect();
            let records = store.source_records(&keys, now).await?;
            Ok(sources
                .into_iter()
                .zip(records)
                .map(|((name, _, kind, tenant, health_key), record)| {
                    let tenant_refused = tenant
                        .as_ref()
                        .and_then(|t| health.get(&format!("tenant:{t}")));
                    let degraded = health.get(&health_key).or(tenant_refused).cloned();
                    let (state, reason) = source_state(&record, degraded);
                    SourceReport {
                        name,
                        kind,
                        tenant,
                        state,
                        reason,
                        health_key,
                        last_poll_ms: record.cursor_updated_ms,
                        cursor_age_ms: record.cursor_updated_ms.map(|t| now.saturating_sub(t)),
                        record,
                    }
                })
                .collect())
        })
    }
}

/// A source's state and why, from what Redis holds and what this daemon knows.
fn source_state(record: &SourceRecord, degraded: Option<String>) -> (String, Option<String>) {
    let poller = record.poller_state.as_deref();
    if record.parked_reason.is_some() {
        ("parked".into(), record.parked_reason.clone())
    } else if degraded.is_some() || poller == Some("refused") {
        let why = degraded.or_else(|| record.poller_reason.clone());
        ("degraded".into(), why)
    } else if record.lease_holder.is_none() {
        ("unowned".into(), None)
    } else {
        let state = poller.unwrap_or("idle").to_string();
        let why = (state == "retrying")
            .then(|| record.poller_reason.clone())
            .flatten();
        (state, why)
    }
}

impl Handler<GetRates> for Inspector {
    type Result = ResponseFuture<Result<Rates, StoreError>>;

    fn handle(&mut self, msg: GetRates, _ctx: &mut Context<Self>) -> Self::Result {
        let store = self.store.clone();
        let limit = self.settings.ms4.rate_limit_per_min;
        Box::pin(async move {
            let now = crate::clock::now_ms();
            Ok(Rates {
                delivered_per_minute: store
                    .delivered_per_minute(msg.minutes.clamp(1, 120), now)
                    .await?,
                ms4_requests_last_60s: store
                    .permits_last_minute(crate::pipeline::ratelimiter::MS4)
                    .await?,
                ms4_limit_per_min: limit,
            })
        })
    }
}
