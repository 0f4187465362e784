//! Whether settings can work: every check of [`Settings::validate`], each refusal naming its
//! key.

use super::*;

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
        g.validate_tenants()?;
        if g.folder.trim().is_empty() {
            return bad("graph.folder", "must not be empty");
        }
        if g.poll_interval_s == 0 {
            return bad("graph.poll_interval_s", "must be at least 1");
        }
        if !(1..=1_000).contains(&g.page_size) {
            return bad("graph.page_size", "must be between 1 and 1000");
        }
        if g.unread_overlap_s > 86_400 {
            return bad(
                "graph.unread_overlap_s",
                "must be between 0 and 86400 (one day)",
            );
        }
        if g.unread_sweep_s > 604_800 {
            return bad(
                "graph.unread_sweep_s",
                "must be between 0 (every poll) and 604800 (a week)",
            );
        }
        if g.max_concurrent_per_mailbox == 0 {
            return bad("graph.max_concurrent_per_mailbox", "must be at least 1");
        }
        if g.app_requests_per_window == 0 || g.app_window_s == 0 {
            return bad(
                "graph.app_requests_per_window",
                "app_requests_per_window and app_window_s must be greater than 0",
            );
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
            if g.tenants().is_empty() {
                return bad("webhook.enabled", "needs Graph mailboxes to subscribe to");
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
            if src.after_dead_letter == AfterDeadLetter::Move {
                let target = src.dead_letter_move_to.trim();
                if target.is_empty() || target == src.folder {
                    return bad(
                        key("dead_letter_move_to"),
                        "must name a folder other than `folder` with after_dead_letter = move",
                    );
                }
                if src.after_delivery == AfterDelivery::Move && target == src.move_to {
                    return bad(
                        key("dead_letter_move_to"),
                        "must differ from `move_to`: refused and delivered messages would end in one folder",
                    );
                }
            }
            if !src.ca_file.is_empty() && !std::path::Path::new(&src.ca_file).is_file() {
                return bad(key("ca_file"), format!("{} is not a file", src.ca_file));
            }
        }
        let g = &self.graph;
        if g.after_dead_letter != GraphAfterDeadLetter::Leave && g.mode != GraphMode::Unread {
            return bad(
                "graph.after_dead_letter",
                "mark_read and move need graph.mode = \"unread\" (delta mode leaves messages as they are)",
            );
        }
        if g.after_dead_letter == GraphAfterDeadLetter::Move {
            let target = g.dead_letter_move_to.trim();
            if target.is_empty() || target.eq_ignore_ascii_case(&g.folder) {
                return bad(
                    "graph.dead_letter_move_to",
                    "must name a folder other than graph.folder (a well-known name such as `archive`, or a folder id) with after_dead_letter = move",
                );
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
            ("graph.app_window_s".into(), s(self.graph.app_window_s)),
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
