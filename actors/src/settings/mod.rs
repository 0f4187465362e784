//! Typed settings of the daemon.
//!
//! Every field has a serde default equal to the value in `config/default.toml`; a test in
//! `src/config.rs` parses that file and compares it with [`Settings::default`], so the two cannot
//! drift. Loading (file + `MS1__SECTION__KEY` environment) lives in the daemon shell; the engine
//! only ever sees a validated [`Settings`].

pub use crate::secret::{redact_url, resolve_secret, Secret};
use serde::{Deserialize, Serialize};
use std::time::Duration;

mod checks;
mod graph;
#[cfg(test)]
mod tests;
mod validate;

use checks::{bad, endpoint, is_loopback_host};
pub use graph::{
    GraphAfterDeadLetter, GraphCloud, GraphCredential, GraphMode, GraphSettings, GraphTenant,
};
pub use validate::hash_tag;

/// The whole configuration, one struct per TOML section.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub redis: RedisSettings,
    pub pipeline: PipelineSettings,
    pub ms4: Ms4Settings,
    pub breaker: BreakerSettings,
    pub graph: GraphSettings,
    pub webhook: WebhookSettings,
    pub imap: ImapSettings,
    pub session: SessionSettings,
    pub control: ControlSettings,
    pub log: LogSettings,
}

/// Where the streams live and how entries are claimed.
#[derive(Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSettings {
    /// `redis://…`, `rediss://…` or `unix://…`. Empty: the daemon starts a private
    /// `redis-server` under `redis.data_dir` (demo and single-machine use). With `cluster`:
    /// one or more nodes of the cluster, comma-separated (`redis://10.0.0.1:6379,redis://…`).
    pub url: String,
    /// `url` names a Redis Cluster (its seed nodes): the other nodes and the slot map are
    /// discovered from them, and `prefix` must carry a hash tag.
    pub cluster: bool,
    /// Prefix of every key. Put a Redis Cluster hash tag here (`{ms1}:`) to keep one pipeline in
    /// one slot; required with `cluster`.
    pub prefix: String,
    /// Consumer name of this daemon in the consumer groups. Empty: the host name. Must be
    /// unique per daemon; a restarted daemon with the same name resumes its own pending entries
    /// at once instead of waiting for `claim_idle_ms`.
    pub consumer: String,
    /// Entries pending longer than this on a consumer (a dead daemon) are claimed by another.
    pub claim_idle_ms: u64,
    /// How long an idempotency mark (a field of the `marks` hash) lives at least, in seconds:
    /// the BatchProcessors sweep a day's marks once the day ended this long ago.
    pub idempotency_ttl_s: u64,
    /// Dead letters kept at most (approximate MAXLEN); 0 keeps them all.
    pub dlq_maxlen: u64,
    /// Directory of the private redis-server started when `url` is empty.
    pub data_dir: String,
    /// The password of `url`'s Redis (`AUTH`): the value, `env:NAME` or `file:/path`. Empty:
    /// the password in `url` if any. Both set and different is refused. Never logged.
    pub password: Secret,
    /// `rediss://` only: PEM file of the CA(s) that signed the server's certificate (a private
    /// CA); empty: the Mozilla roots (Azure Cache for Redis, ElastiCache).
    pub ca_file: String,
    /// `rediss://` only: PEM file of the client certificate (chain) for servers that ask for
    /// one (`tls-auth-clients yes`); needs `client_key`.
    pub client_cert: String,
    /// `rediss://` only: the client certificate's PEM private key: the key itself,
    /// `env:NAME` or `file:/path`. Never logged.
    pub client_key: Secret,
}

/// The URL is shown with its password masked (`redis://:****@host:6379`), secrets redacted.
impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &redact_url(&self.url))
            .field("cluster", &self.cluster)
            .field("prefix", &self.prefix)
            .field("consumer", &self.consumer)
            .field("claim_idle_ms", &self.claim_idle_ms)
            .field("idempotency_ttl_s", &self.idempotency_ttl_s)
            .field("dlq_maxlen", &self.dlq_maxlen)
            .field("data_dir", &self.data_dir)
            .field("password", &self.password)
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .finish()
    }
}

impl RedisSettings {
    /// True when `url` (every node of it) is a `rediss://` (TLS) URL.
    pub fn is_tls(&self) -> bool {
        let mut nodes = self.url.split(',').map(str::trim).filter(|u| !u.is_empty());
        nodes.clone().next().is_some() && nodes.all(|u| u.starts_with("rediss://"))
    }

    /// The password of `url`'s first node, percent-decoded, if it has one.
    fn url_password(&self) -> Option<String> {
        let first = self.url.split(',').next()?.trim();
        let parsed = url::Url::parse(first).ok()?;
        let password = parsed.password()?;
        Some(
            percent_encoding::percent_decode_str(password)
                .decode_utf8_lossy()
                .into_owned(),
        )
    }

    /// The password to authenticate with, if any: `password` (resolved) or the one in `url`.
    /// [`Settings::validate`] has refused both set and different.
    pub fn resolved_password(&self) -> Result<Option<String>, InvalidSetting> {
        let setting = self.password.expose().to_string();
        if setting.is_empty() {
            return Ok(self.url_password());
        }
        Ok(Some(setting))
    }

    /// The client certificate's private key (PEM), resolved; empty when none is set.
    pub fn resolved_client_key(&self) -> Result<String, InvalidSetting> {
        Ok(self.client_key.expose().to_string())
    }

    /// Checks the TLS and password settings: files readable, secrets resolvable, keys that
    /// only make sense together or with `rediss://`.
    fn validate_access(&self) -> Result<(), InvalidSetting> {
        for (key, path) in [
            ("redis.ca_file", &self.ca_file),
            ("redis.client_cert", &self.client_cert),
        ] {
            if path.is_empty() {
                continue;
            }
            if !self.is_tls() {
                return bad(
                    key,
                    "is for a TLS connection: redis.url must be rediss://host:port (every node of it with redis.cluster)",
                );
            }
            let pem = std::fs::File::open(path).and_then(|mut f| {
                if !f.metadata()?.is_file() {
                    return Err(std::io::Error::other("not a regular file"));
                }
                let mut pem = Vec::new();
                std::io::Read::read_to_end(&mut f, &mut pem)?;
                Ok(pem)
            });
            let pem = match pem {
                Ok(pem) => pem,
                Err(e) => return bad(key, format!("{path} is not a readable file: {e}")),
            };
            use rustls::pki_types::{pem::PemObject, CertificateDer};
            let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&pem).collect();
            if !certs.is_ok_and(|c| !c.is_empty()) {
                return bad(
                    key,
                    format!("{path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"),
                );
            }
        }
        let key_pem = self.resolved_client_key()?;
        match (self.client_cert.is_empty(), key_pem.is_empty()) {
            (true, false) => return bad("redis.client_key", "needs redis.client_cert"),
            (false, true) => {
                return bad(
                    "redis.client_cert",
                    "needs redis.client_key (the PEM private key, env:NAME or file:/path)",
                )
            }
            (false, false) if !key_pem.contains("PRIVATE KEY-----") => return bad(
                "redis.client_key",
                "is not a PEM private key: give the key itself, env:NAME or file:/path/to/key.pem",
            ),
            _ => {}
        }
        let setting = self.password.expose();
        if !setting.is_empty() {
            if self.url.is_empty() {
                return bad(
                    "redis.password",
                    "is for a configured redis.url; the private redis-server (redis.url empty) is reached through a unix socket only this daemon's user can open",
                );
            }
            if self.url_password().is_some_and(|p| p != setting) {
                return bad(
                    "redis.password",
                    "differs from the password in redis.url: set it in one place only",
                );
            }
        }
        Ok(())
    }
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: String::new(),
            cluster: false,
            prefix: "ms1:".into(),
            consumer: String::new(),
            claim_idle_ms: 60_000,
            idempotency_ttl_s: 604_800,
            dlq_maxlen: 0,
            data_dir: "/var/lib/ms1-ingestor/redis".into(),
            password: Secret::default(),
            ca_file: String::new(),
            client_cert: String::new(),
            client_key: Secret::default(),
        }
    }
}

/// Inbound → outbound processing.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineSettings {
    /// Inbound entries read per XREADGROUP.
    pub read_chunk: usize,
    /// Bytes the BatchProcessor reads at once at most (a read stops before the entry that would
    /// pass it; one entry bigger than this is read alone): bounds its memory whatever the
    /// entries' sizes, where `read_chunk` alone bounds only their number.
    pub read_max_bytes: u64,
    /// Longest a blocking read waits for new entries, in milliseconds.
    pub block_ms: u64,
    /// Above this many entries in the outbound stream, the BatchProcessor (and the pollers)
    /// stop taking in more work until MS4 catches up.
    pub max_backlog: u64,
    /// On SIGTERM, how long to wait for in-flight MS4 requests before exiting anyway (what is
    /// not acknowledged stays pending and is re-sent on the next start), in ms. Keep it below
    /// systemd's TimeoutStopSec.
    pub drain_timeout_ms: u64,
}

impl Default for PipelineSettings {
    fn default() -> Self {
        Self {
            read_chunk: 500,
            read_max_bytes: 64 * 1024 * 1024,
            block_ms: 1_000,
            max_backlog: 200_000,
            drain_timeout_ms: 20_000,
        }
    }
}

/// Delivery to the MS4 Persistence API.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Ms4Settings {
    /// API root; the daemon appends `/batch-metadata`.
    pub base_url: String,
    /// Value of the `X-API-Key` header: the key, `env:NAME`, `file:/path` or `credential:NAME`
    /// (a systemd credential). Never logged.
    pub api_key: Secret,
    /// Records per request (MS4 recommends 50 and accepts at most `max_batch`).
    pub batch_size: usize,
    /// The most records MS4 accepts in one request (its contract: 100). A larger
    /// `batch_size` is refused at start: every batch would come back 400 and be bisected.
    pub max_batch: usize,
    /// A partial batch is sent after waiting this long for more records, in milliseconds.
    pub linger_ms: u64,
    /// Requests to MS4 in flight at once.
    pub max_in_flight: usize,
    /// Bytes of records the sender holds at most (the batches in flight and the one being
    /// formed): a batch stops growing at this bound, and no new batch starts while the ones in
    /// flight hold it (a single record bigger than this goes alone). Matters with
    /// `include_raw`, where a record carries the whole message.
    pub max_in_flight_bytes: u64,
    /// Requests per minute allowed by MS4, shared by every daemon on the same Redis. 0: no limit
    /// (only for an MS4 that has none, such as the simulator in benchmarks).
    pub rate_limit_per_min: u32,
    /// Safety margin added to the 60-second window against clock skew and network jitter, in ms.
    pub rate_margin_ms: u64,
    /// Send the whole source message in `raw_message`.
    pub include_raw: bool,
    /// A request with no answer after this long counts as a transient failure, in milliseconds.
    pub request_timeout_ms: u64,
    /// After a 401, one batch is retried this often (seconds) until the key is accepted again.
    pub auth_probe_s: u64,
    /// First retry delay after a transient failure, in milliseconds (exponential, with jitter).
    pub retry_min_ms: u64,
    /// Longest retry delay, in milliseconds.
    pub retry_max_ms: u64,
}

/// The bounds of an exponential retry schedule: a section's `retry_min_ms` and `retry_max_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryBounds {
    pub min: Duration,
    pub max: Duration,
}

impl RetryBounds {
    pub fn from_ms(min_ms: u64, max_ms: u64) -> Self {
        Self {
            min: Duration::from_millis(min_ms),
            max: Duration::from_millis(max_ms),
        }
    }
}

impl Ms4Settings {
    /// The backoff bounds of transient MS4 failures.
    pub fn retry(&self) -> RetryBounds {
        RetryBounds::from_ms(self.retry_min_ms, self.retry_max_ms)
    }
}

impl Default for Ms4Settings {
    fn default() -> Self {
        Self {
            base_url: "http://127.0.0.1:8400".into(),
            api_key: Secret::default(),
            batch_size: 50,
            max_batch: 100,
            linger_ms: 200,
            max_in_flight: 4,
            max_in_flight_bytes: 32 * 1024 * 1024,
            rate_limit_per_min: 120,
            rate_margin_ms: 500,
            include_raw: false,
            request_timeout_ms: 10_000,
            auth_probe_s: 30,
            retry_min_ms: 200,
            retry_max_ms: 30_000,
        }
    }
}

impl Ms4Settings {
    pub fn linger(&self) -> Duration {
        Duration::from_millis(self.linger_ms)
    }
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// The circuit breaker in front of MS4.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerSettings {
    /// Consecutive transient failures that open the circuit.
    pub failure_threshold: u32,
    /// How long the circuit stays open before one probe request is let through, in ms.
    pub open_ms: u64,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_ms: 10_000,
        }
    }
}

/// Graph change notifications (webhooks).
#[derive(Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSettings {
    /// Subscribe to new mail in every mailbox and take notifications.
    pub enabled: bool,
    /// Base URL at which Graph reaches this daemon (e.g. `https://ingest.example.com`); the
    /// daemon appends `/webhook/notifications` and `/webhook/lifecycle`.
    pub public_url: String,
    /// Secret sent with every subscription and checked on every notification (≤ 128 chars):
    /// the value, `env:NAME`, `file:/path` or `credential:NAME`.
    pub client_state: Secret,
    /// Subscription lifetime asked for, in minutes (Graph allows at most 10,080 for mail).
    pub lifetime_minutes: u64,
    /// Renew a subscription this long before it expires, in seconds.
    pub renew_before_s: u64,
    /// Address of a listener of its own for `/webhook/notifications` and `/webhook/lifecycle`
    /// (e.g. `0.0.0.0:8443`, the only port to expose to Graph); the control listener then no
    /// longer serves them. Empty: they are served on `control.bind`.
    pub bind: String,
    /// Items taken in one notification POST at most; a bigger POST is refused whole (413)
    /// and Graph re-sends it. Graph batches notifications, far fewer than this.
    pub max_notifications_per_post: usize,
    /// A notification body must arrive within this long after the request head, in ms; a
    /// client that trickles it gets 408 and its connection is closed.
    pub body_timeout_ms: u64,
    /// While the backlog (inbound + outbound) is above `pipeline.max_backlog`, notifications
    /// are answered 503 with this `Retry-After`, in seconds: Graph re-sends them later, and the
    /// safety-net poll catches up on any it gives up on.
    pub backlog_retry_after_s: u64,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            public_url: String::new(),
            client_state: Secret::default(),
            lifetime_minutes: 4_320,
            renew_before_s: 3_600,
            bind: String::new(),
            max_notifications_per_post: 1_000,
            body_timeout_ms: 5_000,
            backlog_retry_after_s: 30,
        }
    }
}

impl std::fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSettings")
            .field("enabled", &self.enabled)
            .field("public_url", &self.public_url)
            .field("client_state", &self.client_state)
            .field("lifetime_minutes", &self.lifetime_minutes)
            .field("renew_before_s", &self.renew_before_s)
            .field("bind", &self.bind)
            .field(
                "max_notifications_per_post",
                &self.max_notifications_per_post,
            )
            .field("body_timeout_ms", &self.body_timeout_ms)
            .field("backlog_retry_after_s", &self.backlog_retry_after_s)
            .finish()
    }
}

/// IMAP sources (Gmail, Outlook, any IMAP4rev1 server).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImapSettings {
    /// Messages per `UID FETCH`: a 100,000-message folder is read this many at a time.
    pub fetch_chunk: u32,
    /// Bytes per `UID FETCH` at most (message sizes are asked first; a bigger message is
    /// fetched alone): bounds the memory a poll takes.
    pub fetch_max_bytes: u64,
    /// Largest message (its RFC822.SIZE, asked before fetching) whose body is fetched. A bigger
    /// one is handled as `oversize` says; either way the cursor moves past it.
    pub max_message_bytes: u64,
    /// What a message above `max_message_bytes` becomes: `headers` (its header and BODYSTRUCTURE
    /// are fetched, and it is delivered as a record without body, preview or raw message,
    /// flagged `bodyOmitted`, with attachment names, types and sizes from the BODYSTRUCTURE), or
    /// `dead_letter` (a dead letter naming its size and the limit, with its header as payload).
    pub oversize: Oversize,
    /// An IDLE is ended and re-issued after this long, in seconds (RFC 2177: servers may drop
    /// an IDLE after 30 minutes; at most 1740).
    pub idle_renew_s: u64,
    /// Connecting, TLS, login and each command must finish within this long, in ms.
    pub timeout_ms: u64,
    /// A source's poller lease lasts this long unless renewed (seconds): exactly one daemon
    /// reads a source; another takes over after at most this long when it dies.
    pub lease_ttl_s: u64,
    /// First retry delay after a failed poll (connection, login, command), in milliseconds
    /// (exponential, with jitter).
    pub retry_min_ms: u64,
    /// Longest retry delay, in milliseconds.
    pub retry_max_ms: u64,
    /// The sources, one `[[imap.sources]]` table each. Empty: no IMAP.
    pub sources: Vec<ImapSource>,
}

impl Default for ImapSettings {
    fn default() -> Self {
        Self {
            fetch_chunk: 500,
            fetch_max_bytes: 16 * 1024 * 1024,
            max_message_bytes: 25 * 1024 * 1024,
            oversize: Oversize::Headers,
            idle_renew_s: 1_500,
            timeout_ms: 30_000,
            lease_ttl_s: 30,
            retry_min_ms: 200,
            retry_max_ms: 30_000,
            sources: Vec::new(),
        }
    }
}

impl ImapSettings {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// The backoff bounds of failed polls.
    pub fn retry(&self) -> RetryBounds {
        RetryBounds::from_ms(self.retry_min_ms, self.retry_max_ms)
    }
}

/// One IMAP mailbox folder to ingest.
#[derive(Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImapSource {
    /// Unique name of the source: the `mailbox` of its records, its Redis keys and its log
    /// field. Naming a source after its address (`invoices@example.com`) reads best.
    pub name: String,
    pub host: String,
    /// 0: the default of the TLS mode (993 for `implicit`, 143 otherwise).
    pub port: u16,
    /// `implicit` (TLS from the first byte, port 993), `starttls` (upgrade on port 143) or
    /// `none` (plain text; refused unless `host` is a loopback address).
    pub tls: ImapTls,
    /// PEM file of extra trust anchors (a private CA); empty: the Mozilla roots.
    pub ca_file: String,
    pub username: String,
    /// `password` (LOGIN) or `xoauth2` (Gmail, Outlook: `AUTHENTICATE XOAUTH2` with a token
    /// from the refresh-token grant).
    pub auth: ImapAuth,
    /// The password, `env:NAME` (from the environment), `file:/path` or `credential:NAME` (a
    /// systemd credential). Never logged, never stored in Redis.
    pub password: Secret,
    /// OAuth2 token endpoint for `xoauth2` (Google: https://oauth2.googleapis.com/token;
    /// Microsoft: https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token).
    pub token_url: String,
    pub client_id: String,
    /// Client secret (`env:`/`file:`/`credential:` as for `password`); empty for public
    /// clients.
    pub client_secret: Secret,
    /// The refresh token (`env:`/`file:`/`credential:` as for `password`).
    pub refresh_token: Secret,
    /// Scope asked for with the refresh token; empty: none (Google), Outlook needs
    /// `https://outlook.office.com/IMAP.AccessAsUser.All offline_access`.
    pub scope: String,
    /// Folder to read.
    pub folder: String,
    /// Seconds between polls while a session runs (IDLE, when on, delivers sooner).
    pub poll_interval_s: u64,
    /// Use IDLE (RFC 2177) for push when the server supports it.
    pub idle: bool,
    /// After MS4 accepted a message: `none`, `seen` (set \Seen) or `move` (to `move_to`).
    pub after_delivery: AfterDelivery,
    /// Target folder of `after_delivery = "move"`.
    pub move_to: String,
    /// Once a message was dead-lettered (MS4 refused its record, or it cannot be one):
    /// `leave` it as it is, set `seen`, or `move` it (to `dead_letter_move_to`).
    pub after_dead_letter: AfterDeadLetter,
    /// Target folder of `after_dead_letter = "move"` (e.g. `Ingestion failed`); it must exist.
    pub dead_letter_move_to: String,
}

impl Default for ImapSource {
    fn default() -> Self {
        Self {
            name: String::new(),
            host: String::new(),
            port: 0,
            tls: ImapTls::Implicit,
            ca_file: String::new(),
            username: String::new(),
            auth: ImapAuth::Password,
            password: Secret::default(),
            token_url: String::new(),
            client_id: String::new(),
            client_secret: Secret::default(),
            refresh_token: Secret::default(),
            scope: String::new(),
            folder: "INBOX".into(),
            poll_interval_s: 60,
            idle: true,
            after_delivery: AfterDelivery::None,
            move_to: String::new(),
            after_dead_letter: AfterDeadLetter::Leave,
            dead_letter_move_to: String::new(),
        }
    }
}

impl ImapSource {
    /// Whether its messages carry a follow-up target: some action is due after delivery or
    /// after a dead letter.
    pub fn has_follow_ups(&self) -> bool {
        self.after_delivery != AfterDelivery::None
            || self.after_dead_letter != AfterDeadLetter::Leave
    }

    pub fn port(&self) -> u16 {
        match (self.port, self.tls) {
            (0, ImapTls::Implicit) => 993,
            (0, _) => 143,
            (p, _) => p,
        }
    }
}

impl std::fmt::Debug for ImapSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImapSource")
            .field("name", &self.name)
            .field("host", &self.host)
            .field("port", &self.port())
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("auth", &self.auth)
            .field("folder", &self.folder)
            .field("after_delivery", &self.after_delivery)
            .field("after_dead_letter", &self.after_dead_letter)
            .finish_non_exhaustive()
    }
}

/// What becomes of an IMAP message above `imap.max_message_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Oversize {
    /// A record from its header and BODYSTRUCTURE, without body.
    Headers,
    /// A dead letter with the reason (size and limit).
    DeadLetter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImapTls {
    Implicit,
    Starttls,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ImapAuth {
    Password,
    Xoauth2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AfterDelivery {
    None,
    Seen,
    Move,
}

impl Settings {
    /// Whether a message of `source` (`graph` or `imap`) and `mailbox` that carries a follow-up
    /// target has an action once MS4 accepted it: always in Graph (unread mode carries them),
    /// the source's `after_delivery` for IMAP (an unknown source: yes, the worker settles it).
    pub fn acts_after_delivery(&self, source: &str, mailbox: &str) -> bool {
        match source {
            "imap" => self
                .imap
                .sources
                .iter()
                .find(|s| s.name == mailbox)
                .is_none_or(|s| s.after_delivery != AfterDelivery::None),
            _ => true,
        }
    }

    /// Whether a dead letter from `source` (`graph` or `imap`) and `mailbox` (the Graph
    /// mailbox, or the IMAP source's name) gets an end in its mailbox (`after_dead_letter`
    /// other than `leave`).
    pub fn ends_dead_letters(&self, source: &str, mailbox: &str) -> bool {
        match source {
            "imap" => self
                .imap
                .sources
                .iter()
                .any(|s| s.name == mailbox && s.after_dead_letter != AfterDeadLetter::Leave),
            _ => self.graph.after_dead_letter != GraphAfterDeadLetter::Leave,
        }
    }
}

/// What becomes of an IMAP message once it was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AfterDeadLetter {
    /// Left as it is (unseen, in the source folder).
    Leave,
    /// `\Seen` set.
    Seen,
    /// Moved to `dead_letter_move_to`.
    Move,
}

/// Ingestion sessions.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionSettings {
    /// Start a session (scheduled polling every `graph.poll_interval_s`, webhooks as
    /// `webhook.enabled`) when none has ever existed. A running session is always resumed after
    /// a restart; a stopped one stays stopped.
    pub autostart: bool,
}

impl Default for SessionSettings {
    fn default() -> Self {
        Self { autostart: true }
    }
}

/// Shortest `control.token` accepted when the control API listens beyond loopback.
pub const MIN_PUBLIC_TOKEN_LEN: usize = 32;

/// The control HTTP API (health, readiness, metrics).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlSettings {
    /// Address the control API listens on.
    pub bind: String,
    /// Bearer token required on control routes (and for the reasons behind `/ready`): the
    /// value, `env:NAME`, `file:/path` or `credential:NAME`. Mandatory, at least
    /// [`MIN_PUBLIC_TOKEN_LEN`] characters, when `bind` is not a loopback address.
    pub token: Secret,
}

impl Default for ControlSettings {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8000".into(),
            token: Secret::default(),
        }
    }
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// `pretty`, `json` or `journald`.
    pub format: LogFormat,
    /// A tracing filter: `info`, `debug`, `ms1_actors=debug,info`, …
    pub level: String,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Pretty,
    Json,
    Journald,
}

/// A setting that is present but unusable, named by its key.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{key}: {problem}")]
pub struct InvalidSetting {
    pub key: String,
    pub problem: String,
}
