//! The daemon on a real Redis Cluster (3 masters on loopback, `redis.cluster = true`, prefix
//! `{ms1}:`): every key of the pipeline in the prefix's slot, the MULTI/EXEC hand-offs and the
//! Lua scripts run on the master that owns it, and a crash of that master loses nothing.

mod common;

use common::{wait_until, TestRedis, World, CLUSTER_PREFIX, MAILBOXES};
use ms1_sim::dovecot_launcher::PrivateDovecot;
use ms1_sim::redis_launcher::PrivateCluster;
use ms1_sim::synthetic::mime_message;
use serde_json::json;
use std::process::Command;
use std::time::Duration;

const MINUTES: Duration = Duration::from_secs(180);

/// Keys each master of the cluster holds (`DBSIZE`), by node index.
fn keys_per_node(world: &World<PrivateCluster>) -> Vec<u64> {
    (0..world.redis.ports().len())
        .map(|i| {
            let mut con = redis::Client::open(world.redis.node_url(i))
                .unwrap()
                .get_connection()
                .unwrap();
            redis::cmd("DBSIZE").query(&mut con).unwrap()
        })
        .collect()
}

/// Every key the run left is on the master that owns the prefix's slot, none elsewhere.
fn assert_all_keys_on_the_owner(world: &World<PrivateCluster>) {
    let owner = world.redis.master_of(CLUSTER_PREFIX).unwrap();
    let per_node = keys_per_node(world);
    assert!(
        per_node[owner] > 0,
        "the owner holds the pipeline: {per_node:?}"
    );
    for (i, n) in per_node.iter().enumerate() {
        if i != owner {
            assert_eq!(*n, 0, "node {i} holds keys of the pipeline: {per_node:?}");
        }
    }
}

#[test]
fn the_daemon_delivers_every_entry_exactly_once_through_a_redis_cluster() {
    let world = World::cluster(&["--rate-limit-per-min", "0"]);
    let daemon = world.daemon(&[]);
    // Half through a plain connection to the slot's owner, half through the daemon's own store
    // on the cluster (`ms1-sim load`).
    world.load(0..5_000, |_| false);
    let out = Command::new(common::sim_bin())
        .args(["load", "--count", "5000", "--start", "5000"])
        .env_clear()
        .envs(world.redis.daemon_env())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    world.wait_delivered(10_000, MINUTES, &daemon);
    assert_eq!(world.ms4.stats()["duplicate_records"], 0);
    let keys: std::collections::BTreeSet<String> = world.ms4.keys().into_iter().collect();
    assert_eq!(keys, (0..10_000).map(World::key_of).collect());
    world.assert_drained();
    assert!(world.dead_letters().is_empty());

    // The fleet-wide counters were written in the hand-offs' MULTI/EXECs, on the owner.
    let stats: std::collections::HashMap<String, u64> = redis::cmd("HGETALL")
        .arg(format!("{CLUSTER_PREFIX}stats"))
        .query(&mut world.redis())
        .unwrap();
    assert_eq!(stats.get("processed"), Some(&10_000), "{stats:?}");
    let delivered = || -> Option<u64> {
        redis::cmd("HGET")
            .arg(format!("{CLUSTER_PREFIX}stats"))
            .arg("delivered")
            .query(&mut world.redis())
            .ok()
            .flatten()
    };
    assert!(
        wait_until(Duration::from_secs(10), || delivered() == Some(10_000)),
        "delivered counter: {:?}",
        delivered()
    );
    assert_all_keys_on_the_owner(&world);
    // The gauges come from XLEN and XINFO GROUPS, routed by their stream key.
    assert!(
        wait_until(Duration::from_secs(10), || {
            let m = daemon.metrics();
            m.contains("ms1_consumer_group_pending{") && m.contains("ms1_stream_length{")
        }),
        "{}",
        daemon.metrics()
    );
    let (code, ready) = daemon.ready();
    assert_eq!(code, 200, "{ready}");
    assert_eq!(ready["redis"], true, "{ready}");
}

#[test]
fn a_crashed_master_owning_the_pipeline_slot_comes_back_and_the_run_finishes() {
    let mut world = World::cluster(&["--rate-limit-per-min", "0"]);
    // A little latency at MS4 keeps batches in flight when the master goes down.
    world.ms4.configure(json!({"latency_ms": 2}));
    // A (generous) MS4 budget: the GCRA script runs before every request, so it must be
    // loaded again on the restarted master, whose script cache starts empty.
    let daemon = world.daemon(&[("MS1__MS4__RATE_LIMIT_PER_MIN", "100000")]);
    world.load(0..20_000, |_| false);
    let owner = world.redis.master_of(CLUSTER_PREFIX).unwrap();
    let reached = wait_until(MINUTES, || {
        world.ms4.stats()["unique_records"].as_u64().unwrap_or(0) >= 5_000
    });
    assert!(reached, "{}", daemon.log_tail(30));
    let down = std::time::Instant::now();
    world
        .redis
        .restart_master(owner)
        .expect("the master restarts with its AOF and nodes.conf");
    let at_restart = world.ms4.stats()["unique_records"].as_u64().unwrap();
    eprintln!(
        "cluster_state:ok again {:?} after the crash",
        down.elapsed()
    );
    assert!(
        at_restart < 20_000,
        "the restart landed mid-run ({at_restart} delivered)"
    );
    eprintln!("master {owner} crashed and restarted at {at_restart} delivered");
    world.wait_delivered(20_000, MINUTES, &daemon);
    let duplicates = world.ms4.stats()["duplicate_records"].as_u64().unwrap();
    eprintln!(
        "duplicates at MS4 after the master's crash: {duplicates}; actor restarts: {}",
        daemon.metric("ms1_actor_restarts_total") + 0.0
    );
    // At most what was in flight when the master went: max_in_flight (4) × batch (50).
    assert!(duplicates <= 4 * 50, "{duplicates} duplicates");
    assert!(wait_until(Duration::from_secs(10), || world
        .xlen("outbound")
        == 0));
    world.assert_drained();
    assert!(world.dead_letters().is_empty());
    assert_all_keys_on_the_owner(&world);
    let gcra = redis::Script::new(include_str!("../actors/src/store/gcra_take.lua"));
    let loaded: Vec<bool> = redis::cmd("SCRIPT")
        .arg("EXISTS")
        .arg(gcra.get_hash())
        .query(&mut world.redis())
        .unwrap();
    assert_eq!(
        loaded,
        [true],
        "the GCRA script is loaded on the restarted master"
    );
    assert!(
        wait_until(Duration::from_secs(10), || daemon.ready().0 == 200),
        "{:?}",
        daemon.ready()
    );
}

#[test]
fn blocking_reads_longer_than_the_response_timeout_wait_quietly_on_a_cluster() {
    let world = World::cluster(&["--rate-limit-per-min", "0"]);
    // Reads block 8 s, longer than the 5 s any other command may take: on a connection with a
    // response timeout they would fail and the actors would restart.
    let daemon = world.daemon(&[("MS1__PIPELINE__BLOCK_MS", "8000")]);
    world.load(0..7, |_| false);
    world.wait_delivered(7, MINUTES, &daemon);
    std::thread::sleep(Duration::from_secs(12));
    // New entries wake the blocked reads at once.
    let added = std::time::Instant::now();
    world.load(7..14, |_| false);
    world.wait_delivered(14, Duration::from_secs(5), &daemon);
    eprintln!(
        "7 entries at MS4 {:?} after they were added",
        added.elapsed()
    );
    assert_eq!(
        daemon.metric("ms1_actor_restarts_total") + 0.0,
        0.0,
        "{}",
        daemon.log_tail(20)
    );
    assert!(world.dead_letters().is_empty());
}

#[test]
fn graph_mail_reaches_ms4_through_a_redis_cluster_with_leases_cursors_and_budgets() {
    let world = World::cluster_with_graph(
        &["--rate-limit-per-min", "0"],
        &["--messages-per-mailbox", "1000"],
    );
    // A (generous) MS4 budget, so that the GCRA script runs on the cluster too.
    let daemon = world.graph_daemon(&[
        ("MS1__GRAPH__PAGE_SIZE", "200"),
        ("MS1__MS4__RATE_LIMIT_PER_MIN", "100000"),
    ]);
    world.wait_delivered(3_000, MINUTES, &daemon);
    for mb in MAILBOXES {
        world.mail(mb, 50);
    }
    world.wait_delivered(3_150, MINUTES, &daemon);
    let graph = world.graph().stats();
    let served: u64 = MAILBOXES
        .iter()
        .map(|m| {
            graph["mailboxes"][m]["messages_served"]
                .as_u64()
                .unwrap_or(0)
        })
        .sum();
    assert_eq!(served, 3_150, "the deltaLinks fetched only the new mail");
    assert_eq!(graph["violations"], 0, "{graph}");
    assert_eq!(world.ms4.stats()["duplicate_records"], 0);
    assert!(world.dead_letters().is_empty());
    world.assert_drained();
    // Leases, cursors, intake marks and rate budgets: all in the prefix's slot.
    let mut con = world.redis();
    for mb in MAILBOXES {
        let cursor: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
            .arg(format!("{CLUSTER_PREFIX}cursor:{mb}"))
            .query(&mut con)
            .unwrap();
        assert_eq!(
            cursor.get("phase").map(String::as_str),
            Some("delta"),
            "{mb}"
        );
    }
    assert_all_keys_on_the_owner(&world);
}

#[test]
fn imap_mail_reaches_ms4_through_a_redis_cluster_by_the_chunk_script() {
    // On a cluster the IMAP poller writes its chunks with imap_page.lua (a WATCH cannot follow a
    // cluster connection's reconnects): the same mail, once, with its cursor in the slot.
    let world = World::cluster(&["--rate-limit-per-min", "0"]);
    let (user, password) = ("invoices@contoso.example", "dovecot-secret");
    let mut dc = PrivateDovecot::start(
        &world.dir.path().join("dovecot"),
        &[(user, password)],
        false,
    )
    .expect("dovecot starts (apt-get install dovecot-imapd)");
    let mail: Vec<Vec<u8>> = (0..1_000).map(|n| mime_message(n, "c", 1_500)).collect();
    dc.deliver(user, "INBOX", &mail).unwrap();
    let config = world.dir.path().join("imap.toml");
    std::fs::write(
        &config,
        format!(
            "[[imap.sources]]\nname = \"invoices\"\nhost = \"127.0.0.1\"\nport = {}\n\
tls = \"none\"\nusername = \"{user}\"\npassword = \"{password}\"\npoll_interval_s = 1\n",
            dc.port()
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let daemon = world.daemon(&[
        ("MS1_CONFIG", config.as_str()),
        ("MS1__IMAP__FETCH_CHUNK", "100"),
    ]);
    world.wait_delivered(1_000, MINUTES, &daemon);
    assert_eq!(world.ms4.stats()["duplicate_records"], 0);
    let last_uid: u32 = redis::cmd("HGET")
        .arg(format!("{CLUSTER_PREFIX}cursor:imap:invoices"))
        .arg("last_uid")
        .query(&mut world.redis())
        .unwrap();
    assert_eq!(last_uid, 1_000);
    assert!(world.dead_letters().is_empty());
    world.assert_drained();
    assert_all_keys_on_the_owner(&world);
}

#[test]
fn check_config_refuses_a_cluster_whose_prefix_has_no_hash_tag() {
    let check = |prefix: &str| {
        Command::new(common::BIN)
            .arg("check-config")
            .env_clear()
            .env("MS1__REDIS__CLUSTER", "true")
            .env(
                "MS1__REDIS__URL",
                "redis://10.0.0.1:6379,redis://10.0.0.2:6379",
            )
            .env("MS1__REDIS__PREFIX", prefix)
            .output()
            .unwrap()
    };
    let out = check("ms1:");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("redis.prefix") && err.contains("hash tag"),
        "{err}"
    );
    let out = check("{ms1}:");
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(printed.contains("cluster = true"), "{printed}");
}
