//! Crashes and restarts: of the daemon (SIGKILL, SIGTERM), of redis-server, and of actors
//! under their supervisors. Nothing may be lost; duplicates at MS4 stay bounded.

mod common;

use common::World;
use serde_json::json;
use std::time::Duration;

const MINUTES: Duration = Duration::from_secs(180);

#[test]
fn sigkill_three_times_during_a_20000_entry_run_loses_nothing() {
    let world = World::new(&["--rate-limit-per-min", "0"]);
    // A little latency at MS4 keeps batches in flight when the kill lands.
    world.ms4.configure(json!({"latency_ms": 3}));
    let mut daemon = world.daemon(&[]);
    world.load(0..20_000, |_| false);
    for at in [3_000u64, 8_000, 13_000] {
        let reached = common::wait_until(MINUTES, || {
            world.ms4.stats()["unique_records"].as_u64().unwrap_or(0) >= at
        });
        assert!(reached, "stalled before {at}:\n{}", daemon.log_tail(30));
        daemon.restart(); // SIGKILL, then start again
        let at_kill = world.ms4.stats()["unique_records"].as_u64().unwrap();
        assert!(
            at_kill < 20_000,
            "the kill landed mid-run ({at_kill} delivered)"
        );
        eprintln!("killed at {at_kill} delivered");
    }
    world.wait_delivered(20_000, MINUTES, &daemon);
    let stats = world.ms4.stats();
    let duplicates = stats["duplicate_records"].as_u64().unwrap();
    eprintln!("duplicates at MS4 after 3 kills: {duplicates}");
    // At most the batches in flight at each kill: 3 kills × max_in_flight (4) × batch (50).
    assert!(duplicates <= 3 * 4 * 50, "{duplicates} duplicates: {stats}");
    assert!(common::wait_until(Duration::from_secs(10), || world
        .xlen("outbound")
        == 0));
    world.assert_drained();
    assert!(world.dead_letters().is_empty());
}

#[test]
fn a_restarted_redis_server_is_reconnected_to_and_the_run_finishes() {
    let mut world = World::new(&["--rate-limit-per-min", "0"]);
    world.ms4.configure(json!({"latency_ms": 2}));
    let mut daemon = world.daemon(&[]);
    world.load(0..20_000, |_| false);
    let reached = common::wait_until(MINUTES, || {
        world.ms4.stats()["unique_records"].as_u64().unwrap_or(0) >= 5_000
    });
    assert!(reached);
    world
        .redis
        .restart()
        .expect("redis-server restarts with its AOF");
    let at_restart = world.ms4.stats()["unique_records"].as_u64().unwrap();
    assert!(
        at_restart < 20_000,
        "the restart landed mid-run ({at_restart} delivered)"
    );
    eprintln!("redis restarted at {at_restart} delivered");
    world.wait_delivered(20_000, MINUTES, &daemon);
    assert!(daemon.is_running(), "the daemon survived the Redis restart");
    assert!(common::wait_until(Duration::from_secs(10), || world
        .xlen("outbound")
        == 0));
    world.assert_drained();
    assert!(common::wait_until(Duration::from_secs(10), || daemon
        .ready()
        .0
        == 200));
}

#[test]
fn actors_that_fail_are_restarted_by_their_supervisor_and_carry_on_from_redis() {
    let world = World::new(&["--rate-limit-per-min", "0"]);
    let daemon = world.daemon(&[]);
    world.load(0..200, |_| false);
    world.wait_delivered(200, MINUTES, &daemon);

    // Pull the consumer groups out from under both actors: their next read fails, they stop,
    // their supervisors restart them, and they recreate the groups from Redis.
    let mut con = world.redis();
    for (stream, group) in [("inbound", "processors"), ("outbound", "senders")] {
        let _: i64 = redis::cmd("XGROUP")
            .arg("DESTROY")
            .arg(format!("{}stream:{stream}", common::PREFIX))
            .arg(group)
            .query(&mut con)
            .unwrap();
    }
    world.load(200..1_200, |_| false);
    world.wait_delivered(1_200, MINUTES, &daemon);
    let restarts =
        |actor: &str| daemon.metric(&format!("ms1_actor_restarts_total{{actor=\"{actor}\""));
    assert!(restarts("batch_processor") >= 1.0, "{}", daemon.metrics());
    assert!(restarts("ms4_sender") >= 1.0, "{}", daemon.metrics());
    assert_eq!(world.ms4.stats()["duplicate_records"], 0);
    world.assert_drained();
}

#[test]
fn sigterm_drains_in_flight_batches_and_a_restart_finishes_without_duplicates() {
    let world = World::new(&["--rate-limit-per-min", "0"]);
    world.ms4.configure(json!({"latency_ms": 20}));
    let mut daemon = world.daemon(&[("MS1__PIPELINE__DRAIN_TIMEOUT_MS", "10000")]);
    world.load(0..20_000, |_| false);
    assert!(common::wait_until(MINUTES, || {
        world.ms4.stats()["unique_records"].as_u64().unwrap_or(0) >= 2_000
    }));
    let (took, code) = daemon.terminate();
    let at_stop = world.ms4.stats()["unique_records"].as_u64().unwrap();
    assert!(
        at_stop < 20_000,
        "SIGTERM landed mid-run ({at_stop} delivered)"
    );
    eprintln!("SIGTERM at {at_stop} delivered, exit took {took:?}");
    assert!(took < Duration::from_secs(12), "drain took {took:?}");
    assert_eq!(code, Some(0), "{}", daemon.log_tail(20));
    // Everything MS4 accepted before the exit was acknowledged.
    assert_eq!(
        world.pending("outbound", "senders"),
        0,
        "in-flight batches were finished"
    );

    world.ms4.configure(json!({"latency_ms": 0}));
    let daemon = world.daemon(&[]);
    world.wait_delivered(20_000, MINUTES, &daemon);
    assert_eq!(world.ms4.stats()["duplicate_records"], 0);
    assert!(common::wait_until(Duration::from_secs(10), || world
        .xlen("outbound")
        == 0));
    world.assert_drained();
}

#[test]
fn sigterm_while_redis_is_down_exits_promptly_with_exit_code_zero() {
    let mut world = World::new(&["--rate-limit-per-min", "0"]);
    let mut daemon = world.daemon(&[("MS1__PIPELINE__DRAIN_TIMEOUT_MS", "20000")]);
    world.load(0..100, |_| false);
    world.wait_delivered(100, MINUTES, &daemon);
    world.redis.kill();
    std::thread::sleep(Duration::from_secs(1));
    let (took, code) = daemon.terminate();
    assert_eq!(code, Some(0), "{}", daemon.log_tail(20));
    assert!(
        took < Duration::from_secs(15),
        "drain with redis down took {took:?} (nothing in flight can finish, so it should not wait out the deadline)"
    );
}
