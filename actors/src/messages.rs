//! Messages more than one stage speaks: what the session tells the intake, the poll trigger
//! that webhooks, operators and the session send to every source, and Graph's rate budget as
//! the Graph client asks the RateLimiter for it. Each actor's own messages stay beside it.

use actix::{Message, Recipient};
use std::time::Duration;

/// What the intake (pollers, webhooks) should do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Intake {
    pub active: bool,
    /// Poll every `interval` (scheduled) or only when triggered (manual).
    pub scheduled: bool,
    pub interval: Duration,
    pub webhook: bool,
}

impl Intake {
    pub(crate) fn closed() -> Self {
        Self {
            active: false,
            scheduled: false,
            interval: Duration::from_secs(3_600),
            webhook: false,
        }
    }
}

/// Poll now (a webhook said mail was missed, an operator asked, a subscription came back).
#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct TriggerPoll;

/// Ask for one Graph permit of a mailbox, standing for `cost` requests (a `$batch` of 20
/// stands for 20); resolves when granted. The permit frees its slot when dropped.
#[derive(Message)]
#[rtype(result = "Result<GraphPermit, BudgetUnavailable>")]
pub(crate) struct AcquireGraph {
    pub mailbox: String,
    /// The app registration (client id) whose per-app budget the request also draws on.
    pub app: std::sync::Arc<str>,
    pub cost: u32,
}

/// A Graph throttling answer: pause every caller of that mailbox, on every daemon.
#[derive(Message)]
#[rtype(result = "Result<(), BudgetUnavailable>")]
pub(crate) struct PauseGraph {
    pub mailbox: String,
    pub delay: Duration,
}

#[derive(Message)]
#[rtype(result = "()")]
pub(crate) struct ReleaseGraph {
    pub(crate) mailbox: String,
    pub(crate) id: String,
}

/// A held Graph permit; dropping it frees the mailbox's concurrency slot.
pub(crate) struct GraphPermit {
    pub(crate) release: Recipient<ReleaseGraph>,
    pub(crate) mailbox: String,
    pub(crate) id: String,
}

impl Drop for GraphPermit {
    fn drop(&mut self) {
        self.release.do_send(ReleaseGraph {
            mailbox: std::mem::take(&mut self.mailbox),
            id: std::mem::take(&mut self.id),
        });
    }
}

/// Graph's shared budgets, as the Graph client reaches them (the RateLimiter answers).
#[derive(Clone)]
pub(crate) struct GraphBudget {
    pub acquire: Recipient<AcquireGraph>,
    pub pause: Recipient<PauseGraph>,
}

/// The shared budget could not be read or written (Redis is down): a transient failure.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct BudgetUnavailable(pub String);
