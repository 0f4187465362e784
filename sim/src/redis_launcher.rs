//! The redis-servers of the demo, the tests and the benchmarks, all started by the daemon's
//! own launcher ([`ms1_ingestor::private_redis`]): a server on loopback TCP with no password
//! ([`start_loopback`]), a TLS-only one ([`start_tls`]: `--port 0`, a private CA, a password,
//! and optionally client certificates required), and a private Redis Cluster of such servers
//! ([`PrivateCluster`]) for the cluster tests.

use ms1_ingestor::private_redis::{Listen, PrivateRedis};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A free loopback TCP port (bound and released; the caller retries if it gets taken).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// TLS material and options of [`start_tls`] and [`PrivateCluster::start_tls`].
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

/// Starts redis-server with its data in `dir` on `port` (a free one when `None`), plain TCP on
/// loopback with no password: for tests and benchmarks, never the daemon's own (see
/// [`PrivateRedis::start_private`]). `remove_dir`: delete `dir` when dropped (tests).
pub fn start_loopback(
    dir: &Path,
    port: Option<u16>,
    remove_dir: bool,
) -> anyhow::Result<PrivateRedis> {
    on_a_free_port(dir, |free| {
        let listen = Listen::Tcp(port.unwrap_or(free));
        PrivateRedis::launch(dir, listen, remove_dir, Vec::new())
    })
}

/// A redis-server that speaks only TLS (`--port 0`), on a free port, with `tls`'s certificates
/// and password; data in `dir`. For the TLS tests.
pub fn start_tls(dir: &Path, tls: &RedisTls, remove_dir: bool) -> anyhow::Result<PrivateRedis> {
    on_a_free_port(dir, |port| {
        PrivateRedis::launch(dir, Listen::Tls(port), remove_dir, tls.args())
    })
}

/// Creates `dir` and calls `start` with a free port, up to 5 times (another process may take
/// the port between [`free_port`] and the server binding it).
fn on_a_free_port(
    dir: &Path,
    mut start: impl FnMut(u16) -> anyhow::Result<PrivateRedis>,
) -> anyhow::Result<PrivateRedis> {
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
    let mut last_err = None;
    for _ in 0..5 {
        match start(free_port()?) {
            Ok(redis) => return Ok(redis),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| anyhow::anyhow!("redis-server did not start")))
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
        on_a_free_port(dir, |port| {
            let bus = free_port()?;
            anyhow::ensure!(bus != port, "the cluster bus got the client port {port}");
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
            PrivateRedis::launch(dir, listen, false, args)
        })
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
        anyhow::ensure!(
            crate::wait::until(timeout, || self.is_ok()),
            "the cluster in {} did not reach cluster_state:ok within {timeout:?}",
            self.dir.display()
        );
        Ok(())
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
