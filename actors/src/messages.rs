//! Messages more than one stage speaks: what the session tells the intake, and the poll trigger
//! that webhooks, operators and the session send to every source. Each actor's own messages stay
//! beside it.

use actix::Message;
use std::time::Duration;

/// What the intake (pollers, webhooks) should do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intake {
    pub active: bool,
    /// Poll every `interval` (scheduled) or only when triggered (manual).
    pub scheduled: bool,
    pub interval: Duration,
    pub webhook: bool,
}

impl Intake {
    pub fn closed() -> Self {
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
pub struct TriggerPoll;
