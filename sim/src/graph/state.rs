//! The simulator's state, behind one lock: configuration, mailboxes, subscriptions, tokens.
//! Its methods live next to the concept they serve (`tokens`, `mail`, `subscriptions`,
//! `notifications`, `stats`).

use super::assertions::{AssertionCheck, RegisteredCertificate};
use super::codecs::stable_guid;
use super::cursors::Sealer;
use super::mailboxes::Mailbox;
use super::messages::draft;
use super::spread::SubscriptionActivity;
use super::stats::GlobalCounters;
use super::subscriptions::Subscription;
use super::throttling::{AppBudgets, Limits};
use super::tokens::Issued;
use super::trickle::Trickle;
use super::{GraphSimOptions, ListPaging};
use chrono::Utc;
use ms1_actors::settings::GraphCloud;
use std::collections::{BTreeMap, HashMap};
use std::hash::RandomState;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Everything the simulator knows and counts.
pub(super) struct State {
    pub(super) tenant: String,
    pub(super) tenant_id: String,
    pub(super) client_id: String,
    pub(super) client_secret: String,
    pub(super) refresh_token: String,
    /// The Graph resource of the cloud it plays (`https://graph.microsoft.com`, …).
    pub(super) graph_resource: &'static str,
    /// The app's registered certificates, and the assertions already presented.
    pub(super) assertions: AssertionCheck,
    /// The user-assigned managed identity the machine has (IMDS `client_id`).
    pub(super) managed_identity_client_id: Option<String>,
    pub(super) token_lifetime: Duration,
    /// The user live tokens introspect as.
    pub(super) introspect_user: String,
    pub(super) latency: Duration,
    pub(super) error_rate: f64,
    pub(super) limits: Limits,
    /// Graph's global limit per application.
    pub(super) apps: AppBudgets,
    pub(super) max_page_size: usize,
    pub(super) subscription_max_minutes: i64,
    /// Delta tokens older than this are gone (None: never).
    pub(super) delta_ttl: Option<Duration>,
    pub(super) list_paging: ListPaging,
    /// Access tokens issued, when and to which application.
    pub(super) tokens: HashMap<String, Issued>,
    pub(super) mailboxes: Vec<Mailbox>,
    /// Lower-cased UPN or GUID → mailbox index.
    pub(super) by_name: HashMap<String, usize>,
    pub(super) subscriptions: BTreeMap<String, Subscription>,
    pub(super) subscription_activity: SubscriptionActivity,
    /// New mail on every second (`--trickle-per-s`).
    pub(super) trickle: Trickle,
    pub(super) sealer: Sealer,
    pub(super) stats: GlobalCounters,
    /// Time to answer of each notification POST, in ms.
    pub(super) notification_latencies: Vec<u64>,
}

pub(super) type Shared = Arc<Mutex<State>>;

/// Locks the state (a panic elsewhere does not make it unusable).
pub(super) fn lock(s: &Shared) -> std::sync::MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

/// The cloud named by `--cloud`.
fn cloud(name: &str) -> anyhow::Result<GraphCloud> {
    serde_json::from_value(serde_json::Value::String(name.into()))
        .map_err(|_| anyhow::anyhow!("--cloud {name}: not one of global, usgov, usgov_dod, china"))
}

impl State {
    /// The state the start-up options describe, with the mailboxes seeded.
    pub(super) fn new(o: &GraphSimOptions) -> anyhow::Result<Self> {
        let mut state = Self {
            tenant: o.tenant.clone(),
            tenant_id: stable_guid(&format!("tenant:{}", o.tenant)),
            client_id: o.client_id.clone(),
            client_secret: o.client_secret.clone(),
            refresh_token: o.refresh_token.clone(),
            graph_resource: cloud(&o.cloud)?.graph_root(),
            assertions: AssertionCheck::new(
                o.client_certificate
                    .iter()
                    .map(|p| RegisteredCertificate::read(p))
                    .collect::<anyhow::Result<_>>()?,
                o.federated_assertion.clone(),
            ),
            managed_identity_client_id: o.managed_identity_client_id.clone(),
            token_lifetime: Duration::from_secs(o.token_lifetime_s),
            introspect_user: o.introspect_user.clone().unwrap_or_default(),
            latency: Duration::ZERO,
            error_rate: 0.0,
            limits: Limits {
                concurrency: o.concurrency_limit,
                window_limit: o.window_limit,
                window: Duration::from_millis(o.window_ms.max(1)),
            },
            apps: AppBudgets::new(o.app_limit, Duration::from_millis(o.app_window_ms.max(1))),
            max_page_size: o.max_page_size.max(1),
            subscription_max_minutes: o.subscription_max_minutes,
            delta_ttl: (o.delta_token_ttl_s > 0).then(|| Duration::from_secs(o.delta_token_ttl_s)),
            list_paging: o.list_paging,
            tokens: HashMap::new(),
            mailboxes: Vec::new(),
            by_name: HashMap::new(),
            subscriptions: BTreeMap::new(),
            subscription_activity: SubscriptionActivity::default(),
            trickle: Trickle::new(o.trickle_per_s),
            sealer: Sealer(RandomState::new()),
            stats: GlobalCounters::default(),
            notification_latencies: Vec::new(),
        };
        for upn in o.mailbox_names() {
            let index = state.mailboxes.len();
            let mailbox = Mailbox::new(index, &upn);
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
    pub(super) fn roll_error(&mut self) -> bool {
        let fail = self.error_rate > 0.0 && rand::random::<f64>() < self.error_rate;
        if fail {
            self.stats.errors_injected += 1;
        }
        fail
    }

    /// The index of the mailbox named by UPN or GUID, in any case.
    pub(super) fn resolve(&self, name: &str) -> Option<usize> {
        self.by_name.get(&name.trim().to_lowercase()).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::options;
    use super::*;

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

    #[test]
    fn injected_errors_follow_the_error_rate_and_are_counted() {
        let mut s = State::new(&options(&[])).unwrap();
        assert!(!s.roll_error(), "no errors unless asked");
        s.error_rate = 1.0;
        assert!(s.roll_error() && s.roll_error());
        assert_eq!(s.stats.errors_injected, 2);
    }

    #[test]
    fn start_up_options_become_the_state() {
        let s = State::new(&options(&[
            "--mailboxes",
            " a@x.example , ,b@x.example",
            "--window-ms",
            "0",
            "--max-page-size",
            "0",
            "--delta-token-ttl-s",
            "5",
        ]))
        .unwrap();
        let upns: Vec<&str> = s.mailboxes.iter().map(|m| m.upn.as_str()).collect();
        assert_eq!(upns, ["a@x.example", "b@x.example"]);
        assert_eq!(s.introspect_user, "a@x.example");
        assert_eq!(
            (s.limits.window, s.max_page_size),
            (Duration::from_millis(1), 1)
        );
        assert_eq!(s.delta_ttl, Some(Duration::from_secs(5)));
        assert!(
            State::new(&options(&["--mailboxes", " , "])).is_err(),
            "no mailbox"
        );
    }
}
