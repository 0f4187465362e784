//! Test harness: a private redis-server (or a private Redis Cluster) per test, the MS4 simulator
//! and the daemon as real processes (the binaries cargo built: `ms1-ingestor`, and `ms1-sim` for
//! the simulators), talking over real HTTP and RESP.
#![allow(dead_code)]

use ms1_ingestor::private_redis::PrivateRedis;
use ms1_sim::process::SimulatorProcess;
use ms1_sim::redis_launcher::{free_port, start_loopback, PrivateCluster};
use ms1_sim::synthetic;
pub use ms1_sim::wait::until as wait_until;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The daemon binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_ms1-ingestor");

/// The `ms1-sim` binary (the simulators, `load`): beside [`BIN`], in the same target directory
/// and profile. Cargo builds only the binaries of a test's own package, so the first call in a
/// test binary builds it (`cargo build -p ms1-sim --bin ms1-sim`, which does nothing when it is
/// up to date; `cargo test` no longer holds the build lock while tests run).
pub fn sim_bin() -> &'static Path {
    static SIM: OnceLock<PathBuf> = OnceLock::new();
    SIM.get_or_init(|| {
        let bin = Path::new(BIN);
        let profile_dir = bin.parent().expect("the binary is in a profile directory");
        // target/debug is the `dev` profile; any other directory is named after its profile.
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => "dev",
            Some(other) => other,
            None => panic!("no profile directory in {BIN}"),
        };
        let target_dir = profile_dir.parent().expect("a target directory");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--quiet", "-p", "ms1-sim", "--bin", "ms1-sim"])
            .args(["--profile", profile])
            .arg("--target-dir")
            .arg(target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo to build ms1-sim");
        assert!(status.success(), "cargo build -p ms1-sim failed ({status})");
        bin.with_file_name("ms1-sim")
    })
}
pub const PREFIX: &str = "ms1:";
/// The key prefix of worlds on a cluster: its hash tag keeps the pipeline in one slot.
pub const CLUSTER_PREFIX: &str = "{ms1}:";
pub const API_KEY: &str = "test-key";

/// The Redis a [`World`] runs on: one private redis-server, or a private Redis Cluster.
pub trait TestRedis {
    /// The prefix of the world's keys.
    const PREFIX: &'static str;
    /// The daemon's settings that point at it (`MS1__REDIS__…`).
    fn daemon_env(&self) -> Vec<(String, String)>;
    /// A plain connection to the server that holds the world's keys.
    fn connection(&self) -> redis::Connection;
}

impl TestRedis for PrivateRedis {
    const PREFIX: &'static str = PREFIX;

    fn daemon_env(&self) -> Vec<(String, String)> {
        vec![("MS1__REDIS__URL".into(), self.url())]
    }

    fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .unwrap()
    }
}

impl TestRedis for PrivateCluster {
    const PREFIX: &'static str = CLUSTER_PREFIX;

    fn daemon_env(&self) -> Vec<(String, String)> {
        vec![
            ("MS1__REDIS__URL".into(), self.url()),
            ("MS1__REDIS__CLUSTER".into(), "true".into()),
            ("MS1__REDIS__PREFIX".into(), CLUSTER_PREFIX.into()),
        ]
    }

    /// The master that owns the prefix's slot (every key of the world is there).
    fn connection(&self) -> redis::Connection {
        let owner = self
            .master_of(CLUSTER_PREFIX)
            .expect("the slot has an owner");
        redis::Client::open(self.node_url(owner))
            .unwrap()
            .get_connection()
            .unwrap()
    }
}

/// Everything one test runs against; dropped (killed, removed) at the end of the test.
pub struct World<R = PrivateRedis> {
    pub dir: tempfile::TempDir,
    pub redis: R,
    pub ms4: Ms4Sim,
    /// The Graph simulator, for worlds built with [`World::with_graph`].
    pub graph: Option<Sim>,
}

/// The mailboxes the Graph simulator holds by default.
pub const MAILBOXES: [&str; 3] = [
    "invoices-0@contoso.example",
    "invoices-1@contoso.example",
    "invoices-2@contoso.example",
];

impl World {
    /// A fresh Redis and an MS4 simulator started with `sim_args`.
    pub fn new(sim_args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let redis = start_loopback(&dir.path().join("redis"), None, false)
            .expect("redis-server starts (apt-get install redis-server)");
        let ms4 = Ms4Sim::start(sim_args);
        Self {
            dir,
            redis,
            ms4,
            graph: None,
        }
    }

    /// Also a Graph simulator, started with `graph_args`.
    pub fn with_graph(ms4_args: &[&str], graph_args: &[&str]) -> Self {
        let mut w = Self::new(ms4_args);
        w.graph = Some(Sim::graph(graph_args));
        w
    }

    /// The idempotency key synthetic message `n` carries.
    pub fn key_of(n: u64) -> String {
        format!(
            "<inv-{n}.invoices-{}@contoso.example@vendor.example>",
            n % 3
        )
    }
}

impl World<PrivateCluster> {
    /// A fresh private Redis Cluster (3 masters) and an MS4 simulator started with `sim_args`;
    /// the daemon gets `redis.cluster = true` and the prefix [`CLUSTER_PREFIX`].
    pub fn cluster(sim_args: &[&str]) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let redis = PrivateCluster::start(&dir.path().join("cluster"), 3, false)
            .expect("a Redis Cluster starts (apt-get install redis-server redis-tools)");
        let ms4 = Ms4Sim::start(sim_args);
        Self {
            dir,
            redis,
            ms4,
            graph: None,
        }
    }

    /// Also a Graph simulator, started with `graph_args`.
    pub fn cluster_with_graph(ms4_args: &[&str], graph_args: &[&str]) -> Self {
        let mut w = Self::cluster(ms4_args);
        w.graph = Some(Sim::graph(graph_args));
        w
    }
}

impl<R: TestRedis> World<R> {
    pub fn graph(&self) -> &Sim {
        self.graph.as_ref().expect("a world with a Graph simulator")
    }

    /// The Graph simulator's messages of `mailbox` (in its inbox).
    pub fn graph_messages(&self, mailbox: &str) -> Vec<serde_json::Value> {
        self.graph_list(&format!("/_sim/messages?mailbox={mailbox}"))
    }

    /// The Graph simulator's messages of `mailbox` in `folder` (a folder id, or `inbox`).
    pub fn graph_messages_in(&self, mailbox: &str, folder: &str) -> Vec<serde_json::Value> {
        self.graph_list(&format!("/_sim/messages?mailbox={mailbox}&folder={folder}"))
    }

    fn graph_list(&self, path: &str) -> Vec<serde_json::Value> {
        self.graph()
            .get_json(path)
            .as_array()
            .expect("the mailbox's messages")
            .clone()
    }

    /// How many of `mailbox`'s messages are unread in the Graph simulator.
    pub fn graph_unread(&self, mailbox: &str) -> usize {
        self.graph_messages(mailbox)
            .iter()
            .filter(|m| m["isRead"] != true)
            .count()
    }

    /// Daemon settings pointing at the Graph simulator (delta mode, the three mailboxes).
    pub fn graph_env(&self) -> Vec<(String, String)> {
        let url = &self.graph().url;
        vec![
            ("MS1__GRAPH__BASE_URL".into(), format!("{url}/v1.0")),
            ("MS1__GRAPH__AUTHORITY".into(), format!("{url}/{{tenant}}")),
            ("MS1__GRAPH__TENANT_ID".into(), "contoso".into()),
            ("MS1__GRAPH__CLIENT_ID".into(), "ms1-app".into()),
            ("MS1__GRAPH__CLIENT_SECRET".into(), "sim-secret".into()),
            ("MS1__GRAPH__MAILBOXES".into(), MAILBOXES.join(",")),
            ("MS1__GRAPH__POLL_INTERVAL_S".into(), "1".into()),
        ]
    }

    /// The daemon wired to both simulators, plus `extra`.
    pub fn graph_daemon(&self, extra: &[(&str, &str)]) -> Daemon {
        let env = self.graph_env();
        let mut all: Vec<(&str, &str)> =
            env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        all.extend_from_slice(extra);
        self.daemon(&all)
    }

    /// Adds `count` messages to a mailbox of the Graph simulator.
    pub fn mail(&self, mailbox: &str, count: u64) {
        self.graph().post(
            "/_sim/mail",
            serde_json::json!({"mailbox": mailbox, "count": count}),
        );
    }

    /// A plain connection to the server that holds the world's keys.
    pub fn redis(&self) -> redis::Connection {
        self.redis.connection()
    }

    /// Starts the daemon with settings for this world plus `extra` (MS1__… = value).
    pub fn daemon(&self, extra: &[(&str, &str)]) -> Daemon {
        Daemon::start(self.daemon_env(extra), self.dir.path().join("daemon.log"))
    }

    /// Starts the daemon as the last argument of `wrapper` (`wrapper… BIN run`), e.g. under
    /// `unshare`, with the settings of [`World::daemon`].
    pub fn wrapped_daemon(&self, wrapper: &[String], extra: &[(&str, &str)]) -> Daemon {
        Daemon::start_wrapped(
            wrapper.to_vec(),
            self.daemon_env(extra),
            self.dir.path().join("daemon.log"),
        )
    }

    /// The daemon's settings for this world plus `extra` (MS1__… = value).
    pub fn daemon_env(&self, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = self.redis.daemon_env();
        env.extend([
            ("MS1__REDIS__CONSUMER".into(), "test-daemon".into()),
            ("MS1__MS4__BASE_URL".into(), self.ms4.url.clone()),
            ("MS1__MS4__API_KEY".into(), API_KEY.into()),
            ("MS1__MS4__RATE_LIMIT_PER_MIN".into(), "0".into()),
            ("MS1__MS4__RETRY_MIN_MS".into(), "50".into()),
            ("MS1__MS4__RETRY_MAX_MS".into(), "1000".into()),
            ("MS1__LOG__FORMAT".into(), "json".into()),
            ("MS1__LOG__LEVEL".into(), "info".into()),
        ]);
        for (k, v) in extra {
            env.retain(|(ek, _)| ek != k);
            env.push((k.to_string(), v.to_string()));
        }
        env
    }

    /// XADDs synthetic Graph messages `range` to the inbound stream in one MULTI/EXEC per
    /// thousand; `invalid(n)` says which ones MS4 must refuse.
    pub fn load(&self, range: std::ops::Range<u64>, invalid: impl Fn(u64) -> bool) {
        let mut con = self.redis();
        let stream = format!("{}stream:inbound", R::PREFIX);
        let all: Vec<u64> = range.collect();
        for chunk in all.chunks(1_000) {
            let mut pipe = redis::pipe();
            pipe.atomic();
            for &n in chunk {
                let mailbox = format!("invoices-{}@contoso.example", n % 3);
                let fields = synthetic::inbound_entry(n, &mailbox, !invalid(n));
                pipe.cmd("XADD").arg(&stream).arg("*");
                for (k, v) in fields {
                    pipe.arg(k).arg(v);
                }
                pipe.ignore();
            }
            let _: () = pipe.query(&mut con).unwrap();
        }
    }

    pub fn xlen(&self, stream: &str) -> u64 {
        redis::cmd("XLEN")
            .arg(format!("{}stream:{stream}", R::PREFIX))
            .query(&mut self.redis())
            .unwrap()
    }

    /// Records waiting in the outbound stream: an entry holds one MS4 batch (its `n` records)
    /// or, written by a replay, one record.
    pub fn outbound_records(&self) -> u64 {
        let v: Vec<(String, std::collections::HashMap<String, String>)> = redis::cmd("XRANGE")
            .arg(format!("{}stream:outbound", R::PREFIX))
            .arg("-")
            .arg("+")
            .query(&mut self.redis())
            .unwrap();
        v.iter()
            .map(|(_, f)| f.get("n").and_then(|n| n.parse::<u64>().ok()).unwrap_or(1))
            .sum()
    }

    /// Entries pending in a group (read, not acknowledged).
    pub fn pending(&self, stream: &str, group: &str) -> u64 {
        let v: redis::Value = redis::cmd("XPENDING")
            .arg(format!("{}stream:{stream}", R::PREFIX))
            .arg(group)
            .query(&mut self.redis())
            .unwrap_or(redis::Value::Nil);
        match v {
            redis::Value::Array(items) => match items.first() {
                Some(redis::Value::Int(n)) => *n as u64,
                _ => 0,
            },
            _ => 0,
        }
    }

    /// Dead letters as field maps.
    pub fn dead_letters(&self) -> Vec<std::collections::HashMap<String, String>> {
        let v: Vec<(String, std::collections::HashMap<String, String>)> = redis::cmd("XRANGE")
            .arg(format!("{}stream:dlq", R::PREFIX))
            .arg("-")
            .arg("+")
            .query(&mut self.redis())
            .unwrap();
        v.into_iter().map(|(_, m)| m).collect()
    }

    /// Waits until MS4 holds `n` unique records; panics with the daemon's log otherwise.
    pub fn wait_delivered(&self, n: u64, timeout: Duration, daemon: &Daemon) {
        let ok = wait_until(timeout, || {
            self.ms4.stats()["unique_records"].as_u64() == Some(n)
        });
        if !ok {
            panic!(
                "MS4 has {} of {n} records after {timeout:?}\nsim stats: {}\ndaemon log tail:\n{}",
                self.ms4.stats()["unique_records"],
                self.ms4.stats(),
                daemon.log_tail(40)
            );
        }
    }

    /// Waits until MS4 holds at least `n` unique records; panics with the daemon's log otherwise.
    pub fn wait_at_least(&self, n: u64, timeout: Duration, daemon: &Daemon) {
        let ok = wait_until(timeout, || {
            self.ms4.stats()["unique_records"].as_u64() >= Some(n)
        });
        assert!(
            ok,
            "MS4 has {} of {n}; stats {}\n{}",
            self.ms4.stats()["unique_records"],
            self.ms4.stats(),
            daemon.log_tail(40)
        );
    }

    /// Nothing left anywhere in the pipeline (waiting a little for the last acknowledgements,
    /// which follow MS4's answer).
    pub fn assert_drained(&self) {
        wait_until(Duration::from_secs(15), || {
            self.xlen("inbound") + self.xlen("outbound") == 0
                && self.pending("inbound", "processors") + self.pending("outbound", "senders") == 0
        });
        assert_eq!(self.xlen("inbound"), 0, "inbound stream not empty");
        assert_eq!(self.xlen("outbound"), 0, "outbound stream not empty");
        assert_eq!(self.pending("inbound", "processors"), 0, "inbound pending");
        assert_eq!(self.pending("outbound", "senders"), 0, "outbound pending");
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .build()
}

/// GET returning (status, body as JSON or as a string).
pub fn get(url: &str) -> (u16, String) {
    match agent().get(url).call() {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

/// POST a JSON body, returning (status, body).
pub fn post(url: &str, json: &str) -> (u16, String) {
    match agent()
        .post(url)
        .set("Content-Type", "application/json")
        .send_string(json)
    {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

/// A simulator (`ms1-sim ms4|graph`) as a child process, killed when dropped.
pub struct Sim {
    _process: SimulatorProcess,
    pub url: String,
}

/// The MS4 simulator.
pub type Ms4Sim = Sim;

impl Sim {
    /// The MS4 simulator, accepting [`API_KEY`].
    pub fn start(args: &[&str]) -> Self {
        let mut all = vec!["--api-key", API_KEY];
        all.extend_from_slice(args);
        Self::start_kind("ms4", &all)
    }

    /// The Graph simulator.
    pub fn graph(args: &[&str]) -> Self {
        Self::start_kind("graph", args)
    }

    fn start_kind(kind: &str, args: &[&str]) -> Self {
        let process = SimulatorProcess::start(sim_bin(), kind, args, Stdio::inherit())
            .unwrap_or_else(|e| panic!("start the {kind} simulator: {e:#}"));
        Self {
            url: process.url.clone(),
            _process: process,
        }
    }

    pub fn stats(&self) -> Value {
        let (_, body) = get(&format!("{}/_sim/stats", self.url));
        serde_json::from_str(&body).unwrap_or(Value::Null)
    }

    pub fn keys(&self) -> Vec<String> {
        let (_, body) = get(&format!("{}/_sim/keys", self.url));
        serde_json::from_str(&body).unwrap()
    }

    pub fn configure(&self, cfg: Value) {
        self.post("/_sim/config", cfg);
    }

    /// POSTs JSON to a control route; returns the answer's JSON.
    pub fn post(&self, path: &str, body: Value) -> Value {
        match agent().post(&format!("{}{path}", self.url)).send_json(body) {
            Ok(r) => r.into_json().unwrap_or(Value::Null),
            Err(e) => panic!("simulator refused {path}: {e}"),
        }
    }

    pub fn get_json(&self, path: &str) -> Value {
        let (_, body) = get(&format!("{}{path}", self.url));
        serde_json::from_str(&body).unwrap_or(Value::Null)
    }
}

/// The daemon as a child process.
pub struct Daemon {
    child: Option<Child>,
    /// A command the daemon runs under (`wrapper… BIN run`); empty: BIN itself.
    wrapper: Vec<String>,
    env: Vec<(String, String)>,
    pub control: String,
    log: PathBuf,
}

impl Daemon {
    fn start(env: Vec<(String, String)>, log: PathBuf) -> Self {
        Self::start_wrapped(Vec::new(), env, log)
    }

    fn start_wrapped(wrapper: Vec<String>, mut env: Vec<(String, String)>, log: PathBuf) -> Self {
        if !env.iter().any(|(k, _)| k == "MS1__CONTROL__BIND") {
            let port = free_port().unwrap();
            env.push(("MS1__CONTROL__BIND".into(), format!("127.0.0.1:{port}")));
        }
        let bind = env
            .iter()
            .find(|(k, _)| k == "MS1__CONTROL__BIND")
            .map(|(_, v)| v.clone())
            .unwrap();
        let mut d = Self {
            child: None,
            wrapper,
            env,
            control: format!("http://{bind}"),
            log,
        };
        d.spawn();
        d
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut command = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let child = command
            .arg("run")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start the daemon");
        self.child = Some(child);
        let up = wait_until(Duration::from_secs(20), || {
            get(&format!("{}/health", self.control)).0 == 200
        });
        assert!(up, "daemon did not come up:\n{}", self.log_tail(30));
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM; returns how long the process took to exit and its exit code.
    pub fn terminate(&mut self) -> (Duration, Option<i32>) {
        let mut c = self.child.take().expect("daemon running");
        let started = Instant::now();
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let status = c.wait().unwrap();
        (started.elapsed(), status.code())
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    pub fn ready(&self) -> (u16, Value) {
        let (code, body) = get(&format!("{}/ready", self.control));
        (code, serde_json::from_str(&body).unwrap_or(Value::Null))
    }

    pub fn metrics(&self) -> String {
        get(&format!("{}/metrics/prometheus", self.control)).1
    }

    /// The value of a metric line (`name` or `name{labels}`), summed over label sets that
    /// start with it.
    pub fn metric(&self, name: &str) -> f64 {
        self.metrics()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| {
                l.starts_with(name)
                    && matches!(
                        l.as_bytes().get(name.len()),
                        Some(b' ') | Some(b'{') | Some(b',') | Some(b'}')
                    )
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}
