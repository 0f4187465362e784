//! Microsoft Graph as the source: the daemon against the Graph simulator and the MS4
//! simulator over real HTTP, with a real redis-server.

mod common;

use common::{wait_until, World, MAILBOXES};
use serde_json::{json, Value};
use std::time::Duration;

const MINUTES: Duration = Duration::from_secs(180);

fn mailbox_stats(world: &World, mailbox: &str) -> Value {
    world.graph().stats()["mailboxes"][mailbox].clone()
}

fn sum_over_mailboxes(world: &World, field: &str) -> u64 {
    MAILBOXES
        .iter()
        .map(|m| mailbox_stats(world, m)[field].as_u64().unwrap_or(0))
        .sum()
}

fn max_over_mailboxes(world: &World, field: &str) -> u64 {
    MAILBOXES
        .iter()
        .map(|m| mailbox_stats(world, m)[field].as_u64().unwrap_or(0))
        .max()
        .unwrap_or(0)
}

fn assert_no_graph_violations(world: &World) {
    let stats = world.graph().stats();
    assert_eq!(stats["violations"], 0, "Graph contract violations: {stats}");
    assert!(max_over_mailboxes(world, "max_concurrent") <= 4, "{stats}");
}

#[test]
fn delta_mode_delivers_every_message_once_then_only_new_ones_and_survives_a_410() {
    let world = World::with_graph(
        &["--rate-limit-per-min", "0"],
        &["--messages-per-mailbox", "2000"],
    );
    let daemon = world.graph_daemon(&[("MS1__GRAPH__PAGE_SIZE", "200")]);
    world.wait_delivered(6_000, MINUTES, &daemon);
    let served_after_sync = sum_over_mailboxes(&world, "messages_served");
    assert_eq!(
        served_after_sync, 6_000,
        "the full sync reads every message once"
    );

    for mb in MAILBOXES {
        world.mail(mb, 500 / 3 + 1);
    }
    let more = 3 * (500 / 3 + 1);
    world.wait_delivered(6_000 + more, MINUTES, &daemon);
    let served = sum_over_mailboxes(&world, "messages_served");
    assert_eq!(
        served,
        6_000 + more,
        "the deltaLink fetched only the new messages"
    );

    // The cursors expire: the next poll gets 410 Gone and resyncs everything.
    world.graph().post("/_sim/expire-delta", json!({}));
    assert!(wait_until(MINUTES, || sum_over_mailboxes(
        &world,
        "delta_410"
    ) >= 3));
    for mb in MAILBOXES {
        world.mail(mb, 10);
    }
    world.wait_delivered(6_000 + more + 30, MINUTES, &daemon);
    assert_eq!(
        world.ms4.stats()["duplicate_records"],
        0,
        "a resync sends no repeats to MS4"
    );
    assert!(world.dead_letters().is_empty());
    world.assert_drained();
    assert_no_graph_violations(&world);
}

#[test]
fn unread_mode_marks_messages_read_only_after_ms4_accepted_them() {
    let world = World::with_graph(
        &["--rate-limit-per-min", "0"],
        &["--messages-per-mailbox", "2000"],
    );
    // MS4 refuses the key at first: nothing may be marked read meanwhile.
    world.ms4.configure(json!({"api_key": "rotated"}));
    let daemon = world.graph_daemon(&[
        ("MS1__GRAPH__MODE", "unread"),
        ("MS1__GRAPH__PAGE_SIZE", "250"),
        ("MS1__MS4__AUTH_PROBE_S", "1"),
    ]);
    assert!(wait_until(MINUTES, || world.outbound_records() == 6_000));
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        sum_over_mailboxes(&world, "marked_read"),
        0,
        "marked read before MS4 took it"
    );

    world.ms4.configure(json!({"api_key": common::API_KEY}));
    world.wait_delivered(6_000, MINUTES, &daemon);
    let all_read = wait_until(MINUTES, || {
        sum_over_mailboxes(&world, "marked_read") == 6_000
    });
    assert!(all_read, "{}", world.graph().stats());
    for mb in MAILBOXES {
        let unread = world.graph_unread(mb);
        assert_eq!(unread, 0, "{mb} still has unread messages");
    }
    assert_eq!(world.ms4.stats()["duplicate_records"], 0);
    assert_eq!(sum_over_mailboxes(&world, "patch_already_read"), 0);
    assert_eq!(world.graph().stats()["violations"], 0);
    world.assert_drained();
}

#[test]
fn webhooks_deliver_bursts_answer_fast_reject_wrong_client_state_and_keep_subscriptions_alive() {
    let world = World::with_graph(&["--rate-limit-per-min", "0"], &[]);
    let port = ms1_sim::redis_launcher::free_port().unwrap();
    let bind = format!("127.0.0.1:{port}");
    let public = format!("http://{bind}");
    let daemon = world.graph_daemon(&[
        ("MS1__CONTROL__BIND", &bind),
        ("MS1__WEBHOOK__ENABLED", "true"),
        ("MS1__WEBHOOK__PUBLIC_URL", &public),
        ("MS1__WEBHOOK__CLIENT_STATE", "webhook-secret-1234"),
        ("MS1__WEBHOOK__LIFETIME_MINUTES", "1"),
        ("MS1__WEBHOOK__RENEW_BEFORE_S", "50"),
        // Polling only as the safety net: everything below must come by notification.
        ("MS1__GRAPH__POLL_INTERVAL_S", "3600"),
    ]);
    let created = wait_until(Duration::from_secs(30), || {
        world.graph().stats()["subscriptions_created"].as_u64() == Some(3)
    });
    assert!(
        created,
        "{}\n{}",
        world.graph().stats(),
        daemon.log_tail(20)
    );
    assert_eq!(world.graph().stats()["validation_failed"], 0);

    for burst in 0..10 {
        for mb in MAILBOXES {
            world.mail(mb, if burst % 2 == 0 { 40 } else { 27 });
        }
    }
    let total = 5 * 3 * 40 + 5 * 3 * 27;
    assert!(total >= 1_000);
    world.wait_delivered(total, MINUTES, &daemon);
    let stats = world.graph().stats();
    assert_eq!(stats["notifications_slow"], 0, "{stats}");
    let answers = stats["notification_answers"].as_object().unwrap();
    assert!(
        answers.keys().all(|status| status == "202"),
        "every notification answered 202: {stats}"
    );
    assert!(stats["notification_latency_ms"]["max"].as_f64().unwrap() < 3_000.0);

    // A notification with the wrong clientState is refused and nothing is enqueued for it.
    let inbound_before = world.xlen("inbound");
    let delivered_before = world.ms4.stats()["unique_records"].as_u64().unwrap();
    world.graph().post(
        "/_sim/notify",
        json!({"mailbox": MAILBOXES[0], "client_state": "forged"}),
    );
    assert!(wait_until(Duration::from_secs(10), || {
        daemon.metric("ms1_webhook_notifications_total{outcome=\"rejected_client_state\"") >= 1.0
    }));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(world.xlen("inbound"), inbound_before);
    assert_eq!(
        world.ms4.stats()["unique_records"].as_u64().unwrap(),
        delivered_before
    );

    // Subscriptions live one minute and are renewed 50 s before expiry.
    assert!(wait_until(Duration::from_secs(30), || {
        world.graph().stats()["renewals"].as_u64().unwrap_or(0) >= 3
    }));
    assert_eq!(world.graph().stats()["expired_subscriptions"], 0);

    // Lifecycle: removed → a new subscription and a catch-up poll; missed → a poll.
    let polls = sum_over_mailboxes(&world, "delta_requests");
    world.graph().post(
        "/_sim/lifecycle",
        json!({"mailbox": MAILBOXES[1], "event": "subscriptionRemoved"}),
    );
    assert!(wait_until(Duration::from_secs(20), || {
        world.graph().stats()["subscriptions_created"].as_u64() == Some(4)
    }));
    world.graph().post(
        "/_sim/lifecycle",
        json!({"mailbox": MAILBOXES[2], "event": "missed"}),
    );
    assert!(wait_until(Duration::from_secs(20), || {
        sum_over_mailboxes(&world, "delta_requests") >= polls + 2
    }));
    let renewals = world.graph().stats()["renewals"].as_u64().unwrap();
    world.graph().post(
        "/_sim/lifecycle",
        json!({"mailbox": MAILBOXES[0], "event": "reauthorizationRequired"}),
    );
    assert!(wait_until(Duration::from_secs(20), || {
        world.graph().stats()["renewals"].as_u64().unwrap() > renewals
    }));
    assert_eq!(world.ms4.stats()["duplicate_records"], 0);
    assert_eq!(world.ms4.stats()["records_missing_attachments"], 0);
    assert_no_graph_violations(&world);
}

#[test]
fn throttling_is_honoured_per_mailbox_with_no_request_inside_a_retry_after() {
    let world = World::with_graph(
        &["--rate-limit-per-min", "0"],
        &[
            "--messages-per-mailbox",
            "900",
            "--window-limit",
            "60",
            "--window-ms",
            "3000",
        ],
    );
    let daemon = world.graph_daemon(&[
        ("MS1__GRAPH__PAGE_SIZE", "25"),
        // The daemon believes in Graph's real budget: the simulator's tighter one causes 429s.
        ("MS1__GRAPH__REQUESTS_PER_WINDOW", "10000"),
    ]);
    for mb in MAILBOXES {
        world.graph().post(
            "/_sim/throttle",
            json!({"mailbox": mb, "count": 5, "retry_after_s": 2}),
        );
    }
    world.wait_delivered(2_700, MINUTES, &daemon);
    let stats = world.graph().stats();
    assert!(
        sum_over_mailboxes(&world, "throttled") > 0,
        "no throttling provoked: {stats}"
    );
    assert_eq!(
        sum_over_mailboxes(&world, "requests_during_retry_after"),
        0,
        "{stats}"
    );
    assert_no_graph_violations(&world);
    world.assert_drained();
}

#[test]
fn tokens_expiring_every_few_seconds_cause_no_401_storm_and_no_failed_delivery() {
    let world = World::with_graph(
        &["--rate-limit-per-min", "0"],
        &["--messages-per-mailbox", "300", "--token-lifetime-s", "3"],
    );
    let daemon = world.graph_daemon(&[("MS1__GRAPH__PAGE_SIZE", "10")]);
    world.wait_delivered(900, MINUTES, &daemon);
    // Keep mail coming for a while so tokens roll over several times.
    for _ in 0..4 {
        for mb in MAILBOXES {
            world.mail(mb, 20);
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    world.wait_delivered(900 + 4 * 60, MINUTES, &daemon);
    let stats = world.graph().stats();
    assert!(stats["tokens_issued"].as_u64().unwrap() >= 3, "{stats}");
    assert_eq!(stats["expired_token_used"], 0, "{stats}");
    assert!(stats["unauthorized"].as_u64().unwrap() <= 2, "{stats}");
    assert!(world.dead_letters().is_empty());
}

#[test]
fn sigkill_during_a_poll_loses_nothing_and_refetches_at_most_one_page() {
    let world = World::with_graph(
        &["--rate-limit-per-min", "0"],
        &["--messages-per-mailbox", "3000"],
    );
    world.graph().configure(json!({"latency_ms": 40}));
    let page = 100u64;
    let mut daemon = world.graph_daemon(&[
        ("MS1__GRAPH__MAILBOXES", MAILBOXES[0]),
        ("MS1__GRAPH__PAGE_SIZE", "100"),
    ]);
    assert!(wait_until(MINUTES, || {
        mailbox_stats(&world, MAILBOXES[0])["messages_served"]
            .as_u64()
            .unwrap_or(0)
            >= 1_000
    }));
    daemon.restart(); // SIGKILL mid-sync, start again
    world.graph().configure(json!({"latency_ms": 0}));
    world.wait_delivered(3_000, MINUTES, &daemon);
    let served = mailbox_stats(&world, MAILBOXES[0])["messages_served"]
        .as_u64()
        .unwrap();
    assert!(
        served <= 3_000 + page,
        "re-fetched {} messages",
        served - 3_000
    );
    // The kill may also land on batches MS4 had accepted but the daemon had not yet
    // acknowledged: those are re-sent (at-least-once) and MS4 counts them as duplicates — at
    // most the batches in flight (4 × 50).
    let duplicates = world.ms4.stats()["duplicate_records"].as_u64().unwrap();
    assert!(duplicates <= 4 * 50, "{duplicates} duplicates at MS4");
    world.assert_drained();
}

#[test]
fn backpressure_stops_fetching_while_ms4_is_behind_and_resumes_after() {
    let world = World::with_graph(
        &["--rate-limit-per-min", "0"],
        &["--messages-per-mailbox", "1000"],
    );
    world.ms4.configure(json!({"outage": true}));
    let daemon = world.graph_daemon(&[
        ("MS1__GRAPH__PAGE_SIZE", "50"),
        ("MS1__PIPELINE__MAX_BACKLOG", "200"),
        ("MS1__PIPELINE__READ_CHUNK", "50"),
        ("MS1__BREAKER__OPEN_MS", "500"),
    ]);
    // The backlog fills up to the limit, then polling pauses.
    assert!(wait_until(MINUTES, || world.outbound_records() >= 200));
    std::thread::sleep(Duration::from_secs(3));
    let served = sum_over_mailboxes(&world, "messages_served");
    let queued = world.xlen("inbound") + world.outbound_records();
    assert!(
        served < 3_000 && queued <= 200 + 3 * 50 + 50,
        "fetching went on while MS4 was down: {served} served, {queued} queued"
    );
    world.ms4.configure(json!({"outage": false}));
    world.wait_delivered(3_000, MINUTES, &daemon);
    assert_eq!(world.ms4.stats()["duplicate_records"], 0);
    world.assert_drained();
}

#[test]
fn a_national_cloud_daemon_signs_in_for_its_own_clouds_graph() {
    // The simulator plays Microsoft 365 GCC High (US Government L4): Entra issues app-only
    // tokens there only for https://graph.microsoft.us/.default.
    let world = World::with_graph(
        &["--rate-limit-per-min", "0"],
        &["--messages-per-mailbox", "40", "--cloud", "usgov"],
    );
    // A daemon left on the global cloud asks for the global Graph scope: refused, with the
    // reason in /ready, and nothing is fetched.
    let mut global = world.graph_daemon(&[]);
    assert!(
        wait_until(MINUTES, || {
            let (_, ready) = global.ready();
            MAILBOXES.iter().all(|m| {
                ready["degraded_sources"][m]
                    .as_str()
                    .is_some_and(|why| why.contains("invalid_resource"))
            })
        }),
        "every mailbox names the refused scope: {:?}",
        global.ready()
    );
    assert_eq!(sum_over_mailboxes(&world, "messages_served"), 0);
    // A drain gives the mailboxes' leases back at once.
    global.terminate();

    // graph.cloud = "usgov": the GCC High scope, and the mail flows (the hosts stay explicit,
    // as behind a proxy: the scope follows the cloud, not the host).
    let daemon = world.graph_daemon(&[("MS1__GRAPH__CLOUD", "usgov")]);
    world.wait_delivered(120, MINUTES, &daemon);
    assert!(world.dead_letters().is_empty());
    assert_no_graph_violations(&world);
}

#[test]
fn a_poll_skips_a_message_a_webhook_ref_already_delivered() {
    let world = World::with_graph(&["--rate-limit-per-min", "0"], &[]);
    let daemon = world.graph_daemon(&[("MS1__SESSION__AUTOSTART", "false")]);
    let mailbox = MAILBOXES[0];
    world.mail(mailbox, 1);
    let listed = world
        .graph()
        .get_json(&format!("/_sim/messages?mailbox={mailbox}"));
    let id = listed["messages"][0]["id"]
        .as_str()
        .or_else(|| listed[0]["id"].as_str())
        .unwrap_or_else(|| panic!("a message id in {listed}"))
        .to_string();
    // A webhook ref gets the message to MS4 first (no session: no poll yet).
    let _: String = redis::cmd("XADD")
        .arg("ms1:stream:inbound")
        .arg("*")
        .arg("source")
        .arg("graph")
        .arg("kind")
        .arg("ref")
        .arg("mailbox")
        .arg(mailbox)
        .arg("message_id")
        .arg(&id)
        .query(&mut world.redis())
        .unwrap();
    world.wait_delivered(1, MINUTES, &daemon);
    // Then a poll meets the same message: it is not queued again.
    let (code, body) = common::post(
        &format!("{}/session/start", daemon.control),
        r#"{"polling_mode":"manual"}"#,
    );
    assert_eq!(code, 200, "{body}");
    common::post(&format!("{}/polling/trigger", daemon.control), "{}");
    assert!(
        wait_until(MINUTES, || mailbox_stats(&world, mailbox)["delta_requests"]
            .as_u64()
            .unwrap_or(0)
            >= 1),
        "the mailbox was polled"
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(daemon.metric("ms1_emails_polled_total{mode=\"delta\""), 0.0);
    assert_eq!(daemon.metric("ms1_emails_duplicate_total"), 0.0);
    assert_eq!(world.ms4.stats()["unique_records"], 1);
    assert_eq!(world.ms4.stats()["duplicate_records"], 0);
}

#[test]
fn the_page_script_queues_a_key_once_per_page_and_honours_both_marks() {
    // poll_page.lua itself, on a real Redis: one message twice on a page (the second copy
    // must see the intake mark the first one set in the same script), one the processor
    // delivered another way (its idempotency mark, same digest: skipped),
    // one whose mark a version before left as a key of its own (same digest: skipped), one
    // reusing a delivered Message-ID with other content (another digest: queued), and one past
    // 64 KiB (counted as large: store::large).
    let world = World::new(&[]);
    let mut redis = world.redis();
    let _: () = redis::cmd("SET")
        .arg("ms1:lease:poller:mb")
        .arg("token")
        .query(&mut redis)
        .unwrap();
    for (key, digest) in [("<seen@x>", "d-seen"), ("<reused@x>", "d-old")] {
        let _: () = redis::cmd("HSET")
            .arg("ms1:marks")
            .arg(key)
            .arg(digest)
            .query(&mut redis)
            .unwrap();
    }
    let _: () = redis::cmd("SET")
        .arg("ms1:seen:<legacy@x>")
        .arg("d-legacy")
        .query(&mut redis)
        .unwrap();
    let page = [
        ("<twice@x>", "d-twice"),
        ("<twice@x>", "d-twice"),
        ("<seen@x>", "d-seen"),
        ("<legacy@x>", "d-legacy"),
        ("<reused@x>", "d-new"),
        ("<big@x>", "d-big"),
    ];
    let script = redis::Script::new(concat!(
        "local LARGE_ENTRY_BYTES = 65536\n",
        include_str!("../actors/src/store/large.lua"),
        include_str!("../actors/src/store/copies_ended.lua"),
        include_str!("../actors/src/store/poll_page.lua")
    ));
    let mut invocation = script.prepare_invoke();
    invocation
        .key("ms1:lease:poller:mb")
        .key("ms1:stream:inbound")
        .key("ms1:cursor:mb")
        .key("ms1:history:intake:0")
        .key("ms1:stream:markread")
        .key("ms1:followups:waiting")
        .key("ms1:stream:inbound:large")
        .key("ms1:marks")
        .arg("token")
        .arg("http://graph.example/next")
        .arg("sync")
        .arg(0)
        .arg("mb")
        .arg("")
        .arg(3600)
        .arg(0)
        .arg("")
        .arg("")
        .arg("")
        .arg("1");
    for (key, digest) in page {
        invocation
            .key(format!("ms1:queued:{key}"))
            .key(format!("ms1:seen:{key}"))
            .arg(if key == "<big@x>" {
                // Past 64 KiB: counted as large, for the processor's plain reads.
                format!(r#"{{"id":"{key}","body":"{}"}}"#, "x".repeat(70_000))
            } else {
                format!(r#"{{"id":"{key}"}}"#)
            })
            .arg(digest)
            .arg(key)
            .arg(format!("id-{key}"));
    }
    let added: i64 = invocation.invoke(&mut redis).unwrap();
    assert_eq!(added, 3, "<twice@x> once, <reused@x> and <big@x>");
    assert_eq!(world.xlen("inbound"), 3);
    let large: Option<u64> = redis::cmd("GET")
        .arg("ms1:stream:inbound:large")
        .query(&mut redis)
        .unwrap();
    assert_eq!(
        large,
        Some(1),
        "the large entry is counted, the small ones not"
    );
    let queued: Vec<Option<String>> = redis::cmd("MGET")
        .arg("ms1:queued:<twice@x>")
        .arg("ms1:queued:<seen@x>")
        .arg("ms1:queued:<legacy@x>")
        .arg("ms1:queued:<reused@x>")
        .query(&mut redis)
        .unwrap();
    assert_eq!(
        queued,
        vec![Some("d-twice id-<twice@x>".to_string()), None, None, None]
    );
}

/// Issue 15: in unread mode a second copy of a delivered message (the same Message-ID, sender,
/// subject and date under another Graph id: the mail reached the mailbox again, or through a
/// distribution list) is not delivered again but ends read like its first copy. Before: the
/// poll skipped it at intake and it stayed unread for good, listed again by every poll.
#[test]
fn a_second_copy_of_a_delivered_message_ends_read_in_unread_mode() {
    let world = World::with_graph(&["--rate-limit-per-min", "0"], &[]);
    let mailbox = MAILBOXES[0];
    world
        .graph()
        .post("/_sim/mail", json!({"mailbox": mailbox, "count": 10}));
    let daemon = world.graph_daemon(&[
        ("MS1__GRAPH__MODE", "unread"),
        ("MS1__GRAPH__MAILBOXES", mailbox),
        ("MS1__GRAPH__POLL_INTERVAL_S", "1"),
    ]);
    world.wait_delivered(10, MINUTES, &daemon);
    let listed = || world.graph_messages(mailbox);
    let unread = || world.graph_unread(mailbox);
    assert!(wait_until(MINUTES, || unread() == 0), "first copies read");

    // The same ten messages again, under new Graph ids.
    world.graph().post(
        "/_sim/mail",
        json!({"mailbox": mailbox, "count": 10, "start": 0}),
    );
    assert_eq!(listed().len(), 20);
    assert!(
        wait_until(MINUTES, || unread() == 0),
        "second copies still unread: {} of 20\n{}",
        unread(),
        daemon.log_tail(20)
    );
    let stats = world.ms4.stats();
    assert_eq!(stats["unique_records"], 10, "{stats}");
    assert_eq!(
        stats["duplicate_records"], 0,
        "no copy reached MS4 again: {stats}"
    );
    world.assert_drained();
}

/// Issue 15: with `graph.after_dead_letter = "mark_read"` (unread mode) a message MS4 refuses
/// ends read, so it leaves the unread listing; it is dead-lettered exactly once however often
/// the mailbox is polled, a later copy of it ends read too, and replayed once MS4 accepts it, it
/// is delivered. Before: the key was unknown, and refused messages (and their copies) stayed
/// unread for good.
#[test]
fn a_refused_message_ends_read_and_dead_lettered_once_with_after_dead_letter_mark_read() {
    let world = World::with_graph(&["--rate-limit-per-min", "0"], &[]);
    let mailbox = MAILBOXES[0];
    world.graph().post(
        "/_sim/mail",
        json!({"mailbox": mailbox, "count": 20, "invalid": 4}),
    );
    let daemon = world.graph_daemon(&[
        ("MS1__GRAPH__MODE", "unread"),
        ("MS1__GRAPH__MAILBOXES", mailbox),
        ("MS1__GRAPH__POLL_INTERVAL_S", "1"),
        ("MS1__GRAPH__AFTER_DEAD_LETTER", "mark_read"),
    ]);
    world.wait_delivered(16, MINUTES, &daemon);
    let unread = || world.graph_unread(mailbox);
    assert!(
        wait_until(MINUTES, || unread() == 0),
        "refused messages still unread: {}\n{}",
        unread(),
        daemon.log_tail(20)
    );
    // A few polls later, each refused message is still dead-lettered once.
    std::thread::sleep(Duration::from_secs(3));
    let dead = world.dead_letters();
    assert_eq!(dead.len(), 4, "{dead:?}");
    let keys: std::collections::BTreeSet<&str> = dead.iter().map(|d| d["key"].as_str()).collect();
    assert_eq!(keys.len(), 4, "{dead:?}");
    assert!(dead.iter().all(|d| d["stage"] == "deliver"), "{dead:?}");
    assert_eq!(world.xlen("markread"), 0, "every end applied");

    // The same 20 again under new Graph ids (the mail came twice): no copy is sent again or
    // dead-lettered again, and the refused ones' copies end read as their first copies did.
    world.graph().post(
        "/_sim/mail",
        json!({"mailbox": mailbox, "count": 20, "start": 0, "invalid": 4}),
    );
    assert!(
        wait_until(MINUTES, || unread() == 0),
        "copies still unread: {}\n{}",
        unread(),
        daemon.log_tail(20)
    );
    assert_eq!(world.dead_letters().len(), 4);
    assert_eq!(world.ms4.stats()["unique_records"], 16);

    // MS4 relaxes its rule; the operator replays them: delivered, once each.
    world.ms4.configure(json!({"lenient_sender": true}));
    let (code, body) = common::post(
        &format!("{}/dlq/replay", daemon.control),
        &json!({"filter": {"stage": "deliver"}}).to_string(),
    );
    assert_eq!(code, 200, "{body}");
    world.wait_delivered(20, MINUTES, &daemon);
    assert!(wait_until(MINUTES, || world.xlen("markread") == 0));
    assert!(
        world.dead_letters().is_empty(),
        "{:?}",
        world.dead_letters()
    );
    assert_eq!(unread(), 0);
    assert_eq!(world.ms4.stats()["duplicate_records"], 0);
    world.assert_drained();
}

/// Issue 15: with `graph.after_dead_letter = "move"` a message MS4 refuses ends in the folder
/// `graph.dead_letter_move_to` names (here by id, as an operator finds it; a well-known name
/// such as `junkemail` works alike), out of the inbox, dead-lettered exactly once; replayed
/// once MS4 accepts it, it is delivered, and the mark read due after delivery finds nothing at
/// its old id (404: done) instead of failing or dead-lettering in a loop. Before: the keys were
/// unknown, and refused messages stayed in the inbox, unread.
#[test]
fn a_refused_message_ends_in_the_dead_letter_folder_once_and_a_replay_delivers_it() {
    let world = World::with_graph(&["--rate-limit-per-min", "0"], &[]);
    let mailbox = MAILBOXES[0];
    let folder = world.graph().post(
        "/_sim/folders",
        json!({"mailbox": mailbox, "displayName": "Ingestion failed"}),
    )["id"]
        .as_str()
        .unwrap()
        .to_string();
    world.graph().post(
        "/_sim/mail",
        json!({"mailbox": mailbox, "count": 20, "invalid": 4}),
    );
    let daemon = world.graph_daemon(&[
        ("MS1__GRAPH__MODE", "unread"),
        ("MS1__GRAPH__MAILBOXES", mailbox),
        ("MS1__GRAPH__POLL_INTERVAL_S", "1"),
        ("MS1__GRAPH__AFTER_DEAD_LETTER", "move"),
        ("MS1__GRAPH__DEAD_LETTER_MOVE_TO", &folder),
    ]);
    world.wait_delivered(16, MINUTES, &daemon);
    let listed = |folder: &str| world.graph_messages_in(mailbox, folder);
    let ended = wait_until(MINUTES, || {
        let inbox = listed("inbox");
        inbox.len() == 16 && inbox.iter().all(|m| m["isRead"] == true) && listed(&folder).len() == 4
    });
    assert!(
        ended,
        "inbox {} / failed {}\n{}",
        listed("inbox").len(),
        listed(&folder).len(),
        daemon.log_tail(20)
    );
    // A few polls later, each refused message is still dead-lettered once.
    std::thread::sleep(Duration::from_secs(3));
    let dead = world.dead_letters();
    assert_eq!(dead.len(), 4, "{dead:?}");
    assert!(dead.iter().all(|d| d["stage"] == "deliver"), "{dead:?}");
    assert_eq!(world.xlen("markread"), 0, "every end applied");
    assert_eq!(
        daemon.metric("ms1_graph_dead_letters_moved_total"),
        4.0,
        "{}",
        daemon.metrics()
    );

    world.ms4.configure(json!({"lenient_sender": true}));
    let (code, body) = common::post(
        &format!("{}/dlq/replay", daemon.control),
        &json!({"filter": {"stage": "deliver"}}).to_string(),
    );
    assert_eq!(code, 200, "{body}");
    world.wait_delivered(20, MINUTES, &daemon);
    assert!(wait_until(MINUTES, || world.xlen("markread") == 0
        && world.pending("markread", "markers") == 0));
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        world.dead_letters().is_empty(),
        "{:?}",
        world.dead_letters()
    );
    assert_eq!(listed(&folder).len(), 4, "left where the end put them");
    assert_eq!(world.ms4.stats()["duplicate_records"], 0);
    world.assert_drained();
}
