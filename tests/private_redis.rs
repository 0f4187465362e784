//! The daemon's own redis-server (`redis.url` empty) is private to the daemon's user: it
//! listens on a unix socket in a 0700 directory and on no TCP port, another uid cannot open it,
//! and it does not inherit the daemon's environment (its `MS1__…` settings and secrets). Mail
//! still flows through it end to end.

mod common;

use common::{wait_until, World, API_KEY};
use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The pid of the `redis-server` the process `parent` started.
fn redis_child_of(parent: u32) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // pid (comm) state ppid …: comm may hold spaces, so split after the last ')'.
        let (head, rest) = stat.rsplit_once(')')?;
        let comm = head.split_once('(')?.1;
        let ppid: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
        (ppid == parent && comm.starts_with("redis-server")).then_some(pid)
    })
}

/// Kills a process when dropped: the daemon's redis-server, should the test fail before the
/// daemon stops it (a daemon killed by the harness leaves its children behind).
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // Only if that pid is still a redis-server (not a reused pid).
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", self.0)).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).starts_with("redis-server") {
            let _ = Command::new("kill")
                .args(["-KILL", &self.0.to_string()])
                .status();
        }
    }
}

/// Inodes of the sockets process `pid` holds open.
fn socket_inodes(pid: u32) -> BTreeSet<u64> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|fds| {
            fds.flatten()
                .filter_map(|fd| {
                    let target = std::fs::read_link(fd.path()).ok()?;
                    let t = target.to_str()?;
                    t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Inodes of every listening TCP socket of the machine (IPv4 and IPv6), with its local
/// address as /proc shows it.
fn tcp_listeners() -> Vec<(u64, String)> {
    let mut all = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            if f.len() > 9 && f[3] == "0A" {
                if let Ok(inode) = f[9].parse() {
                    all.push((inode, f[1].to_string()));
                }
            }
        }
    }
    all
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn the_daemons_own_redis_is_a_unix_socket_only_its_user_can_open_with_none_of_its_environment() {
    let world = World::new(&["--rate-limit-per-min", "0"]);
    // The test's temporary directory is 0700 itself; open it up so that the only barrier
    // left for another user is what the daemon made of its data directory and socket.
    std::fs::set_permissions(world.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let data_dir: PathBuf = world.dir.path().join("private-redis");
    let data = data_dir.display().to_string();
    let mut daemon = world.daemon(&[
        ("MS1__REDIS__URL", ""),
        ("MS1__REDIS__DATA_DIR", &data),
        ("MS1__REDIS__CONSUMER", "private"),
    ]);
    let redis = redis_child_of(daemon.pid()).unwrap_or_else(|| {
        panic!(
            "no redis-server child of the daemon\n{}",
            daemon.log_tail(20)
        )
    });
    let _reaper = KillOnDrop(redis);

    // No TCP listener of the child's.
    let held = socket_inodes(redis);
    assert!(!held.is_empty(), "the redis-server holds no socket at all");
    let listening: Vec<String> = tcp_listeners()
        .into_iter()
        .filter(|(inode, _)| held.contains(inode))
        .map(|(_, addr)| addr)
        .collect();
    assert!(
        listening.is_empty(),
        "the daemon's redis-server listens on TCP: {listening:?}"
    );

    // A unix socket in a private directory, both 0700-ish (nothing for group or others).
    let socket = data_dir.join("redis.sock");
    assert!(socket.exists(), "no socket at {}", socket.display());
    assert_eq!(
        mode(&data_dir) & 0o077,
        0,
        "data dir mode {:o}",
        mode(&data_dir)
    );
    assert_eq!(mode(&socket) & 0o077, 0, "socket mode {:o}", mode(&socket));

    // This user gets in; another uid (nobody) is refused.
    let ping = |as_nobody: bool| {
        let mut cmd = if as_nobody {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "redis-cli",
            ]);
            c
        } else {
            Command::new("redis-cli")
        };
        let out = cmd.arg("-s").arg(&socket).arg("ping").output().unwrap();
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    assert!(ping(false).contains("PONG"), "{}", ping(false));
    let theirs = ping(true);
    assert!(!theirs.contains("PONG"), "another uid got in: {theirs}");
    assert!(theirs.contains("Permission denied"), "{theirs}");

    // None of the daemon's environment reached the server.
    let environ = std::fs::read(format!("/proc/{redis}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        !environ.contains("MS1__") && !environ.contains(API_KEY),
        "the redis-server inherited the daemon's settings: {:?}",
        environ.split('\0').collect::<Vec<_>>()
    );

    // Mail flows end to end through the socket, and the daemon logged where it is.
    let url = format!("unix://{}", socket.display());
    let out = Command::new(common::sim_bin())
        .args(["load", "--count", "300"])
        .env_clear()
        .env("MS1__REDIS__URL", &url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    world.wait_delivered(300, Duration::from_secs(60), &daemon);
    assert_eq!(world.ms4.stats()["duplicate_records"], 0);
    assert!(
        daemon.log_tail(200).contains(&url),
        "{}",
        daemon.log_tail(20)
    );

    // A second daemon on the same data_dir is refused: two servers on one AOF would corrupt it.
    let port = ms1_sim::redis_launcher::free_port().unwrap();
    let second = Command::new(common::BIN)
        .arg("run")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("MS1__REDIS__URL", "")
        .env("MS1__REDIS__DATA_DIR", &data)
        .env("MS1__CONTROL__BIND", format!("127.0.0.1:{port}"))
        .env("MS1__MS4__BASE_URL", &world.ms4.url)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "{err}");
    assert!(
        err.contains("redis.data_dir") && err.contains("already answers"),
        "{err}"
    );

    // A SIGTERM stops the daemon and its server with it.
    let (_, code) = daemon.terminate();
    assert_eq!(code, Some(0));
    assert!(
        wait_until(Duration::from_secs(10), || !Path::new(&format!(
            "/proc/{redis}/stat"
        ))
        .exists()
            || std::fs::read_to_string(format!("/proc/{redis}/stat"))
                .is_ok_and(|s| s.contains(") Z "))),
        "the private redis-server outlived the daemon"
    );
}
