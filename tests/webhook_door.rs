//! The webhook door (issue 10, item 8): Graph reaches the webhook, nobody else reaches the
//! control API through it; a public control API needs a real token; a notification POST is
//! bounded (items, time), its repeats cost no extra Graph GET, and over the backlog it is
//! refused with 503 + Retry-After instead of piling refs onto Redis.

mod common;

use common::*;
use ms1_sim::redis_launcher::free_port;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

const CLIENT_STATE: &str = "webhook-secret-1234";
const TOKEN: &str = "control-token-0123456789abcdefghijklmnop";

/// An HTTP request with optional bearer token and JSON body: (status, headers' Retry-After,
/// body).
fn call(method: &str, url: &str, token: Option<&str>, body: Option<&str>) -> (u16, String, String) {
    let mut req = ureq::request(method, url).timeout(Duration::from_secs(10));
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let answer = match body {
        Some(b) => req.set("Content-Type", "application/json").send_string(b),
        None => req.call(),
    };
    let read = |r: ureq::Response| {
        let retry = r.header("Retry-After").unwrap_or("").to_string();
        (r.status(), retry, r.into_string().unwrap_or_default())
    };
    match answer {
        Ok(r) => read(r),
        Err(ureq::Error::Status(_, r)) => read(r),
        Err(e) => (0, String::new(), e.to_string()),
    }
}

/// The subscription id the daemon holds for `mailbox` (persisted in Redis just after Graph
/// answered the create, so waited for).
fn subscription_id(w: &World, mailbox: &str) -> String {
    let mut id = None;
    wait_until(Duration::from_secs(10), || {
        id = redis::cmd("HGET")
            .arg(format!("{PREFIX}webhook:subscription:{mailbox}"))
            .arg("id")
            .query::<Option<String>>(&mut w.redis())
            .unwrap();
        id.is_some()
    });
    id.expect("a subscription")
}

/// A notification body of `n` items about message `id` of the subscription.
fn notifications(subscription: &str, id: &str, n: usize) -> String {
    let item = json!({
        "subscriptionId": subscription,
        "changeType": "created",
        "clientState": CLIENT_STATE,
        "resource": format!("Users/guid/Messages/{id}"),
        "resourceData": {"@odata.type": "#Microsoft.Graph.Message", "id": id},
    });
    json!({ "value": vec![item; n] }).to_string()
}

/// The daemon with webhooks on, `listener` serving them (control or own), polling only as a
/// far-away safety net.
fn webhook_daemon(w: &World, listener: &str, extra: &[(&str, &str)]) -> Daemon {
    let public = format!("http://{listener}");
    let mut env = vec![
        ("MS1__WEBHOOK__ENABLED", "true"),
        ("MS1__WEBHOOK__PUBLIC_URL", public.as_str()),
        ("MS1__WEBHOOK__CLIENT_STATE", CLIENT_STATE),
        ("MS1__GRAPH__POLL_INTERVAL_S", "3600"),
    ];
    env.extend_from_slice(extra);
    let d = w.graph_daemon(&env);
    let subscribed = wait_until(Duration::from_secs(30), || {
        w.graph().stats()["subscriptions_created"].as_u64() == Some(3)
    });
    assert!(subscribed, "{}\n{}", w.graph().stats(), d.log_tail(30));
    d
}

fn gets(w: &World, mailbox: &str) -> u64 {
    w.graph().stats()["mailboxes"][mailbox]["get_requests"]
        .as_u64()
        .unwrap_or(0)
}

#[test]
fn the_webhook_has_its_own_listener_and_the_control_port_serves_no_webhook() {
    let w = World::with_graph(&["--rate-limit-per-min", "0"], &[]);
    let hook = format!("127.0.0.1:{}", free_port().unwrap());
    let d = webhook_daemon(
        &w,
        &hook,
        &[
            ("MS1__WEBHOOK__BIND", hook.as_str()),
            ("MS1__CONTROL__TOKEN", TOKEN),
        ],
    );
    // Graph validated the URLs on the webhook port (the subscriptions exist) and notifies
    // there: new mail arrives by notification alone.
    w.mail(MAILBOXES[0], 3);
    w.wait_delivered(3, Duration::from_secs(30), &d);
    assert!(gets(&w, MAILBOXES[0]) >= 3, "{}", w.graph().stats());

    let body = notifications(&subscription_id(&w, MAILBOXES[0]), "AAMk-x", 1);
    for path in ["/webhook/notifications", "/webhook/lifecycle"] {
        let url = format!("{}{path}", d.control);
        let (status, _, text) = call("POST", &url, Some(TOKEN), Some(&body));
        assert_eq!(status, 404, "control port serves {path}: {text}");
        assert_eq!(call("POST", &url, None, Some(&body)).0, 401);
        let (status, _, _) = call("POST", &format!("{url}?validationToken=x"), None, None);
        assert_ne!(status, 200, "no handshake on the control port");
    }
    for (method, path) in [
        ("GET", "/health"),
        ("GET", "/ready"),
        ("GET", "/session/status"),
        ("GET", "/metrics/prometheus"),
        ("GET", "/dlq"),
        ("POST", "/session/stop"),
        ("GET", "/openapi.json"),
    ] {
        let url = format!("http://{hook}{path}");
        let body = (method == "POST").then_some("{}");
        let (status, _, text) = call(method, &url, Some(TOKEN), body);
        assert_eq!(status, 404, "webhook port serves {method} {path}: {text}");
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert_eq!(v["error"]["code"], "not_found", "{text}");
    }
    // The control API is where it was.
    assert_eq!(
        call("GET", &format!("{}/ready", d.control), None, None).0,
        200
    );
}

#[test]
fn a_short_control_token_with_a_public_bind_is_refused_by_check_config() {
    let check = |token: &str| {
        Command::new(BIN)
            .arg("check-config")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("MS1__CONTROL__BIND", "0.0.0.0:8000")
            .env("MS1__CONTROL__TOKEN", token)
            .output()
            .unwrap()
    };
    let short = check("sixteen-chars-ab");
    let stderr = String::from_utf8_lossy(&short.stderr);
    assert!(!short.status.success(), "a 16-character token accepted");
    assert!(stderr.contains("control.token"), "{stderr}");
    assert!(stderr.contains("32"), "{stderr}");
    assert!(!stderr.contains("sixteen-chars-ab"), "{stderr}");
    let long = check(TOKEN);
    assert!(
        long.status.success(),
        "{}",
        String::from_utf8_lossy(&long.stderr)
    );
}

/// A world whose daemon serves the webhook on its control listener (`webhook.bind` empty).
fn webhook_on_control() -> (World, Daemon, String) {
    let w = World::with_graph(&["--rate-limit-per-min", "0"], &[]);
    let bind = format!("127.0.0.1:{}", free_port().unwrap());
    let d = webhook_daemon(&w, &bind, &[("MS1__CONTROL__BIND", bind.as_str())]);
    (w, d, bind)
}

#[test]
fn a_notification_post_over_the_item_cap_is_refused_whole_with_json() {
    let (w, d, _) = webhook_on_control();
    let url = format!("{}/webhook/notifications", d.control);
    let sub = subscription_id(&w, MAILBOXES[0]);
    // Beyond 1,000 items (webhook.max_notifications_per_post): refused whole, with JSON.
    let (status, _, text) = call(
        "POST",
        &url,
        None,
        Some(&notifications(&sub, "AAMk-too-many", 1_001)),
    );
    assert_eq!(status, 413, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["code"], "too_many_notifications", "{text}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(w.xlen("inbound"), 0, "nothing enqueued");
    assert_eq!(gets(&w, MAILBOXES[0]), 0, "{}", w.graph().stats());
    // 1,000 are taken.
    let (status, _, text) = call(
        "POST",
        &url,
        None,
        Some(&notifications(&sub, "AAMk-enough", 1_000)),
    );
    assert_eq!(status, 202, "{text}");
}

#[test]
fn a_message_notified_ten_times_costs_one_graph_get() {
    let (w, d, _) = webhook_on_control();
    let url = format!("{}/webhook/notifications", d.control);
    let sub = subscription_id(&w, MAILBOXES[0]);
    // One message, notified by Graph on arrival, then four times more, then five times in one
    // POST: one ref, one Graph GET, one record.
    w.mail(MAILBOXES[0], 1);
    w.wait_delivered(1, Duration::from_secs(30), &d);
    let mut message = String::new();
    for _ in 0..4 {
        let answer = w
            .graph()
            .post("/_sim/notify", json!({"mailbox": MAILBOXES[0]}));
        message = answer["message_id"].as_str().unwrap().to_string();
    }
    let (status, _, text) = call("POST", &url, None, Some(&notifications(&sub, &message, 5)));
    assert_eq!(status, 202, "{text}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        gets(&w, MAILBOXES[0]),
        1,
        "one Graph GET for a message notified 10 times: {}\n{}",
        w.graph().stats(),
        d.log_tail(20)
    );
    assert_eq!(w.ms4.stats()["unique_records"], 1);
    assert_eq!(w.ms4.stats()["duplicate_records"], 0);
    eprintln!(
        "FIGURE one message notified 10 times: {} Graph GET, {} inbound entries left",
        gets(&w, MAILBOXES[0]),
        w.xlen("inbound")
    );
    assert!(
        d.metric("ms1_webhook_notifications_total{outcome=\"duplicate\"") >= 9.0,
        "{}",
        d.metrics()
    );
}

#[test]
fn a_trickled_body_gets_408_within_the_body_timeout() {
    let (_w, d, bind) = webhook_on_control();
    // A client that sends the head and then trickles the body gets 408 once
    // webhook.body_timeout_ms (5 s) has passed since the head, however it trickles.
    let mut s = std::net::TcpStream::connect(&bind).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    write!(
        s,
        "POST /webhook/notifications HTTP/1.1\r\nHost: {bind}\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{{\"value\":["
    )
    .unwrap();
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while started.elapsed() < Duration::from_secs(12) {
        let _ = s.write_all(b" ");
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Err(_) => {}
        }
    }
    let took = started.elapsed();
    let answer = String::from_utf8_lossy(&answer);
    eprintln!("FIGURE a trickled body was answered after {took:?}");
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "after {took:?}: {answer:?}"
    );
    assert!(took < Duration::from_secs(7), "{took:?}");
    // The daemon still serves everyone else.
    assert_eq!(
        call("GET", &format!("{}/ready", d.control), None, None).0,
        200
    );
}

#[test]
fn notifications_over_the_backlog_get_503_with_retry_after_and_nothing_is_queued() {
    // MS4 refuses the daemon's key: everything stays queued, the backlog cannot drain.
    let w = World::with_graph(&["--rate-limit-per-min", "0"], &[]);
    let bind = format!("127.0.0.1:{}", free_port().unwrap());
    let d = webhook_daemon(
        &w,
        &bind,
        &[
            ("MS1__CONTROL__BIND", bind.as_str()),
            ("MS1__MS4__API_KEY", "not-the-key"),
            ("MS1__PIPELINE__MAX_BACKLOG", "5"),
        ],
    );
    w.load(0..20, |_| false);
    let held = wait_until(Duration::from_secs(20), || {
        w.outbound_records() == 20 && w.xlen("inbound") == 0
    });
    assert!(held, "{}", d.log_tail(20));
    let url = format!("{}/webhook/notifications", d.control);
    let sub = subscription_id(&w, MAILBOXES[0]);
    let (status, retry_after, text) = call(
        "POST",
        &url,
        None,
        Some(&notifications(&sub, "AAMk-late", 1)),
    );
    assert_eq!(status, 503, "{text}");
    assert!(
        retry_after.parse::<u64>().is_ok_and(|s| s > 0),
        "{retry_after:?}"
    );
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["error"]["code"], "backlogged", "{text}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(w.xlen("inbound"), 0, "no ref queued over the backlog");
    assert_eq!(gets(&w, MAILBOXES[0]), 0);
}
