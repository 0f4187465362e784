//! The simulator's control routes, `/_sim/*`: mail arrives or is deleted, delta tokens
//! expire, storms, notifications and lifecycle events on demand, run-time configuration,
//! statistics and the messages as stored.

use super::answers::{sim_error, sim_refusal, Reply};
use super::messages::{draft, Draft};
use super::notifications::{notify_changes, post_json, Outbound, Target};
use super::odata::{Selection, MESSAGE_PROPERTIES};
use super::state::{lock, Shared, State};
use super::throttling::Storm;
use super::SimConfig;
use actix_web::{web, HttpResponse};
use chrono::Utc;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// A control body as JSON, or a 400 that says what is wrong with it.
fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, Reply> {
    serde_json::from_slice(body).map_err(|e| sim_refusal(400, format!("invalid body: {e}")))
}

/// The index of mailbox `name`, or a 404.
fn resolve_or_404(s: &State, name: &str) -> Result<usize, Reply> {
    s.resolve(name)
        .ok_or_else(|| sim_refusal(404, format!("no mailbox '{name}'")))
}

#[derive(Debug, Deserialize)]
struct MailRequest {
    mailbox: String,
    count: u64,
    start: Option<u64>,
    #[serde(default)]
    invalid: u64,
    /// Message properties every new message gets instead of the synthetic ones (e.g. the
    /// same `internetMessageId` with another `from`, `subject` or `sentDateTime`).
    #[serde(default)]
    set: serde_json::Map<String, Value>,
    /// The messages were received this many seconds ago (moved in from another folder, they
    /// keep their receivedDateTime): older than the folder's newest.
    received_ago_s: Option<u64>,
}

/// `POST /_sim/mail`: new messages arrive; subscriptions on the mailbox are notified.
pub(super) async fn sim_mail(state: web::Data<Shared>, body: web::Bytes) -> HttpResponse {
    let req: MailRequest = match parse_json(&body) {
        Ok(r) => r,
        Err(refusal) => return refusal.into_http(),
    };
    let state = state.get_ref();
    let (mbx, upn, start) = {
        let mut s = lock(state);
        let mbx = match resolve_or_404(&s, &req.mailbox) {
            Ok(m) => m,
            Err(refusal) => return refusal.into_http(),
        };
        let mb = &mut s.mailboxes[mbx];
        let start = req.start.unwrap_or(mb.next_n);
        mb.next_n = mb.next_n.max(start + req.count);
        (mbx, mb.upn.clone(), start)
    };
    let every = (req.count / req.invalid.max(1)).max(1);
    if let Some(unknown) = req
        .set
        .keys()
        .find(|k| !MESSAGE_PROPERTIES.contains(&k.as_str()) || *k == "id")
    {
        return sim_refusal(400, format!("`set` cannot set `{unknown}`")).into_http();
    }
    let drafts: Vec<Draft> = (0..req.count)
        .map(|i| {
            let valid = !(i.is_multiple_of(every) && i / every < req.invalid);
            let mut d = draft(start + i, &upn, valid);
            for (key, value) in &req.set {
                let name = MESSAGE_PROPERTIES
                    .iter()
                    .find(|p| **p == key)
                    .expect("checked above");
                d.props.retain(|(p, _)| p != name);
                d.props.push((*name, value.to_string().into_boxed_str()));
            }
            d
        })
        .collect();
    let received_ms = req
        .received_ago_s
        .map(|ago| Utc::now().timestamp_millis() - ago.saturating_mul(1000) as i64);
    arrive_received(state, mbx, drafts, received_ms);
    HttpResponse::Ok().json(json!({"added": req.count}))
}

/// New messages arrive in mailbox `mbx`, stamped with the time now; its subscriptions are
/// notified (in the background, as Graph does).
pub(super) fn arrive(state: &Shared, mbx: usize, drafts: Vec<Draft>) {
    arrive_received(state, mbx, drafts, None);
}

/// New messages arrive in mailbox `mbx`, received at `received_ms` (moved in) or now.
fn arrive_received(state: &Shared, mbx: usize, drafts: Vec<Draft>, received_ms: Option<i64>) {
    let (items, targets) = {
        let mut s = lock(state);
        let now_ms = Utc::now().timestamp_millis();
        let mb = &mut s.mailboxes[mbx];
        let items: Vec<(String, String)> = drafts
            .into_iter()
            .map(|d| {
                let idx = match received_ms {
                    Some(at) => mb.append_received(d, at),
                    None => mb.append(d, now_ms),
                };
                let m = &mb.messages[idx];
                (m.id.clone(), m.etag())
            })
            .collect();
        (Arc::new(items), s.active_targets(mbx))
    };
    for target in targets {
        actix_web::rt::spawn(notify_changes(state.clone(), target, items.clone()));
    }
}

#[derive(Debug, Deserialize)]
struct DeleteRequest {
    mailbox: String,
    count: usize,
}

/// `POST /_sim/delete`: the oldest messages are deleted (delta reports them `@removed`).
pub(super) async fn sim_delete(state: web::Data<Shared>, body: web::Bytes) -> HttpResponse {
    let req: DeleteRequest = match parse_json(&body) {
        Ok(r) => r,
        Err(refusal) => return refusal.into_http(),
    };
    let mut s = lock(&state);
    let mbx = match resolve_or_404(&s, &req.mailbox) {
        Ok(m) => m,
        Err(refusal) => return refusal.into_http(),
    };
    let deleted = s.mailboxes[mbx].delete_oldest(req.count);
    HttpResponse::Ok().json(json!({"deleted": deleted}))
}

#[derive(Debug, Default, Deserialize)]
struct ExpireDeltaRequest {
    mailbox: Option<String>,
}

/// `POST /_sim/expire-delta`: every delta token of the mailbox (or of all) answers 410.
pub(super) async fn sim_expire_delta(state: web::Data<Shared>, body: web::Bytes) -> HttpResponse {
    let req: ExpireDeltaRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ExpireDeltaRequest::default()
    } else {
        match parse_json(&body) {
            Ok(r) => r,
            Err(refusal) => return refusal.into_http(),
        }
    };
    let mut s = lock(&state);
    let which: Vec<usize> = match &req.mailbox {
        Some(name) => match resolve_or_404(&s, name) {
            Ok(m) => vec![m],
            Err(refusal) => return refusal.into_http(),
        },
        None => (0..s.mailboxes.len()).collect(),
    };
    let mut expired = Vec::new();
    for m in which {
        s.mailboxes[m].delta_epoch += 1;
        expired.push(s.mailboxes[m].upn.clone());
    }
    HttpResponse::Ok().json(json!({"expired": expired}))
}

#[derive(Debug, Deserialize)]
struct ThrottleRequest {
    mailbox: String,
    count: u64,
    retry_after_s: u64,
    status: Option<u16>,
}

/// `POST /_sim/throttle`: the next `count` requests on the mailbox are throttled.
pub(super) async fn sim_throttle(state: web::Data<Shared>, body: web::Bytes) -> HttpResponse {
    let req: ThrottleRequest = match parse_json(&body) {
        Ok(r) => r,
        Err(refusal) => return refusal.into_http(),
    };
    let status = req.status.unwrap_or(429);
    if !matches!(status, 429 | 503) {
        return sim_error(400, "status must be 429 or 503");
    }
    let mut s = lock(&state);
    let mbx = match resolve_or_404(&s, &req.mailbox) {
        Ok(m) => m,
        Err(refusal) => return refusal.into_http(),
    };
    s.mailboxes[mbx].budget.storm = (req.count > 0).then_some(Storm {
        remaining: req.count,
        retry_after_s: req.retry_after_s,
        status,
    });
    HttpResponse::Ok().json(json!({"mailbox": s.mailboxes[mbx].upn, "count": req.count}))
}

#[derive(Debug, Deserialize)]
struct NotifyRequest {
    mailbox: String,
    client_state: Option<String>,
}

/// `POST /_sim/notify`: one more notification for the newest message, to each subscription on
/// the mailbox, with `client_state` instead of the subscription's when given. Answers with the
/// status each endpoint gave.
pub(super) async fn sim_notify(state: web::Data<Shared>, body: web::Bytes) -> HttpResponse {
    let req: NotifyRequest = match parse_json(&body) {
        Ok(r) => r,
        Err(refusal) => return refusal.into_http(),
    };
    let state = state.get_ref();
    let (targets, newest) = {
        let mut s = lock(state);
        let mbx = match resolve_or_404(&s, &req.mailbox) {
            Ok(m) => m,
            Err(refusal) => return refusal.into_http(),
        };
        s.expire_subscriptions(Utc::now());
        let newest = s.mailboxes[mbx]
            .messages
            .iter()
            .rev()
            .find(|m| !m.deleted)
            .map(|m| (m.id.clone(), m.etag()));
        let targets: Vec<Target> = s
            .subscriptions
            .values()
            .filter(|sub| sub.mailbox == mbx)
            .map(|sub| s.notification_target(sub, req.client_state.clone()))
            .collect();
        (targets, newest)
    };
    let Some((id, etag)) = newest else {
        return sim_error(409, "the mailbox holds no message to notify of");
    };
    if targets.is_empty() {
        return sim_error(409, "no active subscription on this mailbox");
    }
    let mut posts = Vec::new();
    for t in targets {
        let body = json!({"value": [t.change_item(&id, &etag)]}).to_string();
        let status = post_json(state, Outbound::Change, &t.url, body, 1).await;
        posts.push(json!({"subscription_id": t.subscription_id, "status": status}));
    }
    HttpResponse::Ok().json(json!({"message_id": id, "posts": posts}))
}

#[derive(Debug, Deserialize)]
struct LifecycleRequest {
    mailbox: String,
    event: String,
}

/// `POST /_sim/lifecycle`: a lifecycle event to each subscription on the mailbox that has a
/// lifecycle URL; `subscriptionRemoved` also removes the subscription.
pub(super) async fn sim_lifecycle(state: web::Data<Shared>, body: web::Bytes) -> HttpResponse {
    let req: LifecycleRequest = match parse_json(&body) {
        Ok(r) => r,
        Err(refusal) => return refusal.into_http(),
    };
    if !matches!(
        req.event.as_str(),
        "reauthorizationRequired" | "subscriptionRemoved" | "missed"
    ) {
        return sim_error(
            400,
            "event must be reauthorizationRequired, subscriptionRemoved or missed",
        );
    }
    let state = state.get_ref();
    let targets = {
        let mut s = lock(state);
        let mbx = match resolve_or_404(&s, &req.mailbox) {
            Ok(m) => m,
            Err(refusal) => return refusal.into_http(),
        };
        let targets = s.active_targets(mbx);
        if req.event == "subscriptionRemoved" {
            for t in &targets {
                s.subscriptions.remove(&t.subscription_id);
                s.stats.lifecycle_removed += 1;
            }
        }
        targets
    };
    let mut posts = Vec::new();
    for t in targets {
        let Some(url) = t.lifecycle_url.clone() else {
            posts.push(json!({"subscription_id": t.subscription_id, "status": null}));
            continue;
        };
        let body = json!({"value": [t.lifecycle_item(&req.event)]}).to_string();
        let status = post_json(state, Outbound::Lifecycle, &url, body, 1).await;
        posts.push(json!({"subscription_id": t.subscription_id, "status": status}));
    }
    HttpResponse::Ok().json(json!({"event": req.event, "posts": posts}))
}

/// `POST /_sim/config`: the [`SimConfig`] fields given change; answers with the limits now
/// in force.
pub(super) async fn sim_config(state: web::Data<Shared>, body: web::Bytes) -> HttpResponse {
    let cfg: SimConfig = match parse_json(&body) {
        Ok(c) => c,
        Err(refusal) => return refusal.into_http(),
    };
    let mut s = lock(&state);
    if let Some(t) = cfg.token_lifetime_s {
        s.token_lifetime = Duration::from_secs(t);
    }
    if let Some(l) = cfg.latency_ms {
        s.latency = Duration::from_millis(l);
    }
    if let Some(r) = cfg.error_rate {
        s.error_rate = r.clamp(0.0, 1.0);
    }
    if let Some(c) = cfg.concurrency_limit {
        s.limits.concurrency = c;
    }
    if let Some(w) = cfg.window_limit {
        s.limits.window_limit = w;
    }
    if let Some(w) = cfg.window_ms {
        s.limits.window = Duration::from_millis(w.max(1));
    }
    if let Some(l) = cfg.app_limit {
        s.apps.limit = l;
    }
    if let Some(w) = cfg.app_window_ms {
        s.apps.window = Duration::from_millis(w.max(1));
    }
    if let Some(r) = cfg.trickle_per_s {
        s.trickle.set_rate(r);
    }
    if let Some(p) = cfg.max_page_size {
        s.max_page_size = p.max(1);
    }
    if let Some(t) = cfg.delta_token_ttl_s {
        s.delta_ttl = (t > 0).then(|| Duration::from_secs(t));
    }
    if let Some(paths) = cfg.client_certificates {
        let read: anyhow::Result<Vec<_>> = paths
            .iter()
            .map(|p| super::assertions::RegisteredCertificate::read(p))
            .collect();
        match read {
            Ok(certificates) => s.assertions.certificates = certificates,
            Err(e) => return sim_error(400, format!("client_certificates: {e:#}")),
        }
    }
    if let Some(token) = cfg.federated_assertion {
        s.assertions.federated = Some(token);
    }
    if let Some(names) = cfg.deny_mailboxes {
        let mut denied = Vec::with_capacity(names.len());
        for name in &names {
            match resolve_or_404(&s, name) {
                Ok(m) => denied.push(m),
                Err(refusal) => return refusal.into_http(),
            }
        }
        for (i, mb) in s.mailboxes.iter_mut().enumerate() {
            mb.denied = denied.contains(&i);
        }
    }
    HttpResponse::Ok().json(json!({
        "token_lifetime_s": s.token_lifetime.as_secs(),
        "latency_ms": s.latency.as_millis() as u64,
        "error_rate": s.error_rate,
        "concurrency_limit": s.limits.concurrency,
        "window_limit": s.limits.window_limit,
        "window_ms": s.limits.window.as_millis() as u64,
        "app_limit": s.apps.limit,
        "app_window_ms": s.apps.window.as_millis() as u64,
        "trickle_per_s": s.trickle.per_s,
        "max_page_size": s.max_page_size,
        "delta_token_ttl_s": s.delta_ttl.map_or(0, |d| d.as_secs()),
        "client_certificates": s.assertions.certificates.len(),
    }))
}

/// `GET /_sim/stats`: the statistics (see [`State::stats_json`]).
pub(super) async fn sim_stats(state: web::Data<Shared>) -> HttpResponse {
    let v = lock(&state).stats_json();
    HttpResponse::Ok().json(v)
}

#[derive(Debug, Deserialize)]
pub(super) struct MessagesQuery {
    mailbox: String,
    /// A folder other than the inbox: the messages moved there.
    folder: Option<String>,
}

/// `GET /_sim/messages?mailbox=…`: the mailbox's messages (not deleted), with `isRead`.
pub(super) async fn sim_messages(
    state: web::Data<Shared>,
    q: web::Query<MessagesQuery>,
) -> HttpResponse {
    let s = lock(&state);
    let mbx = match resolve_or_404(&s, &q.mailbox) {
        Ok(m) => m,
        Err(refusal) => return refusal.into_http(),
    };
    if let Some(folder) = q
        .folder
        .as_deref()
        .filter(|f| !f.eq_ignore_ascii_case("inbox"))
    {
        return HttpResponse::Ok().json(super::folders::moved_into(&s, mbx, folder));
    }
    let mut out = String::from("[");
    let mut first = true;
    for m in s.mailboxes[mbx].messages.iter().filter(|m| !m.deleted) {
        if !first {
            out.push(',');
        }
        first = false;
        m.write_json(&Selection::All, None, &mut out);
    }
    out.push(']');
    HttpResponse::Ok()
        .content_type("application/json")
        .body(out)
}

#[cfg(test)]
mod tests {
    use super::super::tests::options;
    use super::*;

    use std::future::Future;
    use std::sync::Mutex;

    fn data(args: &[&str]) -> web::Data<Shared> {
        web::Data::new(Arc::new(Mutex::new(State::new(&options(args)).unwrap())))
    }

    fn body(v: Value) -> web::Bytes {
        web::Bytes::from(v.to_string())
    }

    /// Runs a handler; its status and JSON body (null when there is none).
    fn answer(handler: impl Future<Output = HttpResponse>) -> (u16, Value) {
        actix_web::rt::System::new().block_on(async {
            let resp = handler.await;
            let status = resp.status().as_u16();
            let bytes = actix_web::body::to_bytes(resp.into_body()).await.unwrap();
            (
                status,
                serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            )
        })
    }

    const MB0: &str = "invoices-0@contoso.example";

    #[test]
    fn new_mail_arrives_with_the_properties_set_but_set_cannot_touch_the_id() {
        let state = data(&[]);
        let added = answer(sim_mail(
            state.clone(),
            body(json!({"mailbox": MB0, "count": 3, "set": {"subject": "Same"}})),
        ));
        assert_eq!(added, (200, json!({"added": 3})));
        {
            let s = lock(&state);
            let mb = &s.mailboxes[0];
            assert_eq!((mb.live, mb.next_n), (3, 3));
            let mut out = String::new();
            mb.messages[2].write_json(&Selection::All, None, &mut out);
            let m: Value = serde_json::from_str(&out).unwrap();
            assert_eq!(m["subject"], "Same");
        }
        let id = json!({"mailbox": MB0, "count": 1, "set": {"id": "x"}});
        assert_eq!(answer(sim_mail(state.clone(), body(id))).0, 400);
        let nobody = json!({"mailbox": "nobody@contoso.example", "count": 1});
        let (status, v) = answer(sim_mail(state.clone(), body(nobody)));
        assert_eq!(
            (status, &v["error"]["code"]),
            (404, &json!("SimulatorRequest"))
        );
        assert_eq!(
            answer(sim_mail(state, web::Bytes::from_static(b"{"))).0,
            400
        );
    }

    #[test]
    fn invalid_mail_is_spread_evenly_among_the_new_messages() {
        let state = data(&[]);
        let req = json!({"mailbox": MB0, "count": 4, "invalid": 2});
        assert_eq!(answer(sim_mail(state.clone(), body(req))).0, 200);
        let s = lock(&state);
        let invalid: Vec<bool> = s.mailboxes[0]
            .messages
            .iter()
            .map(|m| {
                m.props
                    .iter()
                    .any(|(p, v)| *p == "from" && v.contains("not-an-address"))
            })
            .collect();
        assert_eq!(invalid, [true, false, true, false]);
    }

    #[test]
    fn config_changes_the_limits_at_run_time_and_refuses_unknown_fields_or_mailboxes() {
        let state = data(&[]);
        let cfg = json!({"error_rate": 2.0, "window_ms": 0, "max_page_size": 0,
                         "delta_token_ttl_s": 30, "deny_mailboxes": ["Invoices-1@contoso.example"],
                         "app_limit": 5, "app_window_ms": 0, "trickle_per_s": 2.5});
        let (status, v) = answer(sim_config(state.clone(), body(cfg)));
        assert_eq!(status, 200);
        assert_eq!(
            (
                &v["error_rate"],
                &v["window_ms"],
                &v["max_page_size"],
                &v["delta_token_ttl_s"]
            ),
            (&json!(1.0), &json!(1), &json!(1), &json!(30))
        );
        assert_eq!(
            (&v["app_limit"], &v["app_window_ms"], &v["trickle_per_s"]),
            (&json!(5), &json!(1), &json!(2.5))
        );
        assert!(lock(&state).mailboxes[1].denied);
        assert_eq!(
            answer(sim_config(
                state.clone(),
                body(json!({"deny_mailboxes": []}))
            ))
            .0,
            200
        );
        assert!(!lock(&state).mailboxes[1].denied);
        assert_eq!(
            answer(sim_config(state.clone(), body(json!({"latency": 5})))).0,
            400
        );
        let unknown = json!({"deny_mailboxes": ["nobody@contoso.example"]});
        assert_eq!(answer(sim_config(state, body(unknown))).0, 404);
    }

    #[test]
    fn a_storm_must_be_429_or_503_and_lands_on_the_named_mailbox() {
        let state = data(&[]);
        let mb2 = "invoices-2@contoso.example";
        let teapot = json!({"mailbox": mb2, "count": 2, "retry_after_s": 1, "status": 418});
        assert_eq!(answer(sim_throttle(state.clone(), body(teapot))).0, 400);
        let storm = json!({"mailbox": mb2, "count": 2, "retry_after_s": 1});
        let (status, v) = answer(sim_throttle(state.clone(), body(storm)));
        assert_eq!((status, v), (200, json!({"mailbox": mb2, "count": 2})));
        let expected = Storm {
            remaining: 2,
            retry_after_s: 1,
            status: 429,
        };
        assert_eq!(lock(&state).mailboxes[2].budget.storm, Some(expected));
        let calm = json!({"mailbox": mb2, "count": 0, "retry_after_s": 1});
        assert_eq!(answer(sim_throttle(state.clone(), body(calm))).0, 200);
        assert_eq!(lock(&state).mailboxes[2].budget.storm, None);
    }

    #[test]
    fn deleting_and_expiring_delta_act_on_the_named_mailbox_or_on_all() {
        let state = data(&["--messages-per-mailbox", "3"]);
        let del = json!({"mailbox": MB0, "count": 5});
        assert_eq!(
            answer(sim_delete(state.clone(), body(del))).1,
            json!({"deleted": 3})
        );
        let (_, all) = answer(sim_expire_delta(
            state.clone(),
            web::Bytes::from_static(b" \n"),
        ));
        assert_eq!(all["expired"].as_array().unwrap().len(), 3);
        let one = json!({"mailbox": "invoices-1@contoso.example"});
        let (_, v) = answer(sim_expire_delta(state.clone(), body(one)));
        assert_eq!(v, json!({"expired": ["invoices-1@contoso.example"]}));
        let s = lock(&state);
        let epochs: Vec<u32> = s.mailboxes.iter().map(|m| m.delta_epoch).collect();
        assert_eq!(epochs, [1, 2, 1]);
        assert_eq!(s.mailboxes[0].live, 0);
    }

    #[test]
    fn notify_wants_a_message_and_a_subscription_and_lifecycle_knows_three_events() {
        let empty = data(&[]);
        let (status, v) = answer(sim_notify(empty, body(json!({"mailbox": MB0}))));
        assert_eq!(status, 409);
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no message"));
        let state = data(&["--messages-per-mailbox", "1"]);
        let (status, v) = answer(sim_notify(state.clone(), body(json!({"mailbox": MB0}))));
        assert_eq!(status, 409);
        assert!(v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no active subscription"));
        let bad = json!({"mailbox": MB0, "event": "deleted"});
        assert_eq!(answer(sim_lifecycle(state.clone(), body(bad))).0, 400);
        let missed = json!({"mailbox": MB0, "event": "missed"});
        assert_eq!(
            answer(sim_lifecycle(state, body(missed))),
            (200, json!({"event": "missed", "posts": []}))
        );
    }

    #[test]
    fn messages_lists_what_is_stored_with_is_read_and_stats_answer() {
        let state = data(&["--messages-per-mailbox", "2"]);
        lock(&state).mailboxes[0].set_read(0, true);
        let q = web::Query::<MessagesQuery>::from_query("mailbox=invoices-0%40contoso.example")
            .unwrap();
        let (status, v) = answer(sim_messages(state.clone(), q));
        assert_eq!(status, 200);
        let read: Vec<&Value> = v.as_array().unwrap().iter().map(|m| &m["isRead"]).collect();
        assert_eq!(read, [&json!(true), &json!(false)]);
        let q = web::Query::<MessagesQuery>::from_query("mailbox=nobody").unwrap();
        assert_eq!(answer(sim_messages(state.clone(), q)).0, 404);
        let (status, v) = answer(sim_stats(state));
        assert_eq!((status, &v["totals"]["messages"]), (200, &json!(6)));
    }
}
