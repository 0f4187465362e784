//! `ms1-sim demo`: the whole system on one machine, with nothing installed but
//! redis-server and dovecot-imapd.
//!
//! It starts the MS4 simulator (with MS4's per-minute limit), the Graph
//! simulator holding a few thousand synthetic invoices in several mailboxes (a few of them
//! invalid for MS4), a real Dovecot with an IMAP mailbox of invoices, and the daemon (the `ms1-ingestor`
//! binary) as a child process with delta polling and webhooks for Graph, and UID fetch with IDLE for IMAP
//! (delivered messages are then flagged `\Seen`). While the seeded mail flows, new mail
//! arrives in bursts: through Graph change notifications and IMAP IDLE. At the end it stops
//! the daemon with SIGTERM (which deletes the subscriptions) and prints the summary. It exits
//! 0 only when nothing was lost.

use crate::process::SimulatorProcess;
use crate::redis_launcher::free_port;
use ms1_ingestor::cli;
use ms1_ingestor::daemon::install_tls_provider;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct DemoOptions {
    /// Synthetic invoices waiting in the mailboxes at start (spread over the mailboxes).
    #[arg(long, default_value_t = 3_000)]
    pub count: u64,
    /// Mailboxes in the Graph simulator.
    #[arg(long, default_value_t = 3)]
    pub mailboxes: u64,
    /// Invoices that MS4 refuses (they end in the dead-letter stream).
    #[arg(long, default_value_t = 6)]
    pub invalid: u64,
    /// Invoices arriving during the demo, in bursts, delivered through webhooks.
    #[arg(long, default_value_t = 600)]
    pub live: u64,
    /// Invoices waiting in the IMAP mailbox (a real Dovecot) at start; 0: no IMAP source.
    #[arg(long, default_value_t = 600)]
    pub imap_count: u64,
    /// Invoices arriving in the IMAP mailbox during the demo, in bursts (IDLE brings them).
    #[arg(long, default_value_t = 120)]
    pub imap_live: u64,
    /// MS4's per-minute request limit, on the simulator and in the daemon.
    #[arg(long, default_value_t = 600)]
    pub rate_limit_per_min: u32,
    /// Working directory (Redis data, logs); emptied first.
    #[arg(long, default_value = ".demo")]
    pub dir: PathBuf,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout_s: u64,
    /// The daemon binary to run (default: `ms1-ingestor` beside this `ms1-sim`, as cargo
    /// builds them into one target directory).
    #[arg(long, env = "MS1_DEMO_DAEMON")]
    pub daemon: Option<PathBuf>,
}

/// The daemon binary: `explicit`, else `ms1-ingestor` in the directory of the running
/// `ms1-sim`.
pub fn daemon_binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = match explicit {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()?.with_file_name("ms1-ingestor"),
    };
    anyhow::ensure!(
        path.is_file(),
        "no daemon binary at {}: build it (cargo build -p ms1-ingestor --bin ms1-ingestor, with --release for a release ms1-sim) or say where it is with --daemon PATH",
        path.display()
    );
    Ok(path)
}

/// Kills the child when dropped.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `ms1-sim KIND …` (this binary), its messages discarded.
fn simulator(exe: &Path, kind: &str, args: &[&str]) -> anyhow::Result<SimulatorProcess> {
    SimulatorProcess::start(exe, kind, args, Stdio::null())
}

pub fn run(opts: DemoOptions) -> anyhow::Result<()> {
    install_tls_provider();
    let exe = std::env::current_exe()?;
    let daemon_bin = daemon_binary(opts.daemon.as_deref())?;
    let _ = std::fs::remove_dir_all(&opts.dir);
    std::fs::create_dir_all(&opts.dir)?;
    let dir = opts.dir.canonicalize()?;
    let mailboxes: Vec<String> = (0..opts.mailboxes.max(1))
        .map(|i| format!("invoices-{i}@contoso.example"))
        .collect();
    let per_mailbox = opts.count / mailboxes.len() as u64;

    let limit = opts.rate_limit_per_min.to_string();
    let ms4 = simulator(
        &exe,
        "ms4",
        &["--api-key", "demo-key", "--rate-limit-per-min", &limit],
    )?;
    let ms4_url = ms4.url.clone();
    println!(
        "MS4 simulator    {ms4_url} ({} requests/min)",
        opts.rate_limit_per_min
    );
    let graph = simulator(
        &exe,
        "graph",
        &[
            "--mailboxes",
            &mailboxes.join(","),
            "--messages-per-mailbox",
            &per_mailbox.to_string(),
        ],
    )?;
    let graph_url = graph.url.clone();
    println!(
        "Graph simulator  {graph_url} ({} mailboxes × {per_mailbox} invoices)",
        mailboxes.len()
    );

    let imap_user = "invoices@contoso.example";
    let imap_live = if opts.imap_count > 0 {
        opts.imap_live
    } else {
        0
    };
    let dovecot = if opts.imap_count > 0 {
        let secret = uuid::Uuid::new_v4().simple().to_string();
        let mut dc = crate::dovecot_launcher::PrivateDovecot::start(
            &dir.join("dovecot"),
            &[(imap_user, &secret)],
            false,
        )
        .map_err(|e| anyhow::anyhow!("{e} (or run with --imap-count 0)"))?;
        let mail: Vec<Vec<u8>> = (0..opts.imap_count)
            .map(|n| crate::synthetic::mime_message(n, "demo-imap", 4_096))
            .collect();
        dc.deliver(imap_user, "INBOX", &mail)?;
        std::fs::write(
            dir.join("imap.toml"),
            format!(
                "# The demo's IMAP source (see config/default.toml for every key).\n\
[[imap.sources]]\nname = \"dovecot-demo\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\n\
username = \"{imap_user}\"\npassword = \"env:MS1_DEMO_IMAP_PASSWORD\"\nafter_delivery = \"seen\"\n",
                dc.port()
            ),
        )?;
        println!(
            "Dovecot (IMAP)   127.0.0.1:{} ({imap_user}: {} invoices in INBOX; IDLE, \\Seen after delivery)",
            dc.port(),
            opts.imap_count
        );
        Some((std::cell::RefCell::new(dc), secret))
    } else {
        None
    };

    let control = format!("127.0.0.1:{}", free_port()?);
    let token = uuid::Uuid::new_v4().simple().to_string();
    let log_path = dir.join("daemon.log");
    let log = std::fs::File::create(&log_path)?;
    let mut daemon = Command::new(&daemon_bin);
    if let Some((_, secret)) = &dovecot {
        daemon
            .env("MS1_CONFIG", dir.join("imap.toml"))
            .env("MS1_DEMO_IMAP_PASSWORD", secret);
    }
    let daemon = daemon
        .arg("run")
        // redis.url empty: the daemon starts a private redis-server (AOF on) in data_dir.
        .env("MS1__REDIS__URL", "")
        .env("MS1__REDIS__DATA_DIR", dir.join("redis"))
        .env("MS1__MS4__BASE_URL", &ms4_url)
        .env("MS1__MS4__API_KEY", "demo-key")
        .env(
            "MS1__MS4__RATE_LIMIT_PER_MIN",
            opts.rate_limit_per_min.to_string(),
        )
        .env("MS1__GRAPH__BASE_URL", format!("{graph_url}/v1.0"))
        .env("MS1__GRAPH__AUTHORITY", format!("{graph_url}/{{tenant}}"))
        .env("MS1__GRAPH__TENANT_ID", "contoso")
        .env("MS1__GRAPH__CLIENT_ID", "ms1-app")
        .env("MS1__GRAPH__CLIENT_SECRET", "sim-secret")
        .env("MS1__GRAPH__MAILBOXES", mailboxes.join(","))
        .env("MS1__GRAPH__PAGE_SIZE", "500")
        .env("MS1__WEBHOOK__ENABLED", "true")
        .env("MS1__WEBHOOK__PUBLIC_URL", format!("http://{control}"))
        .env(
            "MS1__WEBHOOK__CLIENT_STATE",
            uuid::Uuid::new_v4().simple().to_string(),
        )
        .env("MS1__CONTROL__BIND", &control)
        .env("MS1__CONTROL__TOKEN", &token)
        .env("MS1__SESSION__AUTOSTART", "false")
        .env("MS1__LOG__FORMAT", "json")
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let mut daemon = ChildGuard(daemon);
    println!(
        "redis-server     private, started by the daemon (redis.url is empty), data in {}",
        dir.join("redis").display()
    );
    println!(
        "daemon           pid {}, control API http://{control}, log {}\n",
        daemon.0.id(),
        log_path.display()
    );

    let api = cli::Client::new(&cli::Target {
        url: Some(format!("http://{control}")),
        token: Some(token.clone()),
        config: None,
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    // Wait for the control API, then start the session through it, as an operator would.
    let up = Instant::now();
    while api.call("GET", "/session/status", None).is_err() {
        anyhow::ensure!(
            up.elapsed() < Duration::from_secs(30),
            "the daemon did not come up; see {}",
            log_path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let started = api
        .call(
            "POST",
            "/session/start",
            Some(
                json!({"polling_mode": "scheduled", "polling_interval": 5, "enable_webhook": true}),
            ),
        )
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    println!(
        "session          {} started through POST /session/start (scheduled polling, webhooks)\n",
        started["session_id"].as_str().unwrap_or("?")
    );
    println!("status --watch   (what `ms1-ingestor status --watch` shows)");

    let outcome = actix_rt::System::new().block_on(async {
        let http = awc::Client::default();
        // A few invoices MS4 will refuse.
        for i in 0..opts.invalid {
            let mb = &mailboxes[(i % mailboxes.len() as u64) as usize];
            post(
                &http,
                &format!("{graph_url}/_sim/mail"),
                json!({"mailbox": mb, "count": 1, "invalid": 1}),
            )
            .await?;
        }
        let watch = Watch {
            http: &http,
            ms4_url: &ms4_url,
            graph_url: &graph_url,
            mailboxes: &mailboxes,
            live: opts.live,
            imap: dovecot.as_ref().map(|(dc, _)| dc),
            imap_live,
            imap_next: opts.imap_count,
            expected: per_mailbox * mailboxes.len() as u64
                + opts.invalid
                + opts.live
                + opts.imap_count
                + imap_live,
            timeout: Duration::from_secs(opts.timeout_s),
            api: &api,
        };
        watch.run().await
    })?;

    // The operator stops the session (intake closes, subscriptions are deleted, the queue
    // drains), then the service (SIGTERM, as systemd would).
    let _ = api.call(
        "POST",
        "/session/stop",
        Some(json!({"reason": "demo finished"})),
    );
    let stop_wait = Instant::now();
    while stop_wait.elapsed() < Duration::from_secs(30)
        && api
            .call("GET", "/session/status", None)
            .map(|s| s["status"] != "stopped")
            .unwrap_or(false)
    {
        std::thread::sleep(Duration::from_millis(200));
    }
    let session = api
        .call("GET", "/session/status", None)
        .unwrap_or(Value::Null);
    let _ = Command::new("kill")
        .args(["-TERM", &daemon.0.id().to_string()])
        .status();
    let stopped = Instant::now();
    while daemon.0.try_wait()?.is_none() && stopped.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let graph_stats = actix_rt::System::new().block_on(async {
        get(&awc::Client::default(), &format!("{graph_url}/_sim/stats")).await
    })?;
    drop((ms4, graph));
    let imap_seen = dovecot.as_ref().map_or(0, |(dc, _)| {
        dc.borrow()
            .count_flagged(imap_user, "INBOX", 'S')
            .unwrap_or(0)
    });
    drop(dovecot);

    let lost = outcome
        .expected
        .saturating_sub(outcome.delivered + outcome.dead_lettered);
    println!();
    println!(
        "summary: {} e-mails ({} waiting at start, {} arriving during the demo), {} delivered, {} dead-lettered, {} duplicates at MS4",
        outcome.expected, outcome.expected - opts.live - imap_live, opts.live + imap_live, outcome.delivered, outcome.dead_lettered, outcome.duplicates
    );
    println!(
        "         MS4: {} requests, {} answered 429; Graph: {} throttled, {} subscriptions created and {} deleted on stop, {} notifications sent",
        outcome.requests,
        outcome.throttled,
        sum_mailboxes(&graph_stats, "throttled"),
        graph_stats["subscriptions_created"],
        graph_stats["deleted_subscriptions"],
        graph_stats["notifications_sent"],
    );
    if opts.imap_count > 0 {
        println!(
            "         IMAP: {} invoices in Dovecot ({} waiting at start, {} arriving during the demo), {} flagged \\Seen after MS4 accepted them",
            opts.imap_count + imap_live,
            opts.imap_count,
            imap_live,
            imap_seen,
        );
    }
    println!(
        "         session {}: {}, {} processed, {} failed (dead-lettered), {} duplicates dropped",
        session["session_id"].as_str().unwrap_or("?"),
        session["status"].as_str().unwrap_or("?"),
        session["emails_processed"],
        session["emails_failed"],
        session["emails_duplicate"],
    );
    println!("{} delivered, {lost} lost", outcome.delivered);
    anyhow::ensure!(
        lost == 0 && !outcome.timed_out,
        "{lost} e-mails unaccounted for; see {}",
        log_path.display()
    );
    Ok(())
}

async fn get(http: &awc::Client, url: &str) -> anyhow::Result<Value> {
    http.get(url)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("{url}: {e}"))?
        .json::<Value>()
        .limit(16 * 1024 * 1024)
        .await
        .map_err(|e| anyhow::anyhow!("{url}: {e}"))
}

async fn post(http: &awc::Client, url: &str, body: Value) -> anyhow::Result<()> {
    let resp = http
        .post(url)
        .send_json(&body)
        .await
        .map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
    anyhow::ensure!(resp.status().is_success(), "{url}: {}", resp.status());
    Ok(())
}

fn sum_mailboxes(stats: &Value, field: &str) -> u64 {
    stats["mailboxes"]
        .as_object()
        .map(|m| m.values().filter_map(|v| v[field].as_u64()).sum())
        .unwrap_or(0)
}

struct Outcome {
    expected: u64,
    delivered: u64,
    dead_lettered: u64,
    duplicates: u64,
    requests: u64,
    throttled: u64,
    timed_out: bool,
}

struct Watch<'a> {
    http: &'a awc::Client,
    ms4_url: &'a str,
    graph_url: &'a str,
    mailboxes: &'a [String],
    live: u64,
    /// The IMAP mailbox, for new mail during the demo.
    imap: Option<&'a std::cell::RefCell<crate::dovecot_launcher::PrivateDovecot>>,
    imap_live: u64,
    /// Number of the next IMAP invoice.
    imap_next: u64,
    expected: u64,
    timeout: Duration,
    api: &'a cli::Client,
}

impl Watch<'_> {
    /// Shows progress (and sends the live bursts) until every e-mail is delivered or
    /// dead-lettered and the streams are empty.
    async fn run(&self) -> anyhow::Result<Outcome> {
        let started = Instant::now();
        let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
        let mut last_line = Instant::now() - Duration::from_secs(10);
        let bursts = 6u64;
        let mut sent_live = 0u64;
        let mut sent_imap = 0u64;
        let mut next_imap_burst = Instant::now() + Duration::from_secs(3);
        loop {
            let ms4 = get(self.http, &format!("{}/_sim/stats", self.ms4_url)).await?;
            let n = |k: &str| ms4[k].as_u64().unwrap_or(0);
            // New mail in bursts once the subscriptions exist.
            if sent_live < self.live && started.elapsed() > Duration::from_secs(2) {
                let graph = get(self.http, &format!("{}/_sim/stats", self.graph_url)).await?;
                let subscribed = graph["subscriptions"]
                    .as_array()
                    .is_some_and(|s| s.len() == self.mailboxes.len());
                if subscribed {
                    let burst = (self.live / bursts).max(1).min(self.live - sent_live);
                    for (i, mb) in self.mailboxes.iter().enumerate() {
                        let share = burst / self.mailboxes.len() as u64
                            + u64::from((i as u64) < burst % self.mailboxes.len() as u64);
                        if share > 0 {
                            post(
                                self.http,
                                &format!("{}/_sim/mail", self.graph_url),
                                json!({"mailbox": mb, "count": share}),
                            )
                            .await?;
                        }
                    }
                    sent_live += burst;
                }
            }
            // New IMAP mail in bursts too: IDLE brings it without waiting for a poll.
            if let Some(dc) = self.imap {
                if sent_imap < self.imap_live && Instant::now() >= next_imap_burst {
                    let burst = (self.imap_live / bursts)
                        .max(1)
                        .min(self.imap_live - sent_imap);
                    let start = self.imap_next + sent_imap;
                    let mail: Vec<Vec<u8>> = (start..start + burst)
                        .map(|n| crate::synthetic::mime_message(n, "demo-imap", 4_096))
                        .collect();
                    dc.borrow_mut()
                        .deliver("invoices@contoso.example", "INBOX", &mail)?;
                    sent_imap += burst;
                    next_imap_burst = Instant::now() + Duration::from_secs(2);
                }
            }
            let delivered = n("unique_records");
            let session = self
                .api
                .call("GET", "/session/status", None)
                .unwrap_or(Value::Null);
            let sn = |k: &str| session[k].as_u64().unwrap_or(0);
            let dead = sn("dead_letter_depth");
            let backlog = sn("queue_depth");
            let secs = started.elapsed().as_secs_f64();
            let width = 30usize;
            let done = ((delivered + dead) as f64 / self.expected.max(1) as f64).min(1.0);
            let bar: String = (0..width)
                .map(|i| {
                    if (i as f64) < done * width as f64 {
                        '#'
                    } else {
                        '.'
                    }
                })
                .collect();
            let finished = sent_live >= self.live
                && sent_imap >= self.imap_live
                && delivered + dead >= self.expected
                && backlog == 0;
            let progress = format!(
                "{} [{bar}] processed {:>5} delivered {:>5} ({:>4.0}/s) failed {:>2} dup {} queued {:>5}  {secs:>5.1}s",
                session["status"].as_str().unwrap_or("?"),
                sn("emails_processed"),
                sn("emails_delivered"),
                delivered as f64 / secs.max(0.001),
                sn("emails_failed"),
                sn("emails_duplicate"),
                sn("queue_depth"),
            );
            if tty {
                print!("\r{progress} ");
                std::io::stdout().flush()?;
            } else if finished || last_line.elapsed() >= Duration::from_secs(2) {
                println!("{progress}");
                last_line = Instant::now();
            }
            let timed_out = started.elapsed() > self.timeout;
            if finished || timed_out {
                if tty {
                    println!();
                }
                return Ok(Outcome {
                    expected: self.expected,
                    delivered,
                    dead_lettered: dead,
                    duplicates: n("duplicate_records"),
                    requests: n("requests_total"),
                    throttled: n("rate_limited"),
                    timed_out,
                });
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}
