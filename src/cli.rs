//! Operator verbs that talk to a running daemon's control API: `status [--watch]`,
//! `session start|stop`, `dlq list|show|replay|purge`. The address and token come from the
//! same settings as the daemon's (`control.bind`, `control.token`, or `--url`/`--token`).
//! Exit codes: 0 done; 1 the daemon refused (4xx/5xx, its message printed); 2 bad usage
//! (clap); 3 the daemon is unreachable.

use serde_json::{json, Value};
use std::io::Write;
use std::time::{Duration, Instant};

/// How to reach the control API.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// Control API base URL (default: http://<control.bind> from the settings).
    #[arg(long, env = "MS1_URL")]
    pub url: Option<String>,
    /// Bearer token (default: control.token from the settings / MS1__CONTROL__TOKEN).
    #[arg(long, env = "MS1_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// TOML file with the settings (for control.bind and control.token).
    #[arg(long, short, env = "MS1_CONFIG")]
    pub config: Option<std::path::PathBuf>,
}

/// A failed call, with the exit code it deserves.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Refused(String),
    #[error(
        "cannot reach the daemon at {url}: {reason} (is it running? see --url / control.bind)"
    )]
    Unreachable { url: String, reason: String },
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Refused(_) => 1,
            CliError::Other(_) => 1,
            CliError::Unreachable { .. } => 3,
        }
    }
}

pub struct Client {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl Client {
    /// The address and token from `--url`/`--token`, else from the settings. With both
    /// given the settings are not read (their `credential:` secrets resolve only inside the
    /// unit, where systemd sets `$CREDENTIALS_DIRECTORY`).
    pub fn new(t: &Target) -> Result<Self, CliError> {
        let (base, token) = match (&t.url, &t.token) {
            (Some(url), Some(token)) => (url.clone(), token.clone()),
            _ => {
                let settings =
                    crate::config::load(t.config.as_deref()).map_err(anyhow::Error::from)?;
                (
                    t.url
                        .clone()
                        .unwrap_or_else(|| format!("http://{}", settings.control.bind)),
                    t.token
                        .clone()
                        .unwrap_or_else(|| settings.control.token.expose().to_string()),
                )
            }
        };
        Ok(Self {
            base: base.trim_end_matches('/').to_string(),
            token,
            agent: ureq::AgentBuilder::new()
                .timeout(Duration::from_secs(15))
                .build(),
        })
    }

    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, CliError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.agent.request(method, &url);
        if !self.token.is_empty() {
            req = req.set("Authorization", &format!("Bearer {}", self.token));
        }
        let res = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match res {
            Ok(r) => Ok(r.into_json().unwrap_or(Value::Null)),
            Err(ureq::Error::Status(code, r)) => {
                let v: Value = r.into_json().unwrap_or(Value::Null);
                let msg = v["error"]["message"].as_str().unwrap_or("no details");
                Err(CliError::Refused(format!("{method} {path}: {code}: {msg}")))
            }
            Err(e) => Err(CliError::Unreachable {
                url,
                reason: e.to_string(),
            }),
        }
    }
}

fn print(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// `status`: the session, its counters and the queue; `--watch` redraws with rates and a
/// progress bar while a backlog drains.
pub fn status(c: &Client, watch: bool, every: Duration) -> Result<(), CliError> {
    if !watch {
        print(&c.call("GET", "/session/status", None)?);
        return Ok(());
    }
    let mut prev: Option<(Instant, u64)> = None;
    let mut peak_backlog = 0u64;
    loop {
        let s = c.call("GET", "/session/status", None)?;
        let n = |k: &str| s[k].as_u64().unwrap_or(0);
        let delivered = n("emails_delivered");
        let backlog = n("queue_depth");
        peak_backlog = peak_backlog.max(backlog);
        let rate = prev.map_or(0.0, |(t, d)| {
            delivered.saturating_sub(d) as f64 / t.elapsed().as_secs_f64().max(0.001)
        });
        prev = Some((Instant::now(), delivered));
        let done = if peak_backlog == 0 {
            1.0
        } else {
            1.0 - backlog as f64 / peak_backlog as f64
        };
        let bar: String = (0..30)
            .map(|i| if (i as f64) < done * 30.0 { '#' } else { '.' })
            .collect();
        print!(
            "\r\x1b[2K{} {:<8} [{bar}] processed {} delivered {} ({rate:.0}/s) failed {} dup {} queued {} dlq {}",
            s["session_id"].as_str().map_or("-".into(), |id| id.chars().take(8).collect::<String>()),
            s["status"].as_str().unwrap_or("?"),
            n("emails_processed"),
            delivered,
            n("emails_failed"),
            n("emails_duplicate"),
            backlog,
            n("dead_letter_depth"),
        );
        let _ = std::io::stdout().flush();
        std::thread::sleep(every);
    }
}

pub fn session_start(
    c: &Client,
    mode: &str,
    interval: Option<u64>,
    webhook: Option<bool>,
) -> Result<(), CliError> {
    let mut body = json!({ "polling_mode": mode });
    if let Some(i) = interval {
        body["polling_interval"] = json!(i);
    }
    if let Some(w) = webhook {
        body["enable_webhook"] = json!(w);
    }
    print(&c.call("POST", "/session/start", Some(body))?);
    Ok(())
}

pub fn session_stop(c: &Client, reason: &str) -> Result<(), CliError> {
    print(&c.call("POST", "/session/stop", Some(json!({ "reason": reason })))?);
    Ok(())
}

pub fn dlq_list(c: &Client, count: usize, stage: Option<&str>) -> Result<(), CliError> {
    let mut path = format!("/dlq?count={count}");
    if let Some(s) = stage {
        path.push_str(&format!("&stage={s}"));
    }
    let v = c.call("GET", &path, None)?;
    println!("{} dead letters", v["total"]);
    for e in v["entries"].as_array().into_iter().flatten() {
        println!(
            "{:<22} {:<9} {:>3} {:<32} {}",
            e["id"].as_str().unwrap_or(""),
            e["stage"].as_str().unwrap_or(""),
            e["status"],
            e["mailbox"].as_str().unwrap_or(""),
            e["reason"].as_str().unwrap_or(""),
        );
    }
    Ok(())
}

pub fn dlq_show(c: &Client, id: &str) -> Result<(), CliError> {
    print(&c.call("GET", &format!("/dlq/{id}"), None)?);
    Ok(())
}

/// The selector of a replay or purge from the CLI's arguments.
pub fn selector(ids: &[String], all: bool, stage: Option<&str>) -> Result<Value, CliError> {
    match (ids.is_empty(), all, stage) {
        (false, false, None) => Ok(json!({ "ids": ids })),
        (true, true, None) => Ok(json!({ "all": true })),
        (true, false, Some(s)) => Ok(json!({ "filter": { "stage": s } })),
        _ => Err(CliError::Refused(
            "say which dead letters: ids, --stage STAGE, or --all (one of them)".into(),
        )),
    }
}

/// Which dead letters a replay or purge applies to.
#[derive(Debug, Clone, clap::Args)]
pub struct Which {
    #[command(flatten)]
    pub target: Target,
    /// Dead letter ids (as `dlq list` shows them).
    pub ids: Vec<String>,
    /// Every dead letter of this stage: process, deliver or after_delivery.
    #[arg(long)]
    pub stage: Option<String>,
    /// Every dead letter.
    #[arg(long)]
    pub all: bool,
}

/// `dlq replay` / `dlq purge`: POST /dlq/{action} with the selection.
pub fn dlq_apply(action: &str, which: &Which) -> Result<(), CliError> {
    let sel = selector(&which.ids, which.all, which.stage.as_deref())?;
    let c = Client::new(&which.target)?;
    print(&c.call("POST", &format!("/dlq/{action}"), Some(sel))?);
    Ok(())
}
