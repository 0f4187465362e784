//! A private `redis-server` for the demo, for a single machine without a Redis of its own
//! (`redis.url` empty), and for tests and benchmarks; and a private Redis Cluster of such
//! servers ([`PrivateCluster`]) for the cluster tests.
//!
//! Servers keep an append-only file in their directory (so a restart loses nothing), run with
//! a cleared environment (only `PATH`: none of the daemon's `MS1__…` settings, its secrets
//! among them, reach them), and are killed when their handle is dropped. Where they listen:
//!
//! - [`PrivateRedis::start_private`], the daemon's own (`redis.url` empty): a unix socket in
//!   its directory and no TCP port at all. The directory is made 0700 and the socket 0700, so
//!   only the daemon's user can open it: another local user can neither read the mail in the
//!   streams, nor inject entries that the daemon would send to MS4 with its key, nor FLUSHALL.
//! - [`PrivateRedis::start`], for tests and benchmarks that talk to it themselves: loopback TCP
//!   with no password.
//! - [`PrivateRedis::start_tls`], for the TLS tests: TLS only (`--port 0`), a private CA, a
//!   password, and optionally client certificates required.

use std::net::TcpListener;
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
enum Listen {
    /// Plain TCP on 127.0.0.1.
    Tcp(u16),
    /// TLS on 127.0.0.1, and no plain port.
    Tls(u16),
    /// A unix socket, and no TCP port.
    Unix(PathBuf),
}

/// TLS material and options of [`PrivateRedis::start_tls`].
#[derive(Clone, Debug)]
pub struct RedisTls {
    /// Server certificate and key (PEM).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA that signs the client certificates it accepts (PEM).
    pub ca: PathBuf,
    /// `tls-auth-clients`: require a client certificate signed by `ca`.
    pub auth_clients: bool,
    /// `requirepass`; empty: none.
    pub password: String,
}

impl RedisTls {
    /// The `redis-server` arguments for these options.
    fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "--tls-cert-file".into(),
            self.cert.display().to_string(),
            "--tls-key-file".into(),
            self.key.display().to_string(),
            "--tls-ca-cert-file".into(),
            self.ca.display().to_string(),
            "--tls-auth-clients".into(),
            if self.auth_clients { "yes" } else { "no" }.into(),
        ];
        if !self.password.is_empty() {
            args.extend(["--requirepass".into(), self.password.clone()]);
        }
        args
    }
}

/// Name of the unix socket of [`PrivateRedis::start_private`], in its directory.
pub const SOCKET_NAME: &str = "redis.sock";

/// A free loopback TCP port (bound and released; the caller retries if it gets taken).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl PrivateRedis {
    /// Starts redis-server with its data in `dir` on `port` (a free one when `None`), plain
    /// TCP on loopback with no password: for tests and benchmarks, never the daemon's own
    /// (see [`PrivateRedis::start_private`]). `remove_dir`: delete `dir` when dropped (tests).
    pub fn start(dir: &Path, port: Option<u16>, remove_dir: bool) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
        let mut last_err = None;
        for _ in 0..5 {
            let port = match port {
                Some(p) => p,
                None => free_port()?,
            };
            match Self::start_once(dir, Listen::Tcp(port), remove_dir, Vec::new()) {
                Ok(redis) => return Ok(redis),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("redis-server did not start")))
    }

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
        Self::start_once(dir, Listen::Unix(socket), false, Vec::new())
    }

    /// A redis-server that speaks only TLS (`--port 0`), on a free port, with `tls`'s
    /// certificates and password; data in `dir`. For the TLS tests.
    pub fn start_tls(dir: &Path, tls: &RedisTls, remove_dir: bool) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
        let mut last_err = None;
        for _ in 0..5 {
            match Self::start_once(dir, Listen::Tls(free_port()?), remove_dir, tls.args()) {
                Ok(redis) => return Ok(redis),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("redis-server did not start")))
    }

    /// One attempt at starting redis-server listening as `listen`, with `extra_args`.
    fn start_once(
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

    fn spawn(&mut self) -> anyhow::Result<()> {
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

/// A private Redis Cluster on loopback: `masters` redis-servers with cluster mode on, no
/// replicas, every slot assigned (`redis-cli --cluster create`), each node with its AOF and
/// `nodes.conf` in `node-{i}/` under its directory. For tests: [`PrivateCluster::restart_master`]
/// crashes one master and brings it back with its data, as an operator's restart after a crash
/// would; dropping the handle kills every node.
pub struct PrivateCluster {
    nodes: Vec<PrivateRedis>,
    dir: PathBuf,
    remove_dir: bool,
    /// For a cluster over TLS ([`PrivateCluster::start_tls`]): its certificates and password.
    tls: Option<RedisTls>,
}

/// How long a node may be silent before the others count it as failing (ms). Short, so that
/// a test sees the cluster settle quickly; long enough that a master restarted within it is
/// never marked failed.
const CLUSTER_NODE_TIMEOUT_MS: u64 = 3_000;

impl PrivateCluster {
    /// Starts `masters` (at least 3, as `redis-cli --cluster create` wants) nodes in `dir`,
    /// joins them into one cluster and waits until every node reports `cluster_state:ok`.
    /// `remove_dir`: delete `dir` when dropped.
    pub fn start(dir: &Path, masters: usize, remove_dir: bool) -> anyhow::Result<Self> {
        Self::start_with(dir, masters, remove_dir, None)
    }

    /// [`PrivateCluster::start`] over TLS: clients and the cluster bus speak only TLS
    /// (`--port 0`, `--tls-cluster yes`) with `tls`'s certificates (the server certificate is
    /// also each node's client certificate towards the others) and password.
    pub fn start_tls(
        dir: &Path,
        masters: usize,
        tls: &RedisTls,
        remove_dir: bool,
    ) -> anyhow::Result<Self> {
        Self::start_with(dir, masters, remove_dir, Some(tls.clone()))
    }

    fn start_with(
        dir: &Path,
        masters: usize,
        remove_dir: bool,
        tls: Option<RedisTls>,
    ) -> anyhow::Result<Self> {
        anyhow::ensure!(masters >= 3, "a Redis Cluster needs at least 3 masters");
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
        let mut cluster = Self {
            nodes: Vec::with_capacity(masters),
            dir: dir.to_path_buf(),
            remove_dir,
            tls,
        };
        for i in 0..masters {
            let node = cluster.start_node(&dir.join(format!("node-{i}")))?;
            cluster.nodes.push(node);
        }
        let mut create = Command::new("redis-cli");
        if let Some(tls) = &cluster.tls {
            create
                .args(["--tls", "--cacert"])
                .arg(&tls.ca)
                .arg("--cert")
                .arg(&tls.cert)
                .arg("--key")
                .arg(&tls.key);
            if !tls.password.is_empty() {
                create.env("REDISCLI_AUTH", &tls.password);
            }
        }
        let out = create
            .arg("--cluster")
            .arg("create")
            .args(
                cluster
                    .nodes
                    .iter()
                    .map(|n| format!("127.0.0.1:{}", n.port())),
            )
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| anyhow::anyhow!("cannot run redis-cli ({e}); install redis-tools"))?;
        anyhow::ensure!(
            out.status.success(),
            "redis-cli --cluster create failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        cluster.wait_ok(Duration::from_secs(30))?;
        Ok(cluster)
    }

    /// A cluster node on a free port, its cluster bus on another free port (`--cluster-port`:
    /// the default, port + 10000, may not exist above 55535).
    fn start_node(&self, dir: &Path) -> anyhow::Result<PrivateRedis> {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
        let mut last_err = None;
        for _ in 0..5 {
            let (port, bus) = (free_port()?, free_port()?);
            if port == bus {
                continue;
            }
            let mut args: Vec<String> = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-port",
                &bus.to_string(),
                "--cluster-node-timeout",
                &CLUSTER_NODE_TIMEOUT_MS.to_string(),
            ]
            .iter()
            .map(|a| a.to_string())
            .collect();
            let listen = match &self.tls {
                None => Listen::Tcp(port),
                Some(tls) => {
                    args.extend(tls.args());
                    args.extend(["--tls-cluster".into(), "yes".into()]);
                    args.extend(["--tls-replication".into(), "yes".into()]);
                    if !tls.password.is_empty() {
                        args.extend(["--masterauth".into(), tls.password.clone()]);
                    }
                    Listen::Tls(port)
                }
            };
            match PrivateRedis::start_once(dir, listen, false, args) {
                Ok(node) => return Ok(node),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| anyhow::anyhow!("a cluster node did not start")))
    }

    /// A client of node `i` alone (with the CA, client certificate and password of a TLS
    /// cluster).
    pub fn node_client(&self, i: usize) -> redis::RedisResult<redis::Client> {
        let Some(tls) = &self.tls else {
            return redis::Client::open(self.node_url(i));
        };
        let read = |p: &Path| std::fs::read(p).map_err(redis::RedisError::from);
        let url = format!(
            "rediss://:{}@127.0.0.1:{}",
            tls.password,
            self.nodes[i].port()
        );
        redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: Some(redis::ClientTlsConfig {
                    client_cert: read(&tls.cert)?,
                    client_key: read(&tls.key)?,
                }),
                root_cert: Some(read(&tls.ca)?),
            },
        )
    }

    /// The nodes' ports, in the order they were started.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(PrivateRedis::port).collect()
    }

    /// Every node, as `redis.url` takes them with `redis.cluster = true`
    /// (`redis://127.0.0.1:p1,redis://127.0.0.1:p2,…`).
    pub fn url(&self) -> String {
        self.nodes
            .iter()
            .map(PrivateRedis::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The URL of node `i` alone.
    pub fn node_url(&self, i: usize) -> String {
        self.nodes[i].url()
    }

    /// The index of the master that owns `key`'s slot (`CLUSTER KEYSLOT`, `CLUSTER SLOTS`).
    pub fn master_of(&self, key: &str) -> anyhow::Result<usize> {
        let mut con = self.node_client(0)?.get_connection()?;
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut con)?;
        // [[start, end, [ip, port, id, …], replicas…], …]
        let ranges: Vec<redis::Value> = redis::cmd("CLUSTER").arg("SLOTS").query(&mut con)?;
        for range in ranges {
            let redis::Value::Array(parts) = range else {
                continue;
            };
            let (Some(redis::Value::Int(start)), Some(redis::Value::Int(end))) =
                (parts.first(), parts.get(1))
            else {
                continue;
            };
            if !(*start..=*end).contains(&slot) {
                continue;
            }
            if let Some(redis::Value::Array(master)) = parts.get(2) {
                if let Some(redis::Value::Int(port)) = master.get(1) {
                    if let Some(i) = self.ports().iter().position(|p| i64::from(*p) == *port) {
                        return Ok(i);
                    }
                }
            }
        }
        anyhow::bail!("no node of the cluster owns slot {slot} of {key}")
    }

    /// Crashes master `i` (SIGKILL) and starts it again on the same port with its AOF and
    /// `nodes.conf`, so it rejoins the cluster owning the same slots with the same data; waits
    /// until every node reports `cluster_state:ok` again.
    pub fn restart_master(&mut self, i: usize) -> anyhow::Result<()> {
        let node = &mut self.nodes[i];
        node.kill();
        node.spawn()?;
        self.wait_ok(Duration::from_secs(60))
    }

    /// True when every node reports `cluster_state:ok`.
    pub fn is_ok(&self) -> bool {
        (0..self.nodes.len()).all(|i| {
            let info = self
                .node_client(i)
                .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
                .and_then(|mut con| redis::cmd("CLUSTER").arg("INFO").query::<String>(&mut con));
            matches!(info, Ok(text) if text.lines().any(|l| l.trim() == "cluster_state:ok"))
        })
    }

    fn wait_ok(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        anyhow::bail!(
            "the cluster in {} did not reach cluster_state:ok within {timeout:?}",
            self.dir.display()
        )
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        if self.remove_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
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
