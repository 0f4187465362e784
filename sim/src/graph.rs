//! The Microsoft Graph simulator (`ms1-ingestor sim graph`).
//!
//! It speaks the "Microsoft Graph (v1.0)" part of CONTRACTS.md closely enough that a daemon
//! passing against it has met the rules that matter against Graph:
//!
//! - **Token endpoint** `POST /{tenant}/oauth2/v2.0/token`: client credentials, and a refresh
//!   token grant (for IMAP XOAUTH2). Every `/v1.0` route wants `Authorization: Bearer` with a
//!   token that has not outlived the *current* token lifetime (`/_sim/config` can shorten it, so
//!   a test can expire the tokens a client holds).
//! - **Mail**: the unread list with `$filter`, `$orderby` (and Graph's `InefficientFilter` rule),
//!   `$top` and `$select`, paged by an opaque `$skiptoken` that survives messages being marked
//!   read meanwhile (or, with `--list-paging skip`, by `$skip` as Graph itself pages messages);
//!   delta with `Prefer: odata.maxpagesize`, `@removed` items and 410 `SyncStateNotFound`;
//!   get and patch one message; attachment metadata; JSON batching (at most 20 per `$batch`).
//! - **Subscriptions** with the real validation handshake against the notification (and
//!   lifecycle) URL, change notifications posted when mail arrives (up to 100 per POST), and
//!   lifecycle events on demand.
//! - **Throttling** per mailbox: 4 requests in flight, 10,000 per 10 minutes, storms on demand.
//!   It counts what a client did wrong (requests inside a Retry-After, too many in flight,
//!   batches over 20, expired tokens) as `violations`, which the daemon's tests assert at zero.
//! - **Token introspection** `POST /_sim/introspect` (RFC 7662, form field `token`) for a
//!   private Dovecot's oauth2 passdb: a token this simulator issued and that has not expired is
//!   `active` for the `--introspect-user` (so IMAP `XOAUTH2` logs in as that user).
//! - Control under `/_sim/*`: `mail`, `delete`, `expire-delta`, `throttle`, `notify`,
//!   `lifecycle`, `config`, `stats`, `messages`.
//!
//! Messages are serialized once when they arrive (property by property, so `$select` is a
//! filter over ready-made fragments) and kept per mailbox in a `Vec` in arrival order; pages
//! are positioned by index, so serving 1,000 messages costs about one copy of their bytes.

use crate::synthetic;
use actix_web::http::StatusCode;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use ms1_ingestor::daemon::install_tls_provider;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use url::form_urlencoded;

/// A request that arrives this long after a 429 was sent cannot have been in flight already:
/// if it falls inside the Retry-After, the client ignored it (same rule as the MS4 simulator).
const RETRY_AFTER_GRACE: Duration = Duration::from_millis(100);
/// Graph's JSON batching limit.
const MAX_BATCH: usize = 20;
/// Graph groups change notifications, at most this many per POST.
const NOTIFICATIONS_PER_POST: usize = 100;
/// How long the notification endpoint has to answer a validation request.
const VALIDATION_TIMEOUT: Duration = Duration::from_secs(10);
/// Graph gives up on a notification POST after this long.
const NOTIFICATION_TIMEOUT: Duration = Duration::from_secs(10);
/// Answers slower than this count as slow (Graph drops endpoints that are slow too often).
const SLOW_NOTIFICATION: Duration = Duration::from_secs(3);
/// The only scope the client credentials grant accepts.
const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";
/// Delta page size without `Prefer: odata.maxpagesize`.
const DEFAULT_DELTA_PAGE: usize = 10;
/// List page size without `$top` (Graph's default for messages).
const DEFAULT_LIST_PAGE: usize = 10;
/// `clientState` limit.
const MAX_CLIENT_STATE: usize = 128;
/// The content type Graph answers JSON with.
const GRAPH_JSON: &str =
    "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8";

/// Properties of `microsoft.graph.message` that `$select` may name.
const MESSAGE_PROPERTIES: &[&str] = &[
    "id",
    "createdDateTime",
    "lastModifiedDateTime",
    "changeKey",
    "categories",
    "receivedDateTime",
    "sentDateTime",
    "hasAttachments",
    "internetMessageId",
    "subject",
    "bodyPreview",
    "importance",
    "parentFolderId",
    "conversationId",
    "conversationIndex",
    "isDeliveryReceiptRequested",
    "isReadReceiptRequested",
    "isRead",
    "isDraft",
    "webLink",
    "inferenceClassification",
    "body",
    "uniqueBody",
    "sender",
    "from",
    "toRecipients",
    "ccRecipients",
    "bccRecipients",
    "replyTo",
    "flag",
    "internetMessageHeaders",
    "attachments",
];

/// Properties of `microsoft.graph.attachment` that `$select` may name.
const ATTACHMENT_PROPERTIES: &[&str] = &[
    "id",
    "name",
    "contentType",
    "size",
    "isInline",
    "lastModifiedDateTime",
    "contentBytes",
    "contentId",
    "contentLocation",
];

/// How the unread list pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ListPaging {
    /// An opaque `$skiptoken` holding the position (receivedDateTime + id): marking messages
    /// read between pages loses nothing.
    Skiptoken,
    /// `$skip=N` as Graph really pages messages: marking read between pages skips messages, so
    /// a client that follows nextLink while shrinking the set loses some.
    Skip,
}

/// Start-up options (the limits also change at run time through `/_sim/config`).
#[derive(Debug, Clone, clap::Args)]
pub struct GraphSimOptions {
    /// Address to listen on (loopback only).
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: String,
    /// Port; 0 picks a free one (printed on stdout).
    #[arg(long, default_value_t = 8500)]
    pub port: u16,
    /// Tenant name in the token URL (its stable GUID is accepted too).
    #[arg(long, default_value = "contoso")]
    pub tenant: String,
    /// The application (client) id the token endpoint accepts.
    #[arg(long, default_value = "ms1-app")]
    pub client_id: String,
    /// The client secret the token endpoint accepts.
    #[arg(long, default_value = "sim-secret")]
    pub client_secret: String,
    /// The refresh token the `refresh_token` grant accepts (IMAP XOAUTH2).
    #[arg(long, default_value = "sim-refresh-token")]
    pub refresh_token: String,
    /// Lifetime of access tokens, in seconds.
    #[arg(long, default_value_t = 3599)]
    pub token_lifetime_s: u64,
    /// The user `POST /_sim/introspect` reports for any live token (as `email`, `username`
    /// and `upn`): the IMAP account those tokens log in as. Default: the first mailbox.
    #[arg(long)]
    pub introspect_user: Option<String>,
    /// Mailboxes (UPNs), comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "invoices-0@contoso.example,invoices-1@contoso.example,invoices-2@contoso.example"
    )]
    pub mailboxes: Vec<String>,
    /// Unread messages each mailbox holds at start.
    #[arg(long, default_value_t = 0)]
    pub messages_per_mailbox: u64,
    /// Largest page served (`$top` and `Prefer: odata.maxpagesize` are capped to it).
    #[arg(long, default_value_t = 1000)]
    pub max_page_size: usize,
    /// Requests in flight at once per mailbox; more are answered 429 (0: no limit).
    #[arg(long, default_value_t = 4)]
    pub concurrency_limit: usize,
    /// Requests per mailbox within the sliding window (0: no limit).
    #[arg(long, default_value_t = 10_000)]
    pub window_limit: usize,
    /// Length of the sliding request window in ms.
    #[arg(long, default_value_t = 600_000)]
    pub window_ms: u64,
    /// Longest subscription lifetime accepted, in minutes.
    #[arg(long, default_value_t = 10_080)]
    pub subscription_max_minutes: i64,
    /// Delta tokens expire after this many seconds (0: never).
    #[arg(long, default_value_t = 0)]
    pub delta_token_ttl_s: u64,
    /// How the unread list pages.
    #[arg(long, value_enum, default_value_t = ListPaging::Skiptoken)]
    pub list_paging: ListPaging,
    /// HTTP worker threads.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
}

/// Faults and limits that can change while running (`POST /_sim/config`).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    /// Lifetime of access tokens, applied to tokens already issued too.
    pub token_lifetime_s: Option<u64>,
    /// Delay before answering each `/v1.0` request, in ms.
    pub latency_ms: Option<u64>,
    /// Share of `/v1.0` requests answered 500, 0.0–1.0.
    pub error_rate: Option<f64>,
    pub concurrency_limit: Option<usize>,
    pub window_limit: Option<usize>,
    pub window_ms: Option<u64>,
    pub max_page_size: Option<usize>,
    pub delta_token_ttl_s: Option<u64>,
    /// Mailboxes an application access policy excludes from now on (the whole list: `[]`
    /// lets every mailbox in again): every request on them is answered 403
    /// `ErrorAccessDenied`, "Access to OData is disabled.", as Exchange Online does.
    pub deny_mailboxes: Option<Vec<String>>,
}

// ---------------------------------------------------------------------------------------------
// Answers

/// A Graph error: status, `error.code`, `error.message`, and `Retry-After` when throttled.
#[derive(Debug, Clone, PartialEq, Eq)]
struct GraphError {
    status: u16,
    code: &'static str,
    message: String,
    retry_after_s: Option<u64>,
}

impl GraphError {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after_s: None,
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    fn invalid_request(message: impl Into<String>) -> Self {
        Self::new(400, "InvalidRequest", message)
    }

    fn item_not_found() -> Self {
        Self::new(
            404,
            "ErrorItemNotFound",
            "The specified object was not found in the store.",
        )
    }

    fn sync_state_not_found() -> Self {
        Self::new(
            410,
            "SyncStateNotFound",
            "The sync state generation is not found or has expired. Start a full synchronization again.",
        )
    }

    fn throttled(status: u16, code: &'static str, message: String, secs: u64) -> Self {
        Self {
            status,
            code,
            message,
            retry_after_s: Some(secs),
        }
    }

    fn reply(&self) -> Reply {
        let body = json!({"error": {
            "code": self.code,
            "message": self.message,
            "innerError": {
                "date": Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
                "request-id": uuid::Uuid::new_v4().to_string(),
            }
        }});
        let mut reply = Reply::json(self.status, body.to_string());
        if let Some(secs) = self.retry_after_s {
            reply.headers.push(("Retry-After", secs.to_string()));
        }
        reply
    }
}

/// An answer before it becomes HTTP (or a `$batch` item).
#[derive(Debug)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    /// JSON text, or nothing (204).
    body: Option<String>,
}

impl Reply {
    fn json(status: u16, body: String) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Some(body),
        }
    }

    fn empty(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: None,
        }
    }

    fn into_http(self) -> HttpResponse {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut builder = HttpResponse::build(status);
        for (name, value) in self.headers {
            builder.insert_header((name, value));
        }
        match self.body {
            Some(body) => builder.content_type(GRAPH_JSON).body(body),
            None => builder.finish(),
        }
    }
}

impl From<GraphError> for Reply {
    fn from(e: GraphError) -> Self {
        e.reply()
    }
}

/// A refusal of a `/_sim/*` request.
fn sim_refusal(status: u16, message: impl Into<String>) -> Reply {
    GraphError::new(status, "SimulatorRequest", message).reply()
}

fn sim_error(status: u16, message: impl Into<String>) -> HttpResponse {
    sim_refusal(status, message).into_http()
}

// ---------------------------------------------------------------------------------------------
// Small codecs

fn push_json_str(out: &mut String, s: &str) {
    out.push_str(&serde_json::to_string(s).expect("a string serializes"));
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

/// Decodes `%XX` escapes in a path segment (`+` stays a plus, as in paths).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex_at = |j: usize| bytes.get(j).and_then(|b| (*b as char).to_digit(16));
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let (Some(h), Some(l)) = (hex_at(i + 1), hex_at(i + 2)) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A GUID derived from a name: the same name always gives the same GUID.
fn stable_guid(name: &str) -> String {
    fn fnv1a(bytes: &[u8], mut h: u64) -> u64 {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h
    }
    let name = name.to_lowercase();
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&fnv1a(name.as_bytes(), 0xcbf2_9ce4_8422_2325).to_be_bytes());
    bytes[8..].copy_from_slice(&fnv1a(name.as_bytes(), 0x8422_2325_cbf2_9ce4).to_be_bytes());
    uuid::Builder::from_sha1_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// Graph's date-time format for subscriptions: UTC with seven fractional digits.
fn graph_time(t: DateTime<Utc>) -> String {
    format!(
        "{}.{:07}Z",
        t.format("%Y-%m-%dT%H:%M:%S"),
        t.timestamp_subsec_nanos() / 100
    )
}

fn random_token() -> String {
    format!(
        "{:032x}{:032x}",
        rand::random::<u128>(),
        rand::random::<u128>()
    )
}

/// The page size a `Prefer` header asks for (`odata.maxpagesize=N`, possibly among others).
fn prefer_max_page_size(prefer: Option<&str>) -> Option<usize> {
    prefer?.split(',').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("odata.maxpagesize")
            .then(|| v.trim().trim_matches('"').parse().ok())
            .flatten()
    })
}

/// Query parameters, percent-decoded, looked up case-insensitively.
#[derive(Debug, Default)]
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: &str) -> Self {
        Self(form_urlencoded::parse(q.as_bytes()).into_owned().collect())
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }
}

/// Seals cursors (`$skiptoken`, `$deltatoken`): only tokens this process made open again, so a
/// token from an earlier run, or a made-up one, is unknown.
struct Sealer(RandomState);

impl Sealer {
    fn seal(&self, payload: &str) -> String {
        format!(
            "{}{:016x}",
            hex(payload.as_bytes()),
            self.0.hash_one(payload)
        )
    }

    fn open(&self, token: &str) -> Option<String> {
        if token.len() < 16 || !token.is_ascii() {
            return None;
        }
        let (body, mac) = token.split_at(token.len() - 16);
        let payload = String::from_utf8(unhex(body)?).ok()?;
        (format!("{:016x}", self.0.hash_one(payload.as_str())) == mac).then_some(payload)
    }
}

/// Where a delta round stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeltaPos {
    /// Initial sync: messages `next..end` (the mailbox as it was when the round began), then
    /// the changes from `changes` on.
    Sync {
        next: usize,
        end: usize,
        changes: usize,
    },
    /// Catch-up: changes `next..end`.
    Changes { next: usize, end: usize },
    /// A deltaLink: everything after change `changes`.
    Link { changes: usize },
}

/// What a `$skiptoken` or `$deltatoken` holds (sealed, so clients cannot forge one).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Cursor {
    /// Unread-list position: after the message with this receivedDateTime and id.
    List {
        mailbox: usize,
        received_ms: i64,
        id: String,
    },
    /// A delta position; `epoch` must match the mailbox's (`/_sim/expire-delta` bumps it);
    /// `select` is the `$select` of the round (Graph keeps it in the token).
    Delta {
        mailbox: usize,
        epoch: u32,
        issued_ms: i64,
        pos: DeltaPos,
        select: String,
    },
}

impl Cursor {
    fn encode(&self) -> String {
        match self {
            Cursor::List {
                mailbox,
                received_ms,
                id,
            } => format!("L|{mailbox}|{received_ms}|{id}"),
            Cursor::Delta {
                mailbox,
                epoch,
                issued_ms,
                pos,
                select,
            } => {
                let (kind, a, b, c) = match *pos {
                    DeltaPos::Sync { next, end, changes } => ('S', next, end, changes),
                    DeltaPos::Changes { next, end } => ('C', next, end, 0),
                    DeltaPos::Link { changes } => ('K', changes, 0, 0),
                };
                format!("D|{mailbox}|{epoch}|{issued_ms}|{kind}|{a}|{b}|{c}|{select}")
            }
        }
    }

    fn decode(s: &str) -> Option<Self> {
        match s.split_once('|')? {
            ("L", rest) => {
                let mut p = rest.splitn(3, '|');
                Some(Cursor::List {
                    mailbox: p.next()?.parse().ok()?,
                    received_ms: p.next()?.parse().ok()?,
                    id: p.next()?.to_string(),
                })
            }
            ("D", rest) => {
                let p: Vec<&str> = rest.splitn(8, '|').collect();
                if p.len() != 8 {
                    return None;
                }
                let n = |i: usize| p[i].parse::<usize>().ok();
                let pos = match p[3] {
                    "S" => DeltaPos::Sync {
                        next: n(4)?,
                        end: n(5)?,
                        changes: n(6)?,
                    },
                    "C" => DeltaPos::Changes {
                        next: n(4)?,
                        end: n(5)?,
                    },
                    "K" => DeltaPos::Link { changes: n(4)? },
                    _ => return None,
                };
                Some(Cursor::Delta {
                    mailbox: p[0].parse().ok()?,
                    epoch: p[1].parse().ok()?,
                    issued_ms: p[2].parse().ok()?,
                    pos,
                    select: p[7].to_string(),
                })
            }
            _ => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// OData query options

/// `$select` (every property, or these canonical names) and whether `$expand=attachments`
/// embeds the attachments' metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Selection {
    props: Option<Vec<&'static str>>,
    attachments: bool,
}

/// Marks an expanded selection inside a delta token.
const EXPAND_MARK: &str = ";attachments";

impl Selection {
    #[allow(non_upper_case_globals)]
    const All: Selection = Selection {
        props: None,
        attachments: false,
    };

    /// Parses `$select` against the properties of `type_name`; an unknown property is Graph's
    /// 400 `RequestBroker--ParseUri`.
    fn parse(
        select: Option<&str>,
        known: &'static [&'static str],
        type_name: &str,
    ) -> Result<Self, GraphError> {
        let Some(select) = select.map(str::trim).filter(|s| !s.is_empty() && *s != "*") else {
            return Ok(Selection::All);
        };
        let mut names = Vec::new();
        for raw in select.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let name = known
                .iter()
                .find(|k| k.eq_ignore_ascii_case(raw))
                .ok_or_else(|| {
                    GraphError::new(
                        400,
                        "RequestBroker--ParseUri",
                        format!("Could not find a property named '{raw}' on type '{type_name}'."),
                    )
                })?;
            if !names.contains(name) {
                names.push(*name);
            }
        }
        Ok(Selection {
            props: Some(names),
            attachments: false,
        })
    }

    /// Applies `$expand`: only `attachments` (optionally with its own `$select`) is known.
    fn expand(mut self, expand: Option<&str>) -> Result<Self, GraphError> {
        let Some(e) = expand.map(str::trim).filter(|e| !e.is_empty()) else {
            return Ok(self);
        };
        let name = e.split('(').next().unwrap_or("").trim();
        if !name.eq_ignore_ascii_case("attachments") {
            return Err(GraphError::new(
                400,
                "RequestBroker--ParseUri",
                format!("Could not find a navigation property named '{name}' on type 'microsoft.graph.message'."),
            ));
        }
        self.attachments = true;
        Ok(self)
    }

    fn includes(&self, name: &str) -> bool {
        match &self.props {
            None => true,
            Some(names) => names.contains(&name),
        }
    }

    /// As kept in a delta token ("" for all).
    fn encode(&self) -> String {
        let mut s = match &self.props {
            None => String::new(),
            Some(names) => names.join(","),
        };
        if self.attachments {
            s.push_str(EXPAND_MARK);
        }
        s
    }

    /// A token's selection back.
    fn decode(token: &str) -> Result<Self, GraphError> {
        let (select, expanded) = match token.strip_suffix(EXPAND_MARK) {
            Some(rest) => (rest, true),
            None => (token, false),
        };
        let mut sel =
            Selection::parse(Some(select), MESSAGE_PROPERTIES, "microsoft.graph.message")?;
        sel.attachments = expanded;
        Ok(sel)
    }
}

/// A comparison in `$filter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmp {
    Ge,
    Gt,
    Le,
    Lt,
    Eq,
}

/// What the unread list serves, from `$filter` and `$orderby`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ListFilter {
    /// Bounds on receivedDateTime (ms since the epoch; messages carry whole seconds).
    received: Vec<(Cmp, i64)>,
    is_read: Option<bool>,
    /// Newest first (Graph's default order for messages).
    descending: bool,
}

impl ListFilter {
    /// The index range `lo..hi` of `times` (non-decreasing) the receivedDateTime bounds allow.
    fn range(&self, times: impl Fn(usize) -> i64, len: usize) -> (usize, usize) {
        let first = |pred: &dyn Fn(i64) -> bool| {
            // partition_point over indices: the first index whose time satisfies `pred`.
            let (mut lo, mut hi) = (0, len);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if pred(times(mid)) {
                    hi = mid;
                } else {
                    lo = mid + 1;
                }
            }
            lo
        };
        let (mut lo, mut hi) = (0, len);
        for &(cmp, t) in &self.received {
            match cmp {
                Cmp::Ge => lo = lo.max(first(&|m| m >= t)),
                Cmp::Gt => lo = lo.max(first(&|m| m > t)),
                Cmp::Le => hi = hi.min(first(&|m| m > t)),
                Cmp::Lt => hi = hi.min(first(&|m| m >= t)),
                Cmp::Eq => {
                    lo = lo.max(first(&|m| m >= t));
                    hi = hi.min(first(&|m| m > t));
                }
            }
        }
        (lo, hi.max(lo))
    }
}

/// Checks `$filter` and `$orderby` as Graph does for messages: `$orderby` properties must also
/// lead `$filter`, in the same order, else 400 `InefficientFilter`. The simulator understands
/// `receivedDateTime` comparisons and `isRead eq|ne true|false` joined by `and`.
fn check_filter(filter: Option<&str>, orderby: Option<&str>) -> Result<ListFilter, GraphError> {
    let mut f = ListFilter {
        descending: true,
        ..Default::default()
    };
    let mut order_props: Vec<&'static str> = Vec::new();
    if let Some(orderby) = orderby.map(str::trim).filter(|o| !o.is_empty()) {
        for (i, part) in orderby.split(',').enumerate() {
            let words: Vec<&str> = part.split_whitespace().collect();
            let (prop, dir) = match words.as_slice() {
                [p] => (*p, "asc"),
                [p, d] => (*p, *d),
                _ => {
                    return Err(GraphError::bad_request(format!(
                        "Invalid $orderby: '{part}'"
                    )))
                }
            };
            if !prop.eq_ignore_ascii_case("receivedDateTime") {
                return Err(GraphError::bad_request(format!(
                    "The simulator orders messages by receivedDateTime only, not by '{prop}'."
                )));
            }
            let descending = if dir.eq_ignore_ascii_case("desc") {
                true
            } else if dir.eq_ignore_ascii_case("asc") {
                false
            } else {
                return Err(GraphError::bad_request(format!(
                    "Invalid sort direction '{dir}'."
                )));
            };
            if i == 0 {
                f.descending = descending;
            }
            order_props.push("receivedDateTime");
        }
    }
    let mut filter_props: Vec<&'static str> = Vec::new();
    if let Some(filter) = filter.map(str::trim).filter(|s| !s.is_empty()) {
        let mut terms: Vec<Vec<&str>> = vec![Vec::new()];
        for word in filter.split_whitespace() {
            if word.eq_ignore_ascii_case("and") {
                terms.push(Vec::new());
            } else if word.eq_ignore_ascii_case("or") || word.contains('(') {
                return Err(GraphError::bad_request(
                    "The simulator understands filter terms joined by 'and' only.",
                ));
            } else {
                terms.last_mut().expect("one term at least").push(word);
            }
        }
        for term in terms {
            let [prop, op, value] = term.as_slice() else {
                return Err(GraphError::bad_request(format!(
                    "Invalid filter clause: '{}'.",
                    term.join(" ")
                )));
            };
            let cmp = match op.to_ascii_lowercase().as_str() {
                "ge" => Cmp::Ge,
                "gt" => Cmp::Gt,
                "le" => Cmp::Le,
                "lt" => Cmp::Lt,
                "eq" => Cmp::Eq,
                "ne" if prop.eq_ignore_ascii_case("isRead") => Cmp::Eq,
                _ => {
                    return Err(GraphError::bad_request(format!(
                        "Invalid filter operator '{op}'."
                    )))
                }
            };
            if prop.eq_ignore_ascii_case("receivedDateTime") {
                let t = DateTime::parse_from_rfc3339(value).map_err(|_| {
                    GraphError::bad_request(format!(
                        "Invalid filter clause: '{value}' is not a DateTimeOffset."
                    ))
                })?;
                f.received.push((cmp, t.timestamp_millis()));
                filter_props.push("receivedDateTime");
            } else if prop.eq_ignore_ascii_case("isRead") && cmp == Cmp::Eq {
                let v = match value.to_ascii_lowercase().as_str() {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(GraphError::bad_request(format!(
                            "Invalid filter clause: '{value}' is not a Boolean."
                        )))
                    }
                };
                let negated = op.eq_ignore_ascii_case("ne");
                f.is_read = Some(v != negated);
                filter_props.push("isRead");
            } else {
                return Err(GraphError::bad_request(format!(
                    "The simulator filters on receivedDateTime and isRead only, not '{prop}'."
                )));
            }
        }
        let leads = order_props
            .iter()
            .enumerate()
            .all(|(i, p)| filter_props.get(i) == Some(p));
        if !leads {
            return Err(GraphError::new(
                400,
                "InefficientFilter",
                "The restriction or sort order is too complex for this operation.",
            ));
        }
    }
    Ok(f)
}

// ---------------------------------------------------------------------------------------------
// Messages and mailboxes

/// A message before it gets its id and arrival time.
struct Draft {
    n: u64,
    /// (property, serialized value), without `id`, `receivedDateTime`, `isRead`, `attachments`.
    props: Vec<(&'static str, Box<str>)>,
    /// (name, contentType, size) of each attachment.
    attachments: Vec<(String, String, u64)>,
}

/// Synthetic invoice `n` as a draft (the slow part of adding mail: done outside the lock).
fn draft(n: u64, upn: &str, valid: bool) -> Draft {
    let v: Value =
        serde_json::from_str(&synthetic::graph_message(n, upn, valid)).expect("synthetic JSON");
    let Value::Object(map) = v else {
        unreachable!("synthetic messages are objects")
    };
    let mut props = Vec::with_capacity(map.len());
    let mut attachments = Vec::new();
    for (key, value) in map {
        match key.as_str() {
            "id" | "receivedDateTime" | "isRead" => {}
            "attachments" => {
                for a in value.as_array().into_iter().flatten() {
                    attachments.push((
                        a["name"].as_str().unwrap_or("attachment").to_string(),
                        a["contentType"]
                            .as_str()
                            .unwrap_or("application/octet-stream")
                            .to_string(),
                        a["size"].as_u64().unwrap_or(0),
                    ));
                }
            }
            other => {
                if let Some(name) = MESSAGE_PROPERTIES.iter().find(|p| **p == other) {
                    props.push((*name, value.to_string().into_boxed_str()));
                }
            }
        }
    }
    Draft {
        n,
        props,
        attachments,
    }
}

/// One message as stored: its properties serialized once.
struct StoredMessage {
    id: String,
    /// Arrival time in ms, strictly increasing within a mailbox.
    received_ms: i64,
    props: Vec<(&'static str, Box<str>)>,
    attachments: Vec<Value>,
    is_read: bool,
    deleted: bool,
    /// Bumped on every change; part of the etag.
    version: u32,
}

impl StoredMessage {
    /// receivedDateTime as served: whole seconds, as Graph writes it.
    fn shown_ms(&self) -> i64 {
        self.received_ms.div_euclid(1000) * 1000
    }

    fn etag(&self) -> String {
        format!(
            "W/\"CQAAABYAAA{:010X}{:04X}\"",
            self.received_ms & 0xff_ffff_ffff,
            self.version
        )
    }

    /// Appends the message as JSON: `@odata.etag`, `id`, the selected properties, `isRead`.
    fn write_json(&self, sel: &Selection, context: Option<&str>, out: &mut String) {
        out.push('{');
        if let Some(ctx) = context {
            out.push_str("\"@odata.context\":");
            push_json_str(out, ctx);
            out.push(',');
        }
        out.push_str("\"@odata.etag\":");
        push_json_str(out, &self.etag());
        out.push_str(",\"id\":");
        push_json_str(out, &self.id);
        for (name, value) in &self.props {
            if sel.includes(name) {
                out.push_str(",\"");
                out.push_str(name);
                out.push_str("\":");
                out.push_str(value);
            }
        }
        if sel.includes("isRead") {
            out.push_str(if self.is_read {
                ",\"isRead\":true"
            } else {
                ",\"isRead\":false"
            });
        }
        if sel.attachments {
            out.push_str(",\"attachments\":");
            out.push_str(&Value::Array(self.attachments.clone()).to_string());
        }
        out.push('}');
    }

    fn write_removed(&self, out: &mut String) {
        out.push_str("{\"@odata.type\":\"#microsoft.graph.message\",\"id\":");
        push_json_str(out, &self.id);
        out.push_str(",\"@removed\":{\"reason\":\"deleted\"}}");
    }
}

/// What changed in a mailbox, in order (delta replays it from a position).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Added(usize),
    Removed(usize),
}

/// The outcome of one list page.
#[derive(Debug, PartialEq, Eq)]
struct ListPage {
    served: usize,
    /// Index of the last message served.
    last: Option<usize>,
    /// Another matching message follows.
    more: bool,
}

/// Per-mailbox request budget: concurrency, the sliding window, Retry-After, storms; and the
/// counters of what clients did.
#[derive(Debug, Default)]
struct Budget {
    in_flight: usize,
    /// Arrival times of admitted requests inside the window.
    arrivals: VecDeque<Instant>,
    /// When the last throttled answer was sent and until when it asked the client to wait.
    retry_after: Option<(Instant, Instant)>,
    storm: Option<Storm>,
    counters: BudgetCounters,
}

/// Throttled answers on demand (`/_sim/throttle`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Storm {
    remaining: u64,
    retry_after_s: u64,
    status: u16,
}

#[derive(Debug, Default, Clone, Serialize)]
struct BudgetCounters {
    requests: u64,
    throttled: u64,
    /// Most requests in flight at once, counted on arrival (refused ones included).
    max_concurrent: usize,
    /// Requests that arrived while the limit was already in flight.
    concurrency_exceeded: u64,
    /// Requests that arrived inside a Retry-After this simulator gave (after the grace).
    requests_during_retry_after: u64,
    max_requests_in_window: usize,
}

/// The limits a budget applies.
#[derive(Debug, Clone, Copy)]
struct Limits {
    concurrency: usize,
    window_limit: usize,
    window: Duration,
}

/// Whether a request may proceed.
#[derive(Debug, PartialEq, Eq)]
enum Admission {
    Admit,
    Refuse(GraphError),
}

impl Budget {
    /// A request arrives; it is in flight (refused or not) until [`Budget::depart`].
    fn arrive(&mut self, now: Instant, limits: &Limits) -> Admission {
        let c = &mut self.counters;
        c.requests += 1;
        if self
            .retry_after
            .is_some_and(|(sent, until)| now >= sent + RETRY_AFTER_GRACE && now < until)
        {
            c.requests_during_retry_after += 1;
        }
        let already = self.in_flight;
        self.in_flight += 1;
        c.max_concurrent = c.max_concurrent.max(self.in_flight);
        if let Some(storm) = self.storm.as_mut() {
            storm.remaining = storm.remaining.saturating_sub(1);
            let storm = *storm;
            if storm.remaining == 0 {
                self.storm = None;
            }
            let (code, message) = if storm.status == 503 {
                (
                    "ServiceUnavailable",
                    "The service is temporarily unavailable.",
                )
            } else {
                (
                    "ApplicationThrottled",
                    "Application is over its MailboxConcurrency limit.",
                )
            };
            return self.throttle(now, storm.status, code, message.into(), storm.retry_after_s);
        }
        if limits.concurrency > 0 && already >= limits.concurrency {
            self.counters.concurrency_exceeded += 1;
            return self.throttle(
                now,
                429,
                "ApplicationThrottled",
                "Application is over its MailboxConcurrency limit.".into(),
                1,
            );
        }
        while self
            .arrivals
            .front()
            .is_some_and(|t| now.duration_since(*t) >= limits.window)
        {
            self.arrivals.pop_front();
        }
        if limits.window_limit > 0 && self.arrivals.len() >= limits.window_limit {
            let oldest = *self.arrivals.front().expect("the window is full");
            let wait = limits.window.saturating_sub(now.duration_since(oldest));
            let secs = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
            let message = format!(
                "Application is over its limit of {} requests per {} s for this mailbox.",
                limits.window_limit,
                limits.window.as_secs()
            );
            return self.throttle(now, 429, "ApplicationThrottled", message, secs);
        }
        self.arrivals.push_back(now);
        let c = &mut self.counters;
        c.max_requests_in_window = c.max_requests_in_window.max(self.arrivals.len());
        Admission::Admit
    }

    fn throttle(
        &mut self,
        now: Instant,
        status: u16,
        code: &'static str,
        message: String,
        secs: u64,
    ) -> Admission {
        self.counters.throttled += 1;
        let until = now + Duration::from_secs(secs);
        // Keep a longer wait already running: the client learnt of it earlier.
        let keep = self
            .retry_after
            .is_some_and(|(_, running)| running >= until);
        if !keep {
            self.retry_after = Some((now, until));
        }
        Admission::Refuse(GraphError::throttled(status, code, message, secs))
    }

    fn depart(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }
}

/// Who reads a mailbox's pages (list and delta), by `User-Agent`: a mailbox must have one
/// poller at a time. A poller may hand over to another (its daemon died, or its lease expired)
/// and even get the mailbox back later; but a reader coming back while the other one read a
/// page less than [`POLLER_OVERLAP`] ago means both were polling at once.
#[derive(Debug, Default)]
struct PollerLog {
    /// Every reader seen, in order of first appearance, with its last page request.
    seen: Vec<(String, Instant)>,
    last: String,
    /// Times a reader came back while another was reading (two pollers at once).
    interleavings: u64,
    /// Times a reader got the mailbox back after the other had gone quiet (a hand-back).
    handbacks: u64,
}

/// Two readers alternating within this long are polling at the same time.
const POLLER_OVERLAP: Duration = Duration::from_millis(1_000);

impl PollerLog {
    fn saw(&mut self, agent: &str, now: Instant) {
        if agent != self.last {
            let previous = self
                .seen
                .iter()
                .find(|(a, _)| *a == self.last)
                .map(|(_, t)| *t);
            if self.seen.iter().any(|(a, _)| a == agent) {
                match previous {
                    Some(t) if now.duration_since(t) < POLLER_OVERLAP => self.interleavings += 1,
                    _ => self.handbacks += 1,
                }
            } else {
                self.seen.push((agent.to_string(), now));
            }
            self.last = agent.to_string();
        }
        if let Some(entry) = self.seen.iter_mut().find(|(a, _)| a == agent) {
            entry.1 = now;
        }
    }
}

/// Per-mailbox counters of the routes served.
#[derive(Debug, Default, Clone, Serialize)]
struct MailboxCounters {
    /// Messages served in list and delta pages (`@removed` items and single GETs excluded).
    messages_served: u64,
    list_requests: u64,
    delta_requests: u64,
    delta_410: u64,
    get_requests: u64,
    attachment_requests: u64,
    marked_read: u64,
    patch_already_read: u64,
    batch_requests: u64,
    batch_over_20: u64,
    /// Requests refused 403 because the mailbox is denied (`deny_mailboxes`).
    denied_requests: u64,
}

/// One mailbox: its messages in arrival order, the change log delta replays, its budget.
struct Mailbox {
    upn: String,
    guid: String,
    /// Position in the simulator's list (part of message ids).
    index: usize,
    messages: Vec<StoredMessage>,
    by_id: HashMap<String, usize>,
    changes: Vec<Change>,
    /// Every message before this index is deleted.
    first_live: usize,
    /// Every message before this index is read or deleted.
    first_unread: usize,
    /// Who polled it, to tell when two pollers read it at once.
    pollers: PollerLog,
    live: usize,
    unread: usize,
    /// Number of the next synthetic message.
    next_n: u64,
    last_received_ms: i64,
    delta_epoch: u32,
    budget: Budget,
    counters: MailboxCounters,
    /// An application access policy excludes this mailbox: every request on it gets 403
    /// `ErrorAccessDenied` (`/_sim/config` `deny_mailboxes`).
    denied: bool,
}

impl Mailbox {
    fn new(index: usize, upn: &str) -> Self {
        Self {
            upn: upn.to_string(),
            guid: stable_guid(upn),
            index,
            messages: Vec::new(),
            by_id: HashMap::new(),
            changes: Vec::new(),
            first_live: 0,
            first_unread: 0,
            live: 0,
            unread: 0,
            next_n: 0,
            last_received_ms: 0,
            delta_epoch: 0,
            budget: Budget::default(),
            counters: MailboxCounters::default(),
            denied: false,
            pollers: PollerLog::default(),
        }
    }

    /// Appends a message arriving at `now_ms`; returns its index.
    fn append(&mut self, draft: Draft, now_ms: i64) -> usize {
        let idx = self.messages.len();
        let mut id = format!("AAMk-{}-{}", self.index, draft.n);
        if self.by_id.contains_key(&id) {
            id = format!("{id}-{idx}");
        }
        let received_ms = now_ms.max(self.last_received_ms + 1);
        self.last_received_ms = received_ms;
        let shown = Utc
            .timestamp_millis_opt(received_ms)
            .single()
            .unwrap_or_default()
            .to_rfc3339_opts(SecondsFormat::Secs, true);
        let mut props = draft.props;
        props.push((
            "receivedDateTime",
            serde_json::to_string(&shown)
                .expect("a string serializes")
                .into_boxed_str(),
        ));
        let attachments = draft
            .attachments
            .into_iter()
            .enumerate()
            .map(|(i, (name, content_type, size))| {
                json!({
                    "@odata.type": "#microsoft.graph.fileAttachment",
                    "id": format!("{id}-att-{i}"),
                    "lastModifiedDateTime": shown,
                    "name": name,
                    "contentType": content_type,
                    "size": size,
                    "isInline": false,
                })
            })
            .collect();
        self.by_id.insert(id.clone(), idx);
        self.messages.push(StoredMessage {
            id,
            received_ms,
            props,
            attachments,
            is_read: false,
            deleted: false,
            version: 0,
        });
        self.changes.push(Change::Added(idx));
        self.live += 1;
        self.unread += 1;
        idx
    }

    /// Deletes the `count` oldest messages; returns how many were deleted.
    fn delete_oldest(&mut self, count: usize) -> usize {
        let mut deleted = 0;
        let mut i = self.first_live;
        while deleted < count && i < self.messages.len() {
            let m = &mut self.messages[i];
            if !m.deleted {
                m.deleted = true;
                m.version += 1;
                if !m.is_read {
                    self.unread -= 1;
                }
                self.live -= 1;
                self.changes.push(Change::Removed(i));
                deleted += 1;
            }
            i += 1;
        }
        self.advance_hints();
        deleted
    }

    /// Sets `isRead`; returns whether it changed.
    fn set_read(&mut self, idx: usize, read: bool) -> bool {
        let m = &mut self.messages[idx];
        if m.is_read == read || m.deleted {
            return false;
        }
        m.is_read = read;
        m.version += 1;
        if read {
            self.unread -= 1;
            self.advance_hints();
        } else {
            self.unread += 1;
            self.first_unread = self.first_unread.min(idx);
        }
        true
    }

    fn advance_hints(&mut self) {
        while self
            .messages
            .get(self.first_live)
            .is_some_and(|m| m.deleted)
        {
            self.first_live += 1;
        }
        self.first_unread = self.first_unread.max(self.first_live);
        while self
            .messages
            .get(self.first_unread)
            .is_some_and(|m| m.deleted || m.is_read)
        {
            self.first_unread += 1;
        }
    }

    /// Index of a message that exists (not deleted).
    fn find(&self, id: &str) -> Option<usize> {
        self.by_id
            .get(id)
            .copied()
            .filter(|i| !self.messages[*i].deleted)
    }

    /// Writes up to `top` messages matching `f` (comma-separated) after position `after`,
    /// skipping the first `skip` matches.
    fn list_page(
        &self,
        f: &ListFilter,
        after: Option<usize>,
        skip: usize,
        top: usize,
        sel: &Selection,
        out: &mut String,
    ) -> ListPage {
        let (mut lo, mut hi) = f.range(|i| self.messages[i].shown_ms(), self.messages.len());
        lo = lo.max(self.first_live);
        if f.is_read == Some(false) {
            lo = lo.max(self.first_unread);
        }
        let mut page = ListPage {
            served: 0,
            last: None,
            more: false,
        };
        let mut skipped = 0;
        let mut visit = |i: usize| -> bool {
            let m = &self.messages[i];
            if m.deleted || f.is_read.is_some_and(|r| r != m.is_read) {
                return true;
            }
            if skipped < skip {
                skipped += 1;
                return true;
            }
            if page.served == top {
                page.more = true;
                return false;
            }
            if page.served > 0 {
                out.push(',');
            }
            m.write_json(sel, None, out);
            page.served += 1;
            page.last = Some(i);
            true
        };
        if f.descending {
            if let Some(a) = after {
                hi = hi.min(a);
            }
            for i in (lo..hi.max(lo)).rev() {
                if !visit(i) {
                    break;
                }
            }
        } else {
            if let Some(a) = after {
                lo = lo.max(a + 1);
            }
            for i in lo..hi {
                if !visit(i) {
                    break;
                }
            }
        }
        page
    }

    /// Writes one delta page from `pos`; returns where the next page starts, or (as
    /// `DeltaPos::Link`) the change position the deltaLink holds, and how many messages
    /// (not `@removed` items) it wrote.
    fn delta_page(
        &self,
        pos: DeltaPos,
        page: usize,
        sel: &Selection,
        out: &mut String,
    ) -> (DeltaPos, usize) {
        match pos {
            DeltaPos::Sync { next, end, changes } => {
                let end = end.min(self.messages.len());
                let mut served = 0;
                for i in next..end {
                    let m = &self.messages[i];
                    if m.deleted {
                        continue;
                    }
                    if served == page {
                        let next = DeltaPos::Sync {
                            next: i,
                            end,
                            changes,
                        };
                        return (next, served);
                    }
                    if served > 0 {
                        out.push(',');
                    }
                    m.write_json(sel, None, out);
                    served += 1;
                }
                (DeltaPos::Link { changes }, served)
            }
            DeltaPos::Changes { next, end } => {
                self.changes_page(next, end.min(self.changes.len()), page, sel, out)
            }
            DeltaPos::Link { changes } => {
                self.changes_page(changes, self.changes.len(), page, sel, out)
            }
        }
    }

    /// Writes the changes `next..end` (up to `page` items): messages added since (unless
    /// deleted again) and `@removed` entries.
    fn changes_page(
        &self,
        next: usize,
        end: usize,
        page: usize,
        sel: &Selection,
        out: &mut String,
    ) -> (DeltaPos, usize) {
        let (mut served, mut messages) = (0, 0);
        for j in next.min(end)..end {
            let (i, removed) = match self.changes[j] {
                Change::Added(i) => (i, false),
                Change::Removed(i) => (i, true),
            };
            let m = &self.messages[i];
            if !removed && m.deleted {
                continue;
            }
            if served == page {
                return (DeltaPos::Changes { next: j, end }, messages);
            }
            if served > 0 {
                out.push(',');
            }
            if removed {
                m.write_removed(out);
            } else {
                m.write_json(sel, None, out);
                messages += 1;
            }
            served += 1;
        }
        (DeltaPos::Link { changes: end }, messages)
    }
}

// ---------------------------------------------------------------------------------------------
// Subscriptions

/// A change-notification subscription.
#[derive(Debug, Clone)]
struct Subscription {
    id: String,
    mailbox: usize,
    resource: String,
    change_type: String,
    notification_url: String,
    lifecycle_url: Option<String>,
    expiration: DateTime<Utc>,
    client_state: Option<String>,
}

impl Subscription {
    fn to_json(&self) -> Value {
        json!({
            "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#subscriptions/$entity",
            "id": self.id,
            "resource": self.resource,
            "changeType": self.change_type,
            "notificationUrl": self.notification_url,
            "lifecycleNotificationUrl": self.lifecycle_url,
            "expirationDateTime": graph_time(self.expiration),
            "clientState": self.client_state,
            "latestSupportedTlsVersion": "v1_2",
        })
    }
}

/// The body of `POST /subscriptions`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SubscriptionRequest {
    change_type: Option<String>,
    notification_url: Option<String>,
    lifecycle_notification_url: Option<String>,
    resource: Option<String>,
    expiration_date_time: Option<String>,
    client_state: Option<String>,
}

/// A subscription that passed the rules, before the handshake.
#[derive(Debug, Clone, PartialEq)]
struct NewSubscription {
    mailbox: usize,
    resource: String,
    change_type: String,
    notification_url: String,
    lifecycle_url: Option<String>,
    expiration: DateTime<Utc>,
    client_state: Option<String>,
}

/// The mailbox (as written) and folder a subscription resource names:
/// `users/{u}/mailFolders('inbox')/messages`, `users/{u}/mailFolders/inbox/messages` or
/// `users/{u}/messages`.
fn parse_resource(resource: &str) -> Option<(String, Option<String>)> {
    let segments: Vec<&str> = resource.trim().trim_start_matches('/').split('/').collect();
    let user = |s: &str| Some(percent_decode(s)).filter(|u| !u.is_empty());
    match segments.as_slice() {
        [users, u, messages]
            if users.eq_ignore_ascii_case("users") && messages.eq_ignore_ascii_case("messages") =>
        {
            Some((user(u)?, None))
        }
        [users, u, folders, messages]
            if users.eq_ignore_ascii_case("users") && messages.eq_ignore_ascii_case("messages") =>
        {
            let folder = folder_key(folders)?;
            Some((user(u)?, Some(folder)))
        }
        [users, u, folders, folder, messages]
            if users.eq_ignore_ascii_case("users")
                && folders.eq_ignore_ascii_case("mailFolders")
                && messages.eq_ignore_ascii_case("messages") =>
        {
            Some((user(u)?, Some(percent_decode(folder))))
        }
        _ => None,
    }
}

/// `mailFolders('inbox')` → `inbox`.
fn folder_key(segment: &str) -> Option<String> {
    let lower = segment.to_ascii_lowercase();
    let inner = lower
        .strip_prefix("mailfolders(")?
        .strip_suffix(')')?
        .trim_matches(|c| c == '\'' || c == '"');
    Some(percent_decode(inner))
}

/// A callback URL must be http(s) on a loopback host (the simulator posts nowhere else).
fn check_callback_url(field: &str, value: &str) -> Result<(), GraphError> {
    let url = url::Url::parse(value)
        .map_err(|_| GraphError::invalid_request(format!("{field} '{value}' is not a URL.")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(GraphError::invalid_request(format!(
            "{field} must be an http(s) URL."
        )));
    }
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    if !loopback {
        return Err(GraphError::invalid_request(format!(
            "{field} must be on a loopback host: the simulator posts to this machine only."
        )));
    }
    Ok(())
}

/// `expirationDateTime`: in the future and at most `max_minutes` ahead.
fn check_expiration(
    value: Option<&str>,
    now: DateTime<Utc>,
    max_minutes: i64,
) -> Result<DateTime<Utc>, GraphError> {
    let value =
        value.ok_or_else(|| GraphError::invalid_request("expirationDateTime is required."))?;
    let t = DateTime::parse_from_rfc3339(value)
        .map_err(|_| {
            GraphError::invalid_request(format!(
                "expirationDateTime '{value}' is not an ISO 8601 date-time."
            ))
        })?
        .with_timezone(&Utc);
    if t <= now {
        return Err(GraphError::invalid_request(
            "Subscription expiration can only be in the future.",
        ));
    }
    if t > now + chrono::Duration::minutes(max_minutes) {
        return Err(GraphError::invalid_request(format!(
            "Subscription expiration can only be {max_minutes} minutes in the future."
        )));
    }
    Ok(t)
}

/// The rules Graph applies before the handshake. `resolve` maps a mailbox name to its index.
fn validate_subscription(
    req: &SubscriptionRequest,
    now: DateTime<Utc>,
    max_minutes: i64,
    resolve: impl Fn(&str) -> Option<usize>,
) -> Result<NewSubscription, GraphError> {
    let change_type = req
        .change_type
        .as_deref()
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .ok_or_else(|| GraphError::invalid_request("changeType is required."))?;
    let kinds: Vec<String> = change_type
        .split(',')
        .map(|k| k.trim().to_ascii_lowercase())
        .collect();
    if kinds
        .iter()
        .any(|k| !matches!(k.as_str(), "created" | "updated" | "deleted"))
    {
        return Err(GraphError::invalid_request(format!(
            "changeType '{change_type}' is not valid."
        )));
    }
    if !kinds.iter().any(|k| k == "created") {
        return Err(GraphError::invalid_request(
            "The simulator notifies of created messages only: changeType must contain 'created'.",
        ));
    }
    let notification_url = req
        .notification_url
        .as_deref()
        .ok_or_else(|| GraphError::invalid_request("notificationUrl is required."))?;
    check_callback_url("notificationUrl", notification_url)?;
    if let Some(l) = req.lifecycle_notification_url.as_deref() {
        check_callback_url("lifecycleNotificationUrl", l)?;
    }
    let resource = req
        .resource
        .as_deref()
        .ok_or_else(|| GraphError::invalid_request("resource is required."))?;
    let (user, folder) = parse_resource(resource).ok_or_else(|| {
        GraphError::invalid_request(format!(
            "resource '{resource}' is not users/{{id}}/mailFolders('inbox')/messages."
        ))
    })?;
    if folder.is_some_and(|f| !f.eq_ignore_ascii_case("inbox")) {
        return Err(GraphError::invalid_request(format!(
            "resource '{resource}': the simulator has one folder, inbox."
        )));
    }
    let mailbox = resolve(&user).ok_or_else(|| {
        GraphError::invalid_request(format!("resource '{resource}': no such mailbox."))
    })?;
    let expiration = check_expiration(req.expiration_date_time.as_deref(), now, max_minutes)?;
    if req
        .client_state
        .as_deref()
        .is_some_and(|c| c.chars().count() > MAX_CLIENT_STATE)
    {
        return Err(GraphError::invalid_request(format!(
            "clientState can be at most {MAX_CLIENT_STATE} characters."
        )));
    }
    Ok(NewSubscription {
        mailbox,
        resource: resource.to_string(),
        change_type: change_type.to_string(),
        notification_url: notification_url.to_string(),
        lifecycle_url: req.lifecycle_notification_url.clone(),
        expiration,
        client_state: req.client_state.clone(),
    })
}

// ---------------------------------------------------------------------------------------------
// State

/// Figures for the whole simulator.
#[derive(Debug, Default, Clone, Serialize)]
struct GlobalCounters {
    token_requests: u64,
    tokens_issued: u64,
    unauthorized: u64,
    expired_token_used: u64,
    /// `POST /_sim/introspect` requests, and those answered `"active": false`.
    introspections: u64,
    introspections_inactive: u64,
    subscriptions_created: u64,
    renewals: u64,
    deleted_subscriptions: u64,
    validation_failed: u64,
    expired_subscriptions: u64,
    /// Subscriptions removed by a `subscriptionRemoved` lifecycle event.
    lifecycle_removed: u64,
    /// Notification items posted (several per POST).
    notifications_sent: u64,
    notification_posts: u64,
    /// Answers to notification POSTs by status (0: no answer: refused, failed or timed out).
    notification_answers: BTreeMap<u16, u64>,
    notifications_slow: u64,
    lifecycle_posts: u64,
    lifecycle_answers: BTreeMap<u16, u64>,
    batch_requests: u64,
    batch_over_20: u64,
    /// 500s sent because of `error_rate`.
    errors_injected: u64,
}

struct State {
    tenant: String,
    tenant_id: String,
    client_id: String,
    client_secret: String,
    refresh_token: String,
    token_lifetime: Duration,
    /// The user live tokens introspect as.
    introspect_user: String,
    latency: Duration,
    error_rate: f64,
    limits: Limits,
    max_page_size: usize,
    subscription_max_minutes: i64,
    /// Delta tokens older than this are gone (None: never).
    delta_ttl: Option<Duration>,
    list_paging: ListPaging,
    /// Access tokens issued and when.
    tokens: HashMap<String, Instant>,
    mailboxes: Vec<Mailbox>,
    /// Lower-cased UPN or GUID → mailbox index.
    by_name: HashMap<String, usize>,
    subscriptions: BTreeMap<String, Subscription>,
    sealer: Sealer,
    stats: GlobalCounters,
    /// Time to answer of each notification POST, in ms.
    notification_latencies: Vec<u64>,
}

type Shared = Arc<Mutex<State>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

impl State {
    fn new(o: &GraphSimOptions) -> anyhow::Result<Self> {
        let mut state = Self {
            tenant: o.tenant.clone(),
            tenant_id: stable_guid(&format!("tenant:{}", o.tenant)),
            client_id: o.client_id.clone(),
            client_secret: o.client_secret.clone(),
            refresh_token: o.refresh_token.clone(),
            token_lifetime: Duration::from_secs(o.token_lifetime_s),
            introspect_user: o.introspect_user.clone().unwrap_or_default(),
            latency: Duration::ZERO,
            error_rate: 0.0,
            limits: Limits {
                concurrency: o.concurrency_limit,
                window_limit: o.window_limit,
                window: Duration::from_millis(o.window_ms.max(1)),
            },
            max_page_size: o.max_page_size.max(1),
            subscription_max_minutes: o.subscription_max_minutes,
            delta_ttl: (o.delta_token_ttl_s > 0).then(|| Duration::from_secs(o.delta_token_ttl_s)),
            list_paging: o.list_paging,
            tokens: HashMap::new(),
            mailboxes: Vec::new(),
            by_name: HashMap::new(),
            subscriptions: BTreeMap::new(),
            sealer: Sealer(RandomState::new()),
            stats: GlobalCounters::default(),
            notification_latencies: Vec::new(),
        };
        for upn in o
            .mailboxes
            .iter()
            .map(|m| m.trim())
            .filter(|m| !m.is_empty())
        {
            let index = state.mailboxes.len();
            let mailbox = Mailbox::new(index, upn);
            for name in [upn.to_lowercase(), mailbox.guid.clone()] {
                anyhow::ensure!(
                    state.by_name.insert(name, index).is_none(),
                    "--mailboxes names {upn} twice"
                );
            }
            state.mailboxes.push(mailbox);
        }
        anyhow::ensure!(!state.mailboxes.is_empty(), "--mailboxes is empty");
        if state.introspect_user.is_empty() {
            state.introspect_user = state.mailboxes[0].upn.clone();
        }
        let now_ms = Utc::now().timestamp_millis();
        for mb in &mut state.mailboxes {
            for n in 0..o.messages_per_mailbox {
                let d = draft(n, &mb.upn, true);
                mb.append(d, now_ms);
            }
            mb.next_n = o.messages_per_mailbox;
        }
        Ok(state)
    }

    /// Whether this request gets an injected 500 (`error_rate`); counts it.
    fn roll_error(&mut self) -> bool {
        let fail = self.error_rate > 0.0 && rand::random::<f64>() < self.error_rate;
        if fail {
            self.stats.errors_injected += 1;
        }
        fail
    }

    fn resolve(&self, name: &str) -> Option<usize> {
        self.by_name.get(&name.trim().to_lowercase()).copied()
    }

    // -- tokens --------------------------------------------------------------------------------

    /// The token endpoint's decision for one form.
    fn issue_token(
        &mut self,
        tenant: &str,
        form: &HashMap<String, String>,
        now: Instant,
    ) -> Result<Value, (u16, Value)> {
        self.stats.token_requests += 1;
        let refuse = |status: u16, error: &str, description: &str| {
            (
                status,
                json!({"error": error, "error_description": description,
                       "timestamp": Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
                       "trace_id": uuid::Uuid::new_v4().to_string()}),
            )
        };
        if !tenant.eq_ignore_ascii_case(&self.tenant)
            && !tenant.eq_ignore_ascii_case(&self.tenant_id)
        {
            return Err(refuse(
                400,
                "invalid_request",
                &format!("AADSTS90002: Tenant '{tenant}' not found."),
            ));
        }
        let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
        let mut scope = GRAPH_SCOPE.to_string();
        let mut refresh = None;
        match field("grant_type") {
            "" => {
                return Err(refuse(
                    400,
                    "invalid_request",
                    "AADSTS900144: The request body must contain the following parameter: 'grant_type'.",
                ))
            }
            "client_credentials" => {
                if field("client_id").is_empty() || field("client_secret").is_empty() {
                    return Err(refuse(
                        400,
                        "invalid_request",
                        "AADSTS900144: The request body must contain 'client_id' and 'client_secret'.",
                    ));
                }
                if field("client_id") != self.client_id {
                    return Err(refuse(
                        401,
                        "invalid_client",
                        "AADSTS700016: Application not found in the directory.",
                    ));
                }
                if field("client_secret") != self.client_secret {
                    return Err(refuse(
                        401,
                        "invalid_client",
                        "AADSTS7000215: Invalid client secret provided.",
                    ));
                }
                if field("scope") != GRAPH_SCOPE {
                    return Err(refuse(
                        400,
                        "invalid_scope",
                        "AADSTS1002012: The provided value for scope is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier.",
                    ));
                }
            }
            "refresh_token" => {
                if field("client_id") != self.client_id {
                    return Err(refuse(
                        401,
                        "invalid_client",
                        "AADSTS700016: Application not found in the directory.",
                    ));
                }
                if !field("client_secret").is_empty() && field("client_secret") != self.client_secret
                {
                    return Err(refuse(
                        401,
                        "invalid_client",
                        "AADSTS7000215: Invalid client secret provided.",
                    ));
                }
                if field("refresh_token") != self.refresh_token {
                    return Err(refuse(
                        400,
                        "invalid_grant",
                        "AADSTS70000: The provided refresh token is invalid or has expired.",
                    ));
                }
                if !field("scope").is_empty() {
                    scope = field("scope").to_string();
                }
                refresh = Some(self.refresh_token.clone());
            }
            other => {
                return Err(refuse(
                    400,
                    "unsupported_grant_type",
                    &format!("AADSTS70003: The app requested an unsupported grant type '{other}'."),
                ))
            }
        }
        if self.tokens.len() > 10_000 {
            let keep = self.token_lifetime + Duration::from_secs(3600);
            self.tokens
                .retain(|_, issued| now.duration_since(*issued) < keep);
        }
        let token = random_token();
        self.tokens.insert(token.clone(), now);
        self.stats.tokens_issued += 1;
        let secs = self.token_lifetime.as_secs();
        let mut body = json!({"token_type": "Bearer", "expires_in": secs,
                              "ext_expires_in": secs, "access_token": token});
        if let Some(r) = refresh {
            body["refresh_token"] = json!(r);
            body["scope"] = json!(scope);
        }
        Ok(body)
    }

    /// Checks `Authorization: Bearer …` against the tokens issued and the current lifetime.
    fn authorize(&mut self, header: Option<&str>, now: Instant) -> Result<(), GraphError> {
        let token = header
            .map(str::trim)
            .and_then(|h| {
                h.get(..7)
                    .filter(|p| p.eq_ignore_ascii_case("bearer "))
                    .map(|_| h[7..].trim())
            })
            .filter(|t| !t.is_empty());
        let refuse = |message: &str| GraphError::new(401, "InvalidAuthenticationToken", message);
        match token.map(|t| self.tokens.get(t).copied()) {
            None => {
                self.stats.unauthorized += 1;
                Err(refuse("Access token is empty."))
            }
            Some(None) => {
                self.stats.unauthorized += 1;
                Err(refuse("IDX14100: JWT is not well formed."))
            }
            Some(Some(issued)) if now.duration_since(issued) >= self.token_lifetime => {
                self.stats.unauthorized += 1;
                self.stats.expired_token_used += 1;
                Err(refuse("Lifetime validation failed, the token is expired."))
            }
            Some(Some(_)) => Ok(()),
        }
    }

    /// The RFC 7662 answer for `token`: active, for the introspection user, while it lives.
    /// Presenting an expired token is the client's mistake, counted as at `/v1.0`.
    fn introspect(&mut self, token: &str, now: Instant) -> Value {
        self.stats.introspections += 1;
        let Some(issued) = self.tokens.get(token.trim()).copied() else {
            self.stats.introspections_inactive += 1;
            return json!({"active": false});
        };
        let age = now.duration_since(issued);
        if age >= self.token_lifetime {
            self.stats.introspections_inactive += 1;
            self.stats.expired_token_used += 1;
            return json!({"active": false});
        }
        let unix = Utc::now().timestamp();
        let exp = unix + (self.token_lifetime - age).as_secs() as i64;
        let user = &self.introspect_user;
        json!({"active": true, "token_type": "Bearer", "client_id": self.client_id,
               "email": user, "username": user, "upn": user, "sub": stable_guid(user),
               "iat": unix - age.as_secs() as i64, "exp": exp})
    }

    // -- mail routes ---------------------------------------------------------------------------

    fn execute(
        &mut self,
        mbx: usize,
        op: &MailboxOp,
        call: &Call<'_>,
    ) -> Result<Reply, GraphError> {
        let q = Query::parse(call.query);
        let folder_ok = |f: &Option<String>| {
            if f.as_deref()
                .is_some_and(|f| !f.eq_ignore_ascii_case("inbox"))
            {
                Err(GraphError::item_not_found())
            } else {
                Ok(())
            }
        };
        match (call.method, op) {
            ("GET", MailboxOp::List { folder }) => {
                folder_ok(folder)?;
                self.mailboxes[mbx].pollers.saw(call.agent, Instant::now());
                self.list(mbx, call, &q)
            }
            ("GET", MailboxOp::Delta { folder }) => {
                folder_ok(&Some(folder.clone()))?;
                self.mailboxes[mbx].pollers.saw(call.agent, Instant::now());
                self.delta(mbx, call, &q)
            }
            ("GET", MailboxOp::Message(id)) => self.get_message(mbx, id, &q, call),
            ("PATCH", MailboxOp::Message(id)) => self.patch_message(mbx, id, call),
            ("GET", MailboxOp::Attachments(id)) => self.attachments(mbx, id, &q),
            _ => Err(GraphError::new(
                405,
                "MethodNotAllowed",
                format!("{} is not supported on this resource.", call.method),
            )),
        }
    }

    fn list(&mut self, mbx: usize, call: &Call<'_>, q: &Query) -> Result<Reply, GraphError> {
        self.mailboxes[mbx].counters.list_requests += 1;
        let filter = check_filter(q.get("$filter"), q.get("$orderby"))?;
        let sel = Selection::parse(
            q.get("$select"),
            MESSAGE_PROPERTIES,
            "microsoft.graph.message",
        )?
        .expand(q.get("$expand"))?;
        let number = |key: &str, default: usize| -> Result<usize, GraphError> {
            q.get(key).map_or(Ok(default), |v| {
                v.trim()
                    .parse()
                    .map_err(|_| GraphError::bad_request(format!("Invalid {key} value '{v}'.")))
            })
        };
        let top = number("$top", DEFAULT_LIST_PAGE)?.clamp(1, self.max_page_size);
        let skip = number("$skip", 0)?;
        let after = match q.get("$skiptoken") {
            Some(t) => Some(self.list_position(mbx, t)?),
            None => None,
        };
        let mb = &self.mailboxes[mbx];
        let mut out = String::with_capacity(256 + top * 768);
        out.push_str("{\"@odata.context\":");
        push_json_str(
            &mut out,
            &format!(
                "{}/$metadata#users('{}')/mailFolders('inbox')/messages",
                call.base, mb.upn
            ),
        );
        out.push_str(",\"value\":[");
        let page = mb.list_page(&filter, after, skip, top, &sel, &mut out);
        out.push(']');
        if page.more {
            let mut link = form_urlencoded::Serializer::new(String::new());
            for (k, v) in &q.0 {
                if !k.eq_ignore_ascii_case("$skiptoken") && !k.eq_ignore_ascii_case("$skip") {
                    link.append_pair(k, v);
                }
            }
            match (self.list_paging, page.last) {
                (ListPaging::Skip, _) | (_, None) => {
                    link.append_pair("$skip", &(skip + page.served).to_string());
                }
                (ListPaging::Skiptoken, Some(last)) => {
                    let m = &mb.messages[last];
                    let cursor = Cursor::List {
                        mailbox: mbx,
                        received_ms: m.received_ms,
                        id: m.id.clone(),
                    };
                    link.append_pair("$skiptoken", &self.sealer.seal(&cursor.encode()));
                }
            }
            out.push_str(",\"@odata.nextLink\":");
            push_json_str(
                &mut out,
                &format!("{}{}?{}", call.base, call.path, link.finish()),
            );
        }
        out.push('}');
        self.mailboxes[mbx].counters.messages_served += page.served as u64;
        Ok(Reply::json(200, out))
    }

    fn list_position(&self, mbx: usize, token: &str) -> Result<usize, GraphError> {
        let bad = || GraphError::bad_request("The $skiptoken is not valid.");
        let Some(Cursor::List {
            mailbox,
            received_ms,
            id,
        }) = self.sealer.open(token).and_then(|p| Cursor::decode(&p))
        else {
            return Err(bad());
        };
        if mailbox != mbx {
            return Err(bad());
        }
        let mb = &self.mailboxes[mbx];
        match mb.by_id.get(&id) {
            Some(&i) if mb.messages[i].received_ms == received_ms => Ok(i),
            _ => Err(bad()),
        }
    }

    fn delta(&mut self, mbx: usize, call: &Call<'_>, q: &Query) -> Result<Reply, GraphError> {
        self.mailboxes[mbx].counters.delta_requests += 1;
        let requested = prefer_max_page_size(call.prefer);
        let page = requested
            .unwrap_or(DEFAULT_DELTA_PAGE)
            .clamp(1, self.max_page_size);
        let now_ms = Utc::now().timestamp_millis();
        let opened = match (q.get("$deltatoken"), q.get("$skiptoken")) {
            (Some(t), _) => self.open_delta(mbx, t, now_ms, true),
            (None, Some(t)) => self.open_delta(mbx, t, now_ms, false),
            (None, None) => {
                let mb = &self.mailboxes[mbx];
                Ok((
                    DeltaPos::Sync {
                        next: mb.first_live,
                        end: mb.messages.len(),
                        changes: mb.changes.len(),
                    },
                    String::new(),
                ))
            }
        };
        let (pos, token_select) = match opened {
            Ok(o) => o,
            Err(e) => {
                self.mailboxes[mbx].counters.delta_410 += 1;
                return Err(e);
            }
        };
        // An explicit $select / $expand wins over what the token carries.
        let sel = match (q.get("$select"), q.get("$expand")) {
            (None, None) => Selection::decode(&token_select)?,
            (select, expand) => {
                Selection::parse(select, MESSAGE_PROPERTIES, "microsoft.graph.message")?
                    .expand(expand)?
            }
        };
        let mb = &self.mailboxes[mbx];
        let mut out = String::with_capacity(256 + page * 768);
        out.push_str("{\"@odata.context\":");
        push_json_str(
            &mut out,
            &format!("{}/$metadata#Collection(message)", call.base),
        );
        out.push_str(",\"value\":[");
        let (next, served) = mb.delta_page(pos, page, &sel, &mut out);
        out.push(']');
        let cursor = Cursor::Delta {
            mailbox: mbx,
            epoch: mb.delta_epoch,
            issued_ms: now_ms,
            pos: next,
            select: sel.encode(),
        };
        let token = self.sealer.seal(&cursor.encode());
        let (field, param) = match next {
            DeltaPos::Link { .. } => ("@odata.deltaLink", "$deltatoken"),
            _ => ("@odata.nextLink", "$skiptoken"),
        };
        out.push_str(",\"");
        out.push_str(field);
        out.push_str("\":");
        push_json_str(
            &mut out,
            &format!("{}{}?{param}={token}", call.base, call.path),
        );
        out.push('}');
        self.mailboxes[mbx].counters.messages_served += served as u64;
        let mut reply = Reply::json(200, out);
        if requested.is_some() {
            reply
                .headers
                .push(("Preference-Applied", format!("odata.maxpagesize={page}")));
        }
        Ok(reply)
    }

    /// Opens a delta token; any doubt is Graph's 410 `SyncStateNotFound`.
    fn open_delta(
        &self,
        mbx: usize,
        token: &str,
        now_ms: i64,
        delta_link: bool,
    ) -> Result<(DeltaPos, String), GraphError> {
        let Some(Cursor::Delta {
            mailbox,
            epoch,
            issued_ms,
            pos,
            select,
        }) = self.sealer.open(token).and_then(|p| Cursor::decode(&p))
        else {
            return Err(GraphError::sync_state_not_found());
        };
        let mb = &self.mailboxes[mbx];
        let kind_ok = matches!(pos, DeltaPos::Link { .. }) == delta_link;
        let fresh = self
            .delta_ttl
            .is_none_or(|ttl| now_ms.saturating_sub(issued_ms) < ttl.as_millis() as i64);
        if mailbox != mbx || epoch != mb.delta_epoch || !kind_ok || !fresh {
            return Err(GraphError::sync_state_not_found());
        }
        Ok((pos, select))
    }

    fn get_message(
        &mut self,
        mbx: usize,
        id: &str,
        q: &Query,
        call: &Call<'_>,
    ) -> Result<Reply, GraphError> {
        self.mailboxes[mbx].counters.get_requests += 1;
        let sel = Selection::parse(
            q.get("$select"),
            MESSAGE_PROPERTIES,
            "microsoft.graph.message",
        )?
        .expand(q.get("$expand"))?;
        let mb = &self.mailboxes[mbx];
        let idx = mb.find(id).ok_or_else(GraphError::item_not_found)?;
        let mut out = String::with_capacity(1024);
        let ctx = format!(
            "{}/$metadata#users('{}')/messages/$entity",
            call.base, mb.upn
        );
        mb.messages[idx].write_json(&sel, Some(&ctx), &mut out);
        Ok(Reply::json(200, out))
    }

    fn patch_message(
        &mut self,
        mbx: usize,
        id: &str,
        call: &Call<'_>,
    ) -> Result<Reply, GraphError> {
        let body: Value = serde_json::from_slice(call.body)
            .map_err(|_| GraphError::bad_request("Empty Payload. JSON content expected."))?;
        let Value::Object(fields) = body else {
            return Err(GraphError::bad_request(
                "The request body must be a JSON object.",
            ));
        };
        let is_read = match fields.get("isRead") {
            None => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => {
                return Err(GraphError::bad_request(
                    "Cannot convert the literal to the expected type 'Edm.Boolean'.",
                ))
            }
        };
        let mb = &mut self.mailboxes[mbx];
        let idx = mb.find(id).ok_or_else(GraphError::item_not_found)?;
        if let Some(read) = is_read {
            let changed = mb.set_read(idx, read);
            if read && changed {
                mb.counters.marked_read += 1;
            } else if read {
                mb.counters.patch_already_read += 1;
            }
        }
        let mut out = String::with_capacity(1024);
        let ctx = format!(
            "{}/$metadata#users('{}')/messages/$entity",
            call.base, mb.upn
        );
        mb.messages[idx].write_json(&Selection::All, Some(&ctx), &mut out);
        Ok(Reply::json(200, out))
    }

    fn attachments(&mut self, mbx: usize, id: &str, q: &Query) -> Result<Reply, GraphError> {
        self.mailboxes[mbx].counters.attachment_requests += 1;
        let sel = Selection::parse(
            q.get("$select"),
            ATTACHMENT_PROPERTIES,
            "microsoft.graph.attachment",
        )?;
        let mb = &self.mailboxes[mbx];
        let idx = mb.find(id).ok_or_else(GraphError::item_not_found)?;
        let value: Vec<Value> = mb.messages[idx]
            .attachments
            .iter()
            .map(|a| {
                let Value::Object(map) = a else {
                    return a.clone();
                };
                Value::Object(
                    map.iter()
                        .filter(|(k, _)| k.starts_with('@') || *k == "id" || sel.includes(k))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                )
            })
            .collect();
        Ok(Reply::json(200, json!({ "value": value }).to_string()))
    }

    // -- subscriptions -------------------------------------------------------------------------

    /// Removes subscriptions whose expiration has passed.
    fn expire_subscriptions(&mut self, now: DateTime<Utc>) {
        let before = self.subscriptions.len();
        self.subscriptions.retain(|_, s| s.expiration > now);
        self.stats.expired_subscriptions += (before - self.subscriptions.len()) as u64;
    }

    fn notification_target(&self, s: &Subscription, client_state: Option<String>) -> Target {
        Target {
            subscription_id: s.id.clone(),
            expiration: graph_time(s.expiration),
            client_state: client_state.or_else(|| s.client_state.clone()),
            url: s.notification_url.clone(),
            lifecycle_url: s.lifecycle_url.clone(),
            guid: self.mailboxes[s.mailbox].guid.clone(),
            tenant_id: self.tenant_id.clone(),
        }
    }

    fn active_targets(&mut self, mbx: usize) -> Vec<Target> {
        self.expire_subscriptions(Utc::now());
        self.subscriptions
            .values()
            .filter(|s| s.mailbox == mbx)
            .map(|s| self.notification_target(s, None))
            .collect()
    }

    // -- statistics ----------------------------------------------------------------------------

    fn stats_json(&mut self) -> Value {
        self.expire_subscriptions(Utc::now());
        let mut v = serde_json::to_value(&self.stats).expect("counters serialize");
        let mut mailboxes = serde_json::Map::new();
        let mut totals = serde_json::Map::new();
        let mut violations = self.stats.batch_over_20 + self.stats.expired_token_used;
        for mb in &self.mailboxes {
            let b = &mb.budget.counters;
            violations +=
                b.requests_during_retry_after + b.concurrency_exceeded + mb.pollers.interleavings;
            let mut m = serde_json::Map::new();
            m.insert("guid".into(), json!(mb.guid));
            m.insert("messages".into(), json!(mb.live));
            m.insert("unread".into(), json!(mb.unread));
            for part in [
                serde_json::to_value(b).expect("counters serialize"),
                serde_json::to_value(&mb.counters).expect("counters serialize"),
            ] {
                if let Value::Object(o) = part {
                    m.extend(o);
                }
            }
            m.insert("in_flight".into(), json!(mb.budget.in_flight));
            m.insert("pollers_seen".into(), json!(mb.pollers.seen.len()));
            m.insert(
                "poller_interleavings".into(),
                json!(mb.pollers.interleavings),
            );
            m.insert("poller_handbacks".into(), json!(mb.pollers.handbacks));
            for (k, val) in &m {
                let Some(n) = val.as_u64() else { continue };
                let t = totals.entry(k.clone()).or_insert(json!(0));
                let cur = t.as_u64().unwrap_or(0);
                *t = json!(if k.starts_with("max_") {
                    cur.max(n)
                } else {
                    cur + n
                });
            }
            mailboxes.insert(mb.upn.clone(), Value::Object(m));
        }
        let mut lat = self.notification_latencies.clone();
        lat.sort_unstable();
        let pct = |p: f64| -> u64 {
            if lat.is_empty() {
                return 0;
            }
            let i = ((p * lat.len() as f64).ceil() as usize).clamp(1, lat.len()) - 1;
            lat[i]
        };
        v["notification_latency_ms"] = json!({
            "p50": pct(0.50), "p99": pct(0.99), "max": lat.last().copied().unwrap_or(0)
        });
        v["subscriptions"] = self
            .subscriptions
            .values()
            .map(|s| {
                json!({"id": s.id, "mailbox": self.mailboxes[s.mailbox].upn,
                       "expirationDateTime": graph_time(s.expiration),
                       "notificationUrl": s.notification_url})
            })
            .collect();
        v["violations"] = json!(violations);
        v["tenant_id"] = json!(self.tenant_id);
        v["totals"] = Value::Object(totals);
        v["mailboxes"] = Value::Object(mailboxes);
        v
    }
}

/// Everything a notification POST needs about its subscription, copied out of the lock.
#[derive(Debug, Clone)]
struct Target {
    subscription_id: String,
    expiration: String,
    client_state: Option<String>,
    url: String,
    lifecycle_url: Option<String>,
    guid: String,
    tenant_id: String,
}

impl Target {
    /// One change-notification item for message `id`.
    fn change_item(&self, id: &str, etag: &str) -> Value {
        let resource = format!("Users/{}/Messages/{id}", self.guid);
        let mut item = json!({
            "subscriptionId": self.subscription_id,
            "subscriptionExpirationDateTime": self.expiration,
            "changeType": "created",
            "resource": resource,
            "resourceData": {
                "@odata.type": "#Microsoft.Graph.Message",
                "@odata.id": resource,
                "@odata.etag": etag,
                "id": id,
            },
            "tenantId": self.tenant_id,
        });
        if let Some(c) = &self.client_state {
            item["clientState"] = json!(c);
        }
        item
    }

    fn lifecycle_item(&self, event: &str) -> Value {
        let mut item = json!({
            "subscriptionId": self.subscription_id,
            "subscriptionExpirationDateTime": self.expiration,
            "tenantId": self.tenant_id,
            "lifecycleEvent": event,
        });
        if let Some(c) = &self.client_state {
            item["clientState"] = json!(c);
        }
        item
    }
}

/// Decrements the mailbox's in-flight count when the request's answer is done (dropped at the
/// end of the handler, whatever path it took).
struct InFlight {
    state: Shared,
    mailbox: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        lock(&self.state).mailboxes[self.mailbox].budget.depart();
    }
}

// ---------------------------------------------------------------------------------------------
// Routing

/// One Graph request (top-level or a `$batch` item).
struct Call<'a> {
    method: &'a str,
    /// After `/v1.0`, as sent (percent-encoded), starting with `/`.
    path: &'a str,
    query: &'a str,
    prefer: Option<&'a str>,
    body: &'a [u8],
    /// `http://host:port/v1.0`, for nextLink and deltaLink.
    base: &'a str,
    /// The caller's `User-Agent` (ms1 names its daemon instance there).
    agent: &'a str,
}

/// What a request on a mailbox asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum MailboxOp {
    List { folder: Option<String> },
    Delta { folder: String },
    Message(String),
    Attachments(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    Mailbox { user: String, op: MailboxOp },
    Subscriptions,
    Subscription(String),
}

fn parse_route(path: &str) -> Result<Route, GraphError> {
    let mut segs: Vec<String> = Vec::new();
    for raw in path.trim_matches('/').split('/') {
        match folder_key(raw) {
            Some(folder) => {
                segs.push("mailFolders".into());
                segs.push(folder);
            }
            None => segs.push(percent_decode(raw)),
        }
    }
    let is = |i: usize, name: &str| segs.get(i).is_some_and(|s| s.eq_ignore_ascii_case(name));
    let unknown = || {
        GraphError::bad_request(format!(
            "Resource not found for the segment '{}'.",
            segs.last().map(String::as_str).unwrap_or("")
        ))
    };
    if is(0, "subscriptions") {
        return match segs.len() {
            1 => Ok(Route::Subscriptions),
            2 => Ok(Route::Subscription(segs[1].clone())),
            _ => Err(unknown()),
        };
    }
    if !is(0, "users") || segs.len() < 3 {
        return Err(unknown());
    }
    let user = segs[1].clone();
    let op = if is(2, "mailFolders") {
        let folder = segs.get(3).cloned().ok_or_else(unknown)?;
        match segs.len() {
            5 if is(4, "messages") => MailboxOp::List {
                folder: Some(folder),
            },
            6 if is(4, "messages") && (is(5, "delta") || is(5, "microsoft.graph.delta()")) => {
                MailboxOp::Delta { folder }
            }
            _ => return Err(unknown()),
        }
    } else if is(2, "messages") {
        match segs.len() {
            3 => MailboxOp::List { folder: None },
            4 => MailboxOp::Message(segs[3].clone()),
            5 if is(4, "attachments") => MailboxOp::Attachments(segs[3].clone()),
            _ => return Err(unknown()),
        }
    } else {
        return Err(unknown());
    };
    Ok(Route::Mailbox { user, op })
}

fn is_batch_path(path: &str) -> bool {
    let p = path.trim_matches('/');
    p.eq_ignore_ascii_case("$batch") || p.eq_ignore_ascii_case("%24batch")
}

/// Runs one request the way its route does: mailbox budget, latency, injected errors, then the
/// route itself. `with_latency` is false inside a `$batch` (the batch waited once).
async fn dispatch(state: &Shared, call: &Call<'_>, with_latency: bool) -> Reply {
    match parse_route(call.path) {
        Ok(Route::Mailbox { user, op }) => on_mailbox(state, call, &user, &op, with_latency).await,
        Ok(route) => on_subscriptions(state, call, route, with_latency).await,
        Err(e) => e.into(),
    }
}

/// A request on a mailbox: it passes the mailbox's budget (and is in flight until answered).
async fn on_mailbox(
    state: &Shared,
    call: &Call<'_>,
    user: &str,
    op: &MailboxOp,
    with_latency: bool,
) -> Reply {
    let now = Instant::now();
    let (_in_flight, admission, latency, fail, mbx) = {
        let mut s = lock(state);
        let Some(mbx) = s.resolve(user) else {
            return GraphError::new(
                404,
                "ErrorInvalidUser",
                format!("The requested user '{user}' is invalid."),
            )
            .into();
        };
        if s.mailboxes[mbx].denied {
            s.mailboxes[mbx].counters.denied_requests += 1;
            return GraphError::new(403, "ErrorAccessDenied", "Access to OData is disabled.")
                .into();
        }
        let limits = s.limits;
        let admission = s.mailboxes[mbx].budget.arrive(now, &limits);
        let fail = admission == Admission::Admit && s.roll_error();
        let guard = InFlight {
            state: state.clone(),
            mailbox: mbx,
        };
        (guard, admission, s.latency, fail, mbx)
    };
    if with_latency && !latency.is_zero() {
        actix_web::rt::time::sleep(latency).await;
    }
    if let Admission::Refuse(e) = admission {
        return e.into();
    }
    if fail {
        return internal_error();
    }
    let result = lock(state).execute(mbx, op, call);
    result.unwrap_or_else(Reply::from)
}

/// `/subscriptions` and `/subscriptions/{id}` (not throttled per mailbox).
async fn on_subscriptions(
    state: &Shared,
    call: &Call<'_>,
    route: Route,
    with_latency: bool,
) -> Reply {
    let (latency, fail) = {
        let mut s = lock(state);
        let fail = s.roll_error();
        (s.latency, fail)
    };
    if with_latency && !latency.is_zero() {
        actix_web::rt::time::sleep(latency).await;
    }
    if fail {
        return internal_error();
    }
    match (route, call.method) {
        (Route::Subscriptions, "POST") => create_subscription(state, call).await,
        (Route::Subscriptions, "GET") => list_subscriptions(state),
        (Route::Subscription(id), "GET") => get_subscription(state, &id),
        (Route::Subscription(id), "PATCH") => renew_subscription(state, call, &id).await,
        (Route::Subscription(id), "DELETE") => delete_subscription(state, &id),
        _ => method_not_allowed(call),
    }
}

fn internal_error() -> Reply {
    GraphError::new(
        500,
        "InternalServerError",
        "An internal server error occurred.",
    )
    .into()
}

fn method_not_allowed(call: &Call<'_>) -> Reply {
    GraphError::new(
        405,
        "MethodNotAllowed",
        format!("{} is not supported on this resource.", call.method),
    )
    .into()
}

/// One item of a `$batch` body.
#[derive(Debug, Deserialize)]
struct BatchItem {
    id: String,
    method: String,
    url: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    body: Option<Value>,
}

/// `POST /$batch`: at most 20 items, each run like its route (and throttled like it).
async fn batch(state: &Shared, call: &Call<'_>) -> Reply {
    if call.method != "POST" {
        return method_not_allowed(call);
    }
    let invalid = || -> Reply { GraphError::bad_request("Invalid batch payload format.").into() };
    let Ok(body) = serde_json::from_slice::<Value>(call.body) else {
        return invalid();
    };
    let Some(requests) = body.get("requests").and_then(Value::as_array) else {
        return invalid();
    };
    // The mailboxes the batch touches, for the per-mailbox counters.
    let touched: Vec<usize> = {
        let s = lock(state);
        let mut t: Vec<usize> = requests
            .iter()
            .filter_map(|r| r.get("url")?.as_str())
            .filter_map(
                |u| match parse_route(u.split('?').next()?.trim_start_matches("/v1.0")) {
                    Ok(Route::Mailbox { user, .. }) => s.resolve(&user),
                    _ => None,
                },
            )
            .collect();
        t.sort_unstable();
        t.dedup();
        t
    };
    {
        let mut s = lock(state);
        s.stats.batch_requests += 1;
        let over = requests.len() > MAX_BATCH;
        if over {
            s.stats.batch_over_20 += 1;
        }
        for &m in &touched {
            s.mailboxes[m].counters.batch_requests += 1;
            if over {
                s.mailboxes[m].counters.batch_over_20 += 1;
            }
        }
        if over {
            return GraphError::bad_request(format!(
                "Number of requests in a batch exceeds limit of {MAX_BATCH}."
            ))
            .into();
        }
    }
    let Ok(items) = serde_json::from_value::<Vec<BatchItem>>(Value::Array(requests.clone())) else {
        return invalid();
    };
    if items.is_empty() {
        return invalid();
    }
    let mut ids: Vec<&str> = items.iter().map(|i| i.id.as_str()).collect();
    ids.sort_unstable();
    if ids.windows(2).any(|w| w[0] == w[1]) {
        return GraphError::bad_request("Batch request ids must be unique.").into();
    }
    for item in &items {
        let has_type = item
            .headers
            .keys()
            .any(|k| k.eq_ignore_ascii_case("content-type"));
        let writes = matches!(
            item.method.to_ascii_uppercase().as_str(),
            "POST" | "PATCH" | "PUT"
        );
        if writes && (item.body.is_none() || !has_type) {
            return GraphError::bad_request(format!(
                "Write request id : {} does not contain Content-Type header or body.",
                item.id
            ))
            .into();
        }
    }
    let latency = lock(state).latency;
    if !latency.is_zero() {
        actix_web::rt::time::sleep(latency).await;
    }
    let mut out = String::from("{\"responses\":[");
    for (n, item) in items.iter().enumerate() {
        let method = item.method.to_ascii_uppercase();
        let url = item.url.trim();
        let url = url.strip_prefix("/v1.0").unwrap_or(url);
        let (path, query) = url.split_once('?').unwrap_or((url, ""));
        let path = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        };
        let body = item
            .body
            .as_ref()
            .map(|b| serde_json::to_vec(b).expect("JSON serializes"))
            .unwrap_or_default();
        let prefer = item
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("prefer"))
            .map(|(_, v)| v.as_str());
        let sub = Call {
            method: &method,
            path: &path,
            query,
            prefer,
            body: &body,
            base: call.base,
            agent: call.agent,
        };
        let reply = if is_batch_path(&path) {
            GraphError::bad_request("A batch cannot contain a batch.").into()
        } else {
            dispatch(state, &sub, false).await
        };
        if n > 0 {
            out.push(',');
        }
        out.push_str("{\"id\":");
        push_json_str(&mut out, &item.id);
        out.push_str(&format!(",\"status\":{},\"headers\":{{", reply.status));
        let mut headers: Vec<(&str, String)> = reply.headers;
        if reply.body.is_some() {
            headers.push(("Content-Type", GRAPH_JSON.to_string()));
        }
        for (i, (k, v)) in headers.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_json_str(&mut out, k);
            out.push(':');
            push_json_str(&mut out, v);
        }
        out.push('}');
        if let Some(b) = reply.body {
            out.push_str(",\"body\":");
            out.push_str(&b);
        }
        out.push('}');
    }
    out.push_str("]}");
    Reply::json(200, out)
}

// ---------------------------------------------------------------------------------------------
// Subscription routes and outbound posts

thread_local! {
    /// One HTTP client per worker thread (awc clients are `!Send`), so connections are reused.
    static HTTP: awc::Client = awc::Client::builder()
        .disable_redirects()
        .timeout(NOTIFICATION_TIMEOUT)
        .finish();
}

fn http() -> awc::Client {
    HTTP.with(Clone::clone)
}

/// Graph's validation handshake: POST `url?validationToken=…` and expect the decoded token
/// back as `text/plain` within 10 s.
async fn validate_endpoint(url: &str) -> Result<(), String> {
    let token = format!(
        "Validation: Testing client application reachability for subscription Request-Id: {}",
        uuid::Uuid::new_v4()
    );
    let mut target = url::Url::parse(url).map_err(|_| "The URL is not valid.".to_string())?;
    target
        .query_pairs_mut()
        .append_pair("validationToken", &token);
    let mut resp = http()
        .post(target.as_str())
        .timeout(VALIDATION_TIMEOUT)
        .insert_header(("Content-Type", "text/plain; charset=utf-8"))
        .send_body("")
        .await
        .map_err(|e| format!("The notification endpoint did not answer in time ({e})."))?;
    if resp.status() != StatusCode::OK {
        return Err(format!(
            "Notification endpoint must respond with 200 OK to validation request (it answered {}).",
            resp.status().as_u16()
        ));
    }
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    if !content_type.starts_with("text/plain") {
        return Err(format!(
            "The validation response must be text/plain (it was '{content_type}')."
        ));
    }
    let body = resp
        .body()
        .limit(64 * 1024)
        .await
        .map_err(|e| format!("The validation response could not be read ({e})."))?;
    if body.as_ref() != token.as_bytes() {
        return Err("Response must exactly match validationToken query parameter.".into());
    }
    Ok(())
}

async fn handshake(notification_url: &str, lifecycle_url: Option<&str>) -> Result<(), String> {
    validate_endpoint(notification_url).await?;
    if let Some(l) = lifecycle_url {
        validate_endpoint(l)
            .await
            .map_err(|e| format!("lifecycleNotificationUrl: {e}"))?;
    }
    Ok(())
}

async fn create_subscription(state: &Shared, call: &Call<'_>) -> Reply {
    let req: SubscriptionRequest = match serde_json::from_slice(call.body) {
        Ok(r) => r,
        Err(e) => return GraphError::bad_request(format!("Invalid subscription: {e}")).into(),
    };
    let new = {
        let mut s = lock(state);
        s.expire_subscriptions(Utc::now());
        let max = s.subscription_max_minutes;
        match validate_subscription(&req, Utc::now(), max, |u| s.resolve(u)) {
            Ok(n) => n,
            Err(e) => return e.into(),
        }
    };
    if let Err(reason) = handshake(&new.notification_url, new.lifecycle_url.as_deref()).await {
        lock(state).stats.validation_failed += 1;
        return GraphError::new(
            400,
            "ValidationError",
            format!("Subscription validation request failed. {reason}"),
        )
        .into();
    }
    let sub = Subscription {
        id: uuid::Uuid::new_v4().to_string(),
        mailbox: new.mailbox,
        resource: new.resource,
        change_type: new.change_type,
        notification_url: new.notification_url,
        lifecycle_url: new.lifecycle_url,
        expiration: new.expiration,
        client_state: new.client_state,
    };
    let body = sub.to_json().to_string();
    let mut s = lock(state);
    s.stats.subscriptions_created += 1;
    s.subscriptions.insert(sub.id.clone(), sub);
    Reply::json(201, body)
}

fn subscription_not_found() -> Reply {
    GraphError::new(404, "ResourceNotFound", "The object was not found.").into()
}

fn list_subscriptions(state: &Shared) -> Reply {
    let mut s = lock(state);
    s.expire_subscriptions(Utc::now());
    let value: Vec<Value> = s
        .subscriptions
        .values()
        .map(Subscription::to_json)
        .collect();
    Reply::json(200, json!({ "value": value }).to_string())
}

fn get_subscription(state: &Shared, id: &str) -> Reply {
    let mut s = lock(state);
    s.expire_subscriptions(Utc::now());
    match s.subscriptions.get(id) {
        Some(sub) => Reply::json(200, sub.to_json().to_string()),
        None => subscription_not_found(),
    }
}

fn delete_subscription(state: &Shared, id: &str) -> Reply {
    let mut s = lock(state);
    s.expire_subscriptions(Utc::now());
    match s.subscriptions.remove(id) {
        Some(_) => {
            s.stats.deleted_subscriptions += 1;
            Reply::empty(204)
        }
        None => subscription_not_found(),
    }
}

/// `PATCH /subscriptions/{id}` `{"expirationDateTime"}`: the same expiration rules, and the
/// handshake again (CONTRACTS.md: Graph validates on creation and renewal).
async fn renew_subscription(state: &Shared, call: &Call<'_>, id: &str) -> Reply {
    let req: SubscriptionRequest = match serde_json::from_slice(call.body) {
        Ok(r) => r,
        Err(e) => return GraphError::bad_request(format!("Invalid subscription: {e}")).into(),
    };
    let (expiration, url, lifecycle) = {
        let mut s = lock(state);
        s.expire_subscriptions(Utc::now());
        let Some(sub) = s.subscriptions.get(id) else {
            return subscription_not_found();
        };
        let (url, lifecycle) = (sub.notification_url.clone(), sub.lifecycle_url.clone());
        match check_expiration(
            req.expiration_date_time.as_deref(),
            Utc::now(),
            s.subscription_max_minutes,
        ) {
            Ok(t) => (t, url, lifecycle),
            Err(e) => return e.into(),
        }
    };
    if let Err(reason) = handshake(&url, lifecycle.as_deref()).await {
        lock(state).stats.validation_failed += 1;
        return GraphError::new(
            400,
            "ValidationError",
            format!("Subscription validation request failed. {reason}"),
        )
        .into();
    }
    let mut s = lock(state);
    let Some(sub) = s.subscriptions.get_mut(id) else {
        return subscription_not_found();
    };
    sub.expiration = expiration;
    let body = sub.to_json().to_string();
    s.stats.renewals += 1;
    Reply::json(200, body)
}

/// Which kind of POST an outbound call is, for the statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outbound {
    Change,
    Lifecycle,
}

/// POSTs one JSON body and records the answer; returns the status (0: no answer).
async fn post_json(state: &Shared, kind: Outbound, url: &str, body: String, items: usize) -> u16 {
    let started = Instant::now();
    let status = match http()
        .post(url)
        .timeout(NOTIFICATION_TIMEOUT)
        .insert_header(("Content-Type", "application/json"))
        .send_body(body)
        .await
    {
        Ok(mut resp) => {
            let status = resp.status().as_u16();
            let _ = resp.body().limit(1024 * 1024).await;
            status
        }
        Err(_) => 0,
    };
    let elapsed = started.elapsed();
    let mut s = lock(state);
    match kind {
        Outbound::Change => {
            s.stats.notification_posts += 1;
            s.stats.notifications_sent += items as u64;
            *s.stats.notification_answers.entry(status).or_default() += 1;
            if elapsed > SLOW_NOTIFICATION {
                s.stats.notifications_slow += 1;
            }
            s.notification_latencies.push(elapsed.as_millis() as u64);
        }
        Outbound::Lifecycle => {
            s.stats.lifecycle_posts += 1;
            *s.stats.lifecycle_answers.entry(status).or_default() += 1;
        }
    }
    status
}

/// Posts change notifications for `items` (id, etag) to one subscription, 100 per POST.
async fn notify_changes(state: Shared, target: Target, items: Arc<Vec<(String, String)>>) {
    for chunk in items.chunks(NOTIFICATIONS_PER_POST) {
        let value: Vec<Value> = chunk
            .iter()
            .map(|(id, etag)| target.change_item(id, etag))
            .collect();
        let body = json!({ "value": value }).to_string();
        post_json(&state, Outbound::Change, &target.url, body, chunk.len()).await;
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP handlers

fn header<'a>(req: &'a HttpRequest, name: &str) -> Option<&'a str> {
    req.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Every `/v1.0/*` request (and 404 for anything else the routes do not name).
async fn graph_api(state: web::Data<Shared>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let Some(path) = req
        .path()
        .strip_prefix("/v1.0")
        .filter(|p| p.starts_with('/'))
    else {
        return sim_error(404, format!("no route for {}", req.path()));
    };
    let state = state.get_ref();
    if let Err(e) = lock(state).authorize(header(&req, "authorization"), Instant::now()) {
        return e.reply().into_http();
    }
    let base = {
        let info = req.connection_info();
        format!("{}://{}/v1.0", info.scheme(), info.host())
    };
    let call = Call {
        method: req.method().as_str(),
        path,
        query: req.query_string(),
        prefer: header(&req, "prefer"),
        body: &body,
        base: &base,
        agent: header(&req, "user-agent").unwrap_or(""),
    };
    let reply = if is_batch_path(path) {
        batch(state, &call).await
    } else {
        dispatch(state, &call, true).await
    };
    reply.into_http()
}

async fn token(
    state: web::Data<Shared>,
    tenant: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    let form: HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let result = lock(&state).issue_token(&tenant, &form, Instant::now());
    match result {
        Ok(v) => HttpResponse::Ok()
            .insert_header(("Cache-Control", "no-store, no-cache"))
            .json(v),
        Err((status, v)) => {
            HttpResponse::build(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST))
                .json(v)
        }
    }
}

/// `POST /_sim/introspect`: RFC 7662 token introspection, the form field `token` (what
/// Dovecot's oauth2 passdb sends with `introspection_mode = post`).
async fn introspect(state: web::Data<Shared>, body: web::Bytes) -> HttpResponse {
    let token = form_urlencoded::parse(&body).find_map(|(k, v)| (k == "token").then_some(v));
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return HttpResponse::BadRequest().json(json!({"error": "invalid_request",
            "error_description": "The request body must contain the parameter 'token'."}));
    };
    let v = lock(&state).introspect(&token, Instant::now());
    HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(v)
}

fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, Reply> {
    serde_json::from_slice(body).map_err(|e| sim_refusal(400, format!("invalid body: {e}")))
}

fn resolve_or_404(s: &State, name: &str) -> Result<usize, Reply> {
    s.resolve(name)
        .ok_or_else(|| sim_refusal(404, format!("no mailbox '{name}'")))
}

#[derive(Debug, Deserialize)]
struct MailRequest {
    mailbox: String,
    count: u64,
    start: Option<u64>,
    #[serde(default)]
    invalid: u64,
    /// Message properties every new message gets instead of the synthetic ones (e.g. the
    /// same `internetMessageId` with another `from`, `subject` or `sentDateTime`).
    #[serde(default)]
    set: serde_json::Map<String, Value>,
}

/// `POST /_sim/mail`: new messages arrive; subscriptions on the mailbox are notified.
async fn sim_mail(state: web::Data<Shared>, body: web::Bytes) -> HttpResponse {
    let req: MailRequest = match parse_json(&body) {
        Ok(r) => r,
        Err(refusal) => return refusal.into_http(),
    };
    let state = state.get_ref();
    let (mbx, upn, start) = {
        let mut s = lock(state);
        let mbx = match resolve_or_404(&s, &req.mailbox) {
            Ok(m) => m,
            Err(refusal) => return refusal.into_http(),
        };
        let mb = &mut s.mailboxes[mbx];
        let start = req.start.unwrap_or(mb.next_n);
        mb.next_n = mb.next_n.max(start + req.count);
        (mbx, mb.upn.clone(), start)
    };
    let every = (req.count / req.invalid.max(1)).max(1);
    if let Some(unknown) = req
        .set
        .keys()
        .find(|k| !MESSAGE_PROPERTIES.contains(&k.as_str()) || *k == "id")
    {
        return sim_refusal(400, format!("`set` cannot set `{unknown}`")).into_http();
    }
    let drafts: Vec<Draft> = (0..req.count)
        .map(|i| {
            let valid = !(i.is_multiple_of(every) && i / every < req.invalid);
            let mut d = draft(start + i, &upn, valid);
            for (key, value) in &req.set {
                let name = MESSAGE_PROPERTIES
                    .iter()
                    .find(|p| **p == key)
                    .expect("checked above");
                d.props.retain(|(p, _)| p != name);
                d.props.push((*name, value.to_string().into_boxed_str()));
            }
            d
        })
        .collect();
    let (items, targets) = {
        let mut s = lock(state);
        let now_ms = Utc::now().timestamp_millis();
        let mb = &mut s.mailboxes[mbx];
        let items: Vec<(String, String)> = drafts
            .into_iter()
            .map(|d| {
                let idx = mb.append(d, now_ms);
                let m = &mb.messages[idx];
                (m.id.clone(), m.etag())
            })
            .collect();
        (Arc::new(items), s.active_targets(mbx))
    };
    for target in targets {
        actix_web::rt::spawn(notify_changes(state.clone(), target, items.clone()));
    }
    HttpResponse::Ok().json(json!({"added": req.count}))
}

#[derive(Debug, Deserialize)]
struct DeleteRequest {
    mailbox: String,
    count: usize,
}

/// `POST /_sim/delete`: the oldest messages are deleted (delta reports them `@removed`).
async fn sim_delete(state: web::Data<Shared>, body: web::Bytes) -> HttpResponse {
    let req: DeleteRequest = match parse_json(&body) {
        Ok(r) => r,
        Err(refusal) => return refusal.into_http(),
    };
    let mut s = lock(&state);
    let mbx = match resolve_or_404(&s, &req.mailbox) {
        Ok(m) => m,
        Err(refusal) => return refusal.into_http(),
    };
    let deleted = s.mailboxes[mbx].delete_oldest(req.count);
    HttpResponse::Ok().json(json!({"deleted": deleted}))
}

#[derive(Debug, Default, Deserialize)]
struct ExpireDeltaRequest {
    mailbox: Option<String>,
}

/// `POST /_sim/expire-delta`: every delta token of the mailbox (or of all) answers 410.
async fn sim_expire_delta(state: web::Data<Shared>, body: web::Bytes) -> HttpResponse {
    let req: ExpireDeltaRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ExpireDeltaRequest::default()
    } else {
        match parse_json(&body) {
            Ok(r) => r,
            Err(refusal) => return refusal.into_http(),
        }
    };
    let mut s = lock(&state);
    let which: Vec<usize> = match &req.mailbox {
        Some(name) => match resolve_or_404(&s, name) {
            Ok(m) => vec![m],
            Err(refusal) => return refusal.into_http(),
        },
        None => (0..s.mailboxes.len()).collect(),
    };
    let mut expired = Vec::new();
    for m in which {
        s.mailboxes[m].delta_epoch += 1;
        expired.push(s.mailboxes[m].upn.clone());
    }
    HttpResponse::Ok().json(json!({"expired": expired}))
}

#[derive(Debug, Deserialize)]
struct ThrottleRequest {
    mailbox: String,
    count: u64,
    retry_after_s: u64,
    status: Option<u16>,
}

/// `POST /_sim/throttle`: the next `count` requests on the mailbox are throttled.
async fn sim_throttle(state: web::Data<Shared>, body: web::Bytes) -> HttpResponse {
    let req: ThrottleRequest = match parse_json(&body) {
        Ok(r) => r,
        Err(refusal) => return refusal.into_http(),
    };
    let status = req.status.unwrap_or(429);
    if !matches!(status, 429 | 503) {
        return sim_error(400, "status must be 429 or 503");
    }
    let mut s = lock(&state);
    let mbx = match resolve_or_404(&s, &req.mailbox) {
        Ok(m) => m,
        Err(refusal) => return refusal.into_http(),
    };
    s.mailboxes[mbx].budget.storm = (req.count > 0).then_some(Storm {
        remaining: req.count,
        retry_after_s: req.retry_after_s,
        status,
    });
    HttpResponse::Ok().json(json!({"mailbox": s.mailboxes[mbx].upn, "count": req.count}))
}

#[derive(Debug, Deserialize)]
struct NotifyRequest {
    mailbox: String,
    client_state: Option<String>,
}

/// `POST /_sim/notify`: one more notification for the newest message, to each subscription on
/// the mailbox, with `client_state` instead of the subscription's when given. Answers with the
/// status each endpoint gave.
async fn sim_notify(state: web::Data<Shared>, body: web::Bytes) -> HttpResponse {
    let req: NotifyRequest = match parse_json(&body) {
        Ok(r) => r,
        Err(refusal) => return refusal.into_http(),
    };
    let state = state.get_ref();
    let (targets, newest) = {
        let mut s = lock(state);
        let mbx = match resolve_or_404(&s, &req.mailbox) {
            Ok(m) => m,
            Err(refusal) => return refusal.into_http(),
        };
        s.expire_subscriptions(Utc::now());
        let newest = s.mailboxes[mbx]
            .messages
            .iter()
            .rev()
            .find(|m| !m.deleted)
            .map(|m| (m.id.clone(), m.etag()));
        let targets: Vec<Target> = s
            .subscriptions
            .values()
            .filter(|sub| sub.mailbox == mbx)
            .map(|sub| s.notification_target(sub, req.client_state.clone()))
            .collect();
        (targets, newest)
    };
    let Some((id, etag)) = newest else {
        return sim_error(409, "the mailbox holds no message to notify of");
    };
    if targets.is_empty() {
        return sim_error(409, "no active subscription on this mailbox");
    }
    let mut posts = Vec::new();
    for t in targets {
        let body = json!({"value": [t.change_item(&id, &etag)]}).to_string();
        let status = post_json(state, Outbound::Change, &t.url, body, 1).await;
        posts.push(json!({"subscription_id": t.subscription_id, "status": status}));
    }
    HttpResponse::Ok().json(json!({"message_id": id, "posts": posts}))
}

#[derive(Debug, Deserialize)]
struct LifecycleRequest {
    mailbox: String,
    event: String,
}

/// `POST /_sim/lifecycle`: a lifecycle event to each subscription on the mailbox that has a
/// lifecycle URL; `subscriptionRemoved` also removes the subscription.
async fn sim_lifecycle(state: web::Data<Shared>, body: web::Bytes) -> HttpResponse {
    let req: LifecycleRequest = match parse_json(&body) {
        Ok(r) => r,
        Err(refusal) => return refusal.into_http(),
    };
    if !matches!(
        req.event.as_str(),
        "reauthorizationRequired" | "subscriptionRemoved" | "missed"
    ) {
        return sim_error(
            400,
            "event must be reauthorizationRequired, subscriptionRemoved or missed",
        );
    }
    let state = state.get_ref();
    let targets = {
        let mut s = lock(state);
        let mbx = match resolve_or_404(&s, &req.mailbox) {
            Ok(m) => m,
            Err(refusal) => return refusal.into_http(),
        };
        let targets = s.active_targets(mbx);
        if req.event == "subscriptionRemoved" {
            for t in &targets {
                s.subscriptions.remove(&t.subscription_id);
                s.stats.lifecycle_removed += 1;
            }
        }
        targets
    };
    let mut posts = Vec::new();
    for t in targets {
        let Some(url) = t.lifecycle_url.clone() else {
            posts.push(json!({"subscription_id": t.subscription_id, "status": null}));
            continue;
        };
        let body = json!({"value": [t.lifecycle_item(&req.event)]}).to_string();
        let status = post_json(state, Outbound::Lifecycle, &url, body, 1).await;
        posts.push(json!({"subscription_id": t.subscription_id, "status": status}));
    }
    HttpResponse::Ok().json(json!({"event": req.event, "posts": posts}))
}

async fn sim_config(state: web::Data<Shared>, body: web::Bytes) -> HttpResponse {
    let cfg: SimConfig = match parse_json(&body) {
        Ok(c) => c,
        Err(refusal) => return refusal.into_http(),
    };
    let mut s = lock(&state);
    if let Some(t) = cfg.token_lifetime_s {
        s.token_lifetime = Duration::from_secs(t);
    }
    if let Some(l) = cfg.latency_ms {
        s.latency = Duration::from_millis(l);
    }
    if let Some(r) = cfg.error_rate {
        s.error_rate = r.clamp(0.0, 1.0);
    }
    if let Some(c) = cfg.concurrency_limit {
        s.limits.concurrency = c;
    }
    if let Some(w) = cfg.window_limit {
        s.limits.window_limit = w;
    }
    if let Some(w) = cfg.window_ms {
        s.limits.window = Duration::from_millis(w.max(1));
    }
    if let Some(p) = cfg.max_page_size {
        s.max_page_size = p.max(1);
    }
    if let Some(t) = cfg.delta_token_ttl_s {
        s.delta_ttl = (t > 0).then(|| Duration::from_secs(t));
    }
    if let Some(names) = cfg.deny_mailboxes {
        let mut denied = Vec::with_capacity(names.len());
        for name in &names {
            match resolve_or_404(&s, name) {
                Ok(m) => denied.push(m),
                Err(refusal) => return refusal.into_http(),
            }
        }
        for (i, mb) in s.mailboxes.iter_mut().enumerate() {
            mb.denied = denied.contains(&i);
        }
    }
    HttpResponse::Ok().json(json!({
        "token_lifetime_s": s.token_lifetime.as_secs(),
        "latency_ms": s.latency.as_millis() as u64,
        "error_rate": s.error_rate,
        "concurrency_limit": s.limits.concurrency,
        "window_limit": s.limits.window_limit,
        "window_ms": s.limits.window.as_millis() as u64,
        "max_page_size": s.max_page_size,
        "delta_token_ttl_s": s.delta_ttl.map_or(0, |d| d.as_secs()),
    }))
}

async fn sim_stats(state: web::Data<Shared>) -> HttpResponse {
    let v = lock(&state).stats_json();
    HttpResponse::Ok().json(v)
}

#[derive(Debug, Deserialize)]
struct MessagesQuery {
    mailbox: String,
}

/// `GET /_sim/messages?mailbox=…`: the mailbox's messages (not deleted), with `isRead`.
async fn sim_messages(state: web::Data<Shared>, q: web::Query<MessagesQuery>) -> HttpResponse {
    let s = lock(&state);
    let mbx = match resolve_or_404(&s, &q.mailbox) {
        Ok(m) => m,
        Err(refusal) => return refusal.into_http(),
    };
    let mut out = String::from("[");
    let mut first = true;
    for m in s.mailboxes[mbx].messages.iter().filter(|m| !m.deleted) {
        if !first {
            out.push(',');
        }
        first = false;
        m.write_json(&Selection::All, None, &mut out);
    }
    out.push(']');
    HttpResponse::Ok()
        .content_type("application/json")
        .body(out)
}

/// Runs the simulator until the process is stopped.
pub async fn serve(opts: GraphSimOptions) -> anyhow::Result<()> {
    let ip: std::net::IpAddr = opts
        .bind
        .parse()
        .map_err(|_| anyhow::anyhow!("--bind {}: not an IP address", opts.bind))?;
    anyhow::ensure!(
        ip.is_loopback(),
        "--bind {}: the simulator listens on loopback only",
        ip
    );
    install_tls_provider();
    let state: Shared = Arc::new(Mutex::new(State::new(&opts)?));
    let data = web::Data::new(state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(web::PayloadConfig::new(16 * 1024 * 1024))
            .route("/_sim/stats", web::get().to(sim_stats))
            .route("/_sim/messages", web::get().to(sim_messages))
            .route("/_sim/config", web::post().to(sim_config))
            .route("/_sim/mail", web::post().to(sim_mail))
            .route("/_sim/delete", web::post().to(sim_delete))
            .route("/_sim/expire-delta", web::post().to(sim_expire_delta))
            .route("/_sim/throttle", web::post().to(sim_throttle))
            .route("/_sim/notify", web::post().to(sim_notify))
            .route("/_sim/lifecycle", web::post().to(sim_lifecycle))
            .route("/_sim/introspect", web::post().to(introspect))
            .route("/{tenant}/oauth2/v2.0/token", web::post().to(token))
            .default_service(web::to(graph_api))
    })
    .workers(opts.workers.max(1))
    .disable_signals()
    .bind((ip, opts.port))?;
    let addr = server.addrs()[0];
    println!("graph simulator listening on http://{addr}");
    use std::io::Write;
    let _ = std::io::stdout().flush();
    server.run().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use clap::Parser;

    const UPN: &str = "m@contoso.example";
    const CONTRACT_FILTER: &str = "receivedDateTime ge 1900-01-01T00:00:00Z and isRead eq false";

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        opts: GraphSimOptions,
    }

    fn options(args: &[&str]) -> GraphSimOptions {
        Cli::parse_from(std::iter::once("sim").chain(args.iter().copied())).opts
    }

    fn mailbox_with(n: u64) -> Mailbox {
        let mut mb = Mailbox::new(0, UPN);
        for i in 0..n {
            mb.append(draft(i, UPN, true), 1_700_000_000_000);
        }
        mb
    }

    /// The ids in a comma-separated run of message objects.
    fn ids(fragment: &str) -> Vec<String> {
        let v: Value = serde_json::from_str(&format!("[{fragment}]")).expect("valid JSON");
        v.as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect()
    }

    fn unread_oldest_first() -> ListFilter {
        check_filter(Some(CONTRACT_FILTER), Some("receivedDateTime")).unwrap()
    }

    #[test]
    fn a_poller_may_hand_over_and_back_but_not_read_alongside_another() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut log = PollerLog::default();
        log.saw("A", at(0));
        log.saw("A", at(100));
        log.saw("B", at(5_000));
        log.saw("C", at(9_000));
        assert_eq!(log.interleavings, 0, "hand-overs are fine");
        log.saw("B", at(15_000));
        assert_eq!(
            (log.interleavings, log.handbacks),
            (0, 1),
            "C went quiet: a hand-back"
        );
        log.saw("C", at(15_200));
        assert_eq!(
            log.interleavings, 1,
            "C and B read within a second: both polled"
        );
        assert_eq!(log.seen.len(), 3);
    }

    #[test]
    fn the_defaults_are_those_of_the_contract() {
        let o = options(&[]);
        assert_eq!(o.port, 8500);
        assert_eq!(o.mailboxes.len(), 3);
        assert_eq!(o.mailboxes[2], "invoices-2@contoso.example");
        assert_eq!(
            (o.concurrency_limit, o.window_limit, o.window_ms),
            (4, 10_000, 600_000)
        );
        assert_eq!(o.subscription_max_minutes, 10_080);
        assert_eq!(o.list_paging, ListPaging::Skiptoken);
    }

    #[test]
    fn the_contract_filter_passes_and_orders_oldest_first() {
        let f = unread_oldest_first();
        assert_eq!(f.is_read, Some(false));
        assert!(!f.descending);
        assert_eq!(f.received, vec![(Cmp::Ge, -2_208_988_800_000)]);
        // Without $orderby Graph serves messages newest first.
        assert!(
            check_filter(Some("isRead eq false"), None)
                .unwrap()
                .descending
        );
        // $orderby alone needs no filter.
        assert!(check_filter(None, Some("receivedDateTime desc")).is_ok());
    }

    #[test]
    fn orderby_on_a_property_absent_from_or_not_leading_the_filter_is_an_inefficient_filter() {
        for filter in [
            "isRead eq false",
            "isRead eq false and receivedDateTime ge 1900-01-01T00:00:00Z",
        ] {
            let e = check_filter(Some(filter), Some("receivedDateTime")).unwrap_err();
            assert_eq!((e.status, e.code), (400, "InefficientFilter"), "{filter}");
        }
    }

    #[test]
    fn filters_the_simulator_does_not_understand_are_refused_with_a_reason() {
        for filter in [
            "subject eq 'x'",
            "isRead eq maybe",
            "receivedDateTime ge yesterday",
            "isRead eq false or isRead eq true",
            "isRead eq",
        ] {
            let e = check_filter(Some(filter), None).unwrap_err();
            assert_eq!(e.status, 400, "{filter}");
            assert!(!e.message.is_empty());
        }
        assert!(check_filter(None, Some("subject")).is_err());
    }

    #[test]
    fn unread_pages_serve_every_message_once_while_half_are_marked_read_between_pages() {
        let mut mb = mailbox_with(50);
        let f = unread_oldest_first();
        let mut after = None;
        let mut seen = Vec::new();
        let mut marked = 0;
        loop {
            let mut out = String::new();
            let page = mb.list_page(&f, after, 0, 7, &Selection::All, &mut out);
            let page_ids = ids(&out);
            assert_eq!(page_ids.len(), page.served);
            for id in page_ids.iter().step_by(2) {
                let idx = mb.find(id).unwrap();
                assert!(mb.set_read(idx, true));
                marked += 1;
            }
            seen.extend(page_ids);
            if !page.more {
                break;
            }
            after = page.last;
        }
        let want: Vec<String> = (0..50).map(|n| format!("AAMk-0-{n}")).collect();
        assert_eq!(seen, want);
        assert_eq!(mb.unread, 50 - marked);
    }

    #[test]
    fn skip_paging_over_a_shrinking_set_loses_messages_as_graph_does() {
        let mut mb = mailbox_with(20);
        let f = unread_oldest_first();
        let mut out = String::new();
        let first = mb.list_page(&f, None, 0, 10, &Selection::All, &mut out);
        for id in ids(&out) {
            let idx = mb.find(&id).unwrap();
            mb.set_read(idx, true);
        }
        let mut out = String::new();
        let second = mb.list_page(&f, None, first.served, 10, &Selection::All, &mut out);
        assert_eq!(
            second.served, 0,
            "the $skip jumped over the ten still unread"
        );
    }

    #[test]
    fn newest_first_pages_walk_backwards_and_date_bounds_select_a_range() {
        let mut mb = Mailbox::new(0, UPN);
        for n in 0..6 {
            // One message per second from 2026-01-01T00:00:00Z.
            mb.append(draft(n, UPN, true), 1_767_225_600_000 + n as i64 * 1000);
        }
        let f = check_filter(None, Some("receivedDateTime desc")).unwrap();
        let mut out = String::new();
        let page = mb.list_page(&f, None, 0, 4, &Selection::All, &mut out);
        assert_eq!(ids(&out), ["AAMk-0-5", "AAMk-0-4", "AAMk-0-3", "AAMk-0-2"]);
        let mut out = String::new();
        mb.list_page(&f, page.last, 0, 4, &Selection::All, &mut out);
        assert_eq!(ids(&out), ["AAMk-0-1", "AAMk-0-0"]);

        let f = check_filter(
            Some("receivedDateTime gt 2026-01-01T00:00:01Z and receivedDateTime le 2026-01-01T00:00:04Z"),
            Some("receivedDateTime"),
        )
        .unwrap();
        let mut out = String::new();
        mb.list_page(&f, None, 0, 10, &Selection::All, &mut out);
        assert_eq!(ids(&out), ["AAMk-0-2", "AAMk-0-3", "AAMk-0-4"]);
    }

    #[test]
    fn delta_syncs_the_mailbox_in_pages_then_replays_only_what_changed() {
        let mut mb = mailbox_with(5);
        let sel = Selection::All.clone();
        let mut pos = DeltaPos::Sync {
            next: 0,
            end: 5,
            changes: mb.changes.len(),
        };
        let mut pages = Vec::new();
        let link = loop {
            let mut out = String::new();
            let (next, served) = mb.delta_page(pos, 2, &sel, &mut out);
            assert_eq!(ids(&out).len(), served);
            pages.push(served);
            pos = next;
            if let DeltaPos::Link { .. } = pos {
                break pos;
            }
        };
        assert_eq!(pages, [2, 2, 1]);
        assert_eq!(link, DeltaPos::Link { changes: 5 });

        mb.append(draft(5, UPN, true), 0);
        mb.append(draft(6, UPN, true), 0);
        assert_eq!(mb.delete_oldest(1), 1);
        let mut out = String::new();
        let (next, served) = mb.delta_page(link, 10, &sel, &mut out);
        assert_eq!(served, 2, "@removed items are not messages");
        let items: Value = serde_json::from_str(&format!("[{out}]")).unwrap();
        assert_eq!(items[0]["id"], "AAMk-0-5");
        assert_eq!(items[1]["id"], "AAMk-0-6");
        assert_eq!(items[2]["id"], "AAMk-0-0");
        assert_eq!(items[2]["@removed"]["reason"], "deleted");
        assert_eq!(next, DeltaPos::Link { changes: 8 });

        let mut out = String::new();
        assert_eq!(mb.delta_page(next, 10, &sel, &mut out), (next, 0));
        assert!(out.is_empty(), "nothing changed since");
    }

    #[test]
    fn cursors_round_trip_sealed_and_forged_or_foreign_tokens_do_not_open() {
        let sealer = Sealer(RandomState::new());
        for cursor in [
            Cursor::List {
                mailbox: 2,
                received_ms: 1_767_225_600_123,
                id: "AAMk-2-7|x".into(),
            },
            Cursor::Delta {
                mailbox: 1,
                epoch: 3,
                issued_ms: 42,
                pos: DeltaPos::Sync {
                    next: 10,
                    end: 20,
                    changes: 30,
                },
                select: "id,subject".into(),
            },
            Cursor::Delta {
                mailbox: 0,
                epoch: 0,
                issued_ms: 1,
                pos: DeltaPos::Link { changes: 9 },
                select: String::new(),
            },
        ] {
            let token = sealer.seal(&cursor.encode());
            let opened = sealer.open(&token).and_then(|p| Cursor::decode(&p));
            assert_eq!(opened.as_ref(), Some(&cursor));
            let mut forged = token.clone();
            forged.replace_range(0..2, "4d");
            assert_eq!(sealer.open(&forged), None);
            assert_eq!(
                Sealer(RandomState::new()).open(&token),
                None,
                "another run's"
            );
        }
        assert_eq!(sealer.open("not a token"), None);
        assert_eq!(sealer.open(""), None);
    }

    #[test]
    fn selection_keeps_id_and_etag_and_refuses_unknown_properties() {
        let mb = mailbox_with(1);
        let sel =
            Selection::parse(Some("Subject, receivedDateTime"), MESSAGE_PROPERTIES, "m").unwrap();
        let mut out = String::new();
        mb.messages[0].write_json(&sel, None, &mut out);
        let v: Value = serde_json::from_str(&out).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["@odata.etag", "id", "receivedDateTime", "subject"]);

        let mut out = String::new();
        mb.messages[0].write_json(&Selection::All, None, &mut out);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["isRead"], false);
        assert!(
            v.get("attachments").is_none(),
            "attachments come from their own route"
        );
        assert_eq!(v["hasAttachments"], true);

        let e = Selection::parse(
            Some("id,subjekt"),
            MESSAGE_PROPERTIES,
            "microsoft.graph.message",
        )
        .unwrap_err();
        assert_eq!(e.code, "RequestBroker--ParseUri");
        assert!(e.message.contains("subjekt"));
    }

    fn limits(concurrency: usize, window_limit: usize, window_ms: u64) -> Limits {
        Limits {
            concurrency,
            window_limit,
            window: Duration::from_millis(window_ms),
        }
    }

    #[test]
    fn requests_beyond_the_concurrency_limit_are_refused_and_counted_until_others_depart() {
        let mut b = Budget::default();
        let l = limits(4, 0, 1000);
        let t = Instant::now();
        for _ in 0..4 {
            assert_eq!(b.arrive(t, &l), Admission::Admit);
        }
        let Admission::Refuse(e) = b.arrive(t, &l) else {
            panic!("the fifth is refused")
        };
        assert_eq!(
            (e.status, e.code, e.retry_after_s),
            (429, "ApplicationThrottled", Some(1))
        );
        assert_eq!(
            b.counters.max_concurrent, 5,
            "counted on arrival, refused included"
        );
        assert_eq!(b.counters.concurrency_exceeded, 1);
        b.depart(); // the refused one is answered
        b.depart(); // and one admitted request
        assert_eq!(b.arrive(t, &l), Admission::Admit);
        assert_eq!(b.counters.throttled, 1);
    }

    #[test]
    fn the_window_refuses_with_the_seconds_until_the_oldest_request_leaves_it() {
        let mut b = Budget::default();
        let l = limits(0, 3, 10_000);
        let t = Instant::now();
        for i in 0..3 {
            assert_eq!(b.arrive(t + Duration::from_secs(i), &l), Admission::Admit);
            b.depart();
        }
        let Admission::Refuse(e) = b.arrive(t + Duration::from_millis(4_500), &l) else {
            panic!("the window is full")
        };
        assert_eq!(e.retry_after_s, Some(6), "5.5 s rounded up");
        b.depart();
        assert_eq!(b.arrive(t + Duration::from_secs(10), &l), Admission::Admit);
        assert_eq!(b.counters.max_requests_in_window, 3);
    }

    #[test]
    fn a_request_inside_a_retry_after_is_a_violation_unless_it_was_already_in_flight() {
        let mut b = Budget::default();
        let l = limits(0, 0, 1000);
        let t = Instant::now();
        b.storm = Some(Storm {
            remaining: 1,
            retry_after_s: 2,
            status: 503,
        });
        let Admission::Refuse(e) = b.arrive(t, &l) else {
            panic!("the storm throttles")
        };
        assert_eq!((e.status, e.retry_after_s), (503, Some(2)));
        b.depart();
        // Within the grace: it was on its way before the client saw the 503.
        assert_eq!(
            b.arrive(t + Duration::from_millis(50), &l),
            Admission::Admit
        );
        assert_eq!(b.counters.requests_during_retry_after, 0);
        assert_eq!(
            b.arrive(t + Duration::from_millis(500), &l),
            Admission::Admit
        );
        assert_eq!(b.counters.requests_during_retry_after, 1);
        assert_eq!(b.arrive(t + Duration::from_secs(2), &l), Admission::Admit);
        assert_eq!(
            b.counters.requests_during_retry_after, 1,
            "the wait is over"
        );
        assert_eq!(b.counters.throttled, 1, "the storm was one request long");
    }

    fn subscription(expiration: DateTime<Utc>) -> SubscriptionRequest {
        SubscriptionRequest {
            change_type: Some("created".into()),
            notification_url: Some("http://127.0.0.1:9/webhook/notifications".into()),
            lifecycle_notification_url: None,
            resource: Some(format!("users/{UPN}/mailFolders('inbox')/messages")),
            expiration_date_time: Some(expiration.to_rfc3339()),
            client_state: Some("secret".into()),
        }
    }

    #[test]
    fn subscriptions_must_name_a_known_inbox_expire_within_the_limit_and_call_back_locally() {
        let now = Utc::now();
        let resolve = |u: &str| (u == UPN).then_some(0);
        let ok = validate_subscription(
            &subscription(now + chrono::Duration::hours(1)),
            now,
            10_080,
            resolve,
        )
        .unwrap();
        assert_eq!(ok.mailbox, 0);
        assert_eq!(ok.client_state.as_deref(), Some("secret"));

        let refused = |req: SubscriptionRequest| {
            let e = validate_subscription(&req, now, 10_080, resolve).unwrap_err();
            assert_eq!((e.status, e.code), (400, "InvalidRequest"));
            e.message
        };
        let base = || subscription(now + chrono::Duration::hours(1));
        assert!(refused(subscription(now - chrono::Duration::minutes(1))).contains("future"));
        assert!(refused(subscription(now + chrono::Duration::minutes(10_081))).contains("10080"));
        let mut r = base();
        r.client_state = Some("x".repeat(129));
        assert!(refused(r).contains("128"));
        let mut r = base();
        r.notification_url = Some("https://example.com/hook".into());
        assert!(refused(r).contains("loopback"));
        let mut r = base();
        r.lifecycle_notification_url = Some("ftp://127.0.0.1/x".into());
        assert!(refused(r).contains("lifecycleNotificationUrl"));
        let mut r = base();
        r.change_type = Some("updated".into());
        assert!(refused(r).contains("created"));
        let mut r = base();
        r.resource = Some("users/nobody@contoso.example/messages".into());
        assert!(refused(r).contains("no such mailbox"));
        let mut r = base();
        r.resource = Some(format!("users/{UPN}/mailFolders('sentitems')/messages"));
        assert!(refused(r).contains("inbox"));
        let mut r = base();
        r.expiration_date_time = None;
        refused(r);
    }

    #[test]
    fn subscription_resources_parse_in_the_forms_graph_accepts() {
        for (resource, folder) in [
            (
                "users/a@b.example/mailFolders('Inbox')/messages",
                Some("inbox"),
            ),
            (
                "/Users/a@b.example/mailfolders/inbox/messages",
                Some("inbox"),
            ),
            ("users/a@b.example/messages", None),
        ] {
            let (user, f) = parse_resource(resource).unwrap();
            assert_eq!(user, "a@b.example");
            assert_eq!(f.as_deref().map(str::to_ascii_lowercase).as_deref(), folder);
        }
        assert_eq!(parse_resource("me/messages"), None);
        assert_eq!(parse_resource("users//messages"), None);
    }

    #[test]
    fn routes_parse_with_upns_guids_and_folder_key_syntax() {
        let r = parse_route("/users/A%40b.example/mailFolders('inbox')/messages/delta").unwrap();
        assert_eq!(
            r,
            Route::Mailbox {
                user: "A@b.example".into(),
                op: MailboxOp::Delta {
                    folder: "inbox".into()
                }
            }
        );
        assert_eq!(
            parse_route("/users/x/messages/AAMk-0-1/attachments").unwrap(),
            Route::Mailbox {
                user: "x".into(),
                op: MailboxOp::Attachments("AAMk-0-1".into())
            }
        );
        assert_eq!(
            parse_route("/subscriptions/abc").unwrap(),
            Route::Subscription("abc".into())
        );
        assert_eq!(parse_route("/users/x/calendar").unwrap_err().status, 400);
        assert!(is_batch_path("/$batch") && is_batch_path("/%24batch"));
    }

    #[test]
    fn small_codecs_behave() {
        assert_eq!(
            prefer_max_page_size(Some("odata.maxpagesize=250")),
            Some(250)
        );
        assert_eq!(
            prefer_max_page_size(Some("odata.track-changes, odata.maxpagesize = 7")),
            Some(7)
        );
        assert_eq!(prefer_max_page_size(Some("return=minimal")), None);
        assert_eq!(prefer_max_page_size(None), None);
        assert_eq!(percent_decode("a%40b+c%2"), "a@b+c%2");
        assert_eq!(unhex(&hex(b"\x00\xffab")).unwrap(), b"\x00\xffab");
        assert_eq!(
            graph_time(Utc.timestamp_opt(0, 123_456_789).unwrap()),
            "1970-01-01T00:00:00.1234567Z"
        );
        let q = Query::parse("%24top=5&%24filter=isRead+eq+false&$Select=id");
        assert_eq!(q.get("$top"), Some("5"));
        assert_eq!(q.get("$filter"), Some("isRead eq false"));
        assert_eq!(q.get("$select"), Some("id"));
    }

    #[test]
    fn mailbox_guids_are_stable_and_well_formed() {
        let a = stable_guid("invoices-0@contoso.example");
        assert_eq!(a, stable_guid("INVOICES-0@contoso.example"));
        assert_ne!(a, stable_guid("invoices-1@contoso.example"));
        assert!(uuid::Uuid::parse_str(&a).is_ok());
    }

    #[test]
    fn tokens_are_issued_for_the_right_credentials_and_expire_with_the_current_lifetime() {
        let mut s = State::new(&options(&["--token-lifetime-s", "60"])).unwrap();
        let form = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let good = [
            ("client_id", "ms1-app"),
            ("client_secret", "sim-secret"),
            ("scope", GRAPH_SCOPE),
            ("grant_type", "client_credentials"),
        ];
        let t0 = Instant::now();
        let issued = s.issue_token("contoso", &form(&good), t0).unwrap();
        assert_eq!(issued["expires_in"], 60);
        let token = issued["access_token"].as_str().unwrap().to_string();
        let bearer = format!("Bearer {token}");
        assert!(s
            .authorize(Some(&bearer), t0 + Duration::from_secs(59))
            .is_ok());
        let e = s
            .authorize(Some(&bearer), t0 + Duration::from_secs(60))
            .unwrap_err();
        assert_eq!((e.status, e.code), (401, "InvalidAuthenticationToken"));
        assert_eq!(s.stats.expired_token_used, 1);
        s.token_lifetime = Duration::from_secs(10);
        assert!(s
            .authorize(Some(&bearer), t0 + Duration::from_secs(11))
            .is_err());
        assert!(s.authorize(None, t0).is_err());
        assert!(s.authorize(Some("Bearer nonsense"), t0).is_err());
        assert_eq!((s.stats.unauthorized, s.stats.expired_token_used), (4, 2));

        let refused = |s: &mut State, tenant: &str, pairs: &[(&str, &str)]| {
            let (status, body) = s.issue_token(tenant, &form(pairs), t0).unwrap_err();
            (status, body["error"].as_str().unwrap().to_string())
        };
        let mut bad = good;
        bad[1].1 = "wrong";
        assert_eq!(
            refused(&mut s, "contoso", &bad),
            (401, "invalid_client".into())
        );
        let mut bad = good;
        bad[2].1 = "https://outlook.office.com/.default";
        assert_eq!(
            refused(&mut s, "contoso", &bad),
            (400, "invalid_scope".into())
        );
        let mut bad = good;
        bad[3].1 = "password";
        assert_eq!(
            refused(&mut s, "contoso", &bad),
            (400, "unsupported_grant_type".into())
        );
        assert_eq!(
            refused(&mut s, "fabrikam", &good),
            (400, "invalid_request".into())
        );
        let tenant_id = s.tenant_id.clone();
        assert!(s.issue_token(&tenant_id, &form(&good), t0).is_ok());

        let refresh = [
            ("client_id", "ms1-app"),
            ("grant_type", "refresh_token"),
            ("refresh_token", "sim-refresh-token"),
            (
                "scope",
                "https://outlook.office.com/IMAP.AccessAsUser.All offline_access",
            ),
        ];
        let r = s.issue_token("contoso", &form(&refresh), t0).unwrap();
        assert!(r["access_token"].is_string());
        let mut bad = refresh;
        bad[2].1 = "stolen";
        assert_eq!(
            refused(&mut s, "contoso", &bad),
            (400, "invalid_grant".into())
        );
        assert_eq!(s.stats.tokens_issued, 3);
    }

    #[test]
    fn introspection_reports_live_tokens_for_the_introspect_user_and_nothing_else_as_active() {
        let mut s = State::new(&options(&["--token-lifetime-s", "60"])).unwrap();
        assert_eq!(s.introspect_user, "invoices-0@contoso.example");
        let mut s2 = State::new(&options(&["--introspect-user", "imap@example.test"])).unwrap();
        assert_eq!(s2.introspect_user, "imap@example.test");
        assert_eq!(
            s2.introspect("never-issued", Instant::now())["active"],
            false
        );

        let form: HashMap<String, String> = [
            ("client_id", "ms1-app"),
            ("grant_type", "refresh_token"),
            ("refresh_token", "sim-refresh-token"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let t0 = Instant::now();
        let issued = s.issue_token("contoso", &form, t0).unwrap();
        let token = issued["access_token"].as_str().unwrap();
        let live = s.introspect(token, t0 + Duration::from_secs(59));
        assert_eq!(live["active"], true);
        assert_eq!(live["email"], "invoices-0@contoso.example");
        assert!(live["exp"].as_i64().unwrap() > live["iat"].as_i64().unwrap());
        assert_eq!(
            s.introspect(token, t0 + Duration::from_secs(60)),
            json!({"active": false}),
            "an expired token is inactive and reveals nothing"
        );
        assert_eq!(s.introspect("forged", t0), json!({"active": false}));
        assert_eq!(
            (
                s.stats.introspections,
                s.stats.introspections_inactive,
                s.stats.expired_token_used
            ),
            (3, 2, 1)
        );
    }

    #[test]
    fn seeded_mailboxes_answer_to_upn_and_guid_and_a_duplicate_is_refused() {
        let s = State::new(&options(&["--messages-per-mailbox", "3"])).unwrap();
        let guid = s.mailboxes[1].guid.clone();
        assert_eq!(s.resolve("Invoices-1@Contoso.example"), Some(1));
        assert_eq!(s.resolve(&guid.to_uppercase()), Some(1));
        assert_eq!(s.mailboxes[2].live, 3);
        assert_eq!(s.mailboxes[2].messages[2].id, "AAMk-2-2");
        let times: Vec<i64> = s.mailboxes[0]
            .messages
            .iter()
            .map(|m| m.received_ms)
            .collect();
        assert!(times.windows(2).all(|w| w[0] < w[1]), "arrival order");
        assert!(State::new(&options(&["--mailboxes", "a@x.example,A@x.example"])).is_err());
    }
}
