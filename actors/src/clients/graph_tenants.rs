//! One Graph client per tenant, found by mailbox: each tenant signs in with its own credential
//! (its own token cache) to its own cloud, and draws on its app's Graph budget, so a refused
//! credential degrades only that tenant's mailboxes.

use super::graph::{user_agent, GraphClient, GraphError};
use crate::health::Health;
use crate::messages::GraphBudget;
use crate::settings::Settings;
use std::collections::HashMap;
use std::rc::Rc;

/// The Graph clients of a daemon's tenants. A tenant whose credential is refused shows once in
/// readiness as `tenant:{name}` (and on each of its mailboxes). Not `Send` (awc): one per arbiter.
pub(crate) struct GraphTenants {
    /// Mailbox (lower case) → its tenant's client.
    by_mailbox: HashMap<String, Rc<GraphClient>>,
    /// The client when there is one tenant: it serves any mailbox (entries of a mailbox
    /// removed from the settings since they were queued still get their follow-up).
    only: Option<Rc<GraphClient>>,
}

impl GraphTenants {
    /// A client per tenant of `settings`; `None` when no tenant has a mailbox. `consumer`
    /// names this daemon in the `User-Agent`.
    pub(crate) fn new(
        settings: &Settings,
        budget: &GraphBudget,
        health: &Health,
        consumer: &str,
    ) -> Option<Self> {
        let g = &settings.graph;
        let tenants = g.tenants();
        let mut by_mailbox = HashMap::new();
        let mut clients = Vec::new();
        for tenant in &tenants {
            crate::metrics::register_graph_tenant(&tenant.name);
            let client = Rc::new(
                GraphClient::new(
                    &tenant.base_url(),
                    Rc::new(
                        super::oauth::graph_tokens(tenant, g.request_timeout())
                            .with_owner(format!("graph:{}", tenant.name)),
                    ),
                    budget.clone(),
                    g.request_timeout(),
                    g.max_concurrent_per_mailbox,
                )
                .with_tenant(&tenant.name, tenant.app())
                .with_health(health.clone())
                .with_attachments(g.fetch_attachments)
                .with_agent(user_agent(consumer)),
            );
            for mailbox in &tenant.mailboxes {
                by_mailbox.insert(mailbox.to_lowercase(), client.clone());
            }
            clients.push(client);
        }
        let only = (clients.len() == 1).then(|| clients[0].clone());
        (!clients.is_empty()).then_some(Self { by_mailbox, only })
    }

    /// The client of `mailbox`'s tenant. A mailbox in no tenant (removed from the settings
    /// since its entries were queued) is a refusal when there are several: which tenant's
    /// credential would read it cannot be known.
    pub(crate) fn of(&self, mailbox: &str) -> Result<&Rc<GraphClient>, GraphError> {
        if let Some(c) = self.by_mailbox.get(&mailbox.to_lowercase()) {
            return Ok(c);
        }
        self.only.as_ref().ok_or_else(|| GraphError::Rejected {
            status: 0,
            body: format!("{mailbox} is a mailbox of no tenant in graph.tenants"),
        })
    }
}
