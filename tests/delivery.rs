//! The delivery path end to end: inbound stream → BatchProcessor → outbound stream →
//! MS4Sender → MS4 simulator, with a real redis-server and real HTTP.

mod common;

use common::{World, API_KEY};
use ms1_actors::store::schema::inbound;
use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;

const MINUTE: Duration = Duration::from_secs(60);

#[test]
fn ten_thousand_entries_reach_ms4_exactly_once_in_batches_of_at_most_fifty() {
    let world = World::new(&["--rate-limit-per-min", "0"]);
    let daemon = world.daemon(&[]);
    world.load(0..10_000, |_| false);
    world.wait_delivered(10_000, MINUTE, &daemon);

    let stats = world.ms4.stats();
    assert_eq!(stats["duplicate_records"], 0, "{stats}");
    assert!(stats["max_batch_seen"].as_u64().unwrap() <= 50, "{stats}");
    assert_eq!(stats["missing_idempotency_key"], 0);
    let got: BTreeSet<String> = world.ms4.keys().into_iter().collect();
    let want: BTreeSet<String> = (0..10_000).map(World::key_of).collect();
    assert_eq!(got, want);
    assert!(common::wait_until(Duration::from_secs(5), || world
        .xlen("outbound")
        == 0));
    world.assert_drained();
    assert!(world.dead_letters().is_empty());
    assert_eq!(daemon.metric("ms1_emails_delivered_total"), 10_000.0);
}

#[test]
fn a_trickle_of_seven_is_sent_as_one_partial_batch_by_the_linger_timer() {
    let world = World::new(&["--rate-limit-per-min", "0"]);
    let daemon = world.daemon(&[("MS1__MS4__LINGER_MS", "300")]);
    world.load(0..7, |_| false);
    world.wait_delivered(7, Duration::from_secs(20), &daemon);
    let stats = world.ms4.stats();
    assert_eq!(stats["batches_accepted"], 1, "{stats}");
    assert_eq!(stats["batch_sizes"]["7"], 1, "{stats}");
    world.assert_drained();
    // A fresh deployment: no idempotency mark of a version before can exist, none is read.
    let legacy: Option<String> = redis::cmd("GET")
        .arg("ms1:marks:legacy_until")
        .query(&mut world.redis())
        .unwrap();
    assert_eq!(legacy.as_deref(), Some("0"));
}

/// Idempotency marks moved from a key a record (`seen:{key}`) to one hash (issue 14). A
/// deployment upgraded from a version before honours the marks that version left while they
/// live: a repeat stays a duplicate, a reused Message-ID with other content is delivered under
/// the key and its digest. The marks written from then on are in the marks hash.
#[test]
fn marks_a_version_before_left_are_honoured_after_the_upgrade() {
    let world = World::new(&["--rate-limit-per-min", "0"]);
    let mut con = world.redis();
    // What the version before leaves: its counters, and one mark a record.
    let _: () = redis::cmd("HSET")
        .arg("ms1:stats")
        .arg("processed")
        .arg(2)
        .query(&mut con)
        .unwrap();
    for (n, mark) in [(0, "1"), (1, "another-digest")] {
        let _: () = redis::cmd("SET")
            .arg(format!("ms1:seen:{}", World::key_of(n)))
            .arg(mark)
            .arg("EX")
            .arg(3_600)
            .query(&mut con)
            .unwrap();
    }
    let daemon = world.daemon(&[]);
    world.load(0..10, |_| false);
    world.wait_delivered(9, MINUTE, &daemon);
    assert!(common::wait_until(Duration::from_secs(5), || daemon
        .metric("ms1_emails_duplicate_total")
        == 1.0));
    let keys = world.ms4.keys();
    assert!(!keys.contains(&World::key_of(0)), "{keys:?}");
    let renamed = format!("{}#", World::key_of(1));
    assert!(keys.iter().any(|k| k.starts_with(&renamed)), "{keys:?}");
    assert_eq!(daemon.metric("ms1_key_conflicts_total"), 1.0);
    world.assert_drained();
    // The 8 new keys and the renamed one are marked in the marks hash.
    let marked: u64 = redis::cmd("HLEN").arg("ms1:marks").query(&mut con).unwrap();
    assert_eq!(marked, 9);
    let own_keys: u64 = redis::cmd("EXISTS")
        .arg(format!("ms1:seen:{}", World::key_of(2)))
        .query(&mut con)
        .unwrap();
    assert_eq!(own_keys, 0);
    let until: u64 = redis::cmd("GET")
        .arg("ms1:marks:legacy_until")
        .query(&mut con)
        .unwrap();
    assert!(until > now_ms() + 3_600_000, "{until}");
}

#[test]
fn malformed_entries_are_dead_lettered_at_processing_with_a_reason() {
    let world = World::new(&["--rate-limit-per-min", "0"]);
    let daemon = world.daemon(&[]);
    let mut con = world.redis();
    let stream = format!("{}stream:inbound", common::PREFIX);
    for (mailbox, payload) in [
        ("m@x.example", "{not json"),
        (
            "m@x.example",
            r#"{"id":"1","receivedDateTime":"2026-01-01T00:00:00Z"}"#,
        ),
    ] {
        let _: String = redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg(inbound::MAILBOX)
            .arg(mailbox)
            .arg(inbound::PAYLOAD)
            .arg(payload)
            .query(&mut con)
            .unwrap();
    }
    let _: String = redis::cmd("XADD")
        .arg(&stream)
        .arg("*")
        .arg(inbound::PAYLOAD)
        .arg("{}")
        .query(&mut con)
        .unwrap();
    world.load(0..10, |_| false);
    world.wait_delivered(10, MINUTE, &daemon);
    assert!(common::wait_until(Duration::from_secs(5), || world
        .dead_letters()
        .len()
        == 3));
    let dead = world.dead_letters();
    assert!(dead.iter().all(|d| d["stage"] == "process"));
    assert!(
        dead[0]["reason"].contains("not a Graph message"),
        "{dead:?}"
    );
    assert!(
        dead[1]["reason"].contains("from.emailAddress.address"),
        "{dead:?}"
    );
    assert!(dead[2]["reason"].contains("mailbox"), "{dead:?}");
    assert_eq!(dead[0]["payload"], "{not json");
    world.assert_drained();
}

#[test]
fn rejected_records_are_isolated_by_bisection_and_only_they_are_dead_lettered() {
    let world = World::new(&["--rate-limit-per-min", "0"]);
    let daemon = world.daemon(&[]);
    // 40 invalid records spread over 2,000: one in every 50, at different offsets.
    let invalid = |n: u64| n % 50 == (n / 50) % 50;
    let bad: BTreeSet<String> = (0..2_000)
        .filter(|n| invalid(*n))
        .map(World::key_of)
        .collect();
    assert_eq!(bad.len(), 40);
    world.load(0..2_000, invalid);
    world.wait_delivered(1_960, MINUTE, &daemon);
    assert!(common::wait_until(Duration::from_secs(10), || world
        .dead_letters()
        .len()
        == 40));
    std::thread::sleep(Duration::from_millis(500));
    let dead = world.dead_letters();
    assert_eq!(dead.len(), 40, "nothing else is dead-lettered");
    let dead_keys: BTreeSet<String> = dead.iter().map(|d| d["key"].clone()).collect();
    assert_eq!(dead_keys, bad);
    for d in &dead {
        assert_eq!(d["stage"], "deliver");
        assert_eq!(d["status"], "400");
        assert!(d["reason"].contains("MS4 rejected"), "{d:?}");
        assert!(d["response"].contains("invalid record"), "{d:?}");
        assert!(d["payload"].contains("not-an-address"), "{d:?}");
    }
    let delivered: BTreeSet<String> = world.ms4.keys().into_iter().collect();
    assert!(delivered.is_disjoint(&bad));
    assert_eq!(world.ms4.stats()["duplicate_records"], 0);
    world.assert_drained();
}

#[test]
fn a_refused_api_key_pauses_delivery_keeps_everything_and_resumes_by_itself() {
    let world = World::new(&["--rate-limit-per-min", "0"]);
    world.ms4.configure(json!({"api_key": "rotated-key"}));
    let daemon = world.daemon(&[("MS1__MS4__AUTH_PROBE_S", "1")]);
    world.load(0..500, |_| false);

    let not_ready = common::wait_until(Duration::from_secs(20), || {
        let (code, body) = daemon.ready();
        code == 503 && body["ms4_auth"] == false
    });
    assert!(not_ready, "{:?}\n{}", daemon.ready(), daemon.log_tail(20));
    assert!(common::wait_until(Duration::from_secs(10), || daemon
        .metrics()
        .contains("ms1_ms4_auth_ok 0")));
    std::thread::sleep(Duration::from_secs(2));
    let stats = world.ms4.stats();
    assert_eq!(stats["unique_records"], 0);
    // Only probes while refused: about one per second, not a storm.
    let refused = stats["responses"]["401"].as_u64().unwrap_or(0);
    assert!(refused <= 12, "401 storm: {stats}");
    assert_eq!(world.outbound_records(), 500, "everything stays queued");
    assert!(world.dead_letters().is_empty());

    world.ms4.configure(json!({"api_key": API_KEY}));
    world.wait_delivered(500, MINUTE, &daemon);
    assert!(common::wait_until(Duration::from_secs(10), || daemon
        .ready()
        .0
        == 200));
    assert_eq!(world.ms4.stats()["duplicate_records"], 0);
    world.assert_drained();
}

#[test]
fn retry_after_is_honoured_by_every_sender_before_any_new_request() {
    // MS4 allows 10 requests per 2-second window; the daemon is told there is no limit, so it
    // runs into 429s and must wait each Retry-After out.
    let world = World::new(&["--rate-limit-per-min", "10", "--window-ms", "2000"]);
    let daemon = world.daemon(&[("MS1__MS4__MAX_IN_FLIGHT", "4")]);
    world.load(0..1_500, |_| false);
    world.wait_delivered(1_500, Duration::from_secs(90), &daemon);
    let stats = world.ms4.stats();
    assert!(
        stats["rate_limited"].as_u64().unwrap() >= 1,
        "no 429 provoked: {stats}"
    );
    assert_eq!(stats["requests_during_retry_after"], 0, "{stats}");
    assert_eq!(stats["duplicate_records"], 0);
    assert!(world.dead_letters().is_empty());
    world.assert_drained();
}

#[test]
fn the_shared_rate_limit_keeps_every_window_inside_ms4s_limit_without_429s() {
    // 40 requests per 3-second window at MS4 (800/min); the daemon budgets 800/min with a
    // margin scaled to the compressed window.
    let world = World::new(&["--rate-limit-per-min", "40", "--window-ms", "3000"]);
    let daemon = world.daemon(&[
        ("MS1__MS4__RATE_LIMIT_PER_MIN", "800"),
        ("MS1__MS4__RATE_MARGIN_MS", "2000"),
        ("MS1__MS4__BATCH_SIZE", "10"),
    ]);
    world.load(0..1_200, |_| false);
    world.wait_delivered(1_200, Duration::from_secs(60), &daemon);
    let stats = world.ms4.stats();
    assert_eq!(stats["rate_limited"], 0, "{stats}");
    assert!(
        stats["max_requests_in_window"].as_u64().unwrap() <= 40,
        "{stats}"
    );
}

#[test]
fn a_5xx_storm_opens_the_breaker_falls_to_probes_and_everything_arrives_after_recovery() {
    let world = World::new(&["--rate-limit-per-min", "0"]);
    world.ms4.configure(json!({"outage": true}));
    let daemon = world.daemon(&[
        ("MS1__BREAKER__FAILURE_THRESHOLD", "3"),
        ("MS1__BREAKER__OPEN_MS", "1000"),
    ]);
    world.load(0..600, |_| false);
    let opened = common::wait_until(Duration::from_secs(20), || {
        daemon.ready().1["ms4_breaker"] != "closed"
    });
    assert!(opened, "{:?}", daemon.ready());
    // While open, only probes go out: about one per open_ms.
    let before = world.ms4.stats()["requests_total"].as_u64().unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let during = world.ms4.stats()["requests_total"].as_u64().unwrap() - before;
    assert!(
        during <= 8,
        "{during} requests in 4 s with the breaker open"
    );
    assert!(
        world.dead_letters().is_empty(),
        "transient failures never dead-letter"
    );

    world.ms4.configure(json!({"outage": false}));
    world.wait_delivered(600, MINUTE, &daemon);
    assert!(common::wait_until(Duration::from_secs(10), || {
        daemon.ready().1["ms4_breaker"] == "closed"
    }));
    assert_eq!(world.ms4.stats()["duplicate_records"], 0);
    world.assert_drained();
}

#[test]
fn errors_and_slow_answers_are_retried_until_delivered() {
    let world = World::new(&["--rate-limit-per-min", "0"]);
    world.ms4.configure(json!({"error_rate": 0.3}));
    let daemon = world.daemon(&[
        ("MS1__BREAKER__FAILURE_THRESHOLD", "50"),
        ("MS1__MS4__REQUEST_TIMEOUT_MS", "300"),
    ]);
    world.load(0..1_000, |_| false);
    std::thread::sleep(Duration::from_secs(1));
    world.ms4.configure(json!({"latency_ms": 500}));
    std::thread::sleep(Duration::from_secs(2));
    world.ms4.configure(json!({"latency_ms": 0}));
    world.wait_delivered(1_000, MINUTE, &daemon);
    let stats = world.ms4.stats();
    assert!(
        stats["responses"]["500"].as_u64().unwrap_or(0) > 0,
        "{stats}"
    );
    assert!(world.dead_letters().is_empty());
    world.assert_drained();
}

/// The marks hash has no lifetime a field: the BatchProcessor sweeps the marks of every day
/// that ended longer than `redis.idempotency_ttl_s` ago (a list of the day's keys), a batch at a
/// time, and keeps the younger ones.
#[test]
fn idempotency_marks_older_than_their_ttl_are_swept_and_younger_ones_kept() {
    let world = World::new(&["--rate-limit-per-min", "0"]);
    let mut con = world.redis();
    let today = now_ms() / 86_400_000;
    // What hand-offs three days ago (2,500 keys: three sweep batches) and yesterday left.
    let old: Vec<String> = (1_000..3_500).map(World::key_of).collect();
    for (day, keys) in [
        (today - 3, old.clone()),
        (today - 1, vec!["<young@x>".into()]),
    ] {
        let mut pipe = redis::pipe();
        pipe.cmd("HSET").arg("ms1:marks");
        for k in &keys {
            pipe.arg(k).arg("digest");
        }
        pipe.cmd("RPUSH").arg(format!("ms1:marks:{day}")).arg(&keys);
        pipe.cmd("ZADD").arg("ms1:marks:days").arg(day).arg(day);
        let _: () = pipe.query(&mut con).unwrap();
    }
    let daemon = world.daemon(&[("MS1__REDIS__IDEMPOTENCY_TTL_S", "86400")]);
    world.load(0..5, |_| false);
    world.wait_delivered(5, MINUTE, &daemon);
    let hlen = |con: &mut redis::Connection| -> u64 {
        redis::cmd("HLEN").arg("ms1:marks").query(con).unwrap()
    };
    assert!(
        common::wait_until(MINUTE, || hlen(&mut world.redis()) == 6),
        "{} marks left; want yesterday's and the 5 new",
        hlen(&mut con)
    );
    let young: bool = redis::cmd("HEXISTS")
        .arg("ms1:marks")
        .arg("<young@x>")
        .query(&mut con)
        .unwrap();
    assert!(young);
    let days: Vec<u64> = redis::cmd("ZRANGE")
        .arg("ms1:marks:days")
        .arg(0)
        .arg(-1)
        .query(&mut con)
        .unwrap();
    assert_eq!(days, vec![today - 1, today]);
    let list: u64 = redis::cmd("EXISTS")
        .arg(format!("ms1:marks:{}", today - 3))
        .query(&mut con)
        .unwrap();
    assert_eq!(list, 0);
    // A swept key is new again: the first of them comes back and is delivered.
    world.load(1_000..1_001, |_| false);
    world.wait_delivered(6, MINUTE, &daemon);
    world.assert_drained();
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}
