//! The daemon on a Redis that speaks only TLS and wants a password, as managed Redis does
//! (Azure Cache for Redis on 6380, ElastiCache with in-transit encryption): a real
//! redis-server with `--tls-port` and `--port 0`, certificates from a private CA.
//!
//! Mail flows end to end through it (every connection, the blocking readers' included, is TLS:
//! the server has no plain port); a wrong or missing password, an unknown CA and a missing
//! client certificate stop the start with one message naming the setting to fix, not a loop
//! of actor restarts; TLS files that are not readable files are refused at start by key.

mod common;

use common::{TestRedis, World};
use ms1_ingestor::private_redis::PrivateRedis;
use ms1_sim::private_ca;
use ms1_sim::redis_launcher::{start_tls, PrivateCluster, RedisTls};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PASSWORD: &str = "s3cret-redis-pass";

/// A TLS-only private redis-server and how the daemon reaches it.
struct TlsRedis {
    redis: PrivateRedis,
    /// The private CA's directory (`ca.pem`, `client.pem`, `client.key`, …).
    pki: PathBuf,
    /// Whether the server wants a client certificate (the daemon is then given one).
    auth_clients: bool,
}

impl TlsRedis {
    fn start(dir: &Path, auth_clients: bool) -> Self {
        let pki = dir.join("pki");
        private_ca::make_certificates(&pki).expect("openssl makes a CA");
        private_ca::make_client_certificate(&pki).expect("openssl makes a client certificate");
        let tls = RedisTls {
            cert: pki.join("server.pem"),
            key: pki.join("server.key"),
            ca: pki.join("ca.pem"),
            auth_clients,
            password: PASSWORD.into(),
        };
        let redis = start_tls(&dir.join("redis"), &tls, false)
            .expect("redis-server starts with TLS (Debian's is built with it)");
        Self {
            redis,
            pki,
            auth_clients,
        }
    }

    fn ca(&self) -> String {
        self.pki.join("ca.pem").display().to_string()
    }
}

impl TestRedis for TlsRedis {
    const PREFIX: &'static str = common::PREFIX;

    /// rediss://, the password from the environment (`env:`), the private CA, and the client
    /// certificate with its key from a file (`file:`) when the server wants one.
    fn daemon_env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            ("MS1__REDIS__URL".into(), self.redis.url()),
            (
                "MS1__REDIS__PASSWORD".into(),
                "env:TEST_REDIS_PASSWORD".into(),
            ),
            ("TEST_REDIS_PASSWORD".into(), PASSWORD.into()),
            ("MS1__REDIS__CA_FILE".into(), self.ca()),
        ];
        if self.auth_clients {
            env.push((
                "MS1__REDIS__CLIENT_CERT".into(),
                self.pki.join("client.pem").display().to_string(),
            ));
            env.push((
                "MS1__REDIS__CLIENT_KEY".into(),
                format!("file:{}", self.pki.join("client.key").display()),
            ));
        }
        env
    }

    fn connection(&self) -> redis::Connection {
        let read = |name: &str| std::fs::read(self.pki.join(name)).unwrap();
        let certs = redis::TlsCertificates {
            client_tls: self.auth_clients.then(|| redis::ClientTlsConfig {
                client_cert: read("client.pem"),
                client_key: read("client.key"),
            }),
            root_cert: Some(read("ca.pem")),
        };
        let url = format!("rediss://:{PASSWORD}@127.0.0.1:{}", self.redis.port());
        redis::Client::build_with_tls(url, certs)
            .unwrap()
            .get_connection()
            .unwrap()
    }
}

fn tls_world(auth_clients: bool) -> World<TlsRedis> {
    let dir = tempfile::tempdir().expect("tempdir");
    let redis = TlsRedis::start(dir.path(), auth_clients);
    World {
        dir,
        redis,
        ms4: common::Ms4Sim::start(&["--rate-limit-per-min", "0"]),
        graph: None,
    }
}

/// Runs `ms1-ingestor run` with the world's settings changed by `changes` (a value of `None`
/// removes the key) and expects it to refuse to start: it must exit non-zero within 30 s.
/// Returns what it printed.
fn refused_start(world: &World<TlsRedis>, changes: &[(&str, Option<&str>)]) -> String {
    let mut env = world.redis.daemon_env();
    env.push(("MS1__MS4__BASE_URL".into(), world.ms4.url.clone()));
    env.push(("MS1__MS4__API_KEY".into(), common::API_KEY.into()));
    env.push(("MS1__LOG__FORMAT".into(), "json".into()));
    let port = ms1_sim::redis_launcher::free_port().unwrap();
    env.push(("MS1__CONTROL__BIND".into(), format!("127.0.0.1:{port}")));
    for (key, value) in changes {
        env.retain(|(k, _)| k != key);
        if let Some(v) = value {
            env.push((key.to_string(), v.to_string()));
        }
    }
    let log = world.dir.path().join(format!("refused-{port}.log"));
    let file = std::fs::File::create(&log).unwrap();
    let mut child = Command::new(common::BIN)
        .arg("run")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env)
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the daemon kept running instead of refusing to start:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!status.success(), "exit {status}:\n{output}");
    eprintln!("refused start ({status}):\n{output}");
    output
}

#[test]
fn mail_flows_end_to_end_through_a_tls_only_redis_with_a_private_ca_and_a_password() {
    let world = tls_world(false);
    let daemon = world.daemon(&[]);
    world.load(0..2_000, |_| false);
    world.wait_delivered(2_000, Duration::from_secs(120), &daemon);
    assert_eq!(world.ms4.stats()["duplicate_records"], 0);
    world.assert_drained();
    let (code, ready) = daemon.ready();
    assert_eq!(code, 200, "{ready}");
    assert_eq!(ready["redis"], true, "{ready}");
    let log = daemon.log_tail(10_000);
    assert!(!log.contains(PASSWORD), "the password is in the log");
}

#[test]
fn a_wrong_or_missing_password_stops_the_start_with_a_message_naming_the_setting() {
    let world = tls_world(false);
    let wrong = refused_start(&world, &[("TEST_REDIS_PASSWORD", Some("not-it"))]);
    assert!(wrong.contains("redis.password"), "{wrong}");
    assert!(wrong.contains("authenticate"), "{wrong}");
    assert!(!wrong.contains("not-it"), "the password is echoed: {wrong}");
    let missing = refused_start(&world, &[("MS1__REDIS__PASSWORD", None)]);
    assert!(missing.contains("redis.password"), "{missing}");
    // The URL's password and the setting disagreeing is refused before any connection.
    let url = format!("rediss://:other@127.0.0.1:{}", world.redis.redis.port());
    let both = refused_start(&world, &[("MS1__REDIS__URL", Some(&url))]);
    assert!(both.contains("redis.password"), "{both}");
    assert!(both.contains("differs"), "{both}");
    // The URL's password alone is used.
    let url = format!(
        "rediss://:{PASSWORD}@127.0.0.1:{}",
        world.redis.redis.port()
    );
    let daemon = world.daemon(&[("MS1__REDIS__URL", &url), ("MS1__REDIS__PASSWORD", "")]);
    world.load(0..100, |_| false);
    world.wait_delivered(100, Duration::from_secs(60), &daemon);
}

#[test]
fn an_unknown_ca_stops_the_start_with_a_message_naming_the_tls_problem() {
    let world = tls_world(false);
    // A CA of its own, which did not sign the server's certificate.
    let other = world.dir.path().join("other-ca");
    private_ca::make_certificates(&other).unwrap();
    let other_ca = other.join("ca.pem").display().to_string();
    let out = refused_start(&world, &[("MS1__REDIS__CA_FILE", Some(&other_ca))]);
    assert!(out.contains("TLS"), "{out}");
    assert!(out.contains("redis.ca_file"), "{out}");
    assert!(
        out.contains("not signed by a CA the daemon trusts"),
        "{out}"
    );
    // No ca_file at all: the Mozilla roots do not know a private CA either.
    let out = refused_start(&world, &[("MS1__REDIS__CA_FILE", None)]);
    assert!(out.contains("redis.ca_file"), "{out}");
    assert!(out.contains("UnknownIssuer"), "{out}");
    // A plain redis:// URL on a TLS port looks like a server that hangs up; the daemon waits
    // for it as for any Redis that is down, and says what it may be.
    let plain = format!("redis://127.0.0.1:{}", world.redis.redis.port());
    let daemon = world.daemon(&[("MS1__REDIS__URL", &plain), ("MS1__REDIS__CA_FILE", "")]);
    let log = daemon.log_tail(50);
    assert!(log.contains("redis.url must be rediss://"), "{log}");
}

#[test]
fn a_server_that_wants_client_certificates_takes_the_daemon_with_one_and_refuses_it_without() {
    let world = tls_world(true);
    let out = refused_start(
        &world,
        &[
            ("MS1__REDIS__CLIENT_CERT", None),
            ("MS1__REDIS__CLIENT_KEY", None),
        ],
    );
    assert!(out.contains("redis.client_cert"), "{out}");
    let daemon = world.daemon(&[]);
    world.load(0..500, |_| false);
    world.wait_delivered(500, Duration::from_secs(60), &daemon);
    world.assert_drained();
}

#[test]
fn tls_files_that_are_not_readable_files_are_refused_at_start_by_key() {
    let dir = tempfile::tempdir().unwrap();
    let check = |env: &[(&str, &str)]| {
        let out = Command::new(common::BIN)
            .arg("check-config")
            .env_clear()
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let url = ("MS1__REDIS__URL", "rediss://redis.example.com:6380");
    let (ok, err) = check(&[url, ("MS1__REDIS__CA_FILE", "/nonexistent/ca.pem")]);
    assert!(!ok);
    assert!(err.contains("redis.ca_file"), "{err}");
    let here = dir.path().display().to_string();
    let (ok, err) = check(&[url, ("MS1__REDIS__CA_FILE", &here)]);
    assert!(!ok);
    assert!(err.contains("redis.ca_file"), "{err}");
    let (ok, err) = check(&[
        url,
        ("MS1__REDIS__CLIENT_CERT", "/nonexistent/client.pem"),
        ("MS1__REDIS__CLIENT_KEY", "-----BEGIN PRIVATE KEY-----"),
    ]);
    assert!(!ok);
    assert!(err.contains("redis.client_cert"), "{err}");
    // A secret that cannot be resolved is refused at load, naming its key.
    let (ok, err) = check(&[url, ("MS1__REDIS__CLIENT_KEY", "env:NOT_SET_ANYWHERE")]);
    assert!(!ok);
    assert!(
        err.contains("redis.client_key") && err.contains("NOT_SET_ANYWHERE"),
        "{err}"
    );
    // A CA file for a plain redis:// URL is a mistake worth saying.
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "x").unwrap();
    let ca = ca.display().to_string();
    let (ok, err) = check(&[
        ("MS1__REDIS__URL", "redis://127.0.0.1:6379"),
        ("MS1__REDIS__CA_FILE", &ca),
    ]);
    assert!(!ok);
    assert!(
        err.contains("redis.ca_file") && err.contains("rediss://"),
        "{err}"
    );
    // A file that is not PEM is refused naming the key, by check-config and by run.
    let url_and_ca = [url, ("MS1__REDIS__CA_FILE", ca.as_str())];
    let (ok, err) = check(&url_and_ca);
    assert!(!ok);
    assert!(err.contains("redis.ca_file"), "{err}");
    assert!(err.contains("no PEM certificate"), "{err}");
    let out = Command::new(common::BIN)
        .arg("run")
        .env_clear()
        .envs(url_and_ca)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("redis.ca_file"), "{err}");
}

/// A private Redis Cluster (3 masters) that speaks only TLS, clients and cluster bus alike,
/// wants a password and client certificates.
struct TlsCluster {
    cluster: PrivateCluster,
    pki: PathBuf,
}

impl TestRedis for TlsCluster {
    const PREFIX: &'static str = common::CLUSTER_PREFIX;

    fn daemon_env(&self) -> Vec<(String, String)> {
        let pki = |name: &str| self.pki.join(name).display().to_string();
        vec![
            ("MS1__REDIS__URL".into(), self.cluster.url()),
            ("MS1__REDIS__CLUSTER".into(), "true".into()),
            ("MS1__REDIS__PREFIX".into(), common::CLUSTER_PREFIX.into()),
            ("MS1__REDIS__PASSWORD".into(), PASSWORD.into()),
            ("MS1__REDIS__CA_FILE".into(), pki("ca.pem")),
            ("MS1__REDIS__CLIENT_CERT".into(), pki("client.pem")),
            (
                "MS1__REDIS__CLIENT_KEY".into(),
                format!("file:{}", pki("client.key")),
            ),
        ]
    }

    fn connection(&self) -> redis::Connection {
        let owner = self.cluster.master_of(common::CLUSTER_PREFIX).unwrap();
        self.cluster
            .node_client(owner)
            .unwrap()
            .get_connection()
            .unwrap()
    }
}

#[test]
fn mail_flows_end_to_end_through_a_redis_cluster_over_tls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = dir.path().join("pki");
    private_ca::make_certificates(&pki).unwrap();
    private_ca::make_client_certificate(&pki).unwrap();
    let tls = RedisTls {
        cert: pki.join("server.pem"),
        key: pki.join("server.key"),
        ca: pki.join("ca.pem"),
        auth_clients: true,
        password: PASSWORD.into(),
    };
    let cluster = PrivateCluster::start_tls(&dir.path().join("cluster"), 3, &tls, false)
        .expect("a Redis Cluster over TLS starts");
    let world = World {
        dir,
        redis: TlsCluster { cluster, pki },
        ms4: common::Ms4Sim::start(&["--rate-limit-per-min", "0"]),
        graph: None,
    };
    let daemon = world.daemon(&[]);
    world.load(0..2_000, |_| false);
    world.wait_delivered(2_000, Duration::from_secs(120), &daemon);
    assert_eq!(world.ms4.stats()["duplicate_records"], 0);
    world.assert_drained();
    let (code, ready) = daemon.ready();
    assert_eq!(code, 200, "{ready}");
    // Without the client certificate the cluster refuses the daemon at start, by name.
    let mut env = world.redis.daemon_env();
    env.retain(|(k, _)| !k.starts_with("MS1__REDIS__CLIENT_"));
    env.push(("MS1__MS4__BASE_URL".into(), world.ms4.url.clone()));
    let port = ms1_sim::redis_launcher::free_port().unwrap();
    env.push(("MS1__CONTROL__BIND".into(), format!("127.0.0.1:{port}")));
    let out = Command::new(common::BIN)
        .arg("run")
        .env_clear()
        .envs(env)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("redis.client_cert"), "{err}");
}
