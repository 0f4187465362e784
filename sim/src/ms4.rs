//! The MS4 Persistence API simulator (`ms1-sim ms4`).
//!
//! It speaks the contract of CONTRACTS.md closely enough that a test passing against it means
//! something against MS4:
//!
//! - `POST /batch-metadata` with `X-API-Key` (401 when wrong), a JSON array of records
//!   validated one by one (400 for the whole batch when any is invalid, without saying which;
//!   400 above `max_batch` records), the per-minute limit counted over any sliding 60-second
//!   window (429 + `Retry-After` in seconds), and storage by `idempotency_key`: a record seen
//!   before is counted as a duplicate, not stored twice.
//! - Faults at run time through `POST /_sim/config`: `error_rate` (500s), `outage` (503s),
//!   `latency_ms`, a different `api_key`, `rate_limit_per_min`, `max_batch`.
//! - A misconfigured front at run time: `redirect_to` (+ `redirect_status`, default 307) answers
//!   every batch with that redirect; a `GET /batch-metadata` is a "maintenance page" answering
//!   200, so a client that follows a 302 (and turns it into a GET) sees a success.
//! - `GET /_sim/stats`: what it received, including contract violations a client committed
//!   (requests during a Retry-After window, requests without `Idempotency-Key`), and
//!   `arrival_to_accept_ms`: for each record stored, the time from its `receivedDateTime` (the
//!   message's arrival in the mailbox; the Graph simulator's trickle stamps it exactly) to its
//!   acceptance here, read on the same clock as both simulators run on one machine.
//! - `GET /_sim/keys`: every stored idempotency key, for exact checks; `POST /_sim/reset`.
//! - `GET /_sim/wait?unique_records=N&timeout_ms=T`: answers once N records are stored (or T
//!   has passed, 60 s by default) with `{"unique_records": stored, "reached": bool}`, so a
//!   benchmark waits in one request instead of polling the stats (whose probes cost CPU the
//!   measured processes would otherwise have).

use crate::histogram::LatencyHistogram;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use chrono::DateTime;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A request that arrives this long after a 429 was sent cannot have been in flight already:
/// if it falls inside the Retry-After, the client ignored it.
const RETRY_AFTER_GRACE: Duration = Duration::from_millis(100);

/// Start-up options (also changeable at run time through `/_sim/config`).
#[derive(Debug, Clone, clap::Args)]
pub struct Ms4SimOptions {
    /// Address to listen on (loopback only).
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: String,
    /// Port; 0 picks a free one (printed on stdout).
    #[arg(long, default_value_t = 8400)]
    pub port: u16,
    /// The API key MS4 accepts.
    #[arg(long, default_value = "demo-key")]
    pub api_key: String,
    /// Requests per minute per API key; 0 for no limit.
    #[arg(long, default_value_t = 120)]
    pub rate_limit_per_min: u32,
    /// Largest batch accepted, in records.
    #[arg(long, default_value_t = 100)]
    pub max_batch: usize,
    /// Length of the sliding rate window in ms (60000 as MS4; shorter only to compress time
    /// in tests).
    #[arg(long, default_value_t = 60_000)]
    pub window_ms: u64,
    /// HTTP worker threads.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
}

/// Faults and limits that can change while running.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    pub api_key: Option<String>,
    /// Share of requests answered 500, 0.0–1.0.
    pub error_rate: Option<f64>,
    /// Answer every request 503 (no Retry-After).
    pub outage: Option<bool>,
    /// Delay before answering, in ms.
    pub latency_ms: Option<u64>,
    pub rate_limit_per_min: Option<u32>,
    pub max_batch: Option<usize>,
    pub window_ms: Option<u64>,
    /// Accept senders that are not e-mail addresses (MS4 relaxed a rule: replayed dead
    /// letters go through).
    pub lenient_sender: Option<bool>,
    /// Answer every batch with a redirect to this URL ("" to stop).
    pub redirect_to: Option<String>,
    /// The redirect's status (301, 302, 303, 307 or 308; default 307).
    pub redirect_status: Option<u16>,
}

#[derive(Debug, Default, Serialize, Clone)]
pub struct SimStats {
    pub requests_total: u64,
    pub responses: BTreeMap<u16, u64>,
    /// Records stored (first time their idempotency key was seen).
    pub unique_records: u64,
    /// Records received again with a key already stored.
    pub duplicate_records: u64,
    /// Batches answered 202.
    pub batches_accepted: u64,
    pub max_batch_seen: usize,
    pub min_batch_seen: usize,
    /// Accepted batches by size.
    pub batch_sizes: BTreeMap<usize, u64>,
    /// 429s sent because the per-minute limit was reached.
    pub rate_limited: u64,
    /// Requests that arrived before a Retry-After this simulator gave had elapsed.
    pub requests_during_retry_after: u64,
    /// Requests without an `Idempotency-Key` header.
    pub missing_idempotency_key: u64,
    /// Most requests admitted within any window (60 s unless `window_ms` says otherwise).
    pub max_requests_in_window: usize,
    /// Batches refused with 400.
    pub rejected_batches: u64,
    /// Stored records that list attachments, and records that say `hasAttachments` but list
    /// none (a client that forgot to fetch them).
    pub records_with_attachments: u64,
    pub records_missing_attachments: u64,
    /// Batches answered with a redirect (`redirect_to`).
    pub redirected: u64,
    /// `GET /batch-metadata` requests (the maintenance page): a client that followed a 302.
    pub maintenance_page_hits: u64,
    /// Wall-clock time of the first and the last request (ms since the epoch), to compute the
    /// achieved request rate.
    pub first_request_ms: u64,
    pub last_request_ms: u64,
    /// Stored records flagged `bodyOmitted` (a message too large to fetch), whole.
    pub body_omitted_records: Vec<Value>,
    /// Time from each stored record's `receivedDateTime` to its acceptance (duplicates not
    /// counted again; a receivedDateTime in the future counts as 0).
    pub arrival_to_accept_ms: LatencyHistogram,
}

struct State {
    api_key: String,
    error_rate: f64,
    outage: bool,
    latency: Duration,
    rate_limit_per_min: u32,
    max_batch: usize,
    lenient_sender: bool,
    /// (status, location) of the redirect every batch gets, when set.
    redirect: Option<(u16, String)>,
    window: Duration,
    /// Arrival times of admitted requests within the last 60 s.
    arrivals: VecDeque<Instant>,
    /// When the last 429 was sent and until when it asked the client to wait.
    retry_after: Option<(Instant, Instant)>,
    keys: HashSet<String>,
    stats: SimStats,
    /// `stats.unique_records`, for `GET /_sim/wait`.
    stored: tokio::sync::watch::Sender<u64>,
}

impl State {
    fn new(o: &Ms4SimOptions) -> Self {
        Self {
            api_key: o.api_key.clone(),
            error_rate: 0.0,
            outage: false,
            latency: Duration::ZERO,
            rate_limit_per_min: o.rate_limit_per_min,
            max_batch: o.max_batch,
            lenient_sender: false,
            redirect: None,
            window: Duration::from_millis(o.window_ms.max(1)),
            arrivals: VecDeque::new(),
            retry_after: None,
            keys: HashSet::new(),
            stats: SimStats::default(),
            stored: tokio::sync::watch::Sender::new(0),
        }
    }

    fn answer(&mut self, status: u16) {
        *self.stats.responses.entry(status).or_default() += 1;
    }
}

type Shared = Arc<Mutex<State>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

fn error(status: u16, code: &str, message: &str) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).expect("valid status"))
        .json(json!({"error": {"code": code, "message": message}}))
}

/// What the gate in front of the batch decided.
enum Gate {
    Pass,
    Refuse(HttpResponse),
}

fn gate(state: &Shared, req: &HttpRequest) -> (Gate, Duration) {
    let now = Instant::now();
    let mut s = lock(state);
    s.stats.requests_total += 1;
    let wall_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
    if s.stats.first_request_ms == 0 {
        s.stats.first_request_ms = wall_ms;
    }
    s.stats.last_request_ms = wall_ms;
    if req.headers().get("Idempotency-Key").is_none() {
        s.stats.missing_idempotency_key += 1;
    }
    if s.retry_after
        .is_some_and(|(sent, until)| now >= sent + RETRY_AFTER_GRACE && now < until)
    {
        s.stats.requests_during_retry_after += 1;
    }
    let latency = s.latency;
    let key_ok = req
        .headers()
        .get("X-API-Key")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|k| k == s.api_key);
    if !key_ok {
        s.answer(401);
        return (
            Gate::Refuse(error(401, "unauthorized", "missing or invalid X-API-Key")),
            latency,
        );
    }
    let window = s.window;
    while s
        .arrivals
        .front()
        .is_some_and(|t| now.duration_since(*t) >= window)
    {
        s.arrivals.pop_front();
    }
    if s.rate_limit_per_min > 0 && s.arrivals.len() >= s.rate_limit_per_min as usize {
        let oldest = *s.arrivals.front().expect("window is full");
        let wait = window.saturating_sub(now.duration_since(oldest));
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let secs = secs.max(1);
        s.retry_after = Some((now, now + Duration::from_secs(secs)));
        s.stats.rate_limited += 1;
        s.answer(429);
        let resp = HttpResponse::TooManyRequests()
            .insert_header(("Retry-After", secs.to_string()))
            .json(json!({"error": {"code": "rate_limited", "message": "rate limit exceeded"}}));
        return (Gate::Refuse(resp), latency);
    }
    s.arrivals.push_back(now);
    s.stats.max_requests_in_window = s.stats.max_requests_in_window.max(s.arrivals.len());
    if s.outage {
        s.answer(503);
        return (
            Gate::Refuse(error(503, "unavailable", "service unavailable")),
            latency,
        );
    }
    if let Some((status, location)) = s.redirect.clone() {
        s.stats.redirected += 1;
        s.answer(status);
        let status = actix_web::http::StatusCode::from_u16(status).expect("a redirect status");
        let resp = HttpResponse::build(status)
            .insert_header(("Location", location))
            .finish();
        return (Gate::Refuse(resp), latency);
    }
    if s.error_rate > 0.0 && rand::random::<f64>() < s.error_rate {
        s.answer(500);
        return (
            Gate::Refuse(error(500, "internal", "internal server error")),
            latency,
        );
    }
    (Gate::Pass, latency)
}

async fn batch_metadata(
    state: web::Data<Shared>,
    req: HttpRequest,
    body: web::Bytes,
) -> HttpResponse {
    let (gate, latency) = gate(&state, &req);
    if !latency.is_zero() {
        actix_web::rt::time::sleep(latency).await;
    }
    if let Gate::Refuse(resp) = gate {
        return resp;
    }
    let (max_batch, lenient) = {
        let s = lock(&state);
        (s.max_batch, s.lenient_sender)
    };
    let records = match parse_batch(&body, max_batch, lenient) {
        Ok(r) => r,
        Err(message) => {
            let mut s = lock(&state);
            s.stats.rejected_batches += 1;
            s.answer(400);
            return error(400, "invalid_batch", &message);
        }
    };
    let mut s = lock(&state);
    let now_ms = chrono::Utc::now().timestamp_millis();
    let mut duplicates = 0u64;
    for r in &records {
        if s.keys.contains(r.key.as_str()) {
            duplicates += 1;
        } else {
            s.keys.insert(r.key.clone());
            let latency = (now_ms - r.received_ms).max(0) as u64;
            s.stats.arrival_to_accept_ms.record(latency);
            if let Some(record) = &r.body_omitted {
                s.stats.body_omitted_records.push(record.clone());
            }
            match r.attachments {
                (true, _) => s.stats.records_with_attachments += 1,
                (false, true) => s.stats.records_missing_attachments += 1,
                _ => {}
            }
        }
    }
    let n = records.len();
    s.stats.unique_records += n as u64 - duplicates;
    s.stored.send_replace(s.stats.unique_records);
    s.stats.duplicate_records += duplicates;
    s.stats.batches_accepted += 1;
    s.stats.max_batch_seen = s.stats.max_batch_seen.max(n);
    s.stats.min_batch_seen = if s.stats.min_batch_seen == 0 {
        n
    } else {
        s.stats.min_batch_seen.min(n)
    };
    *s.stats.batch_sizes.entry(n).or_default() += 1;
    s.answer(202);
    HttpResponse::Accepted().json(json!({"accepted": n, "duplicates": duplicates}))
}

/// A valid record's key and what it says about attachments.
#[derive(Debug)]
struct Accepted {
    key: String,
    /// (lists attachments, claims attachments)
    attachments: (bool, bool),
    /// The record, when it is flagged `bodyOmitted`.
    body_omitted: Option<Value>,
    /// Its `receivedDateTime`, in ms since the epoch.
    received_ms: i64,
}

/// Validates a batch; returns its records' keys and attachment facts.
fn parse_batch(body: &[u8], max_batch: usize, lenient: bool) -> Result<Vec<Accepted>, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|_| "the body is not valid JSON".to_string())?;
    let Value::Array(items) = v else {
        return Err("the body must be a JSON array of records".into());
    };
    if items.is_empty() {
        return Err("the batch is empty".into());
    }
    if items.len() > max_batch {
        return Err(format!("at most {max_batch} records per batch"));
    }
    let mut keys = Vec::with_capacity(items.len());
    for item in &items {
        match valid_record(item, lenient) {
            Some(key) => keys.push(Accepted {
                key,
                attachments: (
                    item["attachments"]
                        .as_array()
                        .is_some_and(|a| !a.is_empty()),
                    item["hasAttachments"] == true,
                ),
                body_omitted: item.get("bodyOmitted").map(|_| item.clone()),
                received_ms: received_ms(item),
            }),
            None => return Err("the batch contains at least one invalid record".into()),
        }
    }
    Ok(keys)
}

/// A record's `receivedDateTime` in ms since the epoch (valid records have one).
fn received_ms(record: &Value) -> i64 {
    record["receivedDateTime"]
        .as_str()
        .and_then(|d| DateTime::parse_from_rfc3339(d).ok())
        .map_or(0, |t| t.timestamp_millis())
}

/// MS4's record rules. Returns the idempotency key of a valid record.
pub fn valid_record(v: &Value, lenient_sender: bool) -> Option<String> {
    let o = v.as_object()?;
    let s = |k: &str| o.get(k).and_then(Value::as_str);
    let id = s("id")?;
    let key = s("idempotency_key")?;
    let sender = s("sender")?;
    let sender_ok = lenient_sender && !sender.is_empty()
        || sender.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        });
    let ok = !id.is_empty()
        && !key.is_empty()
        && s("subject").is_some()
        && o.get("hasAttachments").is_some_and(Value::is_boolean)
        && sender_ok
        && s("receivedDateTime").is_some_and(|d| DateTime::parse_from_rfc3339(d).is_ok())
        && matches!(s("source"), Some("graph" | "imap"))
        && s("mailbox").is_some()
        && o.get("raw_message")
            .is_some_and(|r| r.is_null() || r.is_string())
        && o.get("recipients")
            .and_then(Value::as_array)
            .is_some_and(|r| r.iter().all(Value::is_string))
        && s("bodyPreview").is_some_and(|p| p.chars().count() <= 255)
        && o.get("attachments")
            .and_then(Value::as_array)
            .is_some_and(|a| {
                a.iter().all(|x| {
                    x.get("name").is_some_and(Value::is_string)
                        && x.get("contentType").is_some_and(Value::is_string)
                        && x.get("size").is_some_and(Value::is_u64)
                })
            });
    ok.then(|| key.to_string())
}

/// What a misconfigured load balancer serves while MS4 is "in maintenance": 200 to a GET.
async fn maintenance_page(state: web::Data<Shared>) -> HttpResponse {
    let mut s = lock(&state);
    s.stats.maintenance_page_hits += 1;
    s.answer(200);
    HttpResponse::Ok()
        .content_type("text/html")
        .body("<html><body>Down for maintenance</body></html>")
}

async fn stats(state: web::Data<Shared>) -> HttpResponse {
    let s = lock(&state).stats.clone();
    HttpResponse::Ok().json(s)
}

#[derive(Deserialize)]
struct WaitQuery {
    unique_records: u64,
    timeout_ms: Option<u64>,
}

/// `GET /_sim/wait`: answers once `unique_records` records are stored, or at the timeout.
async fn wait(state: web::Data<Shared>, q: web::Query<WaitQuery>) -> HttpResponse {
    let mut stored = lock(&state).stored.subscribe();
    let timeout = Duration::from_millis(q.timeout_ms.unwrap_or(60_000));
    let reached = tokio::time::timeout(timeout, stored.wait_for(|n| *n >= q.unique_records))
        .await
        .is_ok_and(|r| r.is_ok());
    let now = *stored.borrow();
    HttpResponse::Ok().json(json!({"unique_records": now, "reached": reached}))
}

async fn keys(state: web::Data<Shared>) -> HttpResponse {
    let s = lock(&state);
    let mut keys: Vec<&String> = s.keys.iter().collect();
    keys.sort();
    HttpResponse::Ok().json(keys)
}

async fn configure(state: web::Data<Shared>, body: web::Bytes) -> HttpResponse {
    let cfg: SimConfig = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => return error(400, "bad_config", &e.to_string()),
    };
    let mut s = lock(&state);
    if let Some(k) = cfg.api_key {
        s.api_key = k;
    }
    if let Some(r) = cfg.error_rate {
        s.error_rate = r.clamp(0.0, 1.0);
    }
    if let Some(o) = cfg.outage {
        s.outage = o;
    }
    if let Some(l) = cfg.latency_ms {
        s.latency = Duration::from_millis(l);
    }
    if let Some(r) = cfg.rate_limit_per_min {
        s.rate_limit_per_min = r;
    }
    if let Some(m) = cfg.max_batch {
        s.max_batch = m.max(1);
    }
    if let Some(w) = cfg.window_ms {
        s.window = Duration::from_millis(w.max(1));
    }
    if let Some(l) = cfg.lenient_sender {
        s.lenient_sender = l;
    }
    let status = cfg.redirect_status.unwrap_or(307);
    if ![301, 302, 303, 307, 308].contains(&status) {
        return error(
            400,
            "bad_config",
            "redirect_status must be 301, 302, 303, 307 or 308",
        );
    }
    if let Some(to) = cfg.redirect_to {
        s.redirect = (!to.is_empty()).then_some((status, to));
    }
    HttpResponse::Ok().json(json!({
        "error_rate": s.error_rate, "outage": s.outage,
        "latency_ms": s.latency.as_millis() as u64,
        "rate_limit_per_min": s.rate_limit_per_min, "max_batch": s.max_batch,
    }))
}

async fn reset(state: web::Data<Shared>) -> HttpResponse {
    let mut s = lock(&state);
    s.keys.clear();
    s.stats = SimStats::default();
    s.stored.send_replace(0);
    s.arrivals.clear();
    s.retry_after = None;
    HttpResponse::Ok().json(json!({"reset": true}))
}

/// Runs the simulator until the process is stopped.
pub async fn serve(opts: Ms4SimOptions) -> anyhow::Result<()> {
    let ip = crate::serve::loopback(&opts.bind)?;
    let state: Shared = Arc::new(Mutex::new(State::new(&opts)));
    let data = web::Data::new(state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(web::PayloadConfig::new(64 * 1024 * 1024))
            .route("/batch-metadata", web::post().to(batch_metadata))
            .route("/batch-metadata", web::get().to(maintenance_page))
            .route("/_sim/stats", web::get().to(stats))
            .route("/_sim/keys", web::get().to(keys))
            .route("/_sim/wait", web::get().to(wait))
            .route("/_sim/config", web::post().to(configure))
            .route("/_sim/reset", web::post().to(reset))
    })
    .workers(opts.workers.max(1))
    .disable_signals()
    .bind((ip, opts.port))?;
    crate::serve::announce("ms4", server.addrs()[0]);
    server.run().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Value {
        json!({"id":"1","subject":"s","hasAttachments":false,"sender":"a@b.example",
               "receivedDateTime":"2026-11-21T10:00:00Z","raw_message":null,
               "idempotency_key":"<k>","source":"graph","mailbox":"m","recipients":["x@y.example"],
               "bodyPreview":"p","attachments":[{"name":"a.pdf","contentType":"application/pdf","size":1}]})
    }

    #[test]
    fn the_contract_record_is_valid() {
        assert_eq!(valid_record(&record(), false).as_deref(), Some("<k>"));
    }

    #[test]
    fn records_breaking_a_rule_are_invalid() {
        for (field, bad) in [
            ("sender", json!("not-an-address")),
            ("sender", json!("a@localhost")),
            ("receivedDateTime", json!("yesterday")),
            ("source", json!("fax")),
            ("idempotency_key", json!("")),
            ("bodyPreview", json!("x".repeat(256))),
            ("attachments", json!([{"name":"a"}])),
            ("hasAttachments", json!("yes")),
        ] {
            let mut r = record();
            r[field] = bad;
            assert_eq!(valid_record(&r, false), None, "{field}");
        }
    }

    #[test]
    fn a_batch_is_refused_whole_and_over_the_limit() {
        let good = serde_json::to_vec(&json!([record(), record()])).unwrap();
        let accepted = parse_batch(&good, 100, false).unwrap();
        assert_eq!(accepted.len(), 2);
        assert_eq!(accepted[0].attachments, (true, false));
        assert_eq!(
            accepted[0].received_ms, 1_795_255_200_000,
            "2026-11-21T10:00:00Z"
        );
        assert!(parse_batch(&good, 1, false).is_err());
        let mut bad = record();
        bad["sender"] = json!("nobody");
        let mixed = serde_json::to_vec(&json!([record(), bad])).unwrap();
        let err = parse_batch(&mixed, 100, false).unwrap_err();
        assert!(!err.contains('1'), "does not say which record: {err}");
        assert!(parse_batch(b"[]", 100, false).is_err());
        assert!(parse_batch(b"{", 100, false).is_err());
    }
}
