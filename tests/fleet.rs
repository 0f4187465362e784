//! A fleet of daemons on one Redis sharing many Graph mailboxes: the leases spread over the
//! daemons (each about a third), a daemon started later takes its share, and a daemon killed
//! with SIGKILL has all its mailboxes taken over by the others, with nothing lost. Who holds a
//! mailbox is read from its lease (`lease:poller:{mailbox}` holds `{consumer}:{uuid}`).

mod common;

use common::{wait_until, Daemon, World, PREFIX};
use serde_json::json;
use std::collections::BTreeMap;
use std::time::Duration;

/// Generous: the speed of a takeover is for the benchmarks, not for this test.
const PATIENCE: Duration = Duration::from_secs(120);

/// The Graph world: `count` mailboxes with `per` messages each.
fn world(count: usize, per: u64) -> (World, Vec<String>) {
    let boxes: Vec<String> = (0..count)
        .map(|i| format!("invoices-{i}@contoso.example"))
        .collect();
    let list = boxes.join(",");
    let per = per.to_string();
    let w = World::with_graph(
        &["--rate-limit-per-min", "0"],
        &["--mailboxes", &list, "--messages-per-mailbox", &per],
    );
    (w, boxes)
}

/// A daemon of the fleet named `name` (its consumer name, which its lease tokens start with).
fn daemon(w: &World, boxes: &[String], name: &str) -> Daemon {
    let list = boxes.join(",");
    let env = w.graph_env();
    let mut all: Vec<(&str, &str)> = env
        .iter()
        .filter(|(k, _)| k != "MS1__GRAPH__MAILBOXES")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    all.extend([
        ("MS1__GRAPH__MAILBOXES", list.as_str()),
        ("MS1__REDIS__CONSUMER", name),
        ("MS1__GRAPH__LEASE_TTL_S", "3"),
        ("MS1__GRAPH__POLL_INTERVAL_S", "2"),
    ]);
    w.daemon(&all)
}

/// Each mailbox's holder: the daemon name its lease token starts with (`None`: free).
fn holders(w: &World, boxes: &[String]) -> BTreeMap<String, Option<String>> {
    let mut con = w.redis();
    boxes
        .iter()
        .map(|mb| {
            let token: Option<String> = redis::cmd("GET")
                .arg(format!("{PREFIX}lease:poller:{mb}"))
                .query(&mut con)
                .unwrap();
            let daemon = token.and_then(|t| t.split(':').next().map(str::to_string));
            (mb.clone(), daemon)
        })
        .collect()
}

/// How many mailboxes each daemon holds (free ones under `-`).
fn shares(held: &BTreeMap<String, Option<String>>) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for h in held.values() {
        *out.entry(h.clone().unwrap_or_else(|| "-".into()))
            .or_insert(0) += 1;
    }
    out
}

/// Waits until every mailbox is held, and each of `names` holds at least `min` of them and
/// nobody else holds any; panics with the shares seen last.
fn wait_for_spread(w: &World, boxes: &[String], names: &[&str], min: usize, what: &str) {
    let mut last = BTreeMap::new();
    let spread = wait_until(PATIENCE, || {
        last = shares(&holders(w, boxes));
        last.keys().all(|k| names.contains(&k.as_str()))
            && names
                .iter()
                .all(|n| last.get(*n).copied().unwrap_or(0) >= min)
    });
    assert!(
        spread,
        "{what}: shares {last:?} (want each of {names:?} ≥ {min} of {})",
        boxes.len()
    );
    eprintln!("FLEET {what}: shares {last:?}");
}

#[test]
fn three_daemons_share_the_mailboxes_a_late_one_takes_its_share_and_a_killed_ones_are_taken_over() {
    let (w, boxes) = world(72, 5);
    let sixth = boxes.len() / 6;
    let a = daemon(&w, &boxes, "daemon-a");
    let b = daemon(&w, &boxes, "daemon-b");
    wait_for_spread(
        &w,
        &boxes,
        &["daemon-a", "daemon-b"],
        boxes.len() / 4,
        "two daemons",
    );

    // A third daemon, started later, takes its share from the two.
    let mut c = daemon(&w, &boxes, "daemon-c");
    let all = ["daemon-a", "daemon-b", "daemon-c"];
    wait_for_spread(&w, &boxes, &all, sixth, "three daemons");
    let total = boxes.len() as u64 * 5;
    w.wait_delivered(total, PATIENCE, &a);

    // SIGKILL one: the other two hold every mailbox again, and mail sent after the kill is
    // delivered (only a poller that took over can bring it).
    c.kill();
    wait_for_spread(
        &w,
        &boxes,
        &["daemon-a", "daemon-b"],
        sixth,
        "after the kill",
    );
    for mb in &boxes {
        w.graph()
            .post("/_sim/mail", json!({"mailbox": mb, "count": 2}));
    }
    let total = total + boxes.len() as u64 * 2;
    w.wait_delivered(total, PATIENCE, &b);
    w.assert_drained();
    let g = w.graph().stats();
    for mb in &boxes {
        assert_eq!(
            g["mailboxes"][mb]["poller_interleavings"], 0,
            "one poller at a time on {mb}: {}",
            g["mailboxes"][mb]
        );
    }
    assert_eq!(g["violations"], 0, "{}", g["totals"]);
    assert!(w.dead_letters().is_empty());
}

const CLIENT_STATE: &str = "fleet-client-state-1234";

/// A fleet daemon with webhooks on, its public URL its own control listener (the simulator
/// validates it while creating a subscription), polling only as a far-away safety net.
fn webhook_daemon(w: &World, boxes: &[String], name: &str) -> Daemon {
    let bind = format!(
        "127.0.0.1:{}",
        ms1_sim::redis_launcher::free_port().unwrap()
    );
    let public = format!("http://{bind}");
    let list = boxes.join(",");
    let env = w.graph_env();
    let mut all: Vec<(&str, &str)> = env
        .iter()
        .filter(|(k, _)| k != "MS1__GRAPH__MAILBOXES" && k != "MS1__GRAPH__POLL_INTERVAL_S")
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    all.extend([
        ("MS1__GRAPH__MAILBOXES", list.as_str()),
        ("MS1__REDIS__CONSUMER", name),
        ("MS1__GRAPH__LEASE_TTL_S", "3"),
        ("MS1__GRAPH__POLL_INTERVAL_S", "3600"),
        ("MS1__CONTROL__BIND", bind.as_str()),
        ("MS1__WEBHOOK__ENABLED", "true"),
        ("MS1__WEBHOOK__PUBLIC_URL", public.as_str()),
        ("MS1__WEBHOOK__CLIENT_STATE", CLIENT_STATE),
    ]);
    w.daemon(&all)
}

fn subscription_id(w: &World, mailbox: &str) -> Option<String> {
    redis::cmd("HGET")
        .arg(format!("{PREFIX}webhook:subscription:{mailbox}"))
        .arg("id")
        .query(&mut w.redis())
        .unwrap()
}

#[test]
fn each_mailbox_has_one_subscription_kept_by_its_lease_holder_and_any_daemon_takes_its_notifications(
) {
    let (w, boxes) = world(12, 0);
    let names = ["daemon-a", "daemon-b"];
    let fleet = [
        webhook_daemon(&w, &boxes, names[0]),
        webhook_daemon(&w, &boxes, names[1]),
    ];
    // Each holds some (12 mailboxes over two random ids: the spread is the other test's).
    wait_for_spread(&w, &boxes, &names, 1, "two webhook daemons");
    // One subscription per mailbox for the fleet: a mailbox handed over keeps the one its
    // first holder created (the new holder adopts it).
    let created = || {
        w.graph().stats()["subscriptions_created"]
            .as_u64()
            .unwrap_or(0)
    };
    let all_stored = || boxes.iter().all(|mb| subscription_id(&w, mb).is_some());
    assert!(
        wait_until(PATIENCE, || all_stored() && created() >= boxes.len() as u64),
        "{}",
        w.graph().stats()
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(created(), boxes.len() as u64, "{}", w.graph().stats());

    // A notification about a mailbox daemon-a keeps, POSTed to daemon-b (as a load balancer
    // would): b resolves the subscription id through Redis and queues the message.
    let held = holders(&w, &boxes);
    let (mailbox, _) = held
        .iter()
        .find(|(_, h)| h.as_deref() == Some("daemon-a"))
        .expect("daemon-a holds a mailbox");
    let sub = subscription_id(&w, mailbox).unwrap();
    w.mail(mailbox, 1);
    let messages = w
        .graph()
        .get_json(&format!("/_sim/messages?mailbox={mailbox}"));
    let id = messages[0]["id"]
        .as_str()
        .expect("the message's id")
        .to_string();
    let body = json!({"value": [{
        "subscriptionId": sub, "changeType": "created", "clientState": CLIENT_STATE,
        "resource": format!("Users/guid/Messages/{id}"),
        "resourceData": {"@odata.type": "#Microsoft.Graph.Message", "id": id},
    }]});
    let (status, answer) = common::post(
        &format!("{}/webhook/notifications", fleet[1].control),
        &body.to_string(),
    );
    assert_eq!(status, 202, "{answer}");
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(answer["accepted"], 1, "{answer}");
    assert_eq!(answer["rejected"], 0, "{answer}");
    w.wait_delivered(1, PATIENCE, &fleet[1]);
}

/// CPU seconds (user + system) a process used so far, from `/proc/{pid}/stat`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after the name.
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    ticks / 100.0
}

/// Resident memory of a process in MiB.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Redis commands executed since the last `CONFIG RESETSTAT`, by command.
fn command_calls(w: &World) -> BTreeMap<String, u64> {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut w.redis())
        .unwrap();
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            Some((name.to_string(), calls))
        })
        .collect()
}

/// The idle cost of 2,000 mailboxes over three daemons (default lease TTL 30 s, polls every
/// 60 s, no mail): Redis commands per second, CPU and RSS per daemon. A measurement for
/// docs/OPERATIONS.md, not a check: `cargo test --test fleet -- --ignored --nocapture`.
#[test]
#[ignore]
fn idle_cost_of_two_thousand_mailboxes_over_three_daemons() {
    let (w, boxes) = world(2_000, 0);
    let list = boxes.join(",");
    let env = w.graph_env();
    let start = |name: &str| {
        let mut all: Vec<(&str, &str)> = env
            .iter()
            .filter(|(k, _)| k != "MS1__GRAPH__MAILBOXES" && k != "MS1__GRAPH__POLL_INTERVAL_S")
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        all.extend([
            ("MS1__GRAPH__MAILBOXES", list.as_str()),
            ("MS1__REDIS__CONSUMER", name),
            ("MS1__GRAPH__POLL_INTERVAL_S", "60"),
            ("MS1__LOG__LEVEL", "warn"),
        ]);
        w.daemon(&all)
    };
    let fleet = [start("daemon-a"), start("daemon-b"), start("daemon-c")];
    let names = ["daemon-a", "daemon-b", "daemon-c"];
    wait_for_spread(&w, &boxes, &names, boxes.len() / 6, "2,000 mailboxes");
    // Let the hand-overs and the first polls pass, then measure one minute of idling.
    std::thread::sleep(Duration::from_secs(70));
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut w.redis())
        .unwrap();
    let cpu_before: Vec<f64> = fleet.iter().map(|d| cpu_seconds(d.pid())).collect();
    let window = Duration::from_secs(60);
    std::thread::sleep(window);
    let calls = command_calls(&w);
    let total: u64 = calls.values().sum();
    let per_s = total as f64 / window.as_secs_f64();
    eprintln!("FLEET idle: {per_s:.0} Redis commands/s for 2,000 mailboxes ({:.3} per mailbox per second): {calls:?}", per_s / 2_000.0);
    for (d, before) in fleet.iter().zip(cpu_before) {
        let cpu = (cpu_seconds(d.pid()) - before) / window.as_secs_f64();
        eprintln!(
            "FLEET idle daemon pid {}: CPU {:.1} % of a core, RSS {:.0} MiB",
            d.pid(),
            cpu * 100.0,
            rss_mib(d.pid())
        );
    }
    eprintln!("FLEET idle shares: {:?}", shares(&holders(&w, &boxes)));
}
