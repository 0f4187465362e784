//! Typed settings of the daemon.
//!
//! Every field has a serde default equal to the value in `config/default.toml`; a test in
//! `src/config.rs` parses that file and compares it with [`Settings::default`], so the two cannot
//! drift. Loading (file + `MS1__SECTION__KEY` environment) lives in the daemon shell; the engine
//! only ever sees a validated [`Settings`].

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
    pub control: ControlSettings,
    pub log: LogSettings,
}

/// Where the streams live and how entries are claimed.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSettings {
    /// `redis://…`, `rediss://…` or `unix://…`. Empty: the daemon starts a private
    /// `redis-server` under `redis.data_dir` (demo and single-machine use).
    pub url: String,
    /// Prefix of every key. Put a Redis Cluster hash tag here (`{ms1}:`) to keep one pipeline in one slot.
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
}

impl Default for RedisSettings {
    fn default() -> Self {
        Self {
            url: String::new(),
            prefix: "ms1:".into(),
            consumer: String::new(),
            claim_idle_ms: 60_000,
            idempotency_ttl_s: 604_800,
            dlq_maxlen: 0,
            data_dir: "/var/lib/ms1-ingestor/redis".into(),
        }
    }
}

/// Inbound → outbound processing.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineSettings {
    /// Inbound entries read per XREADGROUP.
    pub read_chunk: usize,
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
    /// Value of the `X-API-Key` header.
    pub api_key: String,
    /// Records per request (MS4 recommends 50 and accepts at most 100).
    pub batch_size: usize,
    /// A partial batch is sent after waiting this long for more records, in milliseconds.
    pub linger_ms: u64,
    /// Requests to MS4 in flight at once.
    pub max_in_flight: usize,
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

impl Default for Ms4Settings {
    fn default() -> Self {
        Self {
            base_url: "http://127.0.0.1:8400".into(),
            api_key: String::new(),
            batch_size: 50,
            linger_ms: 200,
            max_in_flight: 4,
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

/// The control HTTP API (health, readiness, metrics).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlSettings {
    /// Address the control API listens on.
    pub bind: String,
    /// Bearer token required on control routes; mandatory when `bind` is not a loopback address.
    pub token: String,
}

impl Default for ControlSettings {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1:8000".into(),
            token: String::new(),
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
    pub key: &'static str,
    pub problem: String,
}

impl Settings {
    /// Checks the values that serde cannot: ranges and relations between keys.
    pub fn validate(&self) -> Result<(), InvalidSetting> {
        fn bad(key: &'static str, problem: impl Into<String>) -> Result<(), InvalidSetting> {
            Err(InvalidSetting {
                key,
                problem: problem.into(),
            })
        }
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
        if !(10..=60_000).contains(&p.block_ms) {
            return bad("pipeline.block_ms", "must be between 10 and 60000");
        }
        if p.max_backlog == 0 {
            return bad("pipeline.max_backlog", "must be greater than 0");
        }
        let m = &self.ms4;
        if !(m.base_url.starts_with("http://") || m.base_url.starts_with("https://")) {
            return bad("ms4.base_url", "must be an http:// or https:// URL");
        }
        if !(1..=1_000).contains(&m.batch_size) {
            return bad("ms4.batch_size", "must be between 1 and 1000");
        }
        if !(1..=256).contains(&m.max_in_flight) {
            return bad("ms4.max_in_flight", "must be between 1 and 256");
        }
        if m.request_timeout_ms < 100 {
            return bad("ms4.request_timeout_ms", "must be at least 100");
        }
        if m.auth_probe_s == 0 {
            return bad("ms4.auth_probe_s", "must be at least 1");
        }
        if m.retry_min_ms == 0 || m.retry_max_ms < m.retry_min_ms {
            return bad(
                "ms4.retry_max_ms",
                "retry_min_ms must be > 0 and retry_max_ms >= retry_min_ms",
            );
        }
        if self.breaker.failure_threshold == 0 {
            return bad("breaker.failure_threshold", "must be at least 1");
        }
        if self.breaker.open_ms == 0 {
            return bad("breaker.open_ms", "must be greater than 0");
        }
        let bind: Result<std::net::SocketAddr, _> = self.control.bind.parse();
        match bind {
            Err(_) => return bad("control.bind", "must be an address like 127.0.0.1:8000"),
            Ok(addr) if !addr.ip().is_loopback() && self.control.token.is_empty() => {
                return bad(
                    "control.token",
                    "is required when control.bind is not a loopback address",
                )
            }
            Ok(_) => {}
        }
        if self.log.level.trim().is_empty() {
            return bad("log.level", "must not be empty");
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

#[cfg(test)]
mod tests {
    use super::*;

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
        s.validate().unwrap();
    }

    #[test]
    fn bad_values_name_their_key() {
        let mut s = Settings::default();
        s.ms4.batch_size = 0;
        assert_eq!(s.validate().unwrap_err().key, "ms4.batch_size");
        let mut s = Settings::default();
        s.redis.url = "http://x".into();
        assert_eq!(s.validate().unwrap_err().key, "redis.url");
    }
}
