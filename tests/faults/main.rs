//! The fault suite: a Graph → MS4 run of tens of thousands of messages while something breaks
//! (the daemon killed again and again, Redis hung then crashed, MS4 down, flapping or slow,
//! Graph throttling, poison messages), and several daemons sharing one Redis with one of them
//! killed. Every test ends with the same verdict ([`settle`]): every message delivered or
//! dead-lettered with a reason, nothing stuck pending, no limit exceeded (the simulators'
//! violation counters at zero).
//!
//! `scripts/test.sh` runs these at CI size; `scripts/test.sh --soak` sets `MS1_SOAK=1`, which
//! multiplies the messages by 5 and repeats the faults for longer.

#[path = "../common/mod.rs"]
mod common;

use common::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// Soak runs (`MS1_SOAK=1`) are this many times bigger.
fn scale() -> u64 {
    if std::env::var("MS1_SOAK").is_ok_and(|v| v == "1") {
        5
    } else {
        1
    }
}

/// A Graph world with `per_mailbox` messages in each of the three mailboxes.
fn graph_world(ms4_args: &[&str], per_mailbox: u64) -> World {
    let n = per_mailbox.to_string();
    World::with_graph(
        ms4_args,
        &["--messages-per-mailbox", &n, "--max-page-size", "1000"],
    )
}

/// Daemon settings for fault runs: big pages, quick takeover and retries.
const FAST: &[(&str, &str)] = &[
    ("MS1__GRAPH__PAGE_SIZE", "500"),
    ("MS1__GRAPH__LEASE_TTL_S", "3"),
    ("MS1__REDIS__CLAIM_IDLE_MS", "3000"),
    ("MS1__MS4__BATCH_SIZE", "100"),
    ("MS1__MS4__REQUEST_TIMEOUT_MS", "2000"),
    ("MS1__BREAKER__OPEN_MS", "1000"),
];

fn fast(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut v = FAST.to_vec();
    for (k, val) in extra {
        v.retain(|(ek, _)| ek != k);
        v.push((k, val));
    }
    v
}

/// What a run ended with, for the log (and docs/RELIABILITY.md); read through `Debug`.
#[allow(dead_code)]
#[derive(Debug)]
struct Report {
    delivered: u64,
    dead_lettered: u64,
    duplicates_at_ms4: u64,
    graph_violations: u64,
    ms4_violations: u64,
}

/// Waits until every message is delivered or dead-lettered, then checks that nothing is stuck
/// and no limit was exceeded. `total` messages, `invalid` of them refused by MS4.
fn settle(
    name: &str,
    w: &World,
    d: &Daemon,
    total: u64,
    invalid: u64,
    timeout: Duration,
) -> Report {
    let valid = total - invalid;
    let started = Instant::now();
    let done = wait_until(timeout, || {
        w.ms4.stats()["unique_records"].as_u64() == Some(valid)
            && w.dead_letters().len() as u64 >= invalid
    });
    assert!(
        done,
        "{name}: MS4 has {} of {valid}, {} dead letters of {invalid} after {:?}\nMS4: {}\nGraph: {}\n{}",
        w.ms4.stats()["unique_records"],
        w.dead_letters().len(),
        started.elapsed(),
        w.ms4.stats(),
        w.graph.as_ref().map(|g| g.stats()["totals"].clone()).unwrap_or(Value::Null),
        d.log_tail(40)
    );
    w.assert_drained();
    let dead = w.dead_letters();
    assert_eq!(
        dead.len() as u64,
        invalid,
        "{name}: only the invalid are dead-lettered"
    );
    for dl in &dead {
        assert!(
            !dl["reason"].is_empty(),
            "{name}: a dead letter without reason: {dl:?}"
        );
    }
    let ms4 = w.ms4.stats();
    let ms4_violations = ms4["requests_during_retry_after"].as_u64().unwrap_or(0)
        + ms4["missing_idempotency_key"].as_u64().unwrap_or(0);
    assert_eq!(ms4_violations, 0, "{name}: MS4 contract violated: {ms4}");
    let graph_violations = w
        .graph
        .as_ref()
        .map_or(0, |g| g.stats()["violations"].as_u64().unwrap_or(0));
    assert_eq!(
        graph_violations,
        0,
        "{name}: Graph limits violated: {}",
        w.graph().stats()["totals"]
    );
    let report = Report {
        delivered: valid,
        dead_lettered: invalid,
        duplicates_at_ms4: ms4["duplicate_records"].as_u64().unwrap_or(0),
        graph_violations,
        ms4_violations,
    };
    eprintln!("FAULT-REPORT {name}: {total} messages, {report:?}, lost 0, stuck 0");
    report
}

/// Waits until MS4 holds at least `n` records (to time a fault into the middle of a run).
fn until_delivered(w: &World, n: u64) {
    assert!(
        wait_until(Duration::from_secs(120), || {
            w.ms4.stats()["unique_records"].as_u64() >= Some(n)
        }),
        "MS4 never reached {n}: {}",
        w.ms4.stats()
    );
}

#[test]
fn sigkill_again_and_again_during_a_graph_run() {
    let per = 7_000 * scale();
    let w = graph_world(&["--rate-limit-per-min", "0", "--max-batch", "100"], per);
    let mut d = w.graph_daemon(&fast(&[]));
    let total = per * 3;
    let kills = 4 * scale();
    for k in 1..=kills {
        until_delivered(&w, total * k / (kills + 2));
        d.kill();
        d.restart();
    }
    let r = settle("sigkill", &w, &d, total, 0, Duration::from_secs(180));
    // A kill can lose the acknowledgements of the batches in flight (MS4 keeps them once).
    assert!(r.duplicates_at_ms4 <= kills * 4 * 100 + 3 * 1_000, "{r:?}");
}

#[test]
fn redis_hangs_then_crashes_and_comes_back_from_its_aof() {
    let per = 5_000 * scale();
    let mut w = graph_world(&["--rate-limit-per-min", "0", "--max-batch", "100"], per);
    let d = w.graph_daemon(&fast(&[]));
    let total = per * 3;
    until_delivered(&w, total / 5);
    // A hung dependency: redis-server stops answering for 5 s.
    let pid = w.redis.pid().expect("redis runs").to_string();
    assert!(std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    std::thread::sleep(Duration::from_secs(5));
    assert!(std::process::Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap()
        .success());
    until_delivered(&w, total / 2);
    // Then it crashes (SIGKILL) and comes back with what its AOF holds.
    w.redis.kill();
    std::thread::sleep(Duration::from_secs(2));
    w.redis.restart().expect("redis restarts");
    settle(
        "redis-hang-crash",
        &w,
        &d,
        total,
        0,
        Duration::from_secs(180),
    );
}

#[test]
fn ms4_down_for_a_minute_then_flapping() {
    let per = 4_000 * scale();
    let w = graph_world(&["--rate-limit-per-min", "0", "--max-batch", "100"], per);
    let d = w.graph_daemon(&fast(&[]));
    let total = per * 3;
    until_delivered(&w, total / 10);
    w.ms4.configure(json!({"outage": true}));
    std::thread::sleep(Duration::from_secs(60));
    assert_eq!(d.ready().0, 503, "readiness reports the open breaker");
    w.ms4.configure(json!({"outage": false}));
    until_delivered(&w, total / 2);
    // Flapping: down and up every 2 s.
    for i in 0..(8 * scale()) {
        w.ms4.configure(json!({"outage": i % 2 == 0}));
        std::thread::sleep(Duration::from_secs(2));
    }
    w.ms4.configure(json!({"outage": false}));
    settle(
        "ms4-outage-flapping",
        &w,
        &d,
        total,
        0,
        Duration::from_secs(180),
    );
}

#[test]
fn ms4_answering_slower_than_the_request_timeout() {
    let per = 3_000 * scale();
    let w = graph_world(&["--rate-limit-per-min", "0", "--max-batch", "100"], per);
    let d = w.graph_daemon(&fast(&[("MS1__MS4__REQUEST_TIMEOUT_MS", "500")]));
    let total = per * 3;
    until_delivered(&w, total / 10);
    // Every answer comes after the daemon gave up on it: MS4 may store a batch the daemon
    // retries (a duplicate MS4 drops by its idempotency key), nothing may be lost.
    w.ms4.configure(json!({"latency_ms": 800}));
    std::thread::sleep(Duration::from_secs(10));
    w.ms4.configure(json!({"latency_ms": 0}));
    settle("ms4-slow", &w, &d, total, 0, Duration::from_secs(180));
}

#[test]
fn graph_throttling_storms_are_waited_out() {
    let per = 4_000 * scale();
    let w = graph_world(&["--rate-limit-per-min", "0", "--max-batch", "100"], per);
    let d = w.graph_daemon(&fast(&[]));
    let total = per * 3;
    until_delivered(&w, total / 10);
    for round in 0..(3 * scale()) {
        for mb in MAILBOXES {
            w.graph().post(
                "/_sim/throttle",
                json!({"mailbox": mb, "count": 30, "retry_after_s": 1 + round % 2,
                       "status": if round % 2 == 0 { 429 } else { 503 }}),
            );
        }
        // New mail meanwhile, so the storms hit polls.
        for mb in MAILBOXES {
            w.graph()
                .post("/_sim/mail", json!({"mailbox": mb, "count": 200}));
        }
        std::thread::sleep(Duration::from_secs(3));
    }
    let total = total + 3 * scale() * 3 * 200;
    let r = settle(
        "graph-throttling",
        &w,
        &d,
        total,
        0,
        Duration::from_secs(180),
    );
    let throttled = w.graph().stats()["totals"]["throttled"]
        .as_u64()
        .unwrap_or(0);
    assert!(throttled > 0, "the storms did throttle");
    eprintln!("FAULT-REPORT graph-throttling: {throttled} requests throttled, {r:?}");
}

#[test]
fn a_poison_message_in_every_batch() {
    // One message in 100 is one MS4 refuses; batches hold 100 records: every batch is poisoned.
    let w = World::with_graph(
        &["--rate-limit-per-min", "0", "--max-batch", "100"],
        &["--messages-per-mailbox", "0", "--max-page-size", "1000"],
    );
    let per = 3_000 * scale();
    for mb in MAILBOXES {
        w.graph().post(
            "/_sim/mail",
            json!({"mailbox": mb, "count": per, "invalid": per / 100}),
        );
    }
    let d = w.graph_daemon(&fast(&[]));
    let total = per * 3;
    let invalid = per / 100 * 3;
    settle("poison", &w, &d, total, invalid, Duration::from_secs(180));
    for dl in w.dead_letters() {
        assert_eq!(dl["stage"], "deliver");
        assert_eq!(dl["status"], "400", "{dl:?}");
    }
}

#[test]
fn three_daemons_share_one_redis_and_survive_losing_one() {
    // 60,000 messages in 6 mailboxes. MS4 allows 200 requests per 10 s window (1,200 a
    // minute, the window compressed to keep the test short) for the whole fleet.
    let boxes: Vec<String> = (0..6)
        .map(|i| format!("invoices-{i}@contoso.example"))
        .collect();
    let list = boxes.join(",");
    let per = 10_000 * scale();
    let per_s = per.to_string();
    let w = World::with_graph(
        &[
            "--rate-limit-per-min",
            "200",
            "--window-ms",
            "10000",
            "--max-batch",
            "100",
        ],
        &[
            "--mailboxes",
            &list,
            "--messages-per-mailbox",
            &per_s,
            "--max-page-size",
            "1000",
        ],
    );
    let env = w.graph_env();
    let daemon = |name: &'static str| {
        let mut all: Vec<(&str, &str)> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        all.retain(|(k, _)| *k != "MS1__GRAPH__MAILBOXES");
        all.push(("MS1__GRAPH__MAILBOXES", &list));
        all.push(("MS1__REDIS__CONSUMER", name));
        all.extend(fast(&[
            ("MS1__MS4__RATE_LIMIT_PER_MIN", "1200"),
            ("MS1__MS4__RATE_MARGIN_MS", "1000"),
        ]));
        w.daemon(&all)
    };
    let mut fleet = vec![
        ("daemon-a", daemon("daemon-a")),
        ("daemon-b", daemon("daemon-b")),
        ("daemon-c", daemon("daemon-c")),
    ];
    let total = per * 6;
    until_delivered(&w, total / 4);
    // Kill the daemon polling the first mailbox (its lease names it): the others must claim
    // the entries it held and take over its mailboxes, one poller each.
    let holder: String = redis::cmd("GET")
        .arg(format!("{PREFIX}lease:poller:{}", boxes[0]))
        .query(&mut w.redis())
        .unwrap();
    let victim = fleet
        .iter()
        .position(|(name, _)| holder.starts_with(&format!("{name}:")))
        .expect("a daemon holds the lease");
    let (name, mut dead) = fleet.remove(victim);
    dead.kill();
    // New mail after the kill: only a poller that took over can bring it.
    for mb in &boxes {
        w.graph()
            .post("/_sim/mail", json!({"mailbox": mb, "count": 500}));
    }
    let total = total + 6 * 500;
    settle("fleet", &w, &fleet[0].1, total, 0, Duration::from_secs(300));
    let g = w.graph().stats();
    let mut pollers = Vec::new();
    for mb in &boxes {
        let m = &g["mailboxes"][mb];
        assert_eq!(
            m["poller_interleavings"], 0,
            "one poller at a time on {mb}: {m}"
        );
        pollers.push(m["pollers_seen"].as_u64().unwrap_or(0));
    }
    assert!(
        pollers.iter().any(|&p| p >= 2),
        "the killed daemon's mailboxes were taken over: {pollers:?}"
    );
    let ms4 = w.ms4.stats();
    assert_eq!(ms4["rate_limited"], 0, "{ms4}");
    let max_window = ms4["max_requests_in_window"].as_u64().unwrap();
    assert!(
        max_window <= 200,
        "fleet-wide MS4 rate within the limit: {ms4}"
    );
    let mut by_daemon = Vec::new();
    for (n, d) in &fleet {
        let delivered = d.metric("ms1_emails_delivered_total");
        assert!(delivered > 0.0, "{n} did part of the work");
        by_daemon.push((*n, delivered));
    }
    eprintln!(
        "FAULT-REPORT fleet: killed {name}; max {max_window} MS4 requests in a 10 s window (limit 200), pollers seen per mailbox {pollers:?}, delivered by the survivors since their start {by_daemon:?}"
    );
}
