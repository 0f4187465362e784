//! Running as a systemd service: sd-notify messages and the unit file.

mod common;

use common::World;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

#[test]
fn the_daemon_notifies_ready_feeds_the_watchdog_and_says_stopping() {
    let world = World::new(&["--rate-limit-per-min", "0"]);
    let socket_path = world.dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let path = socket_path.display().to_string();
    let mut daemon = world.daemon(&[("NOTIFY_SOCKET", &path), ("WATCHDOG_USEC", "1000000")]);

    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline
        && !(seen.contains("READY=1") && seen.matches("WATCHDOG=1").count() >= 2)
    {
        if let Ok(n) = socket.recv(&mut buf) {
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
            seen.push('\n');
        }
    }
    assert!(seen.contains("READY=1"), "{seen}\n{}", daemon.log_tail(20));
    assert!(seen.matches("WATCHDOG=1").count() >= 2, "{seen}");
    assert!(seen.contains("STATUS="), "{seen}");

    let (_, code) = daemon.terminate();
    assert_eq!(code, Some(0));
    let mut tail = String::new();
    while let Ok(n) = socket.recv(&mut buf) {
        tail.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(tail.contains("STOPPING=1"), "{tail}");
}
