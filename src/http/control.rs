//! The control API. `/health` and `/ready` need no token (load balancers, systemd): without
//! it `/ready` shows the states only (its status code, 200 or 503, is the same either way);
//! with it, also the reasons and the degraded sources (their text names users and hosts and
//! quotes the servers). Every other route needs `Authorization: Bearer <control.token>` (when
//! one is set), compared in constant time. Bodies are JSON (415 otherwise), at most 64 KiB (413), unknown fields are refused
//! (400). Errors are `{"error":{"code","message"}}` with the right status. Handlers validate and
//! send one message to an actor; `GET /openapi.json` describes every route.

use actix::Addr;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::{from_fn, Next};
use actix_web::{http::StatusCode, web, HttpRequest, HttpResponse, ResponseError};
use metrics_exporter_prometheus::PrometheusHandle;
use ms1_actors::control::deadletters::{
    CountDead, DeadLetterOffice, GetDead, ListDead, PurgeDead, ReplayDead,
};
use ms1_actors::control::inspect::{GetQueues, GetRates, GetSources, Inspector};
use ms1_actors::control::session::{
    GetHistory, GetStatus, PollingMode, SessionError, SessionManager, StartSession, StopSession,
    TriggerPolling,
};
use ms1_actors::settings::Secret;
use ms1_actors::store::dlq::{DeadLetterFilter, Stage};
use ms1_actors::store::entry::is_entry_id;
use ms1_actors::store::Entry;
use ms1_actors::Health;
use serde::Deserialize;
use serde_json::{json, Value};

/// Largest request body taken by a control route.
pub const MAX_BODY: usize = 64 * 1024;

/// What the routes read and whom they ask.
#[derive(Clone)]
pub struct ControlState {
    pub health: Health,
    pub prometheus: PrometheusHandle,
    pub token: Secret,
    pub session: Addr<SessionManager>,
    pub dead_letters: Addr<DeadLetterOffice>,
    pub inspector: Addr<Inspector>,
    /// The web console's signed-in browsers.
    pub console: super::console::sessions::Sessions,
    /// Defaults of `POST /session/start`.
    pub default_interval: u64,
    pub default_webhook: bool,
}

/// An error answer in the API's shape: `{"error":{"code","message"}}` with its status.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut answer = HttpResponse::build(self.status);
        if self.status == StatusCode::REQUEST_TIMEOUT {
            // The rest of the body may still be on its way: do not wait for it.
            answer.force_close();
        }
        answer.json(json!({"error": {"code": self.code, "message": self.message}}))
    }
}

/// Checks `Authorization: Bearer <token>` in constant time.
pub fn authorize(req: &HttpRequest, token: &str) -> Result<(), ApiError> {
    if token.is_empty() {
        return Ok(());
    }
    let given = req
        .headers()
        .get("Authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(given.as_bytes(), token.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token (Authorization: Bearer <control.token>)",
        ))
    }
}

/// Compares in constant time (for equal lengths; a length mismatch is not a secret).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.ct_eq(b).into()
}

async fn health() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "alive"}))
}

async fn ready(state: web::Data<ControlState>, req: HttpRequest) -> HttpResponse {
    let r = state.health.readiness();
    let status = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    if super::console::authenticate(&req, &state).is_ok() {
        HttpResponse::build(status).json(r)
    } else {
        HttpResponse::build(status).json(r.public())
    }
}

async fn prometheus(state: web::Data<ControlState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(state.prometheus.render())
}

/// Requires the bearer token (or a signed-in console, with its CSRF token on every
/// state-changing request) on every route it wraps.
async fn require_token(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    match req.app_data::<web::Data<ControlState>>() {
        Some(state) => {
            super::console::authenticate(req.request(), state)?;
        }
        None => authorize(req.request(), "")?,
    }
    next.call(req).await
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        e.to_string(),
    )
}

impl From<SessionError> for ApiError {
    fn from(e: SessionError) -> Self {
        let (status, code) = match &e {
            SessionError::AlreadyRunning(_) => (StatusCode::CONFLICT, "session_running"),
            SessionError::NotRunning => (StatusCode::CONFLICT, "no_session"),
            SessionError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
            SessionError::Store(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartBody {
    polling_mode: Option<PollingMode>,
    polling_interval: Option<u64>,
    enable_webhook: Option<bool>,
}

async fn session_start(
    state: web::Data<ControlState>,
    body: web::Json<StartBody>,
) -> Result<HttpResponse, ApiError> {
    let b = body.into_inner();
    let s = state
        .session
        .send(StartSession {
            polling_mode: b.polling_mode.unwrap_or(PollingMode::Scheduled),
            polling_interval: b.polling_interval.unwrap_or(state.default_interval),
            enable_webhook: b.enable_webhook.unwrap_or(state.default_webhook),
        })
        .await
        .map_err(unavailable)??;
    Ok(HttpResponse::Ok().json(json!({"message": "Session started.", "session_id": s.session_id})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StopBody {
    reason: Option<String>,
}

async fn session_stop(
    state: web::Data<ControlState>,
    body: web::Json<StopBody>,
) -> Result<HttpResponse, ApiError> {
    let reason = body
        .into_inner()
        .reason
        .unwrap_or_else(|| "user_requested".into());
    let s = state
        .session
        .send(StopSession { reason })
        .await
        .map_err(unavailable)??;
    Ok(HttpResponse::Ok().json(json!({
        "message": "Session stopped.", "session_id": s.session_id, "status": s.status,
    })))
}

async fn session_status(state: web::Data<ControlState>) -> Result<HttpResponse, ApiError> {
    let r = state.session.send(GetStatus).await.map_err(unavailable)??;
    Ok(HttpResponse::Ok().json(r))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    limit: Option<usize>,
}

async fn session_history(
    state: web::Data<ControlState>,
    query: web::Query<HistoryQuery>,
) -> Result<HttpResponse, ApiError> {
    let limit = query.limit.unwrap_or(20);
    let sessions = state
        .session
        .send(GetHistory { limit })
        .await
        .map_err(unavailable)??;
    Ok(HttpResponse::Ok().json(json!({ "sessions": sessions })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TriggerQuery {
    mailbox: Option<String>,
}

async fn polling_trigger(
    state: web::Data<ControlState>,
    query: web::Query<TriggerQuery>,
) -> Result<HttpResponse, ApiError> {
    let n = state
        .session
        .send(TriggerPolling {
            mailbox: query.into_inner().mailbox,
        })
        .await
        .map_err(unavailable)??;
    Ok(HttpResponse::Ok().json(json!({"message": "Manual polling triggered.", "mailboxes": n})))
}

/// The seed's JSON metrics of the current session.
async fn metrics_json(state: web::Data<ControlState>) -> Result<HttpResponse, ApiError> {
    let r = state.session.send(GetStatus).await.map_err(unavailable)??;
    Ok(HttpResponse::Ok().json(json!({
        "emails_processed_total": r.counts.emails_processed,
        "emails_failed_total": r.counts.emails_failed,
        "current_queue_size": r.queue_depth,
        "emails_delivered_total": r.counts.emails_delivered,
        "emails_duplicate_total": r.counts.emails_duplicate,
        "dead_letter_queue_size": r.dead_letter_depth,
    })))
}

/// A dead letter as the API shows it; `full` adds the payload and MS4's response.
fn dead_letter_json(e: &Entry, full: bool) -> Value {
    use ms1_actors::store::schema::dead_letter as d;
    let f = |k: &str| e.field(k).unwrap_or("").to_string();
    let n = |k: &str| e.field(k).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // Dead letters written by earlier versions may name a stage the old way.
    let stage = Stage::parse(&f(d::STAGE)).map_or_else(|| f(d::STAGE), |s| s.as_str().into());
    let mut v = json!({
        "id": e.id, "stage": stage, "reason": f(d::REASON), "status": n(d::STATUS),
        "attempts": n(d::ATTEMPTS), "first_failure_ms": n(d::FIRST_FAILURE_MS),
        "last_failure_ms": n(d::LAST_FAILURE_MS), "mailbox": f(d::MAILBOX), "key": f(d::KEY),
        "entry_id": f(d::ENTRY_ID), "kind": f(d::KIND), "source": f(d::SOURCE),
    });
    if full {
        v["payload"] = json!(f(d::PAYLOAD));
        v["response"] = json!(f(d::RESPONSE));
    }
    v
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DlqQuery {
    after: Option<String>,
    count: Option<usize>,
    // The criteria of [`FilterBody`], listed again: serde cannot flatten a query string into
    // numbers, nor deny unknown fields through a flatten.
    stage: Option<String>,
    mailbox: Option<String>,
    reason: Option<String>,
    since_ms: Option<u64>,
    until_ms: Option<u64>,
}

async fn dlq_list(
    state: web::Data<ControlState>,
    query: web::Query<DlqQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    if q.after.as_deref().is_some_and(|a| !is_entry_id(a)) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            "after must be a dead-letter id (<ms>-<seq>), as \"next\" gives it",
        ));
    }
    let count = q.count.unwrap_or(50).clamp(1, 1_000);
    let (entries, total) = state
        .dead_letters
        .send(ListDead {
            after: q.after,
            count,
            filter: FilterBody {
                stage: q.stage,
                mailbox: q.mailbox,
                reason: q.reason,
                since_ms: q.since_ms,
                until_ms: q.until_ms,
            }
            .into(),
        })
        .await
        .map_err(unavailable)?
        .map_err(unavailable)?;
    let next = (entries.len() == count).then(|| entries.last().map(|e| e.id.clone()));
    Ok(HttpResponse::Ok().json(json!({
        "entries": entries.iter().map(|e| dead_letter_json(e, false)).collect::<Vec<_>>(),
        "next": next.flatten(),
        "total": total,
    })))
}

async fn dlq_show(
    state: web::Data<ControlState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    if !is_entry_id(&id) {
        return Err(no_dead_letter(&id));
    }
    match state
        .dead_letters
        .send(GetDead(id.clone()))
        .await
        .map_err(unavailable)?
        .map_err(unavailable)?
    {
        Some(e) => Ok(HttpResponse::Ok().json(dead_letter_json(&e, true))),
        None => Err(no_dead_letter(&id)),
    }
}

fn no_dead_letter(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no dead letter with id {id}"),
    )
}

/// Which dead letters a replay or purge applies to: exactly one of `id`, `ids`, `filter`, `all`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Selector {
    id: Option<String>,
    ids: Option<Vec<String>>,
    filter: Option<FilterBody>,
    all: Option<bool>,
}

/// Which dead letters: each criterion given must match (`reason`: a substring; `since_ms`,
/// `until_ms`: when they were dead-lettered).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilterBody {
    stage: Option<String>,
    mailbox: Option<String>,
    reason: Option<String>,
    since_ms: Option<u64>,
    until_ms: Option<u64>,
}

impl From<FilterBody> for DeadLetterFilter {
    fn from(f: FilterBody) -> Self {
        // An empty text criterion (a cleared form field) selects everything, as if absent.
        let given = |v: Option<String>| v.filter(|v| !v.is_empty());
        DeadLetterFilter {
            ids: None,
            stage: given(f.stage),
            mailbox: given(f.mailbox),
            reason: given(f.reason),
            since_ms: f.since_ms,
            until_ms: f.until_ms,
        }
    }
}

/// `GET /dlq/count`: how many dead letters a filter selects (what replaying or purging it
/// would touch), for a confirmation that states the number.
async fn dlq_count(
    state: web::Data<ControlState>,
    query: web::Query<FilterBody>,
) -> Result<HttpResponse, ApiError> {
    let n = state
        .dead_letters
        .send(CountDead(query.into_inner().into()))
        .await
        .map_err(unavailable)?
        .map_err(unavailable)?;
    Ok(HttpResponse::Ok().json(json!({ "matching": n })))
}

/// `GET /queues`: every stream, its consumer groups and their consumers.
async fn queues(state: web::Data<ControlState>) -> Result<HttpResponse, ApiError> {
    let streams = state
        .inspector
        .send(GetQueues)
        .await
        .map_err(unavailable)?
        .map_err(unavailable)?;
    Ok(HttpResponse::Ok().json(json!({ "streams": streams })))
}

/// `GET /sources`: every Graph mailbox and IMAP source with its state.
async fn sources(state: web::Data<ControlState>) -> Result<HttpResponse, ApiError> {
    let sources = state
        .inspector
        .send(GetSources)
        .await
        .map_err(unavailable)?
        .map_err(unavailable)?;
    Ok(HttpResponse::Ok().json(json!({ "sources": sources })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RatesQuery {
    minutes: Option<u64>,
}

/// `GET /rates`: records delivered per minute and the MS4 budget in use.
async fn rates(
    state: web::Data<ControlState>,
    query: web::Query<RatesQuery>,
) -> Result<HttpResponse, ApiError> {
    let rates = state
        .inspector
        .send(GetRates {
            minutes: query.minutes.unwrap_or(60),
        })
        .await
        .map_err(unavailable)?
        .map_err(unavailable)?;
    Ok(HttpResponse::Ok().json(rates))
}

impl Selector {
    fn into_filter(self) -> Result<DeadLetterFilter, ApiError> {
        let given = [
            self.id.is_some(),
            self.ids.is_some(),
            self.filter.is_some(),
            self.all == Some(true),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid",
                "say which dead letters: exactly one of \"id\", \"ids\", \"filter\" or \"all\": true",
            ));
        }
        let ids = self.id.iter().chain(self.ids.iter().flatten());
        if let Some(bad) = ids.into_iter().find(|id| !is_entry_id(id)) {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid",
                format!("{bad:?} is not a dead-letter id (<ms>-<seq>)"),
            ));
        }
        Ok(match (self.id, self.ids, self.filter) {
            (Some(id), _, _) => DeadLetterFilter {
                ids: Some(vec![id]),
                ..Default::default()
            },
            (_, Some(ids), _) => DeadLetterFilter {
                ids: Some(ids),
                ..Default::default()
            },
            (_, _, Some(f)) => f.into(),
            _ => DeadLetterFilter::default(),
        })
    }
}

async fn dlq_replay(
    state: web::Data<ControlState>,
    body: web::Json<Selector>,
) -> Result<HttpResponse, ApiError> {
    let single = body.id.clone();
    let filter = body.into_inner().into_filter()?;
    let n = state
        .dead_letters
        .send(ReplayDead(filter))
        .await
        .map_err(unavailable)?
        .map_err(unavailable)?;
    if n == 0 {
        if let Some(id) = single {
            return Err(no_dead_letter(&id));
        }
    }
    Ok(HttpResponse::Ok().json(json!({ "replayed": n })))
}

async fn dlq_purge(
    state: web::Data<ControlState>,
    body: web::Json<Selector>,
) -> Result<HttpResponse, ApiError> {
    let filter = body.into_inner().into_filter()?;
    let n = state
        .dead_letters
        .send(PurgeDead(filter))
        .await
        .map_err(unavailable)?
        .map_err(unavailable)?;
    Ok(HttpResponse::Ok().json(json!({ "purged": n })))
}

async fn dlq_delete(
    state: web::Data<ControlState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    if !is_entry_id(&id) {
        return Err(no_dead_letter(&id));
    }
    let n = state
        .dead_letters
        .send(PurgeDead(DeadLetterFilter {
            ids: Some(vec![id.clone()]),
            ..Default::default()
        }))
        .await
        .map_err(unavailable)?
        .map_err(unavailable)?;
    if n == 0 {
        return Err(no_dead_letter(&id));
    }
    Ok(HttpResponse::Ok().json(json!({ "deleted": n })))
}

/// The OpenAPI 3 document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(OPENAPI)
}

async fn not_found() -> HttpResponse {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route").error_response()
}

/// Bodies: JSON only, size-limited, unknown fields refused — each with its status.
fn json_config() -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(MAX_BODY)
        .content_type_required(true)
        .error_handler(|err, _req| {
            use actix_web::error::JsonPayloadError as E;
            let (status, code) = match &err {
                E::OverflowKnownLength { .. } | E::Overflow { .. } => {
                    (StatusCode::PAYLOAD_TOO_LARGE, "too_large")
                }
                E::ContentType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
                _ => (StatusCode::BAD_REQUEST, "bad_request"),
            };
            ApiError::new(status, code, err.to_string()).into()
        })
}

fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|err, _req| {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", err.to_string()).into()
    })
}

/// Registers the control routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/health", web::get().to(health))
        .route("/ready", web::get().to(ready))
        .service(
            web::scope("")
                .wrap(from_fn(require_token))
                .app_data(json_config())
                .app_data(query_config())
                .app_data(web::PayloadConfig::new(MAX_BODY))
                .route("/session/start", web::post().to(session_start))
                .route("/session/stop", web::post().to(session_stop))
                .route("/session/status", web::get().to(session_status))
                .route("/session/history", web::get().to(session_history))
                .route("/polling/trigger", web::post().to(polling_trigger))
                .route("/metrics", web::get().to(metrics_json))
                .route("/metrics/prometheus", web::get().to(prometheus))
                .route("/queues", web::get().to(queues))
                .route("/sources", web::get().to(sources))
                .route("/rates", web::get().to(rates))
                .route("/dlq", web::get().to(dlq_list))
                .route("/dlq/count", web::get().to(dlq_count))
                .route("/dlq/replay", web::post().to(dlq_replay))
                .route("/dlq/purge", web::post().to(dlq_purge))
                .route("/dlq/{id}", web::get().to(dlq_show))
                .route("/dlq/{id}", web::delete().to(dlq_delete))
                .route("/openapi.json", web::get().to(openapi))
                .default_service(web::to(not_found)),
        );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_compares_whole_strings() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }
}
