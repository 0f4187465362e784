//! The Microsoft Graph client: messages (delta and unread), single messages, attachment
//! metadata, `$batch` mark-read and move ([`batch`]), and subscriptions.
//!
//! Every request first takes a permit of its mailbox from the shared budget ([`GraphBudget`], answered by the RateLimiter) (at most
//! `max_concurrent_per_mailbox` in flight and `requests_per_window` per window, across every
//! daemon on the same Redis), then a token from the [`TokenSource`]. A 401 refreshes the token
//! once and retries once. A 429 (or 503) pauses every caller of that mailbox for Retry-After.
//! Each answer is classified once into `Ok` or a [`GraphError`]. Links Graph returns
//! (`@odata.nextLink`, `@odata.deltaLink`) are followed only on Graph's own origin, so the
//! bearer token never goes anywhere else. A caller that wants its permit before it sends (the
//! delta poller admits its read ahead while Redis is free) takes it with
//! [`admit`](GraphClient::admit) and sends under it: still one permit per request.

mod answers;
mod batch;

use super::oauth::{OAuthError, TokenSource};
use crate::messages::{AcquireGraph, GraphBudget, GraphPermit, PauseGraph};
use crate::model::{AttachmentMeta, GraphAttachment};
use answers::classify;
use awc::http::Method;
use bytes::Bytes;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The message properties ms1 reads (CONTRACTS.md).
pub(crate) const SELECT: &str =
    "id,internetMessageId,subject,from,toRecipients,receivedDateTime,sentDateTime,hasAttachments,bodyPreview";
/// Retry-After assumed when a throttling answer carries none.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(2);
/// Largest Graph answer read (a page of 1,000 messages is well below).
const BODY_LIMIT: usize = 64 * 1024 * 1024;
/// Graph's limit of requests in one `$batch`.
pub(crate) const BATCH_MAX: usize = 20;

/// Characters left as they are in a path segment (mailbox UPNs, message ids).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'@')
    .remove(b'=');

pub(crate) fn segment(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// What went wrong with a Graph request.
#[derive(Debug, Clone, thiserror::Error)]
pub enum GraphError {
    #[error("throttled by Graph; retry after {0:?}")]
    Throttled(Duration),
    /// 401/403, with Graph's error code and message (e.g. `ErrorAccessDenied: Access to OData
    /// is disabled.` for a mailbox an application access policy excludes).
    #[error("Graph refuses access ({0}{1}): for one mailbox, an application access policy may exclude it; for every mailbox, check graph.client_id/client_secret and the app's Mail permissions")]
    Unauthorized(u16, String),
    /// No token for the mailbox's tenant (named, with the kind of credential; never its value).
    #[error("cannot get a Graph token for tenant {tenant}: {error}")]
    Token { tenant: Rc<str>, error: OAuthError },
    #[error("the delta cursor is no longer valid (410 Gone / syncStateNotFound)")]
    SyncStateGone,
    #[error("not found (404)")]
    NotFound,
    #[error("Graph rejected the request ({status}): {body}")]
    Rejected { status: u16, body: String },
    #[error("{0}")]
    Transient(String),
}

impl GraphError {
    /// Worth trying again later, unchanged.
    pub(crate) fn is_transient(&self) -> bool {
        matches!(
            self,
            GraphError::Throttled(_)
                | GraphError::Transient(_)
                | GraphError::Token {
                    error: OAuthError::Transient(_),
                    ..
                }
        )
    }
}

/// One item of a messages page, with the few properties the pollers look at.
#[derive(Debug, Clone)]
pub struct PageItem {
    /// The message JSON as Graph sent it.
    pub raw: String,
    pub id: String,
    pub internet_message_id: Option<String>,
    /// `@removed` (deleted or moved out): not a new message.
    pub removed: bool,
    /// Its `receivedDateTime` in ms since the epoch (`None` when absent or unreadable).
    pub received_ms: Option<i64>,
    /// [`content_digest`](crate::model::content_digest) of the sender, subject and
    /// `sentDateTime` ("" without a sender), read in the same pass as the rest of the head.
    pub content_digest: String,
}

/// One page of messages.
#[derive(Debug, Default)]
pub struct Page {
    pub items: Vec<PageItem>,
    pub next_link: Option<String>,
    pub delta_link: Option<String>,
}

#[derive(Deserialize)]
struct RawPage<'a> {
    #[serde(borrow, default)]
    value: Vec<&'a RawValue>,
    #[serde(rename = "@odata.nextLink")]
    next_link: Option<String>,
    #[serde(rename = "@odata.deltaLink")]
    delta_link: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ItemHead {
    #[serde(default)]
    id: String,
    internet_message_id: Option<String>,
    #[serde(rename = "@removed")]
    removed: Option<serde::de::IgnoredAny>,
    from: Option<HeadFrom>,
    subject: Option<String>,
    sent_date_time: Option<String>,
    received_date_time: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct HeadFrom {
    email_address: Option<HeadAddress>,
}

#[derive(Deserialize)]
struct HeadAddress {
    address: Option<String>,
}

/// Parses a messages page without re-serializing its items.
pub fn parse_page(body: &[u8]) -> Result<Page, GraphError> {
    let raw: RawPage<'_> = serde_json::from_slice(body)
        .map_err(|e| GraphError::Transient(format!("unexpected page from Graph: {e}")))?;
    let mut items = Vec::with_capacity(raw.value.len());
    for v in raw.value {
        let head: ItemHead = serde_json::from_str(v.get())
            .map_err(|e| GraphError::Transient(format!("unexpected message in page: {e}")))?;
        let sender = head
            .from
            .and_then(|f| f.email_address)
            .and_then(|a| a.address)
            .filter(|a| !a.trim().is_empty());
        let content_digest = sender.map_or_else(String::new, |sender| {
            crate::model::content_digest(
                &sender,
                head.subject.as_deref().unwrap_or(""),
                head.sent_date_time.as_deref().unwrap_or(""),
            )
        });
        items.push(PageItem {
            content_digest,
            raw: v.get().to_string(),
            id: head.id,
            internet_message_id: head.internet_message_id,
            removed: head.removed.is_some(),
            received_ms: head
                .received_date_time
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
                .map(|t| t.timestamp_millis()),
        });
    }
    Ok(Page {
        items,
        next_link: raw.next_link,
        delta_link: raw.delta_link,
    })
}

/// A created or renewed subscription.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Subscription {
    pub id: String,
    pub expiration_date_time: String,
}

/// A request's admission ([`GraphClient::admit`]): its mailbox's local slot and its permit of
/// the shared budget, both given back when dropped.
pub(crate) struct Admitted {
    _local: OwnedSemaphorePermit,
    _permit: GraphPermit,
}

/// Talks to Graph for every mailbox. Not `Send` (awc): one per arbiter.
pub(crate) struct GraphClient {
    http: awc::Client,
    base: String,
    origin: String,
    tokens: Rc<TokenSource>,
    limiter: GraphBudget,
    /// The tenant this client signs in to (metrics' `tenant` label, errors).
    tenant: Rc<str>,
    /// The app registration whose fleet-wide Graph budget every request draws on.
    app: std::sync::Arc<str>,
    /// Where a refused credential is reported (`tenant:{name}` in readiness' degraded
    /// sources), and whether it is reported now.
    health: Option<crate::health::Health>,
    refused: std::cell::Cell<bool>,
    /// Local admission per mailbox (as many as the shared limit allows), so that callers of
    /// this process queue here instead of polling Redis for a slot.
    local: RefCell<HashMap<String, Arc<Semaphore>>>,
    max_concurrent: usize,
    /// `$expand` attachment metadata into every message read (one request for a whole page,
    /// instead of one per message with attachments).
    expand: &'static str,
    /// `User-Agent` of every request: names this daemon instance (Graph's throttling guidance
    /// asks clients to identify themselves; the simulator uses it to see who polls a mailbox).
    agent: String,
}

/// The `User-Agent` of a daemon instance: product, version, consumer name and process id.
pub(crate) fn user_agent(consumer: &str) -> String {
    format!(
        "ms1-ingestor/{} ({consumer}; pid {})",
        env!("CARGO_PKG_VERSION"),
        std::process::id()
    )
}

/// Appended to message reads when attachment metadata is wanted.
const EXPAND_ATTACHMENTS: &str = "&$expand=attachments($select=name,contentType,size)";

fn origin_of(url: &str) -> String {
    url::Url::parse(url)
        .map(|u| u.origin().ascii_serialization())
        .unwrap_or_default()
}

impl GraphClient {
    pub(crate) fn new(
        base_url: &str,
        tokens: Rc<TokenSource>,
        limiter: GraphBudget,
        timeout: Duration,
        max_concurrent: u32,
    ) -> Self {
        let pool = super::Pool {
            connect_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(60),
            limit: 64,
        };
        Self {
            http: super::http_client(pool, timeout),
            base: base_url.trim_end_matches('/').to_string(),
            origin: origin_of(base_url),
            tokens,
            limiter,
            tenant: Rc::from("default"),
            app: std::sync::Arc::from(""),
            health: None,
            refused: std::cell::Cell::new(false),
            local: RefCell::new(HashMap::new()),
            max_concurrent: max_concurrent.max(1) as usize,
            expand: "",
            agent: user_agent("ms1"),
        }
    }

    /// The `User-Agent` sent (see [`user_agent`]).
    pub(crate) fn with_agent(mut self, agent: String) -> Self {
        self.agent = agent;
        self
    }

    /// The tenant signed in to, and its app registration (see [`GraphTenant::app`]).
    ///
    /// [`GraphTenant::app`]: crate::settings::GraphTenant::app
    pub(crate) fn with_tenant(mut self, tenant: &str, app: String) -> Self {
        self.tenant = Rc::from(tenant);
        self.app = std::sync::Arc::from(app);
        self
    }

    /// Reports a credential the tenant refuses in readiness, once for the whole tenant
    /// (`tenant:{name}`; its mailboxes say it too).
    pub(crate) fn with_health(mut self, health: crate::health::Health) -> Self {
        self.health = Some(health);
        self
    }

    /// A token was had (`None`) or not: readiness follows the credential's state.
    fn token_outcome(&self, error: Option<&OAuthError>) {
        let refused = match error {
            None => false,
            // A timeout or a 5xx at the authority says nothing about the credential.
            Some(OAuthError::Transient(_)) => return,
            Some(_) => true,
        };
        let Some(health) = &self.health else { return };
        let key = || format!("tenant:{}", self.tenant);
        if let Some(e) = error {
            // Written each time: the reason may change (a rotated key that is still wrong).
            health.set_source_error(&key(), Some(format!("cannot get a Graph token: {e}")));
        } else if self.refused.get() {
            health.set_source_error(&key(), None);
        }
        self.refused.set(refused);
    }

    /// Embed attachment metadata (`$expand`) in every message read.
    pub(crate) fn with_attachments(mut self, on: bool) -> Self {
        self.expand = if on { EXPAND_ATTACHMENTS } else { "" };
        self
    }

    fn admission(&self, mailbox: &str) -> Arc<Semaphore> {
        self.local
            .borrow_mut()
            .entry(mailbox.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.max_concurrent)))
            .clone()
    }

    /// First URL of a full delta sync of a folder.
    pub(crate) fn delta_url(&self, mailbox: &str, folder: &str) -> String {
        format!(
            "{}/users/{}/mailFolders/{}/messages/delta?$select={SELECT}{}",
            self.base,
            segment(mailbox),
            segment(folder),
            self.expand
        )
    }

    /// First URL of the unread listing (the seed's filter, oldest first): of the messages
    /// received since `since_ms` (whole seconds, rounded down), or of the whole folder.
    pub(crate) fn unread_url(
        &self,
        mailbox: &str,
        folder: &str,
        top: u32,
        since_ms: Option<i64>,
    ) -> String {
        let since = since_ms
            .and_then(|ms| chrono::DateTime::from_timestamp(ms.div_euclid(1000), 0))
            .map_or_else(
                || "1900-01-01T00:00:00Z".to_string(),
                |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            );
        format!(
            "{}/users/{}/mailFolders/{}/messages?$filter=receivedDateTime%20ge%20{since}%20and%20isRead%20eq%20false&$orderby=receivedDateTime&$top={top}&$select={SELECT}{}",
            self.base,
            segment(mailbox),
            segment(folder),
            self.expand
        )
    }

    /// One page of messages: a delta or list URL, or a link Graph returned.
    pub(crate) async fn page(
        &self,
        mailbox: &str,
        url: &str,
        max_page_size: u32,
    ) -> Result<Page, GraphError> {
        self.same_origin(url)?;
        let admitted = self.admit(mailbox, 1).await?;
        self.page_admitted(admitted, mailbox, url, max_page_size)
            .await
    }

    /// One message, with the selected properties.
    pub(crate) async fn message(&self, mailbox: &str, id: &str) -> Result<Bytes, GraphError> {
        let url = format!(
            "{}/users/{}/messages/{}?$select={SELECT}{}",
            self.base,
            segment(mailbox),
            segment(id),
            self.expand
        );
        self.call(mailbox, Method::GET, &url, None, None, 1).await
    }

    /// Attachment metadata of a message (never the content).
    pub(crate) async fn attachments(
        &self,
        mailbox: &str,
        id: &str,
    ) -> Result<Vec<AttachmentMeta>, GraphError> {
        #[derive(Deserialize)]
        struct List {
            #[serde(default)]
            value: Vec<GraphAttachment>,
        }
        let url = format!(
            "{}/users/{}/messages/{}/attachments?$select=name,contentType,size",
            self.base,
            segment(mailbox),
            segment(id)
        );
        let body = self.call(mailbox, Method::GET, &url, None, None, 1).await?;
        let list: List = serde_json::from_slice(&body)
            .map_err(|e| GraphError::Transient(format!("unexpected attachments list: {e}")))?;
        Ok(list.value.into_iter().map(AttachmentMeta::from).collect())
    }

    /// `POST /subscriptions` for new mail in a mailbox's folder. Graph validates the
    /// notification URLs before it answers.
    pub(crate) async fn create_subscription(
        &self,
        mailbox: &str,
        folder: &str,
        notification_url: &str,
        lifecycle_url: &str,
        expiration: &str,
        client_state: &str,
    ) -> Result<Subscription, GraphError> {
        let body = serde_json::to_vec(&serde_json::json!({
            "changeType": "created",
            "notificationUrl": notification_url,
            "lifecycleNotificationUrl": lifecycle_url,
            "resource": format!("users/{mailbox}/mailFolders('{folder}')/messages"),
            "expirationDateTime": expiration,
            "clientState": client_state,
        }))
        .expect("a subscription serializes");
        let url = format!("{}/subscriptions", self.base);
        let reply = self
            .call(mailbox, Method::POST, &url, Some(body), None, 1)
            .await?;
        serde_json::from_slice(&reply)
            .map_err(|e| GraphError::Transient(format!("unexpected subscription answer: {e}")))
    }

    /// `PATCH /subscriptions/{id}` with a new expiration.
    pub(crate) async fn renew_subscription(
        &self,
        mailbox: &str,
        id: &str,
        expiration: &str,
    ) -> Result<Subscription, GraphError> {
        let body = serde_json::to_vec(&serde_json::json!({ "expirationDateTime": expiration }))
            .expect("serializes");
        let url = format!("{}/subscriptions/{}", self.base, segment(id));
        let reply = self
            .call(mailbox, Method::PATCH, &url, Some(body), None, 1)
            .await?;
        serde_json::from_slice(&reply)
            .map_err(|e| GraphError::Transient(format!("unexpected subscription answer: {e}")))
    }

    /// `DELETE /subscriptions/{id}`; a subscription already gone counts as deleted.
    pub(crate) async fn delete_subscription(
        &self,
        mailbox: &str,
        id: &str,
    ) -> Result<(), GraphError> {
        let url = format!("{}/subscriptions/{}", self.base, segment(id));
        match self
            .call(mailbox, Method::DELETE, &url, None, None, 1)
            .await
        {
            Ok(_) | Err(GraphError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn pause(&self, mailbox: &str, delay: Duration) {
        tracing::warn!(
            mailbox,
            retry_after_ms = delay.as_millis() as u64,
            "Graph throttled the mailbox: pausing every caller"
        );
        let _ = self
            .limiter
            .pause
            .send(PauseGraph {
                mailbox: mailbox.to_string(),
                delay,
            })
            .await;
    }

    /// Admission for one request of `mailbox` standing for `cost` requests: a local slot, then
    /// a permit of the shared budget (waiting for both as long as they take). Held until the
    /// request is answered.
    pub(crate) async fn admit(&self, mailbox: &str, cost: u32) -> Result<Admitted, GraphError> {
        let local = self
            .admission(mailbox)
            .acquire_owned()
            .await
            .map_err(|_| GraphError::Transient("admission closed".into()))?;
        let permit = self
            .limiter
            .acquire
            .send(AcquireGraph {
                mailbox: mailbox.to_string(),
                app: self.app.clone(),
                cost,
            })
            .await
            .map_err(|e| GraphError::Transient(format!("rate limiter unavailable: {e}")))?
            .map_err(|e| GraphError::Transient(format!("rate limiter: {e}")))?;
        Ok(Admitted {
            _local: local,
            _permit: permit,
        })
    }

    /// One page of messages, as [`page`](Self::page), under an admission taken before (of
    /// cost 1, for this mailbox).
    pub(crate) async fn page_admitted(
        &self,
        admitted: Admitted,
        mailbox: &str,
        url: &str,
        max_page_size: u32,
    ) -> Result<Page, GraphError> {
        self.same_origin(url)?;
        let prefer = format!("odata.maxpagesize={max_page_size}");
        let body = self
            .send(admitted, mailbox, Method::GET, url, None, Some(&prefer))
            .await?;
        parse_page(&body)
    }

    /// Links Graph returns are followed only on its own origin (the token goes nowhere else).
    fn same_origin(&self, url: &str) -> Result<(), GraphError> {
        if origin_of(url) != self.origin {
            return Err(GraphError::Rejected {
                status: 0,
                body: "Graph returned a link to another origin; not following it".into(),
            });
        }
        Ok(())
    }

    /// One request: origin, admission, then [`send`](Self::send).
    async fn call(
        &self,
        mailbox: &str,
        method: Method,
        url: &str,
        body: Option<Vec<u8>>,
        prefer: Option<&str>,
        cost: u32,
    ) -> Result<Bytes, GraphError> {
        self.same_origin(url)?;
        let admitted = self.admit(mailbox, cost).await?;
        self.send(admitted, mailbox, method, url, body, prefer)
            .await
    }

    /// One admitted request: token, send, classify (and one retry after a 401).
    async fn send(
        &self,
        _admitted: Admitted,
        mailbox: &str,
        method: Method,
        url: &str,
        body: Option<Vec<u8>>,
        prefer: Option<&str>,
    ) -> Result<Bytes, GraphError> {
        for attempt in 0..2 {
            let token = self.tokens.token().await;
            self.token_outcome(token.as_ref().err());
            let token = token.map_err(|error| GraphError::Token {
                tenant: self.tenant.clone(),
                error,
            })?;
            let mut req = self
                .http
                .request(method.clone(), url)
                .insert_header(("Authorization", format!("Bearer {token}")))
                .insert_header(("User-Agent", self.agent.as_str()));
            if let Some(p) = prefer {
                req = req.insert_header(("Prefer", p));
            }
            let started = Instant::now();
            let sent = match &body {
                Some(b) => {
                    req.insert_header(("Content-Type", "application/json"))
                        .send_body(b.clone())
                        .await
                }
                None => req.send().await,
            };
            let mut resp = match sent {
                Ok(r) => r,
                Err(e) => {
                    metrics::counter!(crate::metrics::GRAPH_REQUESTS, "tenant" => self.tenant.to_string(), "outcome" => "transient")
                        .increment(1);
                    return Err(GraphError::Transient(format!("Graph request failed: {e}")));
                }
            };
            let status = resp.status().as_u16();
            if resp.status().is_redirection() {
                metrics::counter!(crate::metrics::GRAPH_REQUESTS, "tenant" => self.tenant.to_string(), "outcome" => "transient")
                    .increment(1);
                let location = resp.headers().get("Location").and_then(|v| v.to_str().ok());
                return Err(GraphError::Transient(super::redirect_refused(
                    "Graph", status, location,
                )));
            }
            let retry_after = resp
                .headers()
                .get("Retry-After")
                .and_then(|v| v.to_str().ok())
                .and_then(super::ms4::parse_retry_after);
            let bytes = resp
                .body()
                .limit(BODY_LIMIT)
                .await
                .map_err(|e| GraphError::Transient(format!("Graph answer unreadable: {e}")))?;
            metrics::histogram!(crate::metrics::GRAPH_LATENCY, "status" => status.to_string())
                .record(started.elapsed().as_secs_f64());
            let verdict = classify(status, retry_after, &bytes);
            let outcome = match &verdict {
                Ok(_) => "ok",
                Err(GraphError::Throttled(_)) => "throttled",
                Err(GraphError::Unauthorized(..)) => "unauthorized",
                Err(GraphError::SyncStateGone) => "gone",
                Err(GraphError::NotFound) => "not_found",
                Err(GraphError::Rejected { .. }) => "rejected",
                Err(_) => "transient",
            };
            metrics::counter!(crate::metrics::GRAPH_REQUESTS, "tenant" => self.tenant.to_string(), "outcome" => outcome)
                .increment(1);
            match verdict {
                Ok(()) => return Ok(bytes),
                Err(GraphError::Unauthorized(..)) if attempt == 0 => {
                    // The token may have been revoked or expired early: one fresh one, one retry.
                    self.tokens.invalidate(&token);
                }
                Err(GraphError::Throttled(d)) => {
                    self.pause(mailbox, d).await;
                    return Err(GraphError::Throttled(d));
                }
                Err(e) => return Err(e),
            }
        }
        Err(GraphError::Unauthorized(401, String::new()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delta_page_parses_without_reserializing_and_marks_removed_items() {
        let body = br#"{"@odata.context":"x","value":[
            {"id":"A1","internetMessageId":"<a@x>","hasAttachments":true,"subject":"s"},
            {"id":"A2","@removed":{"reason":"deleted"}}],
            "@odata.deltaLink":"https://graph.example/v1.0/delta?$deltatoken=abc"}"#;
        let page = parse_page(body).unwrap();
        assert_eq!(page.items.len(), 2);
        assert_eq!(page.items[0].id, "A1");
        assert!(page.items[0].raw.contains(r#""subject":"s""#));
        assert!(page.items[1].removed);
        assert!(page.next_link.is_none());
        assert!(page.delta_link.unwrap().contains("deltatoken"));
    }

    #[test]
    fn path_segments_are_encoded_but_upns_stay_readable() {
        assert_eq!(
            segment("invoices@contoso.example"),
            "invoices@contoso.example"
        );
        assert_eq!(segment("AAMk/ab+c="), "AAMk%2Fab%2Bc=");
    }

    #[test]
    fn links_to_another_origin_are_detected() {
        assert_eq!(
            origin_of("https://graph.microsoft.com/v1.0/users"),
            "https://graph.microsoft.com"
        );
        assert_ne!(
            origin_of("https://evil.example/v1.0"),
            origin_of("https://graph.microsoft.com/v1.0")
        );
    }
}
