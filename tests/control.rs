//! The control API over HTTP: sessions, DLQ, metrics, tokens, bad bodies, the OpenAPI document.

mod common;

use common::{wait_until, Daemon, World};
use serde_json::{json, Value};
use std::time::Duration;

const TOKEN: &str = "control-token-123";

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .build()
}

/// A request with the given token (or none), body and content type; returns (status, JSON).
fn call(
    daemon: &Daemon,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<(&str, &str)>,
) -> (u16, Value) {
    let mut req = agent().request(method, &format!("{}{path}", daemon.control));
    if let Some(t) = token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let res = match body {
        Some((content_type, text)) => req.set("Content-Type", content_type).send_string(text),
        None => req.call(),
    };
    let (code, text) = match res {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("{method} {path}: {e}"),
    };
    (
        code,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn post_json(daemon: &Daemon, path: &str, body: Value) -> (u16, Value) {
    call(
        daemon,
        "POST",
        path,
        Some(TOKEN),
        Some(("application/json", &body.to_string())),
    )
}

fn get(daemon: &Daemon, path: &str) -> (u16, Value) {
    call(daemon, "GET", path, Some(TOKEN), None)
}

fn daemon(world: &World) -> Daemon {
    world.daemon(&[
        ("MS1__CONTROL__TOKEN", TOKEN),
        ("MS1__SESSION__AUTOSTART", "false"),
    ])
}

#[test]
fn sessions_start_conflict_stop_and_survive_a_restart() {
    let world = World::new(&["--rate-limit-per-min", "0"]);
    let mut d = daemon(&world);
    let (code, status) = get(&d, "/session/status");
    assert_eq!(code, 200);
    assert_eq!(status["status"], "idle");

    let (code, started) = post_json(
        &d,
        "/session/start",
        json!({"polling_mode": "manual", "polling_interval": 300, "enable_webhook": false}),
    );
    assert_eq!(code, 200, "{started}");
    assert_eq!(started["message"], "Session started.");
    let id = started["session_id"].as_str().unwrap().to_string();
    let (code, again) = post_json(&d, "/session/start", json!({}));
    assert_eq!(code, 409, "{again}");
    assert_eq!(again["error"]["code"], "session_running");

    world.load(0..30, |_| false);
    world.wait_delivered(30, Duration::from_secs(60), &d);
    let (_, status) = get(&d, "/session/status");
    assert_eq!(status["session_id"], id.as_str());
    assert_eq!(status["status"], "running");
    assert_eq!(status["polling_mode"], "manual");
    assert_eq!(status["emails_processed"], 30);
    assert!(status["queue_depth"].is_u64());
    let (_, metrics) = get(&d, "/metrics");
    assert_eq!(metrics["emails_processed_total"], 30);
    assert_eq!(metrics["emails_failed_total"], 0);
    assert!(metrics["current_queue_size"].is_u64());
    let (code, trigger) = call(&d, "POST", "/polling/trigger", Some(TOKEN), None);
    assert_eq!(code, 200, "{trigger}");
    assert_eq!(trigger["message"], "Manual polling triggered.");

    // The session is in Redis: a restarted daemon reports the same one.
    d.restart();
    let (_, status) = get(&d, "/session/status");
    assert_eq!(status["session_id"], id.as_str());
    assert_eq!(status["status"], "running");
    assert_eq!(status["emails_processed"], 30);

    let (code, stopped) = post_json(&d, "/session/stop", json!({"reason": "user_requested"}));
    assert_eq!(code, 200, "{stopped}");
    assert_eq!(stopped["message"], "Session stopped.");
    assert!(wait_until(Duration::from_secs(15), || {
        get(&d, "/session/status").1["status"] == "stopped"
    }));
    let (code, again) = post_json(&d, "/session/stop", json!({}));
    assert_eq!(code, 409, "{again}");
    let (_, history) = get(&d, "/session/history");
    assert_eq!(history["sessions"][0]["session_id"], id.as_str());
    assert_eq!(history["sessions"][0]["stop_reason"], "user_requested");
    assert_eq!(history["sessions"][0]["emails_processed"], 30);
}

#[test]
fn every_protected_route_wants_the_token_and_bad_bodies_get_clear_errors() {
    let world = World::new(&["--rate-limit-per-min", "0"]);
    let d = daemon(&world);
    assert_eq!(call(&d, "GET", "/health", None, None).0, 200);
    assert!(matches!(call(&d, "GET", "/ready", None, None).0, 200 | 503));
    for (method, path) in [
        ("GET", "/session/status"),
        ("POST", "/session/start"),
        ("POST", "/session/stop"),
        ("GET", "/metrics"),
        ("GET", "/metrics/prometheus"),
        ("GET", "/dlq"),
        ("POST", "/dlq/replay"),
        ("DELETE", "/dlq/1-0"),
        ("GET", "/dlq/count"),
        ("GET", "/queues"),
        ("GET", "/sources"),
        ("GET", "/rates"),
        ("GET", "/openapi.json"),
    ] {
        let (code, body) = call(&d, method, path, None, None);
        assert_eq!(code, 401, "{method} {path} without a token: {body}");
        assert_eq!(body["error"]["code"], "unauthorized");
        let (code, _) = call(&d, method, path, Some("wrong-token"), None);
        assert_eq!(code, 401, "{method} {path} with a wrong token");
    }

    let (code, body) = post_json(&d, "/session/start", json!({"polling_mod": "manual"}));
    assert_eq!(code, 400, "unknown field: {body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("polling_mod"));
    let (code, _) = call(
        &d,
        "POST",
        "/session/start",
        Some(TOKEN),
        Some(("application/json", "{not json")),
    );
    assert_eq!(code, 400);
    let (code, body) = call(
        &d,
        "POST",
        "/session/start",
        Some(TOKEN),
        Some(("text/plain", "{}")),
    );
    assert_eq!(code, 415, "{body}");
    let big = json!({"reason": "x".repeat(100_000)}).to_string();
    let (code, body) = call(
        &d,
        "POST",
        "/session/stop",
        Some(TOKEN),
        Some(("application/json", &big)),
    );
    assert_eq!(code, 413, "{body}");
    let (code, body) = post_json(&d, "/session/start", json!({"polling_interval": 0}));
    assert_eq!(code, 400, "{body}");
    let (code, body) = post_json(&d, "/dlq/replay", json!({}));
    assert_eq!(code, 400, "a replay must say what: {body}");
    assert_eq!(get(&d, "/dlq/1-0").0, 404);
    assert_eq!(call(&d, "DELETE", "/dlq/1-0", Some(TOKEN), None).0, 404);
    assert_eq!(post_json(&d, "/dlq/replay", json!({"id": "1-0"})).0, 404);
    assert_eq!(get(&d, "/no/such/route").0, 404);
}

#[test]
fn every_route_in_the_openapi_document_exists() {
    let world = World::new(&["--rate-limit-per-min", "0"]);
    let d = daemon(&world);
    let (code, doc) = get(&d, "/openapi.json");
    assert_eq!(code, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 15);
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            let concrete = path.replace("{id}", "0-1");
            let (code, body) = call(&d, &method.to_uppercase(), &concrete, Some(TOKEN), None);
            let unknown_route = code == 404
                && body["error"]["code"] == "not_found"
                && body["error"]["message"] == "no such route";
            assert!(
                !unknown_route,
                "{method} {path} is in the document but not served"
            );
            assert_ne!(code, 405, "{method} {path}");
        }
    }
}

#[test]
fn replayed_dead_letters_are_delivered_once_the_cause_is_fixed_and_purge_takes_only_what_was_asked()
{
    let world = World::new(&["--rate-limit-per-min", "0"]);
    let d = world.daemon(&[("MS1__CONTROL__TOKEN", TOKEN)]);
    let invalid = |n: u64| n.is_multiple_of(10);
    world.load(0..200, invalid);
    world.wait_delivered(180, Duration::from_secs(60), &d);
    assert!(wait_until(Duration::from_secs(20), || world
        .dead_letters()
        .len()
        == 20));

    let (code, page) = get(&d, "/dlq?count=5");
    assert_eq!(code, 200);
    assert_eq!(page["total"], 20);
    assert_eq!(page["entries"].as_array().unwrap().len(), 5);
    let first = page["entries"][0]["id"].as_str().unwrap().to_string();
    let next = page["next"].as_str().unwrap().to_string();
    let (_, page2) = get(&d, &format!("/dlq?count=50&after={next}"));
    assert_eq!(page2["entries"].as_array().unwrap().len(), 15);
    let (code, shown) = get(&d, &format!("/dlq/{first}"));
    assert_eq!(code, 200);
    assert_eq!(shown["stage"], "deliver");
    assert!(shown["payload"]
        .as_str()
        .unwrap()
        .contains("not-an-address"));
    assert!(shown["response"]
        .as_str()
        .unwrap()
        .contains("invalid record"));

    // Purge exactly two, by id: the other 18 stay.
    let second = page["entries"][1]["id"].as_str().unwrap().to_string();
    let (code, purged) = post_json(&d, "/dlq/purge", json!({"ids": [first, second]}));
    assert_eq!((code, purged["purged"].as_u64()), (200, Some(2)));
    assert_eq!(world.dead_letters().len(), 18);
    let third = page["entries"][2]["id"].as_str().unwrap();
    assert_eq!(
        call(&d, "DELETE", &format!("/dlq/{third}"), Some(TOKEN), None).0,
        200
    );
    assert_eq!(world.dead_letters().len(), 17);

    // MS4 relaxes the rule that refused them; a replay delivers them.
    world.ms4.configure(json!({"lenient_sender": true}));
    let (code, replayed) = post_json(&d, "/dlq/replay", json!({"filter": {"stage": "deliver"}}));
    assert_eq!((code, replayed["replayed"].as_u64()), (200, Some(17)));
    world.wait_delivered(197, Duration::from_secs(60), &d);
    assert!(world.dead_letters().is_empty());
    assert_eq!(world.ms4.stats()["duplicate_records"], 0);
    world.assert_drained();
}

#[test]
fn queues_sources_and_rates_show_what_the_console_draws() {
    let world = World::with_graph(&["--rate-limit-per-min", "0"], &[]);
    let d = world.graph_daemon(&[
        ("MS1__CONTROL__TOKEN", TOKEN),
        ("MS1__MS4__RATE_LIMIT_PER_MIN", "6000"),
    ]);
    for mb in common::MAILBOXES {
        world.mail(mb, 4);
    }
    world.wait_delivered(12, Duration::from_secs(60), &d);
    let invalid = |n: u64| n.is_multiple_of(2);
    world.load(1_000..1_010, invalid);
    world.wait_delivered(17, Duration::from_secs(60), &d);
    assert!(wait_until(Duration::from_secs(20), || world
        .dead_letters()
        .len()
        == 5));

    // Delivered per minute: the minutes add up to what MS4 holds; the MS4 budget in use.
    let (code, rates) = get(&d, "/rates?minutes=5");
    assert_eq!(code, 200, "{rates}");
    let minutes = rates["delivered_per_minute"].as_array().unwrap();
    assert_eq!(minutes.len(), 5);
    let total: u64 = minutes.iter().map(|m| m[1].as_u64().unwrap()).sum();
    assert_eq!(total, 17, "{rates}");
    assert!(
        rates["ms4_requests_last_60s"].as_u64() >= Some(1),
        "{rates}"
    );
    assert_eq!(rates["ms4_limit_per_min"], 6000);
    assert_eq!(get(&d, "/rates?minutes=x").0, 400);

    // Every stream with its groups and this daemon's consumers.
    let (code, queues) = get(&d, "/queues");
    assert_eq!(code, 200);
    let streams = queues["streams"].as_array().unwrap();
    let stream = |name: &str| {
        streams
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("{name} in {queues}"))
    };
    assert_eq!(stream("dlq")["length"], 5);
    assert!(stream("dlq")["oldest_age_ms"].as_u64().is_some());
    let senders = &stream("outbound")["groups"][0];
    assert_eq!(senders["name"], "senders");
    assert_eq!(senders["consumers"][0]["name"], "test-daemon");

    // Every mailbox: polled by this daemon, its messages today, its cursor.
    let (code, sources) = get(&d, "/sources");
    assert_eq!(code, 200);
    let sources = sources["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 3);
    for s in sources {
        assert_eq!(s["kind"], "graph");
        assert!(
            matches!(s["state"].as_str(), Some("idle" | "polling")),
            "{s}"
        );
        assert_eq!(s["lease_holder"], "test-daemon", "{s}");
        assert_eq!(s["messages_today"], 4, "{s}");
        assert!(s["cursor_age_ms"].as_u64().is_some(), "{s}");
    }

    // How many a filter selects, by reason and by time.
    let (_, all) = get(&d, "/dlq/count");
    assert_eq!(all["matching"], 5);
    let (_, none) = get(&d, "/dlq/count?reason=no-such-reason");
    assert_eq!(none["matching"], 0);
    let future = 4_000_000_000_000u64;
    assert_eq!(
        get(&d, &format!("/dlq/count?since_ms={future}")).1["matching"],
        0
    );
    assert_eq!(
        get(&d, &format!("/dlq/count?until_ms={future}")).1["matching"],
        5
    );
    let (_, page) = get(&d, &format!("/dlq?until_ms={future}&stage=deliver"));
    assert_eq!(page["entries"].as_array().unwrap().len(), 5);
    assert_eq!(get(&d, "/dlq/count?since_ms=soon").0, 400);
}

/// Parses the Prometheus text exposition (name{labels} value), strictly.
fn parse_exposition(text: &str) -> Vec<(String, String, f64)> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix('#') {
            let rest = rest.trim_start();
            assert!(
                rest.starts_with("TYPE ") || rest.starts_with("HELP "),
                "bad comment: {line}"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("name and value");
        let value: f64 = value.parse().unwrap_or_else(|_| {
            assert!(
                matches!(value, "+Inf" | "-Inf" | "NaN"),
                "bad value in {line}"
            );
            f64::NAN
        });
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => {
                assert!(l.ends_with('}'), "bad labels: {line}");
                (n.to_string(), l.trim_end_matches('}').to_string())
            }
            None => (series.to_string(), String::new()),
        };
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name: {line}"
        );
        out.push((name, labels, value));
    }
    out
}

#[test]
fn prometheus_metrics_parse_and_their_counters_match_what_ms4_received() {
    let world = World::new(&["--rate-limit-per-min", "0"]);
    let d = world.daemon(&[("MS1__CONTROL__TOKEN", TOKEN)]);
    world.load(0..500, |n| n.is_multiple_of(50));
    world.wait_delivered(490, Duration::from_secs(60), &d);
    assert!(wait_until(Duration::from_secs(20), || world
        .dead_letters()
        .len()
        == 10));
    let (code, text) = call(&d, "GET", "/metrics/prometheus", Some(TOKEN), None);
    assert_eq!(code, 200);
    let text = text.as_str().unwrap().to_string();
    // A real parser of the text format must accept the whole exposition…
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("the exposition parses as Prometheus text format");
    let delivered = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "ms1_emails_delivered_total")
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum::<f64>();
    assert_eq!(
        delivered,
        world.ms4.stats()["unique_records"].as_f64().unwrap()
    );
    // …and so must this strict line-by-line reading.
    let series = parse_exposition(&text);
    let sum = |name: &str| -> f64 {
        series
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, _, v)| v)
            .sum()
    };
    let ms4 = world.ms4.stats();
    assert_eq!(
        sum("ms1_emails_delivered_total"),
        ms4["unique_records"].as_f64().unwrap()
    );
    assert_eq!(sum("ms1_emails_received_total"), 500.0);
    assert_eq!(sum("ms1_emails_dead_lettered_total"), 10.0);
    let accepted = series
        .iter()
        .filter(|(n, l, _)| n == "ms1_ms4_requests_total" && l.contains("accepted"))
        .map(|(_, _, v)| v)
        .sum::<f64>();
    assert_eq!(accepted, ms4["batches_accepted"].as_f64().unwrap());
    assert!(series
        .iter()
        .any(|(n, _, _)| n == "ms1_ms4_request_duration_seconds_bucket"));
}

/// Runs a CLI verb against the daemon; returns (exit code, stdout, stderr).
fn cli(d: &Daemon, args: &[&str]) -> (i32, String, String) {
    let out = std::process::Command::new(common::BIN)
        .args(args)
        .env("MS1_URL", &d.control)
        .env("MS1_TOKEN", TOKEN)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn cli_verbs_talk_to_the_control_api_with_clear_errors_and_exit_codes() {
    let world = World::new(&["--rate-limit-per-min", "0"]);
    let d = daemon(&world);
    let (code, out, err) = cli(
        &d,
        &["session", "start", "--mode", "manual", "--webhook", "false"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Session started."));
    let (code, _, err) = cli(&d, &["session", "start", "--webhook", "false"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("409") && err.contains("already running"),
        "{err}"
    );
    let (code, out, _) = cli(&d, &["status"]);
    assert_eq!(code, 0);
    assert!(out.contains("\"status\": \"running\""), "{out}");
    let (code, out, _) = cli(&d, &["dlq", "list"]);
    assert_eq!((code, out.trim()), (0, "0 dead letters"));
    let (code, _, err) = cli(&d, &["dlq", "show", "1-0"]);
    assert_eq!(code, 1);
    assert!(err.contains("404"), "{err}");
    let (code, _, err) = cli(&d, &["dlq", "replay"]);
    assert_eq!(code, 1, "a replay must say which");
    assert!(err.contains("--all"), "{err}");
    let (code, out, _) = cli(&d, &["session", "stop", "--reason", "done"]);
    assert_eq!(code, 0);
    assert!(out.contains("Session stopped."));
    let out = std::process::Command::new(common::BIN)
        .args(["status", "--url", "http://127.0.0.1:9", "--token", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the daemon"));
    let out = std::process::Command::new(common::BIN)
        .args(["status"])
        .env("MS1_URL", &d.control)
        .env("MS1_TOKEN", "wrong")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
}
