//! Typed settings of the daemon.
//!
//! Every field has a serde default equal to the value in `config/default.toml`; a test in
//! `src/config.rs` parses that file and compares it with [`Settings::default`], so the two cannot
//! drift. Loading (file + `MS1__SECTION__KEY` environment) lives in the daemon shell; the engine
//! only ever sees a validated [`Settings`].

pub use crate::secret::{redact_url, resolve_secret, Secret};
use serde::{Deserialize, Serialize};
use std::time::Duration;

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
    /// How long an idempotency mark (`seen:{key}`) lives, in seconds.
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

/// Microsoft Graph: app credentials, mailboxes and how they are read.
#[derive(Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GraphSettings {
    /// The Microsoft cloud the tenant lives in: its Graph and sign-in hosts and the token
    /// scope. Explicit `base_url`/`authority` still win (a proxy, a private endpoint).
    pub cloud: GraphCloud,
    /// Graph API root, ending in `/v1.0`. Empty: the cloud's (see [`GraphSettings::base_url`]).
    pub base_url: String,
    /// Token authority; `{tenant}` is replaced by `tenant_id`. The token URL is
    /// `{authority}/oauth2/v2.0/token`. Empty: the cloud's sign-in host.
    pub authority: String,
    pub tenant_id: String,
    pub client_id: String,
    /// How the daemon proves who it is to Entra ID (see [`GraphCredential`]).
    pub credential: GraphCredential,
    /// App secret (`credential = "secret"`): the value, `env:NAME`, `file:/path` or
    /// `credential:NAME`. Never logged, never stored in Redis.
    pub client_secret: Secret,
    /// `credential = "certificate"`: path of the PEM certificate uploaded to the app
    /// registration. Read again for every token, so a rotated file is used without a restart.
    pub client_certificate: String,
    /// Its PEM private key (PKCS#8, or PKCS#1 RSA): the key, `env:NAME`, `file:/path` or
    /// `credential:NAME`; a key from a file is read again for every token. Never logged.
    pub client_certificate_key: Secret,
    /// `credential = "managed_identity"`: the instance metadata (IMDS) token endpoint.
    pub managed_identity_endpoint: String,
    /// The client id of a user-assigned managed identity; empty: the system-assigned one.
    pub managed_identity_client_id: String,
    /// `credential = "workload_identity"`: the file holding the federated token (Kubernetes
    /// projects and rotates it); read again for every token. Empty: `AZURE_FEDERATED_TOKEN_FILE`.
    pub federated_token_file: String,
    /// Mailboxes (UPNs or ids) to ingest. Empty: no Graph polling.
    pub mailboxes: Vec<String>,
    /// Mail folder read in every mailbox.
    pub folder: String,
    /// `delta` (deltaLink cursor) or `unread` (isRead filter; messages are marked read after
    /// MS4 accepted them).
    pub mode: GraphMode,
    /// Seconds between polls of a mailbox (webhook mode polls too, as a safety net).
    pub poll_interval_s: u64,
    /// Messages per page: `$top` (unread) and `Prefer: odata.maxpagesize` (delta).
    pub page_size: u32,
    /// Requests in flight at once per mailbox, across every daemon on the same Redis (Graph: 4).
    pub max_concurrent_per_mailbox: u32,
    /// Requests per mailbox per `window_s`, across every daemon (Graph: 10,000 per 10 min).
    pub requests_per_window: u32,
    /// Length of that window in seconds.
    pub window_s: u64,
    /// A Graph request unanswered after this long is a transient failure, in ms.
    pub request_timeout_ms: u64,
    /// Fetch attachment metadata (name, type, size) for messages that have attachments.
    pub fetch_attachments: bool,
    /// A mailbox's poller lease lasts this long unless renewed (seconds); another daemon takes
    /// over a mailbox whose daemon died after at most this long.
    pub lease_ttl_s: u64,
    /// A message Graph keeps failing to serve (5xx, timeouts, throttling) is retried this many
    /// times with backoff; then its mailbox is parked. A refusal (401/403: an application access
    /// policy that excludes the mailbox, a refused credential) parks it at once. Parked entries
    /// wait in Redis (`stream:parked:{mailbox}`) while every other mailbox flows.
    pub park_after_attempts: u32,
    /// First retry of a parked mailbox after this many seconds (one entry goes back as a
    /// probe); the wait doubles with each failed retry up to `park_retry_max_s`.
    pub park_retry_min_s: u64,
    pub park_retry_max_s: u64,
    /// First retry delay after a transient Graph failure (a poll, a fetch), in milliseconds
    /// (exponential, with jitter).
    pub retry_min_ms: u64,
    /// Longest retry delay, in milliseconds.
    pub retry_max_ms: u64,
}

impl Default for GraphSettings {
    fn default() -> Self {
        Self {
            cloud: GraphCloud::Global,
            base_url: String::new(),
            authority: String::new(),
            tenant_id: String::new(),
            client_id: String::new(),
            credential: GraphCredential::Secret,
            client_secret: Secret::default(),
            client_certificate: String::new(),
            client_certificate_key: Secret::default(),
            managed_identity_endpoint: "http://169.254.169.254/metadata/identity/oauth2/token"
                .into(),
            managed_identity_client_id: String::new(),
            federated_token_file: String::new(),
            mailboxes: Vec::new(),
            folder: "inbox".into(),
            mode: GraphMode::Delta,
            poll_interval_s: 60,
            page_size: 100,
            max_concurrent_per_mailbox: 4,
            requests_per_window: 10_000,
            window_s: 600,
            request_timeout_ms: 30_000,
            fetch_attachments: true,
            lease_ttl_s: 30,
            park_after_attempts: 3,
            park_retry_min_s: 30,
            park_retry_max_s: 900,
            retry_min_ms: 200,
            retry_max_ms: 30_000,
        }
    }
}

impl std::fmt::Debug for GraphSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphSettings")
            .field("base_url", &self.base_url)
            .field("authority", &self.authority)
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("credential", &self.credential)
            .field("client_secret", &self.client_secret)
            .field("client_certificate", &self.client_certificate)
            .field("client_certificate_key", &self.client_certificate_key)
            .field("managed_identity_endpoint", &self.managed_identity_endpoint)
            .field(
                "managed_identity_client_id",
                &self.managed_identity_client_id,
            )
            .field("mailboxes", &self.mailboxes)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl GraphSettings {
    /// The backoff bounds of transient Graph failures.
    pub fn retry(&self) -> RetryBounds {
        RetryBounds::from_ms(self.retry_min_ms, self.retry_max_ms)
    }

    /// The Graph API root in use: `base_url`, else the cloud's (`https://graph.microsoft.us/v1.0`, …).
    pub fn base_url(&self) -> String {
        if self.base_url.is_empty() {
            format!("{}/v1.0", self.cloud.graph_root())
        } else {
            self.base_url.clone()
        }
    }

    /// The token authority in use: `authority`, else the cloud's sign-in host and `{tenant}`.
    pub fn authority(&self) -> String {
        if self.authority.is_empty() {
            format!("{}/{{tenant}}", self.cloud.login_host())
        } else {
            self.authority.clone()
        }
    }

    /// The settings `credential` needs are there (their files' content is checked by
    /// `clients::oauth::check_credential`, which the daemon runs at start and in `check-config`).
    fn validate_credential(&self) -> Result<(), InvalidSetting> {
        use GraphCredential as C;
        let needs = |key: &str, value: &str, what: &str| {
            if value.trim().is_empty() {
                bad(
                    key,
                    format!(
                        "is required with graph.credential = \"{}\"{what}",
                        self.credential.name()
                    ),
                )
            } else {
                Ok(())
            }
        };
        let (tenant, client) = match self.credential {
            C::WorkloadIdentity => (" (or AZURE_TENANT_ID)", " (or AZURE_CLIENT_ID)"),
            _ => ("", ""),
        };
        if self.credential != C::ManagedIdentity {
            needs("graph.tenant_id", &self.tenant_id, tenant)?;
            needs("graph.client_id", &self.client_id, client)?;
        }
        match self.credential {
            C::Secret => needs("graph.client_secret", self.client_secret.expose(), ""),
            C::Certificate => {
                needs("graph.client_certificate", &self.client_certificate, "")?;
                needs(
                    "graph.client_certificate_key",
                    self.client_certificate_key.expose(),
                    "",
                )
            }
            C::ManagedIdentity => imds_endpoint(
                "graph.managed_identity_endpoint",
                &self.managed_identity_endpoint,
            ),
            C::WorkloadIdentity => needs(
                "graph.federated_token_file",
                &self.federated_token_file,
                " (or AZURE_FEDERATED_TOKEN_FILE)",
            ),
        }
    }

    /// With `credential = "workload_identity"`, what the settings leave empty is taken from the
    /// variables the AKS workload identity webhook sets, as the Azure SDKs do:
    /// `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_FEDERATED_TOKEN_FILE`, and
    /// `AZURE_AUTHORITY_HOST` for an `authority` left at its default. `var` reads one.
    pub fn apply_workload_identity_environment(&mut self, var: impl Fn(&str) -> Option<String>) {
        if self.credential != GraphCredential::WorkloadIdentity {
            return;
        }
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        for (field, name) in [
            (&mut self.tenant_id, "AZURE_TENANT_ID"),
            (&mut self.client_id, "AZURE_CLIENT_ID"),
            (&mut self.federated_token_file, "AZURE_FEDERATED_TOKEN_FILE"),
        ] {
            if field.is_empty() {
                if let Some(v) = var(name) {
                    *field = v;
                }
            }
        }
        if self.authority == GraphSettings::default().authority {
            if let Some(host) = var("AZURE_AUTHORITY_HOST") {
                self.authority = format!("{}/{{tenant}}", host.trim_end_matches('/'));
            }
        }
    }

    /// `{authority}/oauth2/v2.0/token` with the tenant filled in.
    pub fn token_url(&self) -> String {
        format!(
            "{}/oauth2/v2.0/token",
            self.authority()
                .replace("{tenant}", &self.tenant_id)
                .trim_end_matches('/')
        )
    }

    /// The app-only token scope: the cloud's Graph resource and `/.default`. Always the
    /// cloud's, also behind an explicit `base_url`: a token is only good in its own cloud.
    pub fn token_scope(&self) -> String {
        format!("{}/.default", self.cloud.graph_root())
    }
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
    pub fn poll_interval(&self) -> Duration {
        Duration::from_secs(self.poll_interval_s)
    }
    /// Wait before the retry that follows `failed` failed retries of a parked mailbox.
    pub fn park_retry_after(&self, failed: u32) -> Duration {
        let secs = self
            .park_retry_min_s
            .saturating_mul(1u64 << failed.min(20))
            .min(self.park_retry_max_s);
        Duration::from_secs(secs)
    }
}

/// The Microsoft clouds Graph runs in (learn.microsoft.com/graph/deployments). Each has its own
/// sign-in and Graph hosts; a token of one is not accepted by another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GraphCloud {
    /// The global service (and Microsoft 365 GCC, which uses it).
    #[default]
    Global,
    /// US Government L4 (GCC High).
    Usgov,
    /// US Government L5 (DoD).
    UsgovDod,
    /// Microsoft 365 operated by 21Vianet in China.
    China,
}

impl GraphCloud {
    const ALL: [GraphCloud; 4] = [Self::Global, Self::Usgov, Self::UsgovDod, Self::China];

    /// Microsoft Entra ID's sign-in host.
    pub fn login_host(self) -> &'static str {
        match self {
            Self::Global => "https://login.microsoftonline.com",
            Self::Usgov | Self::UsgovDod => "https://login.microsoftonline.us",
            Self::China => "https://login.chinacloudapi.cn",
        }
    }

    /// The Microsoft Graph service root (also the token resource).
    pub fn graph_root(self) -> &'static str {
        match self {
            Self::Global => "https://graph.microsoft.com",
            Self::Usgov => "https://graph.microsoft.us",
            Self::UsgovDod => "https://dod-graph.microsoft.us",
            Self::China => "https://microsoftgraph.chinacloudapi.cn",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Global => "global",
            Self::Usgov => "usgov",
            Self::UsgovDod => "usgov_dod",
            Self::China => "china",
        }
    }

    /// The clouds whose sign-in host (`login`) or Graph host is `url`'s host.
    fn owners_of(url: &str, login: bool) -> Vec<GraphCloud> {
        let host = |u: &str| {
            url::Url::parse(u)
                .ok()
                .and_then(|u| u.host_str().map(str::to_owned))
        };
        let Some(h) = host(url) else { return vec![] };
        Self::ALL
            .into_iter()
            .filter(|c| {
                host(if login {
                    c.login_host()
                } else {
                    c.graph_root()
                })
                .as_deref()
                    == Some(&h)
            })
            .collect()
    }
}

/// How the daemon signs in to Entra ID for Graph (app-only, every one of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GraphCredential {
    /// Client credentials with `client_secret`.
    Secret,
    /// Client credentials with a JWT signed by the key of `client_certificate`
    /// (`client_assertion`, RFC 7523): no shared secret leaves the machine.
    Certificate,
    /// The Azure resource's managed identity, from the instance metadata service
    /// (`managed_identity_endpoint`): no credential on the machine at all.
    ManagedIdentity,
    /// Kubernetes workload identity: client credentials with the federated token the cluster
    /// projects into `federated_token_file` as `client_assertion`.
    WorkloadIdentity,
}

impl GraphCredential {
    /// Its name in the settings and in errors (`certificate`, `managed_identity`, …).
    pub fn name(self) -> &'static str {
        match self {
            GraphCredential::Secret => "secret",
            GraphCredential::Certificate => "certificate",
            GraphCredential::ManagedIdentity => "managed_identity",
            GraphCredential::WorkloadIdentity => "workload_identity",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GraphMode {
    Delta,
    Unread,
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
        }
    }
}

impl ImapSource {
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

/// The refusal of `key`, for the checks of [`Settings::validate`].
/// The Redis Cluster hash tag of every key under `prefix`: the text between the prefix's first
/// `{` and the first `}` after it, when that text is not empty. (Redis hashes only the tag of a
/// key that has one; `{}` counts as none, and then the whole key is hashed.)
pub fn hash_tag(prefix: &str) -> Option<&str> {
    let open = prefix.find('{')?;
    let rest = &prefix[open + 1..];
    let tag = &rest[..rest.find('}')?];
    (!tag.is_empty()).then_some(tag)
}

/// A section's retry bounds: a first delay above zero, and a longest one not below it.
fn check_retry(section: &str, min_ms: u64, max_ms: u64) -> Result<(), InvalidSetting> {
    if min_ms == 0 || max_ms < min_ms {
        return bad(
            format!("{section}.retry_max_ms"),
            "retry_min_ms must be > 0 and retry_max_ms >= retry_min_ms",
        );
    }
    Ok(())
}

fn bad(key: impl Into<String>, problem: impl Into<String>) -> Result<(), InvalidSetting> {
    Err(InvalidSetting {
        key: key.into(),
        problem: problem.into(),
    })
}

impl Settings {
    /// Checks the values that serde cannot: ranges and relations between keys.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        let r = &self.redis;
        if !r.url.is_empty()
            && !["redis://", "rediss://", "unix://", "redis+unix://"]
                .iter()
                .any(|s| r.url.starts_with(s))
        {
            return bad(
                "redis.url",
                "must start with redis://, rediss:// or unix:// (or be empty for a private redis-server)",
            );
        }
        if r.prefix.is_empty() {
            return bad("redis.prefix", "must not be empty");
        }
        if r.cluster {
            if r.url.trim().is_empty() {
                return bad(
                    "redis.url",
                    "redis.cluster = true needs the cluster's nodes here (redis://host:port, comma-separated); a private redis-server is a single node, not a cluster",
                );
            }
            // The seeds are not echoed: they may carry a password.
            for (n, seed) in r.url.split(',').map(str::trim).enumerate() {
                if !(seed.starts_with("redis://") || seed.starts_with("rediss://")) {
                    return bad(
                        "redis.url",
                        format!(
                            "cluster node {} of the list must be redis://host:port or rediss://host:port",
                            n + 1
                        ),
                    );
                }
            }
            if hash_tag(&r.prefix).is_none() {
                return bad(
                    "redis.prefix",
                    format!(
                        "\"{}\" has no hash tag, which a Redis Cluster (redis.cluster = true) needs: put one in it, e.g. \"{{ms1}}:\", so that every key of the pipeline lands in one slot (the MULTI/EXEC hand-offs and the Lua scripts touch several keys at once)",
                        r.prefix
                    ),
                );
            }
        } else if r.url.contains(',') {
            return bad(
                "redis.url",
                "lists several nodes: set redis.cluster = true for a Redis Cluster, or give the one redis-server's URL",
            );
        }
        r.validate_access()?;
        if r.claim_idle_ms < 1_000 {
            return bad("redis.claim_idle_ms", "must be at least 1000");
        }
        if r.idempotency_ttl_s == 0 {
            return bad("redis.idempotency_ttl_s", "must be greater than 0");
        }
        let p = &self.pipeline;
        if !(1..=10_000).contains(&p.read_chunk) {
            return bad("pipeline.read_chunk", "must be between 1 and 10000");
        }
        if p.read_max_bytes < 65_536 {
            return bad("pipeline.read_max_bytes", "must be at least 65536");
        }
        if !(10..=60_000).contains(&p.block_ms) {
            return bad("pipeline.block_ms", "must be between 10 and 60000");
        }
        if p.max_backlog == 0 {
            return bad("pipeline.max_backlog", "must be greater than 0");
        }
        let m = &self.ms4;
        endpoint("ms4.base_url", &m.base_url)?;
        if !(1..=1_000).contains(&m.max_batch) {
            return bad("ms4.max_batch", "must be between 1 and 1000");
        }
        if !(1..=m.max_batch).contains(&m.batch_size) {
            return bad(
                "ms4.batch_size",
                format!(
                    "must be between 1 and ms4.max_batch ({}): MS4 refuses larger batches whole",
                    m.max_batch
                ),
            );
        }
        if !(1..=256).contains(&m.max_in_flight) {
            return bad("ms4.max_in_flight", "must be between 1 and 256");
        }
        if m.max_in_flight_bytes < 65_536 {
            return bad("ms4.max_in_flight_bytes", "must be at least 65536");
        }
        if m.request_timeout_ms < 100 {
            return bad("ms4.request_timeout_ms", "must be at least 100");
        }
        if m.auth_probe_s == 0 {
            return bad("ms4.auth_probe_s", "must be at least 1");
        }
        check_retry("ms4", m.retry_min_ms, m.retry_max_ms)?;
        check_retry("graph", self.graph.retry_min_ms, self.graph.retry_max_ms)?;
        check_retry("imap", self.imap.retry_min_ms, self.imap.retry_max_ms)?;
        if self.breaker.failure_threshold == 0 {
            return bad("breaker.failure_threshold", "must be at least 1");
        }
        if self.breaker.open_ms == 0 {
            return bad("breaker.open_ms", "must be greater than 0");
        }
        let g = &self.graph;
        if !g.mailboxes.is_empty() {
            g.validate_credential()?;
            if g.mailboxes.iter().any(|m| m.trim().is_empty()) {
                return bad("graph.mailboxes", "must not contain empty names");
            }
        }
        endpoint("graph.base_url", &g.base_url())?;
        endpoint("graph.authority", &g.authority())?;
        // A Microsoft host of another cloud can never work: its tokens are not accepted here.
        for (key, url, login) in [
            ("graph.authority", &g.authority, true),
            ("graph.base_url", &g.base_url, false),
        ] {
            let owners = GraphCloud::owners_of(url, login);
            if !owners.is_empty() && !owners.contains(&g.cloud) {
                return bad(
                    key,
                    format!(
                        "{url} belongs to the {} cloud but graph.cloud = \"{}\": tokens of one Microsoft cloud are not accepted by another (set graph.cloud, or leave {key} empty to use the cloud's)",
                        owners[0].name(),
                        g.cloud.name()
                    ),
                );
            }
        }
        if g.folder.trim().is_empty() {
            return bad("graph.folder", "must not be empty");
        }
        if g.poll_interval_s == 0 {
            return bad("graph.poll_interval_s", "must be at least 1");
        }
        if !(1..=1_000).contains(&g.page_size) {
            return bad("graph.page_size", "must be between 1 and 1000");
        }
        if g.max_concurrent_per_mailbox == 0 {
            return bad("graph.max_concurrent_per_mailbox", "must be at least 1");
        }
        if g.requests_per_window == 0 || g.window_s == 0 {
            return bad(
                "graph.requests_per_window",
                "requests_per_window and window_s must be greater than 0",
            );
        }
        if g.request_timeout_ms < 100 {
            return bad("graph.request_timeout_ms", "must be at least 100");
        }
        if g.lease_ttl_s < 2 {
            return bad("graph.lease_ttl_s", "must be at least 2");
        }
        if !(1..=100).contains(&g.park_after_attempts) {
            return bad("graph.park_after_attempts", "must be between 1 and 100");
        }
        if g.park_retry_min_s == 0 || g.park_retry_max_s < g.park_retry_min_s {
            return bad(
                "graph.park_retry_max_s",
                "park_retry_min_s must be > 0 and park_retry_max_s >= park_retry_min_s",
            );
        }
        let w = &self.webhook;
        if w.enabled {
            if g.mailboxes.is_empty() {
                return bad("webhook.enabled", "needs graph.mailboxes to subscribe to");
            }
            if !(w.public_url.starts_with("https://") || w.public_url.starts_with("http://")) {
                return bad(
                    "webhook.public_url",
                    "must be the http(s) base URL at which Graph reaches this daemon",
                );
            }
            if w.client_state.is_empty() || w.client_state.expose().chars().count() > 128 {
                return bad(
                    "webhook.client_state",
                    "is required with webhooks and must be at most 128 characters",
                );
            }
        }
        if !(1..=10_080).contains(&w.lifetime_minutes) {
            return bad("webhook.lifetime_minutes", "must be between 1 and 10080");
        }
        if w.renew_before_s == 0 || w.renew_before_s >= w.lifetime_minutes * 60 {
            return bad(
                "webhook.renew_before_s",
                "must be greater than 0 and shorter than the lifetime",
            );
        }
        if !(1..=100_000).contains(&w.max_notifications_per_post) {
            return bad(
                "webhook.max_notifications_per_post",
                "must be between 1 and 100000",
            );
        }
        if !(100..=60_000).contains(&w.body_timeout_ms) {
            return bad("webhook.body_timeout_ms", "must be between 100 and 60000");
        }
        if !(1..=3_600).contains(&w.backlog_retry_after_s) {
            return bad(
                "webhook.backlog_retry_after_s",
                "must be between 1 and 3600",
            );
        }
        self.validate_imap()?;
        self.validate_intervals()?;
        let bind: Result<std::net::SocketAddr, _> = self.control.bind.parse();
        match bind {
            Err(_) => return bad("control.bind", "must be an address like 127.0.0.1:8000"),
            Ok(addr)
                if !addr.ip().is_loopback()
                    && self.control.token.expose().chars().count() < MIN_PUBLIC_TOKEN_LEN =>
            {
                return bad(
                    "control.token",
                    format!(
                        "must be at least {MIN_PUBLIC_TOKEN_LEN} characters when control.bind is not a loopback address (e.g. openssl rand -hex 32), or bind the control API to 127.0.0.1"
                    ),
                )
            }
            Ok(_) => {}
        }
        if !w.bind.is_empty() {
            match w.bind.parse::<std::net::SocketAddr>() {
                Err(_) => return bad("webhook.bind", "must be an address like 0.0.0.0:8443, or empty"),
                Ok(_) if w.bind == self.control.bind => {
                    return bad(
                        "webhook.bind",
                        "must differ from control.bind (leave it empty to serve the webhook on the control listener)",
                    )
                }
                Ok(_) => {}
            }
        }
        if self.log.level.trim().is_empty() {
            return bad("log.level", "must not be empty");
        }
        Ok(())
    }

    fn validate_imap(&self) -> Result<(), InvalidSetting> {
        let i = &self.imap;
        if !(1..=10_000).contains(&i.fetch_chunk) {
            return bad("imap.fetch_chunk", "must be between 1 and 10000");
        }
        if i.fetch_max_bytes < 65_536 {
            return bad("imap.fetch_max_bytes", "must be at least 65536");
        }
        if !(65_536..=1 << 30).contains(&i.max_message_bytes) {
            return bad(
                "imap.max_message_bytes",
                "must be between 65536 and 1073741824 (1 GiB)",
            );
        }
        if !(10..=1_740).contains(&i.idle_renew_s) {
            return bad(
                "imap.idle_renew_s",
                "must be between 10 and 1740 (servers may end an IDLE after 30 minutes)",
            );
        }
        if i.timeout_ms < 100 {
            return bad("imap.timeout_ms", "must be at least 100");
        }
        if i.lease_ttl_s < 2 {
            return bad("imap.lease_ttl_s", "must be at least 2");
        }
        let mut names = std::collections::BTreeSet::new();
        for (n, src) in i.sources.iter().enumerate() {
            let key = |k: &str| format!("imap.sources[{n}].{k}");
            if src.name.trim().is_empty() || src.name.chars().any(char::is_whitespace) {
                return bad(key("name"), "is required and must not contain spaces");
            }
            if !names.insert(src.name.as_str()) {
                return bad(key("name"), format!("`{}` names two sources", src.name));
            }
            if src.host.trim().is_empty() {
                return bad(key("host"), "is required");
            }
            if src.tls == ImapTls::None && !is_loopback_host(&src.host) {
                return bad(
                    key("tls"),
                    "`none` sends the password in clear text: only for a loopback host",
                );
            }
            if src.username.is_empty() {
                return bad(key("username"), "is required");
            }
            // Secrets were resolved (env:, file:, credential:) when the settings were read.
            let required = match src.auth {
                ImapAuth::Password => ("password", &src.password),
                ImapAuth::Xoauth2 => ("refresh_token", &src.refresh_token),
            };
            if required.1.is_empty() {
                return bad(
                    key(required.0),
                    format!("is required with auth = {:?}", src.auth),
                );
            }
            if src.auth == ImapAuth::Xoauth2 {
                endpoint(&key("token_url"), &src.token_url)?;
                if src.client_id.is_empty() {
                    return bad(key("client_id"), "is required with auth = xoauth2");
                }
            }
            if src.folder.trim().is_empty() {
                return bad(key("folder"), "must not be empty");
            }
            if src.poll_interval_s == 0 {
                return bad(key("poll_interval_s"), "must be at least 1");
            }
            if src.after_delivery == AfterDelivery::Move
                && (src.move_to.trim().is_empty() || src.move_to == src.folder)
            {
                return bad(
                    key("move_to"),
                    "must name a folder other than `folder` with after_delivery = move",
                );
            }
            if !src.ca_file.is_empty() && !std::path::Path::new(&src.ca_file).is_file() {
                return bad(key("ca_file"), format!("{} is not a file", src.ca_file));
            }
        }
        Ok(())
    }

    /// The consumer name of this daemon in every consumer group.
    pub fn consumer_name(&self) -> String {
        if !self.redis.consumer.is_empty() {
            return self.redis.consumer.clone();
        }
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .map(|h| h.trim().to_string())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "ms1".into())
    }
}

/// The longest interval any setting may name: 30 days. Longer ones would overflow a timer
/// (`Instant + Duration` panics) or mean a mistake (seconds given as milliseconds twice over).
const MAX_INTERVAL_MS: u64 = 30 * 24 * 3_600 * 1_000;

impl Settings {
    /// Refuses intervals a timer cannot hold ([`MAX_INTERVAL_MS`]).
    fn validate_intervals(&self) -> Result<(), InvalidSetting> {
        let s = |secs: u64| secs.checked_mul(1_000);
        let mut all: Vec<(String, Option<u64>)> = vec![
            ("redis.claim_idle_ms".into(), Some(self.redis.claim_idle_ms)),
            (
                "pipeline.drain_timeout_ms".into(),
                Some(self.pipeline.drain_timeout_ms),
            ),
            ("ms4.linger_ms".into(), Some(self.ms4.linger_ms)),
            ("ms4.rate_margin_ms".into(), Some(self.ms4.rate_margin_ms)),
            (
                "ms4.request_timeout_ms".into(),
                Some(self.ms4.request_timeout_ms),
            ),
            ("ms4.auth_probe_s".into(), s(self.ms4.auth_probe_s)),
            ("ms4.retry_max_ms".into(), Some(self.ms4.retry_max_ms)),
            ("breaker.open_ms".into(), Some(self.breaker.open_ms)),
            (
                "graph.poll_interval_s".into(),
                s(self.graph.poll_interval_s),
            ),
            ("graph.window_s".into(), s(self.graph.window_s)),
            (
                "graph.request_timeout_ms".into(),
                Some(self.graph.request_timeout_ms),
            ),
            ("graph.lease_ttl_s".into(), s(self.graph.lease_ttl_s)),
            (
                "graph.park_retry_max_s".into(),
                s(self.graph.park_retry_max_s),
            ),
            (
                "webhook.body_timeout_ms".into(),
                Some(self.webhook.body_timeout_ms),
            ),
            (
                "webhook.backlog_retry_after_s".into(),
                s(self.webhook.backlog_retry_after_s),
            ),
            ("imap.timeout_ms".into(), Some(self.imap.timeout_ms)),
            ("imap.lease_ttl_s".into(), s(self.imap.lease_ttl_s)),
        ];
        for (n, src) in self.imap.sources.iter().enumerate() {
            all.push((
                format!("imap.sources[{n}].poll_interval_s"),
                s(src.poll_interval_s),
            ));
        }
        for (key, ms) in all {
            if ms.is_none_or(|ms| ms > MAX_INTERVAL_MS) {
                return bad(
                    key,
                    "is longer than 30 days, more than a timer can wait for",
                );
            }
        }
        // A mark's TTL is Redis's, not a timer's: up to a year.
        if self.redis.idempotency_ttl_s > 366 * 24 * 3_600 {
            return bad(
                "redis.idempotency_ttl_s",
                "must be at most a year (31622400)",
            );
        }
        Ok(())
    }
}

/// Checks an outbound endpoint: an http(s) URL with a host, and plain `http://` only to a
/// loopback address (anything else would carry the API key, the client secret or tokens in
/// clear text over the network).
fn endpoint(key: &str, value: &str) -> Result<(), InvalidSetting> {
    let url = match url::Url::parse(value) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => u,
        _ => return bad(key, "must be an http:// or https:// URL"),
    };
    let host = url.host_str().unwrap_or_default();
    if url.scheme() == "http" && !is_loopback_host(host) {
        return bad(
            key,
            format!(
                "plain http:// to {host} would send credentials in clear text: use https://, or http:// to a loopback address only (e.g. a local TLS-terminating proxy)"
            ),
        );
    }
    Ok(())
}

/// The instance metadata endpoint: plain http:// is how IMDS is reached, on its link-local
/// address (169.254.169.254) or through a loopback proxy; no other host gets a token request
/// in clear.
fn imds_endpoint(key: &str, value: &str) -> Result<(), InvalidSetting> {
    match url::Url::parse(value) {
        Ok(u) if u.scheme() == "http" && u.host_str() == Some("169.254.169.254") => Ok(()),
        _ => endpoint(key, value),
    }
}

fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn imap_source() -> ImapSource {
        ImapSource {
            name: "invoices".into(),
            host: "imap.example.com".into(),
            username: "u@example.com".into(),
            password: "pw".into(),
            ..Default::default()
        }
    }

    #[test]
    fn imap_sources_are_checked_and_named_by_index() {
        let mut s = Settings::default();
        s.imap.sources = vec![imap_source()];
        s.validate().unwrap();
        s.imap.sources[0].tls = ImapTls::None;
        assert_eq!(s.validate().unwrap_err().key, "imap.sources[0].tls");
        s.imap.sources[0].host = "127.0.0.1".into();
        s.validate().unwrap();
        s.imap.sources.push(imap_source());
        assert_eq!(s.validate().unwrap_err().key, "imap.sources[1].name");
        s.imap.sources[1].name = "other".into();
        s.imap.sources[1].auth = ImapAuth::Xoauth2;
        assert_eq!(
            s.validate().unwrap_err().key,
            "imap.sources[1].refresh_token"
        );
        // A reference that does not resolve is refused when the settings are read.
        let e = serde_json::from_value::<ImapSource>(serde_json::json!({
            "refresh_token": "env:MS1_TEST_SURELY_UNSET_VAR"
        }))
        .unwrap_err();
        assert!(e.to_string().contains("MS1_TEST_SURELY_UNSET_VAR"), "{e}");
        s.imap.sources[1].refresh_token = "rt".into();
        assert_eq!(s.validate().unwrap_err().key, "imap.sources[1].token_url");
        s.imap.sources[1].token_url = "https://oauth2.googleapis.com/token".into();
        s.imap.sources[1].client_id = "cid".into();
        s.validate().unwrap();
        s.imap.sources[1].after_delivery = AfterDelivery::Move;
        assert_eq!(s.validate().unwrap_err().key, "imap.sources[1].move_to");
    }

    #[test]
    fn debug_output_of_the_settings_shows_no_secret() {
        let mut s = Settings::default();
        s.redis.url = "redis://:redis-pw-1@10.0.0.1:6379".into();
        s.ms4.api_key = "ms4-key-2".into();
        s.control.token = "control-token-3".into();
        s.graph.client_secret = "graph-secret-4".into();
        s.webhook.client_state = "client-state-5".into();
        s.imap.sources = vec![ImapSource {
            password: "imap-pw-6".into(),
            client_secret: "imap-cs-7".into(),
            refresh_token: "imap-rt-8".into(),
            ..imap_source()
        }];
        let shown = format!("{s:?} {s:#?}");
        for secret in [
            "redis-pw-1",
            "ms4-key-2",
            "control-token-3",
            "graph-secret-4",
            "client-state-5",
            "imap-pw-6",
            "imap-cs-7",
            "imap-rt-8",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("redis://:****@10.0.0.1:6379"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn secrets_come_from_files_and_the_environment() {
        assert_eq!(resolve_secret("plain").unwrap(), "plain");
        let dir = std::env::temp_dir().join(format!("ms1-secret-{}", std::process::id()));
        std::fs::write(&dir, "s3cret\n").unwrap();
        assert_eq!(
            resolve_secret(&format!("file:{}", dir.display())).unwrap(),
            "s3cret"
        );
        std::fs::remove_file(&dir).unwrap();
        assert!(resolve_secret("file:/nonexistent/x").is_err());
        assert_eq!(ImapSource::default().port(), 993);
        let s = ImapSource {
            tls: ImapTls::Starttls,
            ..Default::default()
        };
        assert_eq!(s.port(), 143);
    }

    #[test]
    fn each_graph_credential_needs_its_own_settings_and_no_other() {
        let with = |credential, change: &dyn Fn(&mut GraphSettings)| {
            let mut s = Settings::default();
            s.graph.mailboxes = vec!["a@contoso.example".into()];
            s.graph.credential = credential;
            change(&mut s.graph);
            s.validate().err().map(|e| e.key)
        };
        let app = |g: &mut GraphSettings| {
            g.tenant_id = "contoso".into();
            g.client_id = "app".into();
        };
        assert_eq!(
            with(GraphCredential::Secret, &app).as_deref(),
            Some("graph.client_secret")
        );
        assert_eq!(
            with(GraphCredential::Certificate, &app).as_deref(),
            Some("graph.client_certificate")
        );
        assert_eq!(
            with(GraphCredential::Certificate, &|g| {
                app(g);
                g.client_certificate = "/etc/ms1/graph.pem".into();
            })
            .as_deref(),
            Some("graph.client_certificate_key")
        );
        // A managed identity needs neither tenant, nor client id, nor secret.
        assert_eq!(with(GraphCredential::ManagedIdentity, &|_| {}), None);
        assert_eq!(
            with(GraphCredential::ManagedIdentity, &|g| {
                g.managed_identity_endpoint = "http://imds.example.com/token".into()
            })
            .as_deref(),
            Some("graph.managed_identity_endpoint")
        );
        assert_eq!(
            with(GraphCredential::ManagedIdentity, &|g| {
                g.managed_identity_endpoint = "http://127.0.0.1:8500/metadata".into()
            }),
            None
        );
        assert_eq!(
            with(GraphCredential::WorkloadIdentity, &app).as_deref(),
            Some("graph.federated_token_file")
        );
        let parsed: GraphCredential = serde_json::from_str("\"managed_identity\"").unwrap();
        assert_eq!(parsed, GraphCredential::ManagedIdentity);
    }

    #[test]
    fn workload_identity_takes_what_the_settings_leave_empty_from_the_azure_variables() {
        let env = |name: &str| {
            Some(
                match name {
                    "AZURE_TENANT_ID" => "tenant-from-env",
                    "AZURE_CLIENT_ID" => "client-from-env",
                    "AZURE_FEDERATED_TOKEN_FILE" => {
                        "/var/run/secrets/azure/tokens/azure-identity-token"
                    }
                    "AZURE_AUTHORITY_HOST" => "https://login.microsoftonline.us/",
                    _ => return None,
                }
                .to_string(),
            )
        };
        let mut g = GraphSettings {
            credential: GraphCredential::WorkloadIdentity,
            client_id: "client-from-settings".into(),
            ..Default::default()
        };
        g.apply_workload_identity_environment(env);
        assert_eq!(
            (g.tenant_id.as_str(), g.client_id.as_str()),
            ("tenant-from-env", "client-from-settings")
        );
        assert_eq!(
            g.federated_token_file,
            "/var/run/secrets/azure/tokens/azure-identity-token"
        );
        assert_eq!(
            g.token_url(),
            "https://login.microsoftonline.us/tenant-from-env/oauth2/v2.0/token"
        );
        // A configured authority wins; another credential takes nothing from the environment.
        let mut g = GraphSettings {
            credential: GraphCredential::WorkloadIdentity,
            authority: "http://127.0.0.1:9000/{tenant}".into(),
            ..Default::default()
        };
        g.apply_workload_identity_environment(env);
        assert_eq!(g.authority, "http://127.0.0.1:9000/{tenant}");
        let mut g = GraphSettings::default();
        g.apply_workload_identity_environment(env);
        assert_eq!(g, GraphSettings::default());
    }

    #[test]
    fn settings_that_cannot_work_are_refused_naming_their_key() {
        let refused = |change: &dyn Fn(&mut Settings)| {
            let mut s = Settings::default();
            change(&mut s);
            s.validate().unwrap_err()
        };
        let e = refused(&|s| s.ms4.batch_size = 500);
        assert_eq!(e.key, "ms4.batch_size");
        assert!(e.problem.contains("100"), "{e}");
        let mut s = Settings::default();
        s.ms4.max_batch = 500;
        s.ms4.batch_size = 500;
        s.validate().unwrap();
        for (key, url) in [
            ("ms4.base_url", "http://ms4.example.com"),
            ("graph.base_url", "http://graph.example.com/v1.0"),
            ("graph.authority", "http://login.example.com/{tenant}"),
        ] {
            let e = refused(&|s| match key {
                "ms4.base_url" => s.ms4.base_url = url.into(),
                "graph.base_url" => s.graph.base_url = url.into(),
                _ => s.graph.authority = url.into(),
            });
            assert_eq!(e.key, key);
            assert!(e.problem.contains("clear text"), "{e}");
        }
        let mut s = Settings::default();
        s.ms4.base_url = "http://127.0.0.1:8400".into();
        s.graph.base_url = "http://[::1]:9000/v1.0".into();
        s.graph.authority = "http://localhost:9000/{tenant}".into();
        s.validate().unwrap();
        let e = refused(&|s| s.graph.poll_interval_s = u64::MAX / 10);
        assert_eq!(e.key, "graph.poll_interval_s");
        let e = refused(&|s| s.breaker.open_ms = u64::MAX);
        assert_eq!(e.key, "breaker.open_ms");
        let e = refused(&|s| s.redis.idempotency_ttl_s = 10 * 366 * 24 * 3_600);
        assert_eq!(e.key, "redis.idempotency_ttl_s");
        let e = refused(&|s| {
            s.imap.sources = vec![imap_source()];
            s.imap.sources[0].poll_interval_s = 40 * 24 * 3_600;
        });
        assert_eq!(e.key, "imap.sources[0].poll_interval_s");
    }

    #[test]
    fn defaults_are_valid() {
        Settings::default().validate().unwrap();
    }

    #[test]
    fn a_public_bind_without_token_is_refused() {
        let mut s = Settings::default();
        s.control.bind = "0.0.0.0:8000".into();
        assert_eq!(s.validate().unwrap_err().key, "control.token");
        s.control.token = "secret".into();
        let e = s.validate().unwrap_err();
        assert_eq!(e.key, "control.token", "a short token beyond loopback");
        assert!(e.problem.contains("32"), "{e}");
        s.control.token = "x".repeat(32).as_str().into();
        s.validate().unwrap();
        s.control.bind = "127.0.0.1:8000".into();
        s.control.token = "short".into();
        s.validate().unwrap();
    }

    #[test]
    fn the_webhook_listener_is_checked() {
        let mut s = Settings::default();
        s.webhook.bind = "0.0.0.0:8443".into();
        s.validate().unwrap();
        s.webhook.bind = "127.0.0.1:8000".into();
        assert_eq!(s.validate().unwrap_err().key, "webhook.bind");
        s.webhook.bind = "somewhere".into();
        assert_eq!(s.validate().unwrap_err().key, "webhook.bind");
        let mut s = Settings::default();
        s.webhook.max_notifications_per_post = 0;
        assert_eq!(
            s.validate().unwrap_err().key,
            "webhook.max_notifications_per_post"
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        let mut s = Settings::default();
        s.ms4.batch_size = 0;
        assert_eq!(s.validate().unwrap_err().key, "ms4.batch_size");
        let mut s = Settings::default();
        s.redis.url = "http://x".into();
        assert_eq!(s.validate().unwrap_err().key, "redis.url");
        let mut s = Settings::default();
        s.graph.retry_max_ms = s.graph.retry_min_ms - 1;
        assert_eq!(s.validate().unwrap_err().key, "graph.retry_max_ms");
        let mut s = Settings::default();
        s.imap.retry_min_ms = 0;
        assert_eq!(s.validate().unwrap_err().key, "imap.retry_max_ms");
    }

    #[test]
    fn a_national_cloud_sets_the_hosts_and_the_token_scope() {
        let mut g = GraphSettings {
            tenant_id: "t1".into(),
            ..Default::default()
        };
        assert_eq!(g.base_url(), "https://graph.microsoft.com/v1.0");
        assert_eq!(
            g.token_url(),
            "https://login.microsoftonline.com/t1/oauth2/v2.0/token"
        );
        assert_eq!(g.token_scope(), "https://graph.microsoft.com/.default");
        g.cloud = GraphCloud::Usgov;
        assert_eq!(g.base_url(), "https://graph.microsoft.us/v1.0");
        assert_eq!(
            g.token_url(),
            "https://login.microsoftonline.us/t1/oauth2/v2.0/token"
        );
        assert_eq!(g.token_scope(), "https://graph.microsoft.us/.default");
        g.cloud = GraphCloud::UsgovDod;
        assert_eq!(g.base_url(), "https://dod-graph.microsoft.us/v1.0");
        assert_eq!(g.token_scope(), "https://dod-graph.microsoft.us/.default");
        g.cloud = GraphCloud::China;
        assert_eq!(g.base_url(), "https://microsoftgraph.chinacloudapi.cn/v1.0");
        assert_eq!(
            g.token_url(),
            "https://login.chinacloudapi.cn/t1/oauth2/v2.0/token"
        );
        // Explicit hosts win (a proxy), the scope stays the cloud's.
        g.base_url = "https://graph-proxy.example/v1.0".into();
        g.authority = "https://login-proxy.example/{tenant}".into();
        assert_eq!(g.base_url(), "https://graph-proxy.example/v1.0");
        assert_eq!(
            g.token_url(),
            "https://login-proxy.example/t1/oauth2/v2.0/token"
        );
        assert_eq!(
            g.token_scope(),
            "https://microsoftgraph.chinacloudapi.cn/.default"
        );
    }

    #[test]
    fn a_host_of_another_cloud_is_refused_by_name() {
        let mut s = Settings::default();
        s.graph.cloud = GraphCloud::Usgov;
        s.graph.base_url = "https://graph.microsoft.com/v1.0".into();
        let e = s.validate().unwrap_err();
        assert_eq!(e.key, "graph.base_url");
        assert!(e.problem.contains("global cloud"), "{}", e.problem);
        // GCC High and DoD share the sign-in host, not the Graph host.
        s.graph.base_url = "https://dod-graph.microsoft.us/v1.0".into();
        assert_eq!(s.validate().unwrap_err().key, "graph.base_url");
        s.graph.cloud = GraphCloud::UsgovDod;
        s.graph.authority = "https://login.microsoftonline.us/{tenant}".into();
        assert!(s.validate().is_ok(), "{:?}", s.validate());
        s.graph.authority = "https://login.chinacloudapi.cn/{tenant}".into();
        assert_eq!(s.validate().unwrap_err().key, "graph.authority");
        // A host no cloud owns (a proxy) is the operator's choice.
        s.graph.authority = "https://login-proxy.example/{tenant}".into();
        assert!(s.validate().is_ok());
        let parsed: GraphSettings = serde_json::from_str(r#"{"cloud": "usgov_dod"}"#).unwrap();
        assert_eq!(parsed.cloud, GraphCloud::UsgovDod);
    }

    #[test]
    fn each_stage_retries_on_its_own_sections_bounds() {
        let mut s = Settings::default();
        s.graph.retry_min_ms = 1_000;
        s.imap.retry_max_ms = 5_000;
        assert_eq!(s.graph.retry().min, Duration::from_millis(1_000));
        assert_eq!(s.imap.retry().max, Duration::from_millis(5_000));
        assert_eq!(s.ms4.retry(), RetryBounds::from_ms(200, 30_000));
    }

    #[test]
    fn a_hash_tag_is_the_first_braced_text_of_the_prefix() {
        assert_eq!(hash_tag("{ms1}:"), Some("ms1"));
        assert_eq!(hash_tag("app:{ms1}:"), Some("ms1"));
        assert_eq!(hash_tag("{a}{b}:"), Some("a"));
        assert_eq!(hash_tag("ms1:"), None);
        assert_eq!(
            hash_tag("{}:{ms1}:"),
            None,
            "an empty tag makes Redis hash the whole key"
        );
        assert_eq!(
            hash_tag("ms1{:"),
            None,
            "the tag must close inside the prefix"
        );
        assert_eq!(hash_tag("ms1}{x}:"), Some("x"));
    }

    #[test]
    fn a_cluster_needs_its_nodes_and_a_hash_tag_in_the_prefix() {
        let mut s = Settings::default();
        s.redis.cluster = true;
        s.redis.prefix = "{ms1}:".into();
        assert_eq!(s.validate().unwrap_err().key, "redis.url", "no nodes");
        s.redis.url = "redis://10.0.0.1:6379, redis://:secret@10.0.0.2:6379".into();
        s.validate().unwrap();
        s.redis.url = "redis://10.0.0.1:6379,unix:///run/redis.sock".into();
        let e = s.validate().unwrap_err();
        assert_eq!(e.key, "redis.url");
        assert!(e.problem.contains("node 2"), "{e}");
        s.redis.url = "redis://:secret@10.0.0.1:6379,".into();
        let e = s.validate().unwrap_err();
        assert!(!e.problem.contains("secret"), "{e}");
        s.redis.url = "redis://10.0.0.1:6379".into();
        for untagged in ["ms1:", "{}:ms1:", "ms1{:"] {
            s.redis.prefix = untagged.into();
            let e = s.validate().unwrap_err();
            assert_eq!(e.key, "redis.prefix", "{untagged}");
            assert!(e.problem.contains("hash tag"), "{e}");
        }
        s.redis.prefix = "app:{ms1}:".into();
        s.validate().unwrap();
    }

    #[test]
    fn redis_tls_files_and_passwords_are_checked_by_key() {
        let dir = std::env::temp_dir().join(format!("ms1-redis-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pem = dir.join("ca.pem");
        // Any base64 body parses as a PEM block; validation checks the form, not the CA.
        std::fs::write(
            &pem,
            "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let pem = pem.display().to_string();
        let mut s = Settings::default();
        s.redis.url = "rediss://:pw@redis.example.com:6380".into();
        s.validate().unwrap();
        s.redis.ca_file = "/nonexistent/ca.pem".into();
        assert_eq!(s.validate().unwrap_err().key, "redis.ca_file");
        s.redis.ca_file = dir.display().to_string();
        assert_eq!(
            s.validate().unwrap_err().key,
            "redis.ca_file",
            "a directory"
        );
        s.redis.ca_file = pem.clone();
        s.validate().unwrap();
        s.redis.client_cert = pem.clone();
        assert_eq!(s.validate().unwrap_err().key, "redis.client_cert", "no key");
        s.redis.client_key = "/etc/ms1/client.key".into();
        let e = s.validate().unwrap_err();
        assert_eq!(e.key, "redis.client_key", "a path is not a key");
        assert!(!e.problem.contains("/etc/ms1"), "{e}");
        s.redis.client_key = "-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----".into();
        s.validate().unwrap();
        s.redis.password = "other".into();
        assert_eq!(s.validate().unwrap_err().key, "redis.password", "differs");
        s.redis.password = "pw".into();
        s.validate().unwrap();
        assert_eq!(s.redis.resolved_password().unwrap().as_deref(), Some("pw"));
        s.redis.url = "redis://redis.example.com:6379".into();
        assert_eq!(
            s.validate().unwrap_err().key,
            "redis.ca_file",
            "TLS files need rediss://"
        );
        let debug = format!("{:?}", s.redis);
        assert!(
            !debug.contains("PRIVATE KEY") && !debug.contains("\"pw\""),
            "{debug}"
        );
        let mut s = Settings::default();
        s.redis.password = "pw".into();
        assert_eq!(
            s.validate().unwrap_err().key,
            "redis.password",
            "private redis"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn several_nodes_without_cluster_are_refused() {
        let mut s = Settings::default();
        s.redis.url = "redis://10.0.0.1:6379,redis://10.0.0.2:6379".into();
        let e = s.validate().unwrap_err();
        assert_eq!(e.key, "redis.url");
        assert!(e.problem.contains("redis.cluster = true"), "{e}");
    }
}
