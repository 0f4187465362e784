//! Outbound posts: the validation handshake, change notifications (up to 100 per POST) and
//! lifecycle events, each recorded in the statistics.

use super::codecs::graph_time;
use super::state::{lock, Shared, State};
use super::subscriptions::Subscription;
use actix_web::http::StatusCode;
use chrono::Utc;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Graph groups change notifications, at most this many per POST.
const NOTIFICATIONS_PER_POST: usize = 100;
/// How long the notification endpoint has to answer a validation request.
const VALIDATION_TIMEOUT: Duration = Duration::from_secs(10);
/// Graph gives up on a notification POST after this long.
const NOTIFICATION_TIMEOUT: Duration = Duration::from_secs(10);
/// Answers slower than this count as slow (Graph drops endpoints that are slow too often).
const SLOW_NOTIFICATION: Duration = Duration::from_secs(3);

/// Everything a notification POST needs about its subscription, copied out of the lock.
#[derive(Debug, Clone)]
pub(super) struct Target {
    pub(super) subscription_id: String,
    pub(super) expiration: String,
    pub(super) client_state: Option<String>,
    pub(super) url: String,
    pub(super) lifecycle_url: Option<String>,
    pub(super) guid: String,
    pub(super) tenant_id: String,
}

impl Target {
    /// One change-notification item for message `id`.
    pub(super) fn change_item(&self, id: &str, etag: &str) -> Value {
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

    /// One lifecycle-notification item (`reauthorizationRequired`, `subscriptionRemoved`,
    /// `missed`).
    pub(super) fn lifecycle_item(&self, event: &str) -> Value {
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

impl State {
    /// Where and how to notify subscription `s`; `client_state` replaces the subscription's
    /// (`/_sim/notify` sends a wrong one on demand).
    pub(super) fn notification_target(
        &self,
        s: &Subscription,
        client_state: Option<String>,
    ) -> Target {
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

    /// The targets of the live subscriptions on mailbox `mbx`.
    pub(super) fn active_targets(&mut self, mbx: usize) -> Vec<Target> {
        self.expire_subscriptions(Utc::now());
        self.subscriptions
            .values()
            .filter(|s| s.mailbox == mbx)
            .map(|s| self.notification_target(s, None))
            .collect()
    }
}

thread_local! {
    /// One HTTP client per worker thread (awc clients are `!Send`), so connections are reused.
    static HTTP: awc::Client = awc::Client::builder()
        .disable_redirects()
        .timeout(NOTIFICATION_TIMEOUT)
        .finish();
}

/// This worker thread's HTTP client.
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

/// Validates the notification URL and then the lifecycle URL, if any.
pub(super) async fn handshake(
    notification_url: &str,
    lifecycle_url: Option<&str>,
) -> Result<(), String> {
    validate_endpoint(notification_url).await?;
    if let Some(l) = lifecycle_url {
        validate_endpoint(l)
            .await
            .map_err(|e| format!("lifecycleNotificationUrl: {e}"))?;
    }
    Ok(())
}

/// Which kind of POST an outbound call is, for the statistics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outbound {
    Change,
    Lifecycle,
}

/// POSTs one JSON body and records the answer; returns the status (0: no answer).
pub(super) async fn post_json(
    state: &Shared,
    kind: Outbound,
    url: &str,
    body: String,
    items: usize,
) -> u16 {
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
pub(super) async fn notify_changes(
    state: Shared,
    target: Target,
    items: Arc<Vec<(String, String)>>,
) {
    for chunk in items.chunks(NOTIFICATIONS_PER_POST) {
        let value: Vec<Value> = chunk
            .iter()
            .map(|(id, etag)| target.change_item(id, etag))
            .collect();
        let body = json!({ "value": value }).to_string();
        post_json(&state, Outbound::Change, &target.url, body, chunk.len()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::options;
    use super::*;

    fn target(client_state: Option<&str>) -> Target {
        Target {
            subscription_id: "sub-1".into(),
            expiration: "2026-01-01T00:00:00.0000000Z".into(),
            client_state: client_state.map(Into::into),
            url: "http://127.0.0.1:9/n".into(),
            lifecycle_url: None,
            guid: "g".into(),
            tenant_id: "t".into(),
        }
    }

    #[test]
    fn a_change_item_names_the_message_under_the_mailbox_guid_with_the_client_state() {
        let item = target(Some("secret")).change_item("AAMk-0-1", "W/\"x\"");
        assert_eq!(item["resource"], "Users/g/Messages/AAMk-0-1");
        assert_eq!(item["resourceData"]["id"], "AAMk-0-1");
        assert_eq!(item["resourceData"]["@odata.etag"], "W/\"x\"");
        assert_eq!(item["changeType"], "created");
        assert_eq!(
            item["subscriptionExpirationDateTime"],
            "2026-01-01T00:00:00.0000000Z"
        );
        assert_eq!(item["clientState"], "secret");
        assert_eq!(item["tenantId"], "t");
        assert!(target(None)
            .change_item("a", "e")
            .get("clientState")
            .is_none());
    }

    #[test]
    fn a_lifecycle_item_names_its_event_and_no_resource() {
        let item = target(Some("secret")).lifecycle_item("missed");
        assert_eq!(item["lifecycleEvent"], "missed");
        assert_eq!(item["subscriptionId"], "sub-1");
        assert_eq!(item["clientState"], "secret");
        assert!(item.get("resource").is_none());
    }

    #[test]
    fn targets_are_the_live_subscriptions_of_the_mailbox_and_a_client_state_can_be_forced() {
        let mut s = State::new(&options(&[])).unwrap();
        let now = Utc::now();
        for (id, mailbox, minutes) in [("a", 1, 10), ("b", 2, 10), ("c", 1, -1)] {
            let sub = Subscription {
                id: id.into(),
                mailbox,
                resource: String::new(),
                change_type: "created".into(),
                notification_url: format!("http://127.0.0.1:9/{id}"),
                lifecycle_url: None,
                expiration: now + chrono::Duration::minutes(minutes),
                client_state: Some("kept".into()),
            };
            s.subscriptions.insert(id.into(), sub);
        }
        let targets = s.active_targets(1);
        assert_eq!(targets.len(), 1, "b is on another mailbox, c expired");
        assert_eq!(targets[0].subscription_id, "a");
        assert_eq!(targets[0].url, "http://127.0.0.1:9/a");
        assert_eq!(targets[0].guid, s.mailboxes[1].guid);
        assert_eq!(targets[0].tenant_id, s.tenant_id);
        assert_eq!(targets[0].client_state.as_deref(), Some("kept"));
        assert_eq!(s.stats.expired_subscriptions, 1);
        let forced = s.notification_target(&s.subscriptions["a"], Some("forged".into()));
        assert_eq!(forced.client_state.as_deref(), Some("forged"));
    }

    #[test]
    fn a_handshake_with_no_valid_url_fails_before_posting() {
        let e = actix_web::rt::System::new()
            .block_on(handshake("not a url", None))
            .unwrap_err();
        assert_eq!(e, "The URL is not valid.");
    }
}
