//! Where a real deployment breaks (issue 10): redirects in front of MS4, one mailbox Graph
//! refuses, follow-ups a dead daemon left, forged Message-IDs, settings that cannot work,
//! replays that keep their after-delivery action, counters that exist from the start.
//! Every test runs the real daemon against a real redis-server and the simulators over HTTP.

mod common;

use common::{Sim, World};
use ms1_actors::store::schema::{follow_up, inbound};
use serde_json::json;
use std::time::Duration;

const MINUTE: Duration = Duration::from_secs(60);

/// A load balancer in front of MS4 that redirects (a 307 to another host that would accept
/// the re-POSTed batch and its API key, or a 302 to a maintenance page that answers 200) never
/// makes a batch count as delivered: the records stay queued, `/ready` names the redirect, and
/// they reach MS4 once the redirect is gone.
#[test]
fn a_redirect_in_front_of_ms4_is_never_followed_and_the_records_stay_queued() {
    let world = World::new(&["--rate-limit-per-min", "0"]);
    // The wrong host: it would take the batch (same API key) if a client followed the 307.
    let elsewhere = Sim::start(&["--rate-limit-per-min", "0"]);
    let daemon = world.daemon(&[
        ("MS1__BREAKER__FAILURE_THRESHOLD", "2"),
        ("MS1__BREAKER__OPEN_MS", "300"),
    ]);
    for (status, target) in [
        (307, format!("{}/batch-metadata", elsewhere.url)),
        (302, format!("{}/batch-metadata", elsewhere.url)),
    ] {
        world
            .ms4
            .configure(json!({"redirect_to": target, "redirect_status": status}));
        let before = world.ms4.stats()["redirected"].as_u64().unwrap_or(0);
        let n = if status == 307 { 0..100 } else { 100..200 };
        world.load(n, |_| false);
        assert!(
            common::wait_until(MINUTE, || {
                let redirected = world.ms4.stats()["redirected"].as_u64().unwrap_or(0);
                redirected >= before + 3 || elsewhere.stats()["requests_total"] != 0
            }),
            "MS4 was never asked: {}",
            daemon.log_tail(20)
        );
        let wrong = elsewhere.stats();
        assert_eq!(wrong["requests_total"], 0, "{status}: {wrong}");
        assert_eq!(wrong["unique_records"], 0, "{status}: {wrong}");
        assert_eq!(wrong["maintenance_page_hits"], 0, "{status}: {wrong}");
        let (code, ready) = daemon.ready();
        assert_eq!(code, 503, "{ready}");
        assert!(
            ready.to_string().contains("never followed"),
            "/ready must say why: {ready}"
        );
        assert_eq!(world.ms4.stats()["unique_records"], 0);
        assert!(world.xlen("outbound") > 0, "the records must stay queued");
    }
    world.ms4.configure(json!({"redirect_to": ""}));
    world.wait_delivered(200, MINUTE, &daemon);
    world.assert_drained();
    assert!(world.dead_letters().is_empty());
    assert_eq!(elsewhere.stats()["requests_total"], 0);
}

/// Both simulators, `per_mailbox` messages in each Graph mailbox, and the second mailbox
/// excluded by an application access policy (every request on it: 403 `ErrorAccessDenied`).
fn world_with_a_denied_mailbox(per_mailbox: u64) -> World {
    let world = World::with_graph(&["--rate-limit-per-min", "0"], &[]);
    for mb in common::MAILBOXES {
        world.mail(mb, per_mailbox);
    }
    world
        .graph()
        .configure(json!({"deny_mailboxes": [common::MAILBOXES[1]]}));
    world
}

/// Writes webhook refs for every message of `mailbox` in the Graph simulator, as the
/// WebhookReceiver does; returns how many.
fn notify_all(world: &World, mailbox: &str) -> usize {
    let messages = world
        .graph()
        .get_json(&format!("/_sim/messages?mailbox={mailbox}"));
    let ids: Vec<String> = messages
        .as_array()
        .expect("the mailbox's messages")
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    let mut con = world.redis();
    for id in &ids {
        let _: String = redis::cmd("XADD")
            .arg(format!("{}stream:inbound", common::PREFIX))
            .arg("*")
            .arg(inbound::SOURCE)
            .arg("graph")
            .arg(inbound::KIND)
            .arg("ref")
            .arg(inbound::MAILBOX)
            .arg(mailbox)
            .arg(inbound::MESSAGE_ID)
            .arg(id)
            .query(&mut con)
            .unwrap();
    }
    ids.len()
}

/// An application access policy that excludes one mailbox (Graph answers 403
/// `ErrorAccessDenied` on every request for it) parks that mailbox's entries in Redis, while
/// the other mailboxes' mail and unrelated records keep reaching MS4; `/ready` and the metrics
/// name the parked mailbox; once the policy lets it in again, a probe brings it all back.
#[test]
fn a_mailbox_graph_refuses_is_parked_and_every_other_mailbox_keeps_flowing() {
    let world = world_with_a_denied_mailbox(20);
    let [healthy_a, denied, healthy_b] = common::MAILBOXES;
    let daemon = world.graph_daemon(&[
        // No polling: the refs below are the only Graph work, as after a burst of notifications.
        ("MS1__SESSION__AUTOSTART", "false"),
        ("MS1__GRAPH__PARK_RETRY_MIN_S", "1"),
        ("MS1__GRAPH__PARK_RETRY_MAX_S", "2"),
    ]);
    let started = std::time::Instant::now();
    // Interleaved in one chunk: the denied mailbox's refs sit between the healthy ones.
    let mut n = 0;
    for mb in [healthy_a, denied, healthy_b] {
        n += notify_all(&world, mb);
    }
    assert_eq!(n, 60);
    world.wait_delivered(40, MINUTE, &daemon);
    let healthy_after = started.elapsed();
    println!("BOUNDARY-FIGURE healthy mailboxes' 40 messages at MS4 after {healthy_after:?} while one mailbox answers 403");
    // Unrelated records keep flowing past the parked mailbox too; those of the denied mailbox
    // that need Graph (attachment metadata) are parked with it.
    world.load(100_000..100_300, |_| false);
    let parked_stream = format!("parked:{denied}");
    assert!(
        common::wait_until(MINUTE, || {
            let delivered = world.ms4.stats()["unique_records"].as_u64().unwrap_or(0);
            delivered + world.xlen(&parked_stream) == 360
        }),
        "{}",
        daemon.log_tail(20)
    );
    let parked = world.xlen(&parked_stream);
    assert!((20..=20 + 100).contains(&parked), "{parked}");
    let (code, ready) = daemon.ready();
    assert_eq!(
        code, 200,
        "the daemon is ready: only one mailbox is stalled: {ready}"
    );
    assert!(
        common::wait_until(Duration::from_secs(5), || {
            let (_, ready) = daemon.ready();
            let why = ready["degraded_sources"][format!("parked:{denied}")].to_string();
            why.contains(&format!("{parked} entries parked")) && why.contains("ErrorAccessDenied")
        }),
        "{:?}",
        daemon.ready()
    );
    assert!(common::wait_until(Duration::from_secs(5), || daemon
        .metric(&format!("ms1_parked_entries{{mailbox=\"{denied}\"}}"))
        == parked as f64));
    assert!(world.dead_letters().is_empty(), "nothing is dead-lettered");
    let denied_calls = world.graph().stats()["mailboxes"][denied]["denied_requests"]
        .as_u64()
        .unwrap();
    // Retries are probes: one entry at a time, not the whole backlog.
    assert!(
        denied_calls < parked + 30,
        "{denied_calls} requests on the denied mailbox"
    );

    world.graph().configure(json!({"deny_mailboxes": []}));
    world.wait_delivered(360, MINUTE, &daemon);
    assert!(common::wait_until(Duration::from_secs(10), || {
        let (_, ready) = daemon.ready();
        ready["degraded_sources"]
            .get(format!("parked:{denied}"))
            .is_none()
    }));
    assert_eq!(world.xlen(&parked_stream), 0);
    world.assert_drained();
    assert_eq!(world.ms4.stats()["duplicate_records"], 0);
}

/// Ids of the messages of a Graph simulator mailbox, and how many are still unread.
fn messages(world: &World, mailbox: &str) -> (Vec<String>, usize) {
    let all = world
        .graph()
        .get_json(&format!("/_sim/messages?mailbox={mailbox}"));
    let all = all.as_array().expect("the mailbox's messages");
    let unread = all.iter().filter(|m| m["isRead"] == false).count();
    let ids = all
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    (ids, unread)
}

/// Queues mark-read follow-ups as the MS4Sender does after a delivery; with `dead_consumer`,
/// a consumer of that name reads them first and never acknowledges them (a daemon that died
/// for good, e.g. a replaced container).
fn queue_mark_read(world: &World, mailbox: &str, ids: &[String], dead_consumer: Option<&str>) {
    let mut con = world.redis();
    let stream = format!("{}stream:markread", common::PREFIX);
    let _: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&stream)
        .arg("markers")
        .arg("0")
        .arg("MKSTREAM")
        .query(&mut con);
    for id in ids {
        let _: String = redis::cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg(follow_up::MAILBOX)
            .arg(mailbox)
            .arg(follow_up::MESSAGE_ID)
            .arg(id)
            .query(&mut con)
            .unwrap();
    }
    if let Some(consumer) = dead_consumer {
        let _: redis::Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg("markers")
            .arg(consumer)
            .arg("COUNT")
            .arg(10_000)
            .arg("STREAMS")
            .arg(&stream)
            .arg(">")
            .query(&mut con)
            .unwrap();
    }
}

/// Mark-read follow-ups that a daemon read and then died with for good are claimed by the
/// daemon that is left, after `redis.claim_idle_ms`: the messages end read.
#[test]
fn follow_ups_a_dead_daemon_left_are_claimed_and_done() {
    let world = World::with_graph(&["--rate-limit-per-min", "0"], &[]);
    let mailbox = common::MAILBOXES[0];
    world.mail(mailbox, 30);
    let (ids, unread) = messages(&world, mailbox);
    assert_eq!(unread, 30);
    queue_mark_read(&world, mailbox, &ids, Some("replaced-container-7f3a"));
    let daemon = world.graph_daemon(&[
        ("MS1__GRAPH__MODE", "unread"),
        ("MS1__SESSION__AUTOSTART", "false"),
        ("MS1__REDIS__CLAIM_IDLE_MS", "1000"),
    ]);
    let started = std::time::Instant::now();
    assert!(
        common::wait_until(MINUTE, || messages(&world, mailbox).1 == 0),
        "{} messages still unread\n{}",
        messages(&world, mailbox).1,
        daemon.log_tail(20)
    );
    println!(
        "BOUNDARY-FIGURE 30 stranded mark-read follow-ups done {:?} after the daemon started",
        started.elapsed()
    );
    assert!(common::wait_until(Duration::from_secs(10), || world
        .pending("markread", "markers")
        == 0));
    assert_eq!(world.xlen("markread"), 0);
}

/// One mailbox that refuses mark-read (403) never holds back the others: follow-ups that
/// arrive after its failures began are still done for every other mailbox; its own wait in
/// Redis, named in `/ready`, and are done once Graph lets them through.
#[test]
fn one_refusing_mailbox_never_holds_back_the_other_mailboxes_follow_ups() {
    let world = world_with_a_denied_mailbox(25);
    let [healthy_a, denied, healthy_b] = common::MAILBOXES;
    let daemon = world.graph_daemon(&[
        ("MS1__GRAPH__MODE", "unread"),
        ("MS1__SESSION__AUTOSTART", "false"),
    ]);
    let (denied_ids, _) = messages(&world, denied);
    queue_mark_read(&world, denied, &denied_ids, None);
    assert!(
        common::wait_until(MINUTE, || {
            let (_, ready) = daemon.ready();
            ready["degraded_sources"]
                .get(format!("graph_mark_read:{denied}"))
                .is_some()
        }),
        "the refusing mailbox is named in /ready: {:?}",
        daemon.ready()
    );
    let started = std::time::Instant::now();
    for mb in [healthy_a, healthy_b] {
        let (ids, _) = messages(&world, mb);
        queue_mark_read(&world, mb, &ids, None);
    }
    assert!(
        common::wait_until(MINUTE, || messages(&world, healthy_a).1 == 0
            && messages(&world, healthy_b).1 == 0),
        "healthy mailboxes still unread: {} / {}\n{}",
        messages(&world, healthy_a).1,
        messages(&world, healthy_b).1,
        daemon.log_tail(20)
    );
    println!(
        "BOUNDARY-FIGURE 50 follow-ups of healthy mailboxes done {:?} while another mailbox refuses",
        started.elapsed()
    );
    assert_eq!(messages(&world, denied).1, 25, "still unread, still queued");
    assert_eq!(world.pending("markread", "markers"), 25);
    assert!(world.dead_letters().is_empty());

    world.graph().configure(json!({"deny_mailboxes": []}));
    assert!(
        common::wait_until(MINUTE, || messages(&world, denied).1 == 0),
        "{}",
        daemon.log_tail(20)
    );
    assert!(common::wait_until(Duration::from_secs(10), || world
        .pending("markread", "markers")
        == 0));
    assert!(common::wait_until(Duration::from_secs(10), || {
        let (_, ready) = daemon.ready();
        ready["degraded_sources"]
            .get(format!("graph_mark_read:{denied}"))
            .is_none()
    }));
}

/// A mail that arrives first with a predictable Message-ID (`<INV-1043@vendor.example>`) cannot
/// make the genuine invoice with that Message-ID a silent duplicate: the genuine one is
/// delivered under the key and its content digest, and counted; true repeats (the same mail
/// again, or its copy in another mailbox) stay deduplicated.
#[test]
fn a_forged_message_id_cannot_suppress_the_genuine_invoice() {
    let world = World::with_graph(&["--rate-limit-per-min", "0"], &[]);
    let [first, second, _] = common::MAILBOXES;
    let daemon = world.graph_daemon(&[]);
    let imid = "<INV-1043@vendor.example>";
    let mail = |mailbox: &str, from: &str, subject: &str, sent: &str| {
        world.graph().post(
            "/_sim/mail",
            json!({"mailbox": mailbox, "count": 1, "set": {
                "internetMessageId": imid,
                "from": {"emailAddress": {"address": from}},
                "subject": subject,
                "sentDateTime": sent,
            }}),
        );
    };
    // The forgery comes first.
    mail(
        first,
        "billing@vendor-payments.example",
        "Invoice INV-1043",
        "2026-11-29T08:00:00Z",
    );
    world.wait_delivered(1, MINUTE, &daemon);
    // The genuine invoice, same Message-ID, other sender and date.
    mail(
        first,
        "billing@vendor.example",
        "Invoice INV-1043",
        "2026-11-29T09:30:00Z",
    );
    world.wait_delivered(2, MINUTE, &daemon);
    // True repeats: the genuine one again through a distribution list into another mailbox,
    // and the forgery again.
    mail(
        second,
        "Billing@Vendor.example",
        "Invoice INV-1043",
        "2026-11-29T09:30:00Z",
    );
    mail(
        first,
        "billing@vendor-payments.example",
        "Invoice INV-1043",
        "2026-11-29T08:00:00Z",
    );
    // A message after them shows the repeats were polled and processed.
    world.mail(second, 1);
    world.wait_delivered(3, MINUTE, &daemon);
    assert!(common::wait_until(Duration::from_secs(5), || daemon
        .metric("ms1_emails_duplicate_total")
        >= 2.0
        || world.xlen("inbound") == 0));
    std::thread::sleep(Duration::from_secs(2));
    let keys = world.ms4.keys();
    let ours: Vec<&String> = keys.iter().filter(|k| k.starts_with(imid)).collect();
    assert_eq!(
        ours.len(),
        2,
        "the forgery and the genuine invoice: {keys:?}"
    );
    assert!(ours.iter().any(|k| *k == imid), "{ours:?}");
    assert!(
        ours.iter().any(|k| k.starts_with(&format!("{imid}#"))),
        "{ours:?}"
    );
    assert_eq!(world.ms4.stats()["unique_records"], 3);
    assert_eq!(world.ms4.stats()["duplicate_records"], 0);
    assert_eq!(daemon.metric("ms1_key_conflicts_total"), 1.0);
    world.assert_drained();
}

/// Runs `ms1-ingestor check-config` with `env` on top of the built-in defaults; returns
/// whether it passed and what it printed on stderr.
fn check_config(env: &[(&str, &str)]) -> (bool, String) {
    let out = std::process::Command::new(common::BIN)
        .arg("check-config")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Settings that cannot work are refused at start with the key named: a batch larger than
/// MS4 accepts, plain http:// carrying credentials off the machine, an interval no timer can
/// hold. (Before, the daemon started and every batch came back 400, the key crossed the
/// network in clear text, or a timer overflowed and the daemon panicked.)
#[test]
fn settings_that_cannot_work_are_refused_at_start() {
    for (env, key) in [
        (("MS1__MS4__BATCH_SIZE", "500"), "ms4.batch_size"),
        (
            ("MS1__MS4__BASE_URL", "http://ms4.example.com"),
            "ms4.base_url",
        ),
        (
            ("MS1__GRAPH__BASE_URL", "http://graph.example.com/v1.0"),
            "graph.base_url",
        ),
        (
            ("MS1__GRAPH__AUTHORITY", "http://login.example.com/{tenant}"),
            "graph.authority",
        ),
        (
            ("MS1__GRAPH__POLL_INTERVAL_S", "18446744073709551"),
            "graph.poll_interval_s",
        ),
        (
            ("MS1__BREAKER__OPEN_MS", "18446744073709551615"),
            "breaker.open_ms",
        ),
    ] {
        let (ok, err) = check_config(&[env]);
        assert!(!ok, "{env:?} must be refused");
        assert!(err.contains(key), "{env:?}: {err}");
    }
    let (ok, err) = check_config(&[
        ("MS1__MS4__BASE_URL", "http://127.0.0.1:8400"),
        ("MS1__MS4__BATCH_SIZE", "100"),
    ]);
    assert!(ok, "{err}");
}

/// A fresh daemon exports its counters at 0 before its first message, so `rate()` and
/// absence alerts work from the start.
#[test]
fn counters_exist_at_zero_on_a_fresh_daemon() {
    let world = World::new(&["--rate-limit-per-min", "0"]);
    let daemon = world.daemon(&[]);
    let text = daemon.metrics();
    for series in [
        "ms1_emails_received_total 0",
        "ms1_emails_processed_total 0",
        "ms1_emails_delivered_total 0",
        "ms1_emails_duplicate_total 0",
        "ms1_key_conflicts_total 0",
        "ms1_emails_dead_lettered_total{stage=\"process\"} 0",
        "ms1_emails_dead_lettered_total{stage=\"deliver\"} 0",
        "ms1_ms4_requests_total{outcome=\"accepted\"} 0",
    ] {
        assert!(
            text.lines().any(|l| l == series),
            "missing `{series}` in:\n{text}"
        );
    }
}

/// A dead letter keeps what its message needs after delivery: replayed once MS4 accepts it,
/// the message is marked read (Graph unread mode); an IMAP entry keeps its UID, UIDVALIDITY
/// and INTERNALDATE through the dead-letter stream and back.
#[test]
fn a_replayed_dead_letter_still_gets_its_after_delivery_action() {
    let world = World::with_graph(&["--rate-limit-per-min", "0"], &[]);
    let mailbox = common::MAILBOXES[0];
    world.graph().post(
        "/_sim/mail",
        json!({"mailbox": mailbox, "count": 20, "invalid": 4}),
    );
    let daemon = world.graph_daemon(&[("MS1__GRAPH__MODE", "unread")]);
    world.wait_delivered(16, MINUTE, &daemon);
    assert!(common::wait_until(MINUTE, || world.dead_letters().len()
        == 4
        && messages(&world, mailbox).1 == 4));
    let dead = world.dead_letters();
    assert!(
        dead.iter().all(|d| d.get("carry.mid").is_some()),
        "{dead:?}"
    );
    world.ms4.configure(json!({"lenient_sender": true}));
    let (code, body) = common::post(
        &format!("{}/dlq/replay", daemon.control),
        &json!({"filter": {"stage": "deliver"}}).to_string(),
    );
    assert_eq!(code, 200, "{body}");
    world.wait_delivered(20, MINUTE, &daemon);
    assert!(
        common::wait_until(MINUTE, || messages(&world, mailbox).1 == 0),
        "replayed messages stay unread: {}",
        messages(&world, mailbox).1
    );

    // IMAP: an entry that cannot be a record (no From) keeps its UID and dates through the
    // dead-letter stream, its replay, and the dead letter it becomes again; in both forms of
    // the message: base64 (written by earlier versions, and for bytes that are not UTF-8) and
    // plain (its own bytes, `plain = 1`, which must come back with it or the replay would read
    // the message as base64).
    use base64::Engine;
    let raw = b"Subject: no sender\r\nMessage-ID: <x1@imap.example>\r\n\r\nbody\r\n";
    let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
    let mut con = world.redis();
    for (uid, payload, plain) in [("42", b64.as_str(), false), ("43", "", true)] {
        let mut xadd = redis::cmd("XADD");
        xadd.arg(format!("{}stream:inbound", common::PREFIX))
            .arg("*")
            .arg(inbound::SOURCE)
            .arg("imap")
            .arg(inbound::MAILBOX)
            .arg("gmail")
            .arg(inbound::FOLLOW_UP)
            .arg("1")
            .arg(inbound::UID)
            .arg(uid)
            .arg(inbound::UIDVALIDITY)
            .arg("7")
            .arg(inbound::INTERNAL_DATE)
            .arg("2026-11-29T10:00:00Z");
        if plain {
            xadd.arg(inbound::PLAIN)
                .arg("1")
                .arg(inbound::PAYLOAD)
                .arg(&raw[..]);
        } else {
            xadd.arg(inbound::PAYLOAD).arg(payload);
        }
        let _: String = xadd.query(&mut con).unwrap();
    }
    let imap_dead = || {
        let mut dead: Vec<_> = world
            .dead_letters()
            .into_iter()
            .filter(|d| d["source"] == "imap")
            .collect();
        dead.sort_by(|a, b| a["carry.uid"].cmp(&b["carry.uid"]));
        dead
    };
    assert!(common::wait_until(MINUTE, || imap_dead().len() == 2));
    let carried = |d: &std::collections::HashMap<String, String>| {
        [
            "carry.uid",
            "carry.uidvalidity",
            "carry.internal_date",
            "carry.mark_read",
            "carry.plain",
            "reason",
        ]
        .map(|k| d.get(k).cloned().unwrap_or_default())
    };
    let first: Vec<String> = imap_dead().iter().map(|d| d["entry_id"].clone()).collect();
    let before: Vec<_> = imap_dead().iter().map(carried).collect();
    let no_from = before[0][5].clone();
    assert!(no_from.to_lowercase().contains("from"), "{no_from}");
    assert_eq!(
        before,
        [
            ["42", "7", "2026-11-29T10:00:00Z", "1", "", &no_from],
            ["43", "7", "2026-11-29T10:00:00Z", "1", "1", &no_from]
        ]
        .map(|d| d.map(String::from))
    );
    // The plain one's dead letter shows the message itself.
    assert!(imap_dead()[1]["payload"].starts_with("Subject: no sender"));
    let (code, body) = common::post(
        &format!("{}/dlq/replay", daemon.control),
        &json!({"filter": {"stage": "process"}}).to_string(),
    );
    assert_eq!(code, 200, "{body}");
    assert!(
        common::wait_until(MINUTE, || {
            let d = imap_dead();
            d.len() == 2
                && d.iter()
                    .zip(&first)
                    .all(|(d, first)| d["entry_id"] != *first)
                && d.iter().map(carried).collect::<Vec<_>>() == before
        }),
        "{:?}",
        imap_dead()
    );
}
