//! The daemon's private `redis-server`, for a single machine without a Redis of its own
//! (`redis.url` empty), and the one launcher of redis-server that `ms1-sim`'s servers (for the
//! demo, the tests and the benchmarks: loopback TCP, TLS, Redis Cluster nodes) start with too.
//!
//! Servers keep an append-only file in their directory (so a restart loses nothing), run with
//! a cleared environment (only `PATH`: none of the daemon's `MS1__…` settings, its secrets
//! among them, reach them), and are killed when their handle is dropped. Where they listen:
//!
//! - [`PrivateRedis::start_private`], the daemon's own (`redis.url` empty): a unix socket in
//!   its directory and no TCP port at all. The directory is made 0700 and the socket 0700, so
//!   only the daemon's user can open it: another local user can neither read the mail in the
//!   streams, nor inject entries that the daemon would send to MS4 with its key, nor FLUSHALL.
//! - [`PrivateRedis::launch`], anywhere else [`Listen`] says, with further `redis-server`
//!   arguments: what `ms1_sim::redis_launcher` builds its loopback, TLS and cluster servers on.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running private redis-server.
pub struct PrivateRedis {
    child: Option<Child>,
    /// Where it listens.
    listen: Listen,
    dir: PathBuf,
    remove_dir: bool,
    /// Further `redis-server` arguments (a cluster node's, TLS), kept for restarts.
    extra_args: Vec<String>,
}

/// Where a private redis-server listens.
#[derive(Clone, Debug)]
pub enum Listen {
    /// Plain TCP on 127.0.0.1.
    Tcp(u16),
    /// TLS on 127.0.0.1, and no plain port (the TLS options come as further arguments).
    Tls(u16),
    /// A unix socket, and no TCP port.
    Unix(PathBuf),
}

/// Name of the unix socket of [`PrivateRedis::start_private`], in its directory.
pub const SOCKET_NAME: &str = "redis.sock";

impl PrivateRedis {
    /// The daemon's private redis-server (`redis.url` empty): data in `dir`, which is made
    /// 0700, and a unix socket `dir/redis.sock` (0700) as its only listener — no TCP port —
    /// so that only this process's user can reach it. Kept when dropped.
    pub fn start_private(dir: &Path) -> anyhow::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| {
            anyhow::anyhow!(
                "redis.data_dir {}: cannot make it private (chmod 700): {e}",
                dir.display()
            )
        })?;
        let socket = std::path::absolute(dir.join(SOCKET_NAME))?;
        // sockaddr_un holds 108 bytes with the terminating NUL.
        anyhow::ensure!(
            socket.as_os_str().len() < 104,
            "redis.data_dir {}: the socket path {} is too long for a unix socket (at most 103 bytes): choose a shorter directory",
            dir.display(),
            socket.display()
        );
        // A server still answering on the socket belongs to another daemon on this data_dir,
        // or to one killed without its children; two servers on one AOF would corrupt it.
        let in_use = std::os::unix::net::UnixStream::connect(&socket)
            .and_then(|s| s.set_read_timeout(Some(PING_TIMEOUT)).map(|()| s))
            .is_ok_and(ping);
        anyhow::ensure!(
            !in_use,
            "redis.data_dir {}: a redis-server already answers on {}: another ms1-ingestor runs on this data_dir, or one was killed without its children (stop that redis-server, e.g. `redis-cli -s {} shutdown`), or use another data_dir",
            dir.display(),
            socket.display(),
            socket.display()
        );
        let _ = std::fs::remove_file(&socket);
        Self::launch(dir, Listen::Unix(socket), false, Vec::new())
    }

    /// One attempt at starting redis-server in `dir` listening as `listen`, with `extra_args`
    /// (TLS, cluster options); kept for [`PrivateRedis::spawn`] after a kill or a stop.
    /// `remove_dir`: delete `dir` when dropped (tests).
    pub fn launch(
        dir: &Path,
        listen: Listen,
        remove_dir: bool,
        extra_args: Vec<String>,
    ) -> anyhow::Result<Self> {
        let mut redis = Self {
            child: None,
            listen,
            dir: dir.to_path_buf(),
            remove_dir,
            extra_args,
        };
        match redis.spawn() {
            Ok(()) => Ok(redis),
            Err(e) => {
                redis.remove_dir = false;
                Err(e)
            }
        }
    }

    /// The `redis-server` arguments that say where it listens.
    fn listen_args(&self) -> Vec<String> {
        let args: Vec<String> = match &self.listen {
            Listen::Tcp(port) => vec![
                "--port".into(),
                port.to_string(),
                "--bind".into(),
                "127.0.0.1".into(),
            ],
            Listen::Tls(port) => vec![
                "--port".into(),
                "0".into(),
                "--tls-port".into(),
                port.to_string(),
                "--bind".into(),
                "127.0.0.1".into(),
            ],
            Listen::Unix(socket) => vec![
                "--port".into(),
                "0".into(),
                "--unixsocket".into(),
                socket.display().to_string(),
                "--unixsocketperm".into(),
                "700".into(),
            ],
        };
        args
    }

    /// Starts the server (again, after [`PrivateRedis::kill`] or [`PrivateRedis::stop`]) where it
    /// listened, on the same data; waits until it takes commands.
    pub fn spawn(&mut self) -> anyhow::Result<()> {
        let log = self.dir.join("redis.log");
        let log_start = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        let child = Command::new("redis-server")
            .args(self.listen_args())
            .arg("--dir")
            .arg(&self.dir)
            .args(["--appendonly", "yes", "--appendfsync", "everysec"])
            .args(["--save", ""])
            .args(["--protected-mode", "yes"])
            .args(["--logfile", "redis.log"])
            // Leave argv and the environment block alone (the title would overwrite them), so
            // that /proc/PID/environ shows what the server really got.
            .args(["--set-proc-title", "no"])
            .args(&self.extra_args)
            // Nothing of the daemon's environment (its MS1__… settings and secrets) is the
            // server's business.
            .env_clear()
            .env(
                "PATH",
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot run redis-server ({e}); install it (apt-get install redis-server) or set redis.url"
                )
            })?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                anyhow::bail!(
                    "redis-server exited at start ({status}); see {}",
                    log.display()
                );
            }
            if self.answers(&log, log_start) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        anyhow::bail!(
            "redis-server ({:?}) did not become ready; see {}",
            self.listen,
            log.display()
        )
    }

    /// True once the server takes commands: a PING answered over TCP or the socket; for TLS,
    /// "Ready to accept connections" in its log after `log_start`.
    fn answers(&self, log: &Path, log_start: u64) -> bool {
        match &self.listen {
            Listen::Tcp(port) => std::net::TcpStream::connect(("127.0.0.1", *port))
                .and_then(|s| s.set_read_timeout(Some(PING_TIMEOUT)).map(|()| s))
                .is_ok_and(ping),
            Listen::Unix(socket) => std::os::unix::net::UnixStream::connect(socket)
                .and_then(|s| s.set_read_timeout(Some(PING_TIMEOUT)).map(|()| s))
                .is_ok_and(ping),
            Listen::Tls(_) => std::fs::read(log).is_ok_and(|text| {
                let start = (log_start as usize).min(text.len());
                String::from_utf8_lossy(&text[start..]).contains("Ready to accept connections")
            }),
        }
    }

    /// The TCP (or TLS) port; 0 for a server on a unix socket.
    pub fn port(&self) -> u16 {
        match &self.listen {
            Listen::Tcp(port) | Listen::Tls(port) => *port,
            Listen::Unix(_) => 0,
        }
    }

    /// The unix socket, for a server on one.
    pub fn socket(&self) -> Option<&Path> {
        match &self.listen {
            Listen::Unix(socket) => Some(socket),
            _ => None,
        }
    }

    /// Its address as `redis.url` takes it: `redis://127.0.0.1:PORT`, `rediss://127.0.0.1:PORT`
    /// (TLS; the password is not in it) or `unix:///path/redis.sock`.
    pub fn url(&self) -> String {
        match &self.listen {
            Listen::Tcp(port) => format!("redis://127.0.0.1:{port}"),
            Listen::Tls(port) => format!("rediss://127.0.0.1:{port}"),
            Listen::Unix(socket) => format!("unix://{}", socket.display()),
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Stops the server (SIGKILL) keeping its data, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the server with SIGTERM (it writes its AOF and exits), as an operator would.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if c.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Restarts it (SIGTERM, then start) on the same port and data; the AOF brings the data
    /// back.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn()
    }
}

/// Longest the start-up PING waits for its answer.
const PING_TIMEOUT: Duration = Duration::from_millis(500);

/// A raw RESP PING on `stream`, without a client library.
fn ping<S: std::io::Read + std::io::Write>(mut stream: S) -> bool {
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(stream.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
        if self.remove_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
