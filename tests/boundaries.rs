//! Where a real deployment breaks (issue 10): redirects in front of MS4, one mailbox Graph
//! refuses, follow-ups a dead daemon left, forged Message-IDs, settings that cannot work,
//! replays that keep their after-delivery action, counters that exist from the start.
//! Every test runs the real daemon against a real redis-server and the simulators over HTTP.

mod common;

use common::{Sim, World};
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
            .arg("source")
            .arg("graph")
            .arg("kind")
            .arg("ref")
            .arg("mailbox")
            .arg(mailbox)
            .arg("message_id")
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
    let world = World::with_graph(&["--rate-limit-per-min", "0"], &[]);
    let [healthy_a, denied, healthy_b] = common::MAILBOXES;
    for mb in common::MAILBOXES {
        world.mail(mb, 20);
    }
    world.graph().configure(json!({"deny_mailboxes": [denied]}));
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
            .arg("mailbox")
            .arg(mailbox)
            .arg("message_id")
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
    let world = World::with_graph(&["--rate-limit-per-min", "0"], &[]);
    let [healthy_a, denied, healthy_b] = common::MAILBOXES;
    for mb in common::MAILBOXES {
        world.mail(mb, 25);
    }
    world.graph().configure(json!({"deny_mailboxes": [denied]}));
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
                .get(format!("read_marker:{denied}"))
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
            .get(format!("read_marker:{denied}"))
            .is_none()
    }));
}
