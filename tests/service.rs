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

#[test]
fn the_unit_file_passes_systemd_analyze_verify() {
    let Ok(out) = std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
    else {
        eprintln!("SKIPPED: systemd-analyze is not installed on this machine");
        return;
    };
    assert!(out.status.success());
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/ms1-ingestor.service"
    ))
    .unwrap();
    for key in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "TimeoutStopSec=",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "DynamicUser=yes",
        "StateDirectory=",
        "EnvironmentFile=",
    ] {
        assert!(unit.contains(key), "the unit lacks {key}");
    }
    // verify checks that ExecStart's binary exists: point it at the one cargo built.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ms1-ingestor.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/ms1-ingestor", common::BIN),
    )
    .unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed: {stderr}"
    );
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("ms1-ingestor.service"))
        .collect();
    assert!(
        complaints.is_empty(),
        "systemd-analyze complains: {complaints:?}"
    );
}
