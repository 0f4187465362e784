//! Subscriptions: the model, the rules Graph applies to a new one, and the
//! `/subscriptions` routes (create, list, get, renew, delete).

use super::answers::{GraphError, Reply};
use super::codecs::{graph_time, percent_decode};
use super::notifications::handshake;
use super::routes::Call;
use super::state::{lock, Shared, State};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

/// `clientState` limit.
const MAX_CLIENT_STATE: usize = 128;

/// A change-notification subscription.
#[derive(Debug, Clone)]
pub(super) struct Subscription {
    pub(super) id: String,
    pub(super) mailbox: usize,
    pub(super) resource: String,
    pub(super) change_type: String,
    pub(super) notification_url: String,
    pub(super) lifecycle_url: Option<String>,
    pub(super) expiration: DateTime<Utc>,
    pub(super) client_state: Option<String>,
}

impl Subscription {
    /// The subscription as Graph answers it.
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
pub(super) fn folder_key(segment: &str) -> Option<String> {
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

impl State {
    /// Removes subscriptions whose expiration has passed.
    pub(super) fn expire_subscriptions(&mut self, now: DateTime<Utc>) {
        let before = self.subscriptions.len();
        self.subscriptions.retain(|_, s| s.expiration > now);
        self.stats.expired_subscriptions += (before - self.subscriptions.len()) as u64;
    }
}

/// The body of `POST` or `PATCH` on subscriptions.
fn parse_request(body: &[u8]) -> Result<SubscriptionRequest, Reply> {
    serde_json::from_slice(body)
        .map_err(|e| GraphError::bad_request(format!("Invalid subscription: {e}")).into())
}

/// The handshake, on creation and on renewal: a failure is counted and answered 400
/// `ValidationError`.
async fn validate_callbacks(
    state: &Shared,
    notification_url: &str,
    lifecycle_url: Option<&str>,
) -> Result<(), Reply> {
    handshake(notification_url, lifecycle_url)
        .await
        .map_err(|reason| {
            lock(state).stats.validation_failed += 1;
            GraphError::new(
                400,
                "ValidationError",
                format!("Subscription validation request failed. {reason}"),
            )
            .into()
        })
}

/// `POST /subscriptions`: the rules, then the handshake, then the subscription.
pub(super) async fn create_subscription(state: &Shared, call: &Call<'_>) -> Reply {
    let req = match parse_request(call.body) {
        Ok(r) => r,
        Err(refusal) => return refusal,
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
    if let Err(refusal) =
        validate_callbacks(state, &new.notification_url, new.lifecycle_url.as_deref()).await
    {
        return refusal;
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
    s.subscription_activity.created.record(Utc::now());
    s.subscriptions.insert(sub.id.clone(), sub);
    Reply::json(201, body)
}

/// Graph's answer for an unknown (or expired) subscription id.
fn subscription_not_found() -> Reply {
    GraphError::new(404, "ResourceNotFound", "The object was not found.").into()
}

/// `GET /subscriptions`.
pub(super) fn list_subscriptions(state: &Shared) -> Reply {
    let mut s = lock(state);
    s.expire_subscriptions(Utc::now());
    let value: Vec<Value> = s
        .subscriptions
        .values()
        .map(Subscription::to_json)
        .collect();
    Reply::json(200, json!({ "value": value }).to_string())
}

/// `GET /subscriptions/{id}`.
pub(super) fn get_subscription(state: &Shared, id: &str) -> Reply {
    let mut s = lock(state);
    s.expire_subscriptions(Utc::now());
    match s.subscriptions.get(id) {
        Some(sub) => Reply::json(200, sub.to_json().to_string()),
        None => subscription_not_found(),
    }
}

/// `DELETE /subscriptions/{id}`.
pub(super) fn delete_subscription(state: &Shared, id: &str) -> Reply {
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
pub(super) async fn renew_subscription(state: &Shared, call: &Call<'_>, id: &str) -> Reply {
    let req = match parse_request(call.body) {
        Ok(r) => r,
        Err(refusal) => return refusal,
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
    if let Err(refusal) = validate_callbacks(state, &url, lifecycle.as_deref()).await {
        return refusal;
    }
    let mut s = lock(state);
    let Some(sub) = s.subscriptions.get_mut(id) else {
        return subscription_not_found();
    };
    sub.expiration = expiration;
    let body = sub.to_json().to_string();
    s.stats.renewals += 1;
    s.subscription_activity.renewed.record(Utc::now());
    Reply::json(200, body)
}

#[cfg(test)]
mod tests {
    use super::super::tests::options;
    use super::*;

    const UPN: &str = "m@contoso.example";

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
        // Each breaks one rule of a valid request, and the refusal names it.
        type Breach = fn(&mut SubscriptionRequest);
        let changes: [(Breach, &str); 8] = [
            (|r| r.client_state = Some("x".repeat(129)), "128"),
            (
                |r| r.notification_url = Some("https://example.com/hook".into()),
                "loopback",
            ),
            (
                |r| r.lifecycle_notification_url = Some("ftp://127.0.0.1/x".into()),
                "lifecycleNotificationUrl",
            ),
            (|r| r.change_type = Some("updated".into()), "created"),
            (
                |r| r.resource = Some("users/nobody@contoso.example/messages".into()),
                "no such mailbox",
            ),
            (
                |r| r.resource = Some(format!("users/{UPN}/mailFolders('sentitems')/messages")),
                "inbox",
            ),
            (|r| r.expiration_date_time = None, "expirationDateTime"),
            (|r| r.notification_url = None, "notificationUrl"),
        ];
        for (change, reason) in changes {
            let mut r = base();
            change(&mut r);
            assert!(refused(r).contains(reason), "{reason}");
        }
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

    fn stored(id: &str, mailbox: usize, expiration: DateTime<Utc>) -> Subscription {
        Subscription {
            id: id.into(),
            mailbox,
            resource: format!("users/{UPN}/messages"),
            change_type: "created".into(),
            notification_url: "http://127.0.0.1:9/webhook/notifications".into(),
            lifecycle_url: None,
            expiration,
            client_state: None,
        }
    }

    #[test]
    fn a_subscription_reads_back_in_graphs_shape() {
        use chrono::TimeZone;
        let v = stored("s1", 0, Utc.timestamp_opt(0, 0).unwrap()).to_json();
        assert_eq!(v["id"], "s1");
        assert_eq!(v["expirationDateTime"], "1970-01-01T00:00:00.0000000Z");
        assert_eq!(v["changeType"], "created");
        assert_eq!(v["lifecycleNotificationUrl"], Value::Null);
        assert_eq!(v["clientState"], Value::Null);
        assert_eq!(v["latestSupportedTlsVersion"], "v1_2");
    }

    #[test]
    fn expired_subscriptions_are_removed_and_counted() {
        let mut s = State::new(&options(&[])).unwrap();
        let now = Utc::now();
        for (id, minutes) in [("gone", -1), ("live", 10), ("now", 0)] {
            let sub = stored(id, 0, now + chrono::Duration::minutes(minutes));
            s.subscriptions.insert(id.into(), sub);
        }
        s.expire_subscriptions(now);
        assert_eq!(s.subscriptions.keys().collect::<Vec<_>>(), ["live"]);
        assert_eq!(s.stats.expired_subscriptions, 2);
    }

    #[test]
    fn callback_urls_may_be_localhost_or_any_loopback_address_only() {
        for url in [
            "http://localhost:8080/n",
            "https://127.0.0.2/n",
            "http://[::1]:9/n",
        ] {
            assert!(check_callback_url("notificationUrl", url).is_ok(), "{url}");
        }
        for url in ["not a url", "http://10.0.0.1/n", "file:///tmp/n"] {
            let e = check_callback_url("notificationUrl", url).unwrap_err();
            assert!(
                e.message.contains("notificationUrl"),
                "{url}: {}",
                e.message
            );
        }
    }
}
