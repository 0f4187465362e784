//! Names of the metrics the engine records (through the `metrics` facade; the daemon installs
//! the Prometheus exporter). One place, so dashboards and alerts can rely on them.

/// Inbound entries read by the BatchProcessor.
pub const RECEIVED: &str = "ms1_emails_received_total";
/// Records handed to the outbound stream.
pub const PROCESSED: &str = "ms1_emails_processed_total";
/// Records MS4 accepted.
pub const DELIVERED: &str = "ms1_emails_delivered_total";
/// Entries dead-lettered, by `stage`.
pub const DEAD_LETTERED: &str = "ms1_emails_dead_lettered_total";
/// Entries whose idempotency key was seen before (acknowledged, not re-sent).
pub const DUPLICATES: &str = "ms1_emails_duplicate_total";
/// MS4 requests by `outcome` (accepted, rejected, unauthorized, throttled, transient).
pub const MS4_REQUESTS: &str = "ms1_ms4_requests_total";
/// MS4 request latency by `status`.
pub const MS4_LATENCY: &str = "ms1_ms4_request_duration_seconds";
/// From entering the inbound stream to MS4's 202.
pub const END_TO_END: &str = "ms1_delivery_latency_seconds";
/// Batches in flight to MS4.
pub const IN_FLIGHT: &str = "ms1_ms4_batches_in_flight";
/// Circuit breaker state: 0 closed, 1 open, 2 half-open.
pub const BREAKER: &str = "ms1_ms4_breaker_state";
/// Time spent waiting for a rate permit, by `budget`.
pub const RATE_WAIT: &str = "ms1_rate_limit_wait_seconds";
/// Actor restarts by their supervisor, by `actor`.
pub const RESTARTS: &str = "ms1_actor_restarts_total";
/// Stream lengths, by `stream`.
pub const STREAM_LEN: &str = "ms1_stream_length";
/// OAuth2 tokens fetched, by `owner` (`graph:{tenant}`, `imap:{source}`).
pub const TOKEN_REFRESHES: &str = "ms1_oauth_token_refreshes_total";
/// OAuth2 token requests that failed, by `owner` and `reason` (refused: the authority refused
/// the credential; unusable: the certificate, key or token file cannot be used; transient).
pub const TOKEN_FAILURES: &str = "ms1_oauth_token_failures_total";
/// Graph requests by `tenant` and `outcome` (ok, throttled, unauthorized, gone, not_found,
/// transient, rejected).
pub const GRAPH_REQUESTS: &str = "ms1_graph_requests_total";
/// Graph request latency by `status`.
pub const GRAPH_LATENCY: &str = "ms1_graph_request_duration_seconds";
/// Messages a poller put into the inbound stream, by `mode`.
pub const POLLED: &str = "ms1_emails_polled_total";
/// Webhook notifications by `outcome` (accepted, duplicate, backlogged, rejected_client_state,
/// unknown_subscription, no_message_id, rejected_lifecycle, lifecycle).
pub const WEBHOOK_NOTIFICATIONS: &str = "ms1_webhook_notifications_total";
/// Messages marked read in Graph after MS4 accepted them (and dead-lettered ones with
/// `graph.after_dead_letter = "mark_read"`).
pub const MARKED_READ: &str = "ms1_emails_marked_read_total";
/// Dead-lettered Graph messages moved to `graph.dead_letter_move_to`.
pub const GRAPH_DEAD_LETTER_MOVED: &str = "ms1_graph_dead_letters_moved_total";
/// 1 while MS4 accepts the API key, 0 after a 401/403 until a probe succeeds.
pub const MS4_AUTH_OK: &str = "ms1_ms4_auth_ok";
/// Entries not yet delivered to a consumer group, by `stream` and `group` (XINFO GROUPS lag).
pub const GROUP_LAG: &str = "ms1_consumer_group_lag";
/// Entries delivered to a group but not yet acknowledged, by `stream` and `group`.
pub const GROUP_PENDING: &str = "ms1_consumer_group_pending";
/// IMAP folders found with a new UIDVALIDITY (resynced from the start), by `source`.
pub const IMAP_RESYNCS: &str = "ms1_imap_uidvalidity_resets_total";
/// IMAP failures by `source` and `kind` (connect, tls, login, token, folder, protocol, timeout).
pub const IMAP_ERRORS: &str = "ms1_imap_errors_total";
/// IMAP after-delivery actions done, by `action` (seen, move; after a dead letter
/// dead_letter_seen, dead_letter_move).
pub const IMAP_AFTER_DELIVERY: &str = "ms1_imap_after_delivery_total";
/// Inbound entries parked because Graph refuses their mailbox, by `mailbox`.
pub const PARKED: &str = "ms1_entries_parked_total";
/// Entries waiting in a mailbox's parked stream, by `mailbox`.
pub const PARKED_ENTRIES: &str = "ms1_parked_entries";
/// Follow-ups (mark read, IMAP actions) waiting for their target to answer again, by `worker`
/// and `target`.
pub const AFTER_DELIVERY_WAITING: &str = "ms1_after_delivery_waiting";
/// Records whose idempotency key (Message-ID) arrived again with other content, delivered
/// under the key and their content digest.
pub const KEY_CONFLICTS: &str = "ms1_key_conflicts_total";
/// Later copies of a delivered message by how their follow-up ended (`end`: followed_up,
/// waiting, first_dead_lettered, given_up; see `store::copies`).
pub const COPIES: &str = "ms1_copies_total";

/// Creates the counters that `rate()` and absence alerts watch, at 0, so a fresh daemon
/// exports them before its first message (a counter otherwise appears only when first
/// incremented, and `rate()` over a series that springs into existence misses its first
/// increase).
pub fn register_counters() {
    for name in [
        RECEIVED,
        PROCESSED,
        DELIVERED,
        DUPLICATES,
        KEY_CONFLICTS,
        MARKED_READ,
    ] {
        metrics::counter!(name).increment(0);
    }
    for mode in ["delta", "unread", "imap"] {
        metrics::counter!(POLLED, "mode" => mode).increment(0);
    }
    for end in ["followed_up", "waiting", "first_dead_lettered", "given_up"] {
        metrics::counter!(COPIES, "end" => end).increment(0);
    }
    for stage in ["process", "deliver", "after_delivery"] {
        metrics::counter!(DEAD_LETTERED, "stage" => stage).increment(0);
    }
    for outcome in [
        "accepted",
        "rejected",
        "unauthorized",
        "throttled",
        "transient",
    ] {
        metrics::counter!(MS4_REQUESTS, "outcome" => outcome).increment(0);
    }
}

/// Creates a tenant's Graph request counters at 0 (see [`register_counters`]).
pub(crate) fn register_graph_tenant(tenant: &str) {
    for outcome in [
        "ok",
        "throttled",
        "unauthorized",
        "gone",
        "not_found",
        "transient",
        "rejected",
    ] {
        metrics::counter!(GRAPH_REQUESTS, "tenant" => tenant.to_string(), "outcome" => outcome)
            .increment(0);
    }
}
