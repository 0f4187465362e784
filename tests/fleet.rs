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
