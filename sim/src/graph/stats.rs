//! Statistics: the whole simulator's counters and the `/_sim/stats` report, with the
//! `violations` (what a client did wrong) the daemon's tests assert at zero.

use super::codecs::graph_time;
use super::spread::expiration_spread;
use super::state::State;
use chrono::Utc;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Figures for the whole simulator.
#[derive(Debug, Default, Clone, Serialize)]
pub(super) struct GlobalCounters {
    pub(super) token_requests: u64,
    pub(super) tokens_issued: u64,
    /// Tokens issued for a certificate assertion, for a workload identity's federated token,
    /// and assertions refused.
    pub(super) certificate_tokens: u64,
    pub(super) federated_tokens: u64,
    pub(super) assertions_refused: u64,
    /// Managed identity tokens issued by the metadata endpoint, and its refusals (a request
    /// without `Metadata: true` among them).
    pub(super) imds_tokens: u64,
    pub(super) imds_refused: u64,
    pub(super) unauthorized: u64,
    pub(super) expired_token_used: u64,
    /// `POST /_sim/introspect` requests, and those answered `"active": false`.
    pub(super) introspections: u64,
    pub(super) introspections_inactive: u64,
    pub(super) subscriptions_created: u64,
    pub(super) renewals: u64,
    pub(super) deleted_subscriptions: u64,
    pub(super) validation_failed: u64,
    pub(super) expired_subscriptions: u64,
    /// Subscriptions removed by a `subscriptionRemoved` lifecycle event.
    pub(super) lifecycle_removed: u64,
    /// Notification items posted (several per POST).
    pub(super) notifications_sent: u64,
    pub(super) notification_posts: u64,
    /// Answers to notification POSTs by status (0: no answer: refused, failed or timed out).
    pub(super) notification_answers: BTreeMap<u16, u64>,
    pub(super) notifications_slow: u64,
    pub(super) lifecycle_posts: u64,
    pub(super) lifecycle_answers: BTreeMap<u16, u64>,
    pub(super) batch_requests: u64,
    pub(super) batch_over_20: u64,
    /// 500s sent because of `error_rate`.
    pub(super) errors_injected: u64,
}

impl State {
    /// The `/_sim/stats` report: global counters, per-mailbox counters and their totals,
    /// notification latencies, live subscriptions and their renewals over time, the
    /// trickle, `violations` and `limit_violations`.
    pub(super) fn stats_json(&mut self) -> Value {
        self.expire_subscriptions(Utc::now());
        let mut v = serde_json::to_value(&self.stats).expect("counters serialize");
        let mut mailboxes = serde_json::Map::new();
        let mut totals = serde_json::Map::new();
        let mut violations = self.stats.batch_over_20 + self.stats.expired_token_used;
        let (mut over_concurrency, mut over_window) = (0, 0);
        for mb in &self.mailboxes {
            let b = &mb.budget.counters;
            violations +=
                b.requests_during_retry_after + b.concurrency_exceeded + mb.pollers.interleavings;
            over_concurrency += b.concurrency_exceeded;
            over_window += b.window_exceeded;
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
        let activity = &self.subscription_activity;
        v["subscription_activity"] = json!({
            "created_per_minute": activity.created.to_json(),
            "renewed_per_minute": activity.renewed.to_json(),
            "most_renewed_in_a_minute": activity.renewed.busiest(),
            "expiration_spread":
                expiration_spread(self.subscriptions.values().map(|s| s.expiration)),
        });
        v["trickle"] = json!(self.trickle);
        v["apps"] = json!(self.apps.counters());
        v["violations"] = json!(violations);
        let over_app = self.apps.exceeded();
        v["limit_violations"] = json!({
            "concurrency": over_concurrency, "window": over_window, "app": over_app,
            "total": over_concurrency + over_window + over_app,
        });
        v["tenant_id"] = json!(self.tenant_id);
        v["totals"] = Value::Object(totals);
        v["mailboxes"] = Value::Object(mailboxes);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::options;
    use super::*;

    #[test]
    fn violations_add_up_what_clients_did_wrong_and_totals_add_up_the_mailboxes() {
        let mut s = State::new(&options(&["--messages-per-mailbox", "2"])).unwrap();
        s.stats.batch_over_20 = 1;
        s.stats.expired_token_used = 2;
        s.mailboxes[0].pollers.interleavings = 3;
        s.mailboxes[1].counters.list_requests = 4;
        s.mailboxes[2].counters.list_requests = 5;
        s.notification_latencies = vec![30, 10, 20];
        let (limits, t) = (s.limits, std::time::Instant::now());
        for mbx in [0, 0, 1] {
            let _ = s.mailboxes[mbx].budget.arrive(t, &limits);
        }
        s.mailboxes[2].budget.counters.concurrency_exceeded = 1;
        s.mailboxes[2].budget.counters.window_exceeded = 2;
        s.apps.limit = 1;
        for _ in 0..3 {
            let _ = s.apps.arrive("ms1-app", t);
        }
        let v = s.stats_json();
        assert_eq!(
            v["violations"], 7,
            "a request over the window is not a mistake"
        );
        assert_eq!(
            v["limit_violations"],
            json!({"concurrency": 1, "window": 2, "app": 2, "total": 5})
        );
        assert_eq!(v["apps"]["ms1-app"]["requests"], 3);
        assert_eq!(v["totals"]["list_requests"], 9);
        assert_eq!(v["totals"]["messages"], 6);
        assert_eq!(v["totals"]["in_flight"], 3);
        assert_eq!(v["totals"]["max_concurrent"], 2, "a max, not a sum");
        let mb = &v["mailboxes"]["invoices-1@contoso.example"];
        assert_eq!(
            (mb["list_requests"].as_u64(), mb["unread"].as_u64()),
            (Some(4), Some(2))
        );
        assert_eq!(
            v["notification_latency_ms"],
            json!({"p50": 20, "p99": 30, "max": 30})
        );
        assert_eq!(v["tenant_id"], s.tenant_id);
    }

    #[test]
    fn a_quiet_simulator_reports_zeros_and_no_subscriptions() {
        let mut s = State::new(&options(&[])).unwrap();
        let v = s.stats_json();
        assert_eq!(v["violations"], 0);
        assert_eq!(v["limit_violations"]["total"], 0);
        assert_eq!(v["subscriptions"], json!([]));
        assert_eq!(
            v["subscription_activity"]["expiration_spread"],
            json!({"live": 0})
        );
        assert_eq!(
            v["trickle"],
            json!({"per_s": 0.0, "sent": 0, "max_stamp_lag_ms": 0})
        );
        assert_eq!(
            v["notification_latency_ms"],
            json!({"p50": 0, "p99": 0, "max": 0})
        );
        assert_eq!(v["mailboxes"].as_object().unwrap().len(), 3);
    }
}
