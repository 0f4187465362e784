//! `ms1-actors`: the engine of ms1-ingestor.
//!
//! Supervised actix actors move e-mails through durable Redis Streams:
//!
//! ```text
//! [inbound stream] ─▶ BatchProcessor ─▶ [outbound stream] ─▶ MS4Sender ─▶ MS4
//!                           └──────────────▶ [dead-letter stream] ◀──────┘
//!                                  RateLimiter (shared budgets in Redis)
//! ```
//!
//! Every actor runs under `actix::Supervisor` and rebuilds its state from Redis when restarted.
//! [`Pipeline::start`] wires them together; the daemon shell (`src/`) only loads configuration,
//! serves HTTP and turns signals into [`Pipeline::drain`].

// What the daemon shell and the tools may use is `pub`; everything else is crate-private, so
// the compiler finds what is unused.
#![warn(unreachable_pub)]

// The data's path: sources → pipeline → after delivery, with control beside it.
pub(crate) mod after_delivery;
pub mod control;
pub(crate) mod pipeline;
pub mod sources;

// What the stages stand on: Redis, the outside services, the domain.
pub mod clients;
pub mod model;
pub mod store;

// Shared ground.
pub(crate) mod clock;
pub mod health;
pub mod memory;
pub(crate) mod messages;
pub mod metrics;
pub(crate) mod retry;
pub(crate) mod secret;
pub mod settings;
pub(crate) mod shutdown;
pub(crate) mod supervision;

use actix::{Addr, Arbiter, Supervisor};
use clients::graph_tenants::GraphTenants;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

pub use health::Health;
pub use settings::Settings;
use shutdown::Shutdown;
pub use store::Store;

/// The running system: its actors' addresses and the drain signal.
pub struct Pipeline {
    /// Sessions: start/stop/status; opens and closes the intake.
    pub session: Addr<control::session::SessionManager>,
    /// The DLQ for operators: list, show, replay, purge.
    pub dead_letters: Addr<control::deadletters::DeadLetterOffice>,
    pub inspector: Addr<control::inspect::Inspector>,
    /// Graph change notifications, when `webhook.enabled`.
    pub webhook: Option<Addr<sources::webhook::WebhookReceiver>>,
    pub health: Health,
    processor: Addr<pipeline::processor::BatchProcessor>,
    sender: Addr<pipeline::sender::Ms4Sender>,
    shutdown: Shutdown,
    /// Becomes true once the fleet heartbeat has left the fleet (drain).
    fleet_left: tokio::sync::watch::Receiver<bool>,
    /// The other actors, held for as long as the pipeline runs: the rate limiter, one poller
    /// per Graph mailbox and per IMAP source, the after-delivery workers.
    _held: Held,
    _processor_thread: Arbiter,
}

/// Addresses held only to keep their actors running.
struct Held {
    _limiter: Addr<pipeline::ratelimiter::RateLimiter>,
    _pollers: BTreeMap<String, Addr<sources::graph::GraphPoller>>,
    _imap_pollers: BTreeMap<String, Addr<sources::imap::ImapPoller>>,
    _imap_after_delivery: Option<Addr<after_delivery::Worker<after_delivery::imap::ImapAction>>>,
    _graph_after_delivery:
        Option<Addr<after_delivery::Worker<after_delivery::mark_read::MarkRead>>>,
}

impl Pipeline {
    /// Starts every actor under its supervisor. Must run inside an actix `System`.
    pub fn start(settings: Arc<Settings>, store: Store, health: Health) -> Self {
        let shutdown = Shutdown::default();
        let limiter = {
            let store = store.clone();
            let per_min = settings.ms4.rate_limit_per_min;
            let margin = Duration::from_millis(settings.ms4.rate_margin_ms);
            let g = &settings.graph;
            let graph = store::ratelimit::GraphLimits {
                max_concurrent: g.max_concurrent_per_mailbox,
                per_window: g.requests_per_window,
                window: Duration::from_secs(g.window_s),
                app_per_window: g.app_requests_per_window,
                app_window: Duration::from_secs(g.app_window_s),
                lease: g.request_timeout() * 2,
            };
            Supervisor::start(move |_| {
                pipeline::ratelimiter::RateLimiter::new(store, per_min, margin, graph)
            })
        };
        // The BatchProcessor is CPU-bound (parse, transform, serialize): it gets a thread of
        // its own so it never starves the sender's network loop.
        let processor_thread = Arbiter::new();
        let processor = {
            let (store, settings, health, shutdown, limiter) = (
                store.clone(),
                settings.clone(),
                health.clone(),
                shutdown.clone(),
                limiter.clone(),
            );
            Supervisor::start_in_arbiter(&processor_thread.handle(), move |_| {
                pipeline::processor::BatchProcessor::new(store, settings, limiter, health, shutdown)
            })
        };
        let sender = {
            let (store, settings, health, shutdown, limiter) = (
                store.clone(),
                settings.clone(),
                health.clone(),
                shutdown.clone(),
                limiter.clone(),
            );
            Supervisor::start(move |_| {
                pipeline::sender::Ms4Sender::new(store, settings, limiter, health, shutdown)
            })
        };

        // Intake follows the session: the SessionManager opens and closes it.
        let intake = Arc::new(tokio::sync::watch::channel(messages::Intake::closed()).0);
        let (fleet, fleet_left) = start_fleet(&settings, &store, &shutdown);
        let held: sources::fleet::HeldSources = Arc::new(tokio::sync::watch::Sender::default());
        let sources = sources::PollerContext {
            store: store.clone(),
            health: health.clone(),
            shutdown: shutdown.clone(),
            intake: intake.subscribe(),
            fleet,
            held: held.clone(),
            stagger: sources::stagger(
                settings.graph.all_mailboxes().len() + settings.imap.sources.len(),
            ),
        };
        // Graph: one client (and token cache) per tenant for this thread's actors.
        let mut pollers = BTreeMap::new();
        let mut webhook = None;
        let mut graph_after_delivery = None;
        let graph = GraphTenants::new(
            &settings,
            &pipeline::ratelimiter::RateLimiter::graph_budget(&limiter),
            &health,
            &settings.consumer_name(),
        );
        if let Some(graph) = graph.map(Rc::new) {
            for name in settings.graph.all_mailboxes() {
                let poller =
                    sources::graph::poller(name.clone(), settings.clone(), graph.clone(), &sources);
                pollers.insert(name, Supervisor::start(move |_| poller));
            }
            if settings.graph.mode == settings::GraphMode::Unread {
                let (settings, store, graph, health, shutdown) = (
                    settings.clone(),
                    store.clone(),
                    graph.clone(),
                    health.clone(),
                    shutdown.clone(),
                );
                graph_after_delivery = Some(Supervisor::start(move |_| {
                    let graph_settings = settings.graph.clone();
                    after_delivery::Worker::new(store, settings, health, shutdown, move || {
                        after_delivery::mark_read::MarkRead::new(graph.clone(), &graph_settings)
                    })
                }));
            }
            if settings.webhook.enabled {
                let (settings, store, graph, health, pollers) = (
                    settings.clone(),
                    store.clone(),
                    graph.clone(),
                    health.clone(),
                    pollers.clone(),
                );
                let held = held.subscribe();
                webhook = Some(Supervisor::start(move |_| {
                    sources::webhook::WebhookReceiver::new(settings, store, graph, pollers, health)
                        .following(held)
                }));
            }
        }
        let mut imap_pollers = BTreeMap::new();
        for source in &settings.imap.sources {
            let poller = sources::imap::poller(source.clone(), settings.clone(), &sources);
            imap_pollers.insert(source.name.clone(), Supervisor::start(move |_| poller));
        }
        // With any IMAP source (also when no action is configured now: it settles what an
        // earlier configuration queued).
        let imap_after_delivery = (!settings.imap.sources.is_empty()).then(|| {
            let (store, settings, health, shutdown) = (
                store.clone(),
                settings.clone(),
                health.clone(),
                shutdown.clone(),
            );
            Supervisor::start(move |_| {
                let action_settings = settings.clone();
                after_delivery::Worker::new(store, settings, health, shutdown, move || {
                    after_delivery::imap::ImapAction::new(&action_settings)
                })
            })
        });
        // Manual polls reach every poller: Graph mailboxes and IMAP sources by name.
        let triggers: BTreeMap<String, actix::Recipient<messages::TriggerPoll>> = pollers
            .iter()
            .map(|(k, a)| (k.clone(), a.clone().recipient()))
            .chain(
                imap_pollers
                    .iter()
                    .map(|(k, a)| (k.clone(), a.clone().recipient())),
            )
            .collect();
        let session = {
            let (store, settings, intake, pollers, webhook, health) = (
                store.clone(),
                settings.clone(),
                intake.clone(),
                triggers,
                webhook.clone(),
                health.clone(),
            );
            Supervisor::start(move |_| {
                control::session::SessionManager::new(
                    store, settings, intake, pollers, webhook, health,
                )
            })
        };
        let inspector = {
            let (store, settings, health) = (store.clone(), settings.clone(), health.clone());
            Supervisor::start(move |_| control::inspect::Inspector::new(store, settings, health))
        };
        let dead_letters = {
            let store = store.clone();
            Supervisor::start(move |_| control::deadletters::DeadLetterOffice::new(store))
        };
        Self {
            session,
            dead_letters,
            inspector,
            webhook,
            health,
            processor,
            sender,
            shutdown,
            fleet_left,
            _held: Held {
                _limiter: limiter,
                _pollers: pollers,
                _imap_pollers: imap_pollers,
                _imap_after_delivery: imap_after_delivery,
                _graph_after_delivery: graph_after_delivery,
            },
            _processor_thread: processor_thread,
        }
    }

    /// The HTTP server is listening: webhooks may subscribe now (Graph validates the URLs
    /// while creating a subscription).
    pub fn http_ready(&self) {
        if let Some(w) = &self.webhook {
            w.do_send(sources::webhook::Subscribe);
        }
    }

    /// Graceful drain: stop reading, flush the partial batch, wait for in-flight MS4 requests
    /// and their acknowledgements. Returns false when `deadline` passed first (what was not
    /// acknowledged stays pending in Redis and is re-sent on the next start).
    pub async fn drain(&self, deadline: Duration) -> bool {
        self.shutdown.raise();
        let work = async {
            // Intake first: no new subscriptions' notifications, pollers stop (they see the
            // signal), then the pipeline finishes what it holds.
            if let Some(w) = &self.webhook {
                let _ = w.send(sources::webhook::Unsubscribe).await;
            }
            let _ = self.processor.send(pipeline::processor::Drain).await;
            let _ = self.sender.send(pipeline::sender::Drain).await;
            // The other daemons need not wait for this one's heartbeat to expire. (No
            // heartbeat runs without sources: the sender is gone, and this returns at once.)
            let _ = self.fleet_left.clone().wait_for(|left| *left).await;
        };
        tokio::time::timeout(deadline, work).await.is_ok()
    }
}

/// Starts the daemon's fleet heartbeat (when it polls any source) and returns the view its
/// pollers share and the signal that it left the fleet. The daemon's id in the fleet,
/// `{consumer}:{uuid}`, is new at every start and is the token of its leases; the heartbeat's
/// TTL is the shortest lease TTL of its sources, so a dead daemon leaves the views before (or
/// as) its leases expire.
fn start_fleet(
    settings: &Settings,
    store: &Store,
    shutdown: &Shutdown,
) -> (
    tokio::sync::watch::Receiver<sources::fleet::FleetView>,
    tokio::sync::watch::Receiver<bool>,
) {
    let me = format!(
        "{}:{}",
        settings.consumer_name(),
        uuid::Uuid::new_v4().simple()
    );
    let (view, view_rx) = tokio::sync::watch::channel(sources::fleet::FleetView::new(me));
    let (left, left_rx) = tokio::sync::watch::channel(false);
    let graph = settings.graph.all_mailboxes();
    let imap = &settings.imap.sources;
    let ttls = [
        (!graph.is_empty()).then_some(settings.graph.lease_ttl_s),
        (!imap.is_empty()).then_some(settings.imap.lease_ttl_s),
    ];
    let Some(ttl_s) = ttls.into_iter().flatten().min() else {
        return (view_rx, left_rx);
    };
    let imap_leases: Vec<String> = imap
        .iter()
        .map(|s| store::imap::lease_name(&s.name))
        .collect();
    let names = graph.iter().chain(&imap_leases).map(String::as_str);
    let heartbeat = sources::fleet::Heartbeat {
        store: store.clone(),
        fleet: sources::fleet::fleet_name(names),
        ttl: Duration::from_secs(ttl_s),
        view,
        shutdown: shutdown.clone(),
    };
    actix::spawn(async move {
        heartbeat.run().await;
        let _ = left.send(true);
    });
    (view_rx, left_rx)
}
