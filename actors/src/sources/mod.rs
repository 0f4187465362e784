//! Sources: where mail enters. Each writes what it found into the inbound stream in one atomic
//! step with its cursor, fenced by a per-source lease, so a crash re-reads at most one page.
//!
//! - [`graph`]: the Graph poller, one per mailbox (delta sync or the unread listing, whose
//!   window [`unread_listing`] plans).
//! - [`webhook`]: Graph change notifications, turned into fetches (and polls when one is missed).
//! - [`fleet`]: which daemon of a fleet polls which source (heartbeats, rendezvous hashing).
//! - [`imap`]: the IMAP poller, one per `[[imap.sources]]` entry (UID FETCH in chunks, IDLE).
//!
//! Every source pauses while the pipeline holds more than `pipeline.max_backlog` entries.

pub(crate) mod fleet;
pub(crate) mod graph;
pub(crate) mod imap;
mod schedule;
mod unread_listing;

pub(crate) use schedule::{stagger, PollerContext};
pub mod webhook;

use crate::settings::Settings;
use crate::shutdown::Shutdown;
use crate::store::{Store, StoreError};
use std::time::Duration;

/// A poller's lease while it waits: `(name in lease keys, token, ttl)`.
pub(crate) type HeldLease<'a> = (&'a str, &'a str, Duration);

/// Backpressure for every poller: no fetching while the pipeline holds more than
/// `pipeline.max_backlog` ([`Store::backlog`]: inbound entries and outbound records). The lease is renewed while waiting (a
/// paused mailbox stays with its poller); returns false when it was lost meanwhile.
pub(crate) async fn wait_for_backlog(
    store: &Store,
    settings: &Settings,
    shutdown: &Shutdown,
    lease: HeldLease<'_>,
) -> Result<bool, StoreError> {
    let max = settings.pipeline.max_backlog;
    let mut logged = false;
    loop {
        let backlog = store.backlog(settings.ms4.batch_size).await?;
        if backlog <= max || shutdown.is_raised() {
            return Ok(true);
        }
        if !store.hold_lease(lease.0, lease.1, lease.2).await? {
            return Ok(false);
        }
        if !logged {
            tracing::info!(
                backlog,
                max,
                "backlog above pipeline.max_backlog: polling paused"
            );
            logged = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
