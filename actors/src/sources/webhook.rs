//! The WebhookReceiver actor: Graph change notifications and the subscriptions behind them.
//!
//! - **Notifications** (`POST /webhook/notifications`): each item's `clientState` is compared
//!   with `webhook.client_state` in constant time (a mismatch is rejected, counted, never
//!   enqueued); its `subscriptionId` names the mailbox (the `resource` carries the user's GUID,
//!   not the UPN); accepted items become durable `ref` entries (mailbox + message id) in the
//!   inbound stream before the route answers 202 — Graph's 3-second rule — and the
//!   BatchProcessor fetches the messages afterwards. A message notified again (in the same
//!   POST, or while its `queued:ref:` mark lives, `redis.idempotency_ttl_s`) is not queued
//!   again: one Graph GET per message. While the backlog (inbound + outbound) is above
//!   `pipeline.max_backlog`, as the pollers pause, nothing is queued and the route answers 503
//!   with `Retry-After`: Graph re-sends later, and the safety-net poll catches up on what it
//!   gives up on.
//! - **Subscriptions**: one per mailbox, kept by the daemon that holds the mailbox's poller
//!   lease (several daemons share the mailboxes, see [`fleet`](super::fleet)): created once the
//!   HTTP server is up (Graph validates the notification URLs during the create), persisted in
//!   `webhook:subscription:{mailbox}` with `webhook:subscription-id:{id}` naming its mailbox
//!   (notifications reach any daemon behind a load balancer, and each resolves an id it does
//!   not know there), renewed `webhook.renew_before_s` before expiry by a timer. A daemon that
//!   takes a lease adopts the stored subscription (re-arming its renewal) instead of creating
//!   another; one that loses the lease stops renewing and leaves it to the new holder. Each
//!   asks Graph for an expiry spread by mailbox over the second half of the renewal window
//!   ([`spread_expiration`]), so subscriptions created together do not renew together. A
//!   drain, or a session that stops wanting notifications, deletes the subscriptions this
//!   daemon keeps.
//! - **Lifecycle events** (`POST /webhook/lifecycle`): `reauthorizationRequired` → renew now;
//!   `subscriptionRemoved` → create a new one and poll to catch up; `missed` → poll to catch up.
//!   One that reaches a daemon not keeping the subscription is refused (`rejected_lifecycle`)
//!   or, for an id it knows, changes nothing there: the holder's next renewal re-creates a
//!   removed subscription (Graph answers 404), and its scheduled polls catch up.

use crate::clients::graph::GraphError;
use crate::clients::graph_tenants::GraphTenants;
use crate::messages::TriggerPoll;
use crate::settings::Settings;
use crate::sources::graph::GraphPoller;
use crate::store::webhook::{RefsQueued, StoredSubscription};
use crate::store::Store;
use crate::supervision::RestartPacer;
use crate::{health::Health, metrics as m};
use actix::prelude::*;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

mod ownership;
use ownership::{spread_expiration, ID_KEPT_AFTER_EXPIRY};

/// One item of a notification POST (change or lifecycle).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    #[serde(default)]
    pub subscription_id: String,
    pub client_state: Option<String>,
    pub resource: Option<String>,
    pub resource_data: Option<ResourceData>,
    pub lifecycle_event: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ResourceData {
    pub id: Option<String>,
}

/// The body Graph POSTs.
#[derive(Debug, Deserialize)]
pub struct NotificationBatch {
    pub value: Vec<Notification>,
}

/// Parses the body Graph POSTs to the notification or the lifecycle URL. Pure: the webhook
/// routes call it on every request, and the `notification` fuzz target calls it on anything.
pub fn parse_notifications(body: &[u8]) -> Result<NotificationBatch, serde_json::Error> {
    serde_json::from_slice(body)
}

/// Why a change notification was not enqueued (each is counted under its own outcome).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `clientState` missing or not ours.
    ClientState,
    /// A subscription this daemon does not know (another's, or deleted).
    UnknownSubscription,
    /// Neither `resourceData.id` nor `resource` names a message.
    NoMessageId,
}

impl Refusal {
    /// The `outcome` label of `ms1_webhook_notifications_total`.
    pub(crate) fn outcome(self) -> &'static str {
        match self {
            Refusal::ClientState => "rejected_client_state",
            Refusal::UnknownSubscription => "unknown_subscription",
            Refusal::NoMessageId => "no_message_id",
        }
    }
}

/// The change notifications of one POST, sorted: what to enqueue and what was refused.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SortedNotifications {
    /// (mailbox, message id) of every accepted notification, in the order received, each
    /// message once.
    pub refs: Vec<(String, String)>,
    /// Accepted notifications of a message already in `refs` (repeats within the POST).
    pub repeated: usize,
    /// One entry per refused notification.
    pub refused: Vec<Refusal>,
}

/// Whether `given` is the configured `clientState`, compared in constant time.
pub fn client_state_matches(given: Option<&str>, want: &str) -> bool {
    use subtle::ConstantTimeEq;
    given.is_some_and(|g| bool::from(g.as_bytes().ct_eq(want.as_bytes())))
}

/// The message a change notification is about: `resourceData.id`, else the last segment of
/// `resource` (`Users/{guid}/Messages/{id}`); `None` when that is empty.
pub fn notified_message_id(n: &Notification) -> Option<String> {
    n.resource_data
        .as_ref()
        .and_then(|d| d.id.clone())
        .or_else(|| {
            n.resource
                .as_deref()
                .and_then(|r| r.rsplit('/').next())
                .map(str::to_string)
        })
        .filter(|id| !id.is_empty())
}

/// Checks each notification (clientState, then its subscription → mailbox, then its message
/// id) and sorts it into a ref to enqueue or a refusal. Pure (no I/O, no metrics).
pub fn sort_notifications(
    items: &[Notification],
    client_state: &str,
    subscriptions: &HashMap<String, String>,
) -> SortedNotifications {
    let mut sorted = SortedNotifications {
        refs: Vec::with_capacity(items.len()),
        repeated: 0,
        refused: Vec::new(),
    };
    let mut seen = std::collections::HashSet::new();
    for n in items {
        if !client_state_matches(n.client_state.as_deref(), client_state) {
            sorted.refused.push(Refusal::ClientState);
            continue;
        }
        let Some(mailbox) = subscriptions.get(&n.subscription_id) else {
            sorted.refused.push(Refusal::UnknownSubscription);
            continue;
        };
        match notified_message_id(n) {
            Some(id) if !seen.insert((mailbox.as_str(), id.clone())) => sorted.repeated += 1,
            Some(id) => sorted.refs.push((mailbox.clone(), id)),
            None => sorted.refused.push(Refusal::NoMessageId),
        }
    }
    sorted
}

/// What became of a notification POST.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, MessageResponse)]
pub struct Received {
    /// Items taken: queued now, or about a message queued already.
    pub accepted: usize,
    /// Of the accepted, those about a message queued already (not queued again).
    pub duplicates: usize,
    pub rejected: usize,
}

/// The notifications were not taken: answer 503 so that Graph re-sends them.
#[derive(Debug, thiserror::Error)]
pub enum NotTaken {
    #[error("cannot store notifications: {0}")]
    NotStored(String),
    #[error("the backlog ({backlog} entries) is above pipeline.max_backlog ({max}): intake paused until MS4 catches up")]
    Backlogged { backlog: u64, max: u64 },
}

#[derive(Message)]
#[rtype(result = "Result<Received, NotTaken>")]
pub struct Notifications(pub Vec<Notification>);

#[derive(Message)]
#[rtype(result = "Received")]
pub struct LifecycleEvents(pub Vec<Notification>);

/// The HTTP server is up: subscriptions can be created (Graph validates the URLs first).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Subscribe;

/// The session wants notifications (true: subscribe) or not (false: delete the
/// subscriptions).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct SetIntake(pub bool);

/// Drain: delete every subscription (Graph stops sending); resolves when done.
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct Unsubscribe;

/// Renew (or re-create) one mailbox's subscription now.
#[derive(Message)]
#[rtype(result = "()")]
struct Renew {
    mailbox: String,
    recreate: bool,
}

pub struct WebhookReceiver {
    settings: Arc<Settings>,
    store: Store,
    graph: Rc<GraphTenants>,
    pollers: BTreeMap<String, Addr<GraphPoller>>,
    health: Health,
    pacer: RestartPacer,
    /// subscription id → mailbox (of every stored subscription known, this daemon's or not)
    subscriptions: HashMap<String, String>,
    /// The sources whose leases this daemon holds (the pollers keep it).
    held: watch::Receiver<BTreeSet<String>>,
    /// The mailboxes whose subscriptions this daemon keeps: those it holds the lease of.
    owned: BTreeSet<String>,
    /// mailbox → its renewal timer
    timers: HashMap<String, SpawnHandle>,
    /// The HTTP server is listening.
    http_ready: bool,
    /// The running session wants notifications.
    wanted: bool,
}

impl WebhookReceiver {
    pub(crate) fn new(
        settings: Arc<Settings>,
        store: Store,
        graph: Rc<GraphTenants>,
        pollers: BTreeMap<String, Addr<GraphPoller>>,
        health: Health,
    ) -> Self {
        Self {
            settings,
            store,
            graph,
            pollers,
            health,
            pacer: RestartPacer::new("webhook_receiver"),
            subscriptions: HashMap::new(),
            held: watch::channel(BTreeSet::new()).1,
            owned: BTreeSet::new(),
            timers: HashMap::new(),
            http_ready: false,
            wanted: false,
        }
    }

    /// Keeps the subscriptions of the mailboxes whose leases `held` lists (the daemon's
    /// pollers keep it): without it, the receiver keeps none.
    pub(crate) fn following(mut self, held: watch::Receiver<BTreeSet<String>>) -> Self {
        self.held = held;
        self
    }

    fn urls(&self) -> (String, String) {
        let base = self.settings.webhook.public_url.trim_end_matches('/');
        (
            format!("{base}/webhook/notifications"),
            format!("{base}/webhook/lifecycle"),
        )
    }

    fn client_state_ok(&self, given: Option<&str>) -> bool {
        client_state_matches(given, self.settings.webhook.client_state.expose())
    }

    /// Arms the renewal of `mailbox` at `expiration - renew_before`.
    fn arm_renewal(&mut self, mailbox: &str, expiration: &str, ctx: &mut Context<Self>) {
        let renew_before = Duration::from_secs(self.settings.webhook.renew_before_s);
        let at = renewal_delay(expiration, Utc::now(), renew_before);
        if let Some(old) = self.timers.remove(mailbox) {
            ctx.cancel_future(old);
        }
        let mb = mailbox.to_string();
        let handle = ctx.run_later(at, move |_act, ctx| {
            ctx.notify(Renew {
                mailbox: mb,
                recreate: false,
            });
        });
        self.timers.insert(mailbox.to_string(), handle);
    }

    fn poll_now(&self, mailbox: &str) {
        if let Some(p) = self.pollers.get(mailbox) {
            p.do_send(TriggerPoll);
        }
    }
}

/// How long until a subscription expiring at `expiration` must be renewed.
pub(crate) fn renewal_delay(
    expiration: &str,
    now: DateTime<Utc>,
    renew_before: Duration,
) -> Duration {
    DateTime::parse_from_rfc3339(expiration)
        .map(|e| e.with_timezone(&Utc))
        .ok()
        .and_then(|e| (e - now).to_std().ok())
        .map(|left| left.saturating_sub(renew_before))
        .unwrap_or(Duration::ZERO)
}

impl Actor for WebhookReceiver {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.pacer.delay(Instant::now());
        // Know the persisted subscriptions before handling any notification.
        let store = self.store.clone();
        let mailboxes = self.settings.graph.all_mailboxes();
        ctx.wait(
            async move {
                let mut found = Vec::new();
                for mb in mailboxes {
                    if let Ok(Some(s)) = store.load_subscription(&mb).await {
                        found.push((mb, s));
                    }
                }
                found
            }
            .into_actor(self)
            .map(|found, act, ctx| {
                // Known for notifications; renewed only once this daemon holds the lease.
                for (mb, s) in found {
                    act.subscriptions.insert(s.id.clone(), mb);
                }
                act.watch_leases(act.held.clone(), ctx);
                if act.http_ready && act.wanted {
                    // Restarted by the supervisor after the server was up: carry on.
                    act.subscribe_all(ctx);
                }
            }),
        );
    }
}

impl Supervised for WebhookReceiver {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        self.pacer.on_restart();
        self.timers.clear();
        self.subscriptions.clear();
        self.owned.clear();
    }
}

impl Handler<Notifications> for WebhookReceiver {
    type Result = ResponseFuture<Result<Received, NotTaken>>;

    fn handle(&mut self, msg: Notifications, _ctx: &mut Context<Self>) -> Self::Result {
        let (mut subscriptions, unknown) = self.subscriptions_of(&msg.0);
        let store = self.store.clone();
        let ttl = self.settings.redis.idempotency_ttl_s;
        let max = self.settings.pipeline.max_backlog;
        let batch_size = self.settings.ms4.batch_size;
        let client_state = self.settings.webhook.client_state.clone();
        Box::pin(async move {
            // Another daemon's subscriptions (a load balancer spreads the POSTs): their
            // mailboxes are in Redis. If Redis cannot say, Graph is asked to send again.
            let found = store
                .subscription_mailboxes(&unknown)
                .await
                .map_err(|e| NotTaken::NotStored(e.to_string()))?;
            for (id, mailbox) in unknown.into_iter().zip(found) {
                if let Some(mailbox) = mailbox {
                    subscriptions.insert(id, mailbox);
                }
            }
            let sorted = sort_notifications(&msg.0, client_state.expose(), &subscriptions);
            queue_sorted(sorted, &store, ttl, (max, batch_size)).await
        })
    }
}

impl WebhookReceiver {
    /// The subscriptions the items of a POST name (those with our `clientState`): the ones
    /// this daemon knows, with their mailboxes, and the ids it does not know.
    fn subscriptions_of(&self, items: &[Notification]) -> (HashMap<String, String>, Vec<String>) {
        let mut known = HashMap::new();
        let mut unknown = Vec::new();
        for n in items {
            if !self.client_state_ok(n.client_state.as_deref()) || n.subscription_id.is_empty() {
                continue;
            }
            match self.subscriptions.get(&n.subscription_id) {
                Some(mailbox) => {
                    known.insert(n.subscription_id.clone(), mailbox.clone());
                }
                None if !unknown.contains(&n.subscription_id) => {
                    unknown.push(n.subscription_id.clone())
                }
                None => {}
            }
        }
        (known, unknown)
    }
}

/// Counts the refusals of a sorted POST and queues its refs (see [`Store::add_refs`]).
async fn queue_sorted(
    sorted: SortedNotifications,
    store: &Store,
    ttl: u64,
    (max, batch_size): (u64, usize),
) -> Result<Received, NotTaken> {
    for refusal in &sorted.refused {
        metrics::counter!(m::WEBHOOK_NOTIFICATIONS, "outcome" => refusal.outcome()).increment(1);
    }
    let mut received = Received {
        accepted: 0,
        duplicates: 0,
        rejected: sorted.refused.len(),
    };
    if received.rejected > 0 {
        tracing::warn!(
            rejected = received.rejected,
            "rejected webhook notifications (wrong clientState, unknown subscription or no message id)"
        );
    }
    let (refs, repeated) = (sorted.refs, sorted.repeated);
    if refs.is_empty() {
        return Ok(received);
    }
    let pairs: Vec<(&str, &str)> = refs.iter().map(|(m, i)| (m.as_str(), i.as_str())).collect();
    let added = match store.add_refs(&pairs, ttl, max, batch_size).await {
        Err(e) => return Err(NotTaken::NotStored(e.to_string())),
        Ok(RefsQueued::Backlogged { backlog }) => {
            metrics::counter!(m::WEBHOOK_NOTIFICATIONS, "outcome" => "backlogged")
                .increment((refs.len() + repeated) as u64);
            return Err(NotTaken::Backlogged { backlog, max });
        }
        Ok(RefsQueued::Added(n)) => n as usize,
    };
    received.accepted = refs.len() + repeated;
    received.duplicates = received.accepted - added;
    metrics::counter!(m::WEBHOOK_NOTIFICATIONS, "outcome" => "accepted").increment(added as u64);
    metrics::counter!(m::WEBHOOK_NOTIFICATIONS, "outcome" => "duplicate")
        .increment(received.duplicates as u64);
    Ok(received)
}

impl Handler<LifecycleEvents> for WebhookReceiver {
    type Result = Received;

    fn handle(&mut self, msg: LifecycleEvents, ctx: &mut Context<Self>) -> Received {
        let mut received = Received::default();
        for n in msg.0 {
            let mailbox = match (
                self.client_state_ok(n.client_state.as_deref()),
                self.subscriptions.get(&n.subscription_id),
            ) {
                (true, Some(mb)) => mb.clone(),
                _ => {
                    received.rejected += 1;
                    metrics::counter!(m::WEBHOOK_NOTIFICATIONS, "outcome" => "rejected_lifecycle")
                        .increment(1);
                    continue;
                }
            };
            received.accepted += 1;
            let event = n.lifecycle_event.as_deref().unwrap_or("");
            tracing::info!(%mailbox, event, "subscription lifecycle event");
            metrics::counter!(m::WEBHOOK_NOTIFICATIONS, "outcome" => "lifecycle").increment(1);
            match event {
                "reauthorizationRequired" => ctx.notify(Renew {
                    mailbox,
                    recreate: false,
                }),
                "subscriptionRemoved" => {
                    self.subscriptions.remove(&n.subscription_id);
                    ctx.notify(Renew {
                        mailbox: mailbox.clone(),
                        recreate: true,
                    });
                    self.poll_now(&mailbox);
                }
                "missed" => self.poll_now(&mailbox),
                other => tracing::warn!(event = other, "unknown lifecycle event ignored"),
            }
        }
        received
    }
}

impl Handler<Subscribe> for WebhookReceiver {
    type Result = ();

    fn handle(&mut self, _: Subscribe, ctx: &mut Context<Self>) {
        self.http_ready = true;
        if self.wanted {
            self.subscribe_all(ctx);
        }
    }
}

impl Handler<SetIntake> for WebhookReceiver {
    type Result = ();

    fn handle(&mut self, msg: SetIntake, ctx: &mut Context<Self>) {
        if msg.0 == self.wanted {
            return;
        }
        self.wanted = msg.0;
        if self.wanted {
            if self.http_ready {
                self.subscribe_all(ctx);
            }
        } else {
            ctx.notify(Unsubscribe);
        }
    }
}

impl Handler<Renew> for WebhookReceiver {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: Renew, _ctx: &mut Context<Self>) -> Self::Result {
        if !self.wanted || !self.owned.contains(&msg.mailbox) {
            // A timer that fired after the session stopped wanting notifications, or a
            // mailbox whose lease (and subscription) another daemon holds now.
            return Box::pin(async {}.into_actor(self));
        }
        let graph = self.graph.clone();
        let store = self.store.clone();
        let (notification_url, lifecycle_url) = self.urls();
        let client_state = self.settings.webhook.client_state.clone();
        let folder = self.settings.graph.folder.clone();
        let lifetime = Duration::from_secs(self.settings.webhook.lifetime_minutes * 60);
        let renew_before = Duration::from_secs(self.settings.webhook.renew_before_s);
        let existing = self
            .subscriptions
            .iter()
            .find(|(_, m)| **m == msg.mailbox)
            .map(|(id, _)| id.clone());
        let mailbox = msg.mailbox.clone();
        let fut = async move {
            let graph = match graph.of(&mailbox) {
                Ok(graph) => graph.clone(),
                Err(e) => return (existing, Err(e)),
            };
            let expiration = spread_expiration(&mailbox, Utc::now(), lifetime, renew_before)
                .to_rfc3339_opts(SecondsFormat::Secs, true);
            let renewed = match (&existing, msg.recreate) {
                (Some(id), false) => {
                    match graph.renew_subscription(&mailbox, id, &expiration).await {
                        Err(GraphError::NotFound) => None,
                        other => Some(other),
                    }
                }
                _ => None,
            };
            let result = match renewed {
                Some(r) => r.map(|s| (s, false)),
                None => graph
                    .create_subscription(
                        &mailbox,
                        &folder,
                        &notification_url,
                        &lifecycle_url,
                        &expiration,
                        client_state.expose(),
                    )
                    .await
                    .map(|s| (s, true)),
            };
            if let Ok((s, _)) = &result {
                let stored = StoredSubscription {
                    id: s.id.clone(),
                    expiration: s.expiration_date_time.clone(),
                };
                let keep = renewal_delay(&stored.expiration, Utc::now(), Duration::ZERO)
                    + ID_KEPT_AFTER_EXPIRY;
                if let Err(e) = store.save_subscription(&mailbox, &stored, keep).await {
                    tracing::warn!(%mailbox, error = %e, "could not persist the subscription");
                }
            }
            (existing, result)
        };
        let mailbox = msg.mailbox;
        Box::pin(fut.into_actor(self).map(move |(old, result), act, ctx| {
            match result {
                Ok((s, created)) => {
                    if let Some(old) = old {
                        act.subscriptions.remove(&old);
                    }
                    act.subscriptions.insert(s.id.clone(), mailbox.clone());
                    act.arm_renewal(&mailbox, &s.expiration_date_time, ctx);
                    act.health.set_source_error(&format!("webhook:{mailbox}"), None);
                    if created {
                        tracing::info!(%mailbox, expires = %s.expiration_date_time, "subscription created");
                    } else {
                        tracing::info!(%mailbox, expires = %s.expiration_date_time, "subscription renewed");
                    }
                }
                Err(e) => {
                    let retry = if e.is_transient() {
                        Duration::from_secs(5)
                    } else {
                        Duration::from_secs(60)
                    };
                    tracing::error!(%mailbox, error = %e, retry_in_s = retry.as_secs(), "cannot create or renew the subscription; polling continues meanwhile");
                    act.health.set_source_error(
                        &format!("webhook:{mailbox}"),
                        Some(format!("subscription: {e}")),
                    );
                    let mb = mailbox.clone();
                    let handle = ctx.run_later(retry, move |_act, ctx| {
                        ctx.notify(Renew {
                            mailbox: mb,
                            recreate: false,
                        })
                    });
                    if let Some(old) = act.timers.insert(mailbox.clone(), handle) {
                        ctx.cancel_future(old);
                    }
                }
            }
        }))
    }
}

impl Handler<Unsubscribe> for WebhookReceiver {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, _: Unsubscribe, ctx: &mut Context<Self>) -> Self::Result {
        for (_, handle) in self.timers.drain() {
            ctx.cancel_future(handle);
        }
        // Only the subscriptions this daemon keeps: the others' stay with their holders.
        let owned = std::mem::take(&mut self.owned);
        let subs: Vec<(String, String)> = self
            .subscriptions
            .iter()
            .filter(|(_, mailbox)| owned.contains(*mailbox))
            .map(|(id, mailbox)| (id.clone(), mailbox.clone()))
            .collect();
        self.subscriptions
            .retain(|_, mailbox| !owned.contains(mailbox));
        let graph = self.graph.clone();
        let store = self.store.clone();
        Box::pin(
            async move {
                for (id, mailbox) in subs {
                    let deleted = match graph.of(&mailbox) {
                        Ok(graph) => graph.delete_subscription(&mailbox, &id).await,
                        Err(e) => Err(e),
                    };
                    match deleted {
                        Ok(()) => {
                            let _ = store.forget_subscription(&mailbox, &id).await;
                            tracing::info!(%mailbox, "subscription deleted");
                        }
                        Err(e) => {
                            tracing::warn!(%mailbox, error = %e, "could not delete the subscription; it expires by itself")
                        }
                    }
                }
            }
            .into_actor(self),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_renew_before_the_expiration() {
        let now = DateTime::parse_from_rfc3339("2026-11-23T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let d = renewal_delay("2026-11-23T11:00:00Z", now, Duration::from_secs(600));
        assert_eq!(d, Duration::from_secs(3_000));
        assert_eq!(
            renewal_delay("2026-11-23T10:05:00Z", now, Duration::from_secs(600)),
            Duration::ZERO
        );
        assert_eq!(
            renewal_delay("garbage", now, Duration::from_secs(1)),
            Duration::ZERO
        );
    }

    #[test]
    fn a_graph_notification_body_parses() {
        let body = r##"{"value":[{"subscriptionId":"s1","subscriptionExpirationDateTime":"2026-11-24T00:00:00Z",
            "changeType":"created","resource":"Users/6f0b/Messages/AAMk1",
            "resourceData":{"@odata.type":"#Microsoft.Graph.Message","@odata.id":"Users/6f0b/Messages/AAMk1","id":"AAMk1"},
            "clientState":"secret","tenantId":"t"}]}"##;
        let b = parse_notifications(body.as_bytes()).unwrap();
        assert_eq!(b.value[0].subscription_id, "s1");
        assert_eq!(
            b.value[0].resource_data.as_ref().unwrap().id.as_deref(),
            Some("AAMk1")
        );
        assert_eq!(b.value[0].client_state.as_deref(), Some("secret"));
    }

    #[test]
    fn notifications_are_sorted_by_client_state_subscription_and_message_id() {
        let body = br#"{"value":[
            {"subscriptionId":"s1","clientState":"secret","resourceData":{"id":"A"}},
            {"subscriptionId":"s1","clientState":"forged","resourceData":{"id":"B"}},
            {"subscriptionId":"s1","resourceData":{"id":"C"}},
            {"subscriptionId":"s9","clientState":"secret","resourceData":{"id":"D"}},
            {"subscriptionId":"s1","clientState":"secret","resource":"Users/g/Messages/E"},
            {"subscriptionId":"s1","clientState":"secret","resource":"Users/g/Messages/"},
            {"subscriptionId":"s1","clientState":"secret","resourceData":{"id":""}},
            {"clientState":"secret","resourceData":{"id":"F"}}
        ]}"#;
        let batch = parse_notifications(body).unwrap();
        let subs = HashMap::from([("s1".to_string(), "mb@x".to_string())]);
        let sorted = sort_notifications(&batch.value, "secret", &subs);
        assert_eq!(
            sorted.refs,
            vec![
                ("mb@x".to_string(), "A".to_string()),
                ("mb@x".to_string(), "E".to_string())
            ]
        );
        assert_eq!(sorted.repeated, 0);
        assert_eq!(
            sorted.refused,
            vec![
                Refusal::ClientState,
                Refusal::ClientState,
                Refusal::UnknownSubscription,
                Refusal::NoMessageId,
                Refusal::NoMessageId,
                Refusal::UnknownSubscription,
            ]
        );
    }

    #[test]
    fn repeats_of_a_message_within_a_post_are_queued_once() {
        let body = br#"{"value":[
            {"subscriptionId":"s1","clientState":"secret","resourceData":{"id":"A"}},
            {"subscriptionId":"s1","clientState":"secret","resource":"Users/g/Messages/A"},
            {"subscriptionId":"s2","clientState":"secret","resourceData":{"id":"A"}},
            {"subscriptionId":"s1","clientState":"secret","resourceData":{"id":"A"}}
        ]}"#;
        let batch = parse_notifications(body).unwrap();
        let subs = HashMap::from([
            ("s1".to_string(), "mb@x".to_string()),
            ("s2".to_string(), "other@x".to_string()),
        ]);
        let sorted = sort_notifications(&batch.value, "secret", &subs);
        assert_eq!(
            sorted.refs,
            vec![
                ("mb@x".to_string(), "A".to_string()),
                ("other@x".to_string(), "A".to_string())
            ],
            "the same id in another mailbox is another message"
        );
        assert_eq!(sorted.repeated, 2);
    }

    #[test]
    fn a_body_that_is_not_a_notification_batch_is_an_error() {
        for body in [
            &b""[..],
            b"{",
            b"[]",
            b"{\"value\":{}}",
            b"\xff\xfe",
            b"{\"value\":[1]}",
        ] {
            assert!(parse_notifications(body).is_err(), "{body:?}");
        }
    }
}
