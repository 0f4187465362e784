//! `ms1-ingestor demo`: the whole delivery path on one machine, with nothing installed but
//! redis-server.
//!
//! It starts a private redis-server, the MS4 simulator (with MS4's per-minute limit) and the
//! daemon as a child process, fills the inbound stream with synthetic invoice e-mails (a few
//! of them invalid for MS4, a few malformed), shows the mail flowing, stops the daemon with
//! SIGTERM and prints the summary. It exits 0 only when nothing was lost.

use crate::redis_launcher::{free_port, PrivateRedis};
use crate::synthetic::{self, LoadPlan};
use ms1_actors::Store;
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, clap::Args)]
pub struct DemoOptions {
    /// How many synthetic invoice e-mails.
    #[arg(long, default_value_t = 5_000)]
    pub count: u64,
    /// How many of them MS4 refuses (they end in the dead-letter stream).
    #[arg(long, default_value_t = 5)]
    pub invalid: u64,
    /// How many malformed entries to add (dead-lettered before MS4).
    #[arg(long, default_value_t = 2)]
    pub malformed: u64,
    /// MS4's per-minute request limit, on the simulator and in the daemon.
    #[arg(long, default_value_t = 600)]
    pub rate_limit_per_min: u32,
    /// Working directory (Redis data, logs); emptied first.
    #[arg(long, default_value = ".demo")]
    pub dir: PathBuf,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 300)]
    pub timeout_s: u64,
}

/// Kills the child when dropped.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn run(opts: DemoOptions) -> anyhow::Result<()> {
    crate::daemon::install_tls_provider();
    let exe = std::env::current_exe()?;
    let _ = std::fs::remove_dir_all(&opts.dir);
    std::fs::create_dir_all(&opts.dir)?;
    let dir = opts.dir.canonicalize()?;

    let redis = PrivateRedis::start(&dir.join("redis"), None, false)?;
    println!(
        "redis-server     {} (data in {})",
        redis.url(),
        dir.join("redis").display()
    );

    let mut sim = Command::new(&exe)
        .args(["sim", "ms4", "--port", "0", "--api-key", "demo-key"])
        .args(["--rate-limit-per-min", &opts.rate_limit_per_min.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(sim.stdout.take().expect("piped")).read_line(&mut line)?;
    let sim = ChildGuard(sim);
    let ms4_url = line
        .trim()
        .rsplit(' ')
        .next()
        .unwrap_or_default()
        .to_string();
    anyhow::ensure!(
        ms4_url.starts_with("http://"),
        "the MS4 simulator did not start: {line}"
    );
    println!(
        "MS4 simulator    {ms4_url} ({} requests/min)",
        opts.rate_limit_per_min
    );

    let control = format!("127.0.0.1:{}", free_port()?);
    let log_path = dir.join("daemon.log");
    let log = std::fs::File::create(&log_path)?;
    let daemon = Command::new(&exe)
        .arg("run")
        .env("MS1__REDIS__URL", redis.url())
        .env("MS1__MS4__BASE_URL", &ms4_url)
        .env("MS1__MS4__API_KEY", "demo-key")
        .env(
            "MS1__MS4__RATE_LIMIT_PER_MIN",
            opts.rate_limit_per_min.to_string(),
        )
        .env("MS1__CONTROL__BIND", &control)
        .env("MS1__LOG__FORMAT", "json")
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let mut daemon = ChildGuard(daemon);
    println!(
        "daemon           pid {}, control API http://{control}, log {}",
        daemon.0.id(),
        log_path.display()
    );

    let plan = LoadPlan {
        count: opts.count,
        mailboxes: 3,
        start: 0,
        invalid: opts.invalid.min(opts.count),
        malformed: opts.malformed,
        rate_per_s: None,
    };
    let expected = opts.count + opts.malformed;
    let outcome = actix_rt::System::new().block_on(async {
        let store = Store::open(&redis.url(), "ms1:")?;
        let loaded = synthetic::load(&store, &plan).await?;
        println!("inbound stream   {loaded} synthetic invoice e-mails loaded\n");
        watch(
            &store,
            &ms4_url,
            expected,
            Duration::from_secs(opts.timeout_s),
        )
        .await
    })?;

    // Graceful stop, as systemd would.
    let _ = Command::new("kill")
        .args(["-TERM", &daemon.0.id().to_string()])
        .status();
    let stopped = Instant::now();
    while daemon.0.try_wait()?.is_none() && stopped.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(sim);

    let lost = expected.saturating_sub(outcome.delivered + outcome.dead_lettered);
    println!();
    println!("summary: {} received, {} delivered, {} dead-lettered, {} duplicates at MS4, {} requests ({} answered 429)",
        expected, outcome.delivered, outcome.dead_lettered, outcome.duplicates, outcome.requests, outcome.throttled);
    println!("{} delivered, {lost} lost", outcome.delivered);
    anyhow::ensure!(
        lost == 0 && !outcome.timed_out,
        "{lost} e-mails unaccounted for; see {}",
        log_path.display()
    );
    Ok(())
}

struct Outcome {
    delivered: u64,
    dead_lettered: u64,
    duplicates: u64,
    requests: u64,
    throttled: u64,
    timed_out: bool,
}

/// Shows progress until every e-mail is delivered or dead-lettered and the streams are empty.
async fn watch(
    store: &Store,
    ms4_url: &str,
    expected: u64,
    timeout: Duration,
) -> anyhow::Result<Outcome> {
    let http = awc::Client::default();
    let keys = store.keys().clone();
    let started = Instant::now();
    let tty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut last_line = Instant::now() - Duration::from_secs(10);
    loop {
        let stats: serde_json::Value = http
            .get(format!("{ms4_url}/_sim/stats"))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("MS4 simulator: {e}"))?
            .json()
            .await?;
        let n = |k: &str| stats[k].as_u64().unwrap_or(0);
        let delivered = n("unique_records");
        let dead = store.len(&keys.dlq()).await?;
        let backlog = store.len(&keys.inbound()).await? + store.len(&keys.outbound()).await?;
        let secs = started.elapsed().as_secs_f64();
        let width = 30usize;
        let done = ((delivered + dead) as f64 / expected.max(1) as f64).min(1.0);
        let bar: String = (0..width)
            .map(|i| {
                if (i as f64) < done * width as f64 {
                    '#'
                } else {
                    '.'
                }
            })
            .collect();
        let finished = delivered + dead >= expected && backlog == 0;
        let progress = format!(
            "[{bar}] {delivered:>6} delivered  {dead:>3} dead-lettered  {backlog:>6} queued  {:>6.0}/s  {secs:>5.1}s",
            delivered as f64 / secs.max(0.001)
        );
        if tty {
            print!("\r{progress} ");
            std::io::stdout().flush()?;
        } else if finished || last_line.elapsed() >= Duration::from_secs(2) {
            println!("{progress}");
            last_line = Instant::now();
        }
        let timed_out = started.elapsed() > timeout;
        if finished || timed_out {
            if tty {
                println!();
            }
            return Ok(Outcome {
                delivered,
                dead_lettered: dead,
                duplicates: n("duplicate_records"),
                requests: n("requests_total"),
                throttled: n("rate_limited"),
                timed_out,
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
