//! The Graph poller actor: one per Graph mailbox, feeding the inbound stream.
//!
//! - **Exactly one poller per mailbox** across daemons: a Redis lease (`lease:poller:{mailbox}`,
//!   `graph.lease_ttl_s`) renewed before every page. The lease token fences the writes: a
//!   poller that lost its lease cannot write a page.
//! - **Delta mode** (default): a full sync follows `@odata.nextLink`s; its last page carries
//!   the `@odata.deltaLink`, the cursor of the next poll, which returns only what changed
//!   (`@removed` items are ignored). Each page's XADDs and its cursor are written in one atomic
//!   step, and the next page is read while it is: a crash re-fetches at most the pages in
//!   flight (the one being written and the one read meanwhile), neither of them queued twice.
//!   A 410 Gone (expired cursor) restarts the full sync; intake marks (`queued:{key}`) and the
//!   processor's idempotency marks keep MS4 free of repeats.
//! - **Unread mode**: the seed's `isRead eq false` listing; delivered messages are marked read
//!   by the [after-delivery worker](crate::after_delivery) only after MS4 accepted them. A
//!   poll lists only the messages received since the last complete listing (less an overlap),
//!   with a listing of the whole folder every `graph.unread_sweep_s` ([`UnreadListing`]): a
//!   poll costs what is new, not what stays unread.
//! - Polls every `graph.poll_interval_s` and at once on [`TriggerPoll`]; waits while the
//!   backlog is above `pipeline.max_backlog`; transient Graph failures back off and retry.

use crate::clients::graph::{Admitted, GraphClient, GraphError, Page};
use crate::clients::graph_tenants::GraphTenants;

use super::schedule::{Polled, Poller, PollerContext, Retry, Source};
use super::unread_listing::UnreadListing;
use super::wait_for_backlog;
use crate::settings::{GraphMode, Settings};
use crate::shutdown::Shutdown;
use crate::store::lease::LeaseLost;
use crate::store::poll::{PolledMessage, PolledPage};
use crate::store::{Store, StoreError};
use crate::{health::Health, metrics as m};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

/// The poller of one Graph mailbox.
pub(crate) type GraphPoller = Poller<PollLoop>;

/// The poller of `mailbox`, reading through its tenant's client.
pub(crate) fn poller(
    mailbox: String,
    settings: Arc<Settings>,
    graph: Rc<GraphTenants>,
    ctx: &PollerContext,
) -> GraphPoller {
    let g = &settings.graph;
    let (ttl, retry) = (Duration::from_secs(g.lease_ttl_s), g.retry());
    let (store, health, shutdown) = (ctx.store.clone(), ctx.health.clone(), ctx.shutdown.clone());
    let name = mailbox.clone();
    Poller::new(mailbox.clone(), mailbox, ttl, retry, ctx, move |token| {
        Ok(PollLoop {
            mailbox: name.clone(),
            settings: settings.clone(),
            store: store.clone(),
            graph: graph.of(&name).map_err(|e| e.to_string())?.clone(),
            health: health.clone(),
            shutdown: shutdown.clone(),
            token: token.to_string(),
        })
    })
}

/// One mailbox as a [`Source`].
pub(crate) struct PollLoop {
    mailbox: String,
    settings: Arc<Settings>,
    store: Store,
    graph: Rc<GraphClient>,
    health: Health,
    shutdown: Shutdown,
    token: String,
}

/// How one poll ended, when it did not fail.
enum PollEnd {
    Done { added: u64 },
    LeaseLost,
}

impl Source for PollLoop {
    const NAME: &'static str = "poller";

    fn span(mailbox: &str) -> tracing::Span {
        tracing::info_span!("poller", mailbox = %mailbox)
    }

    fn health_key(mailbox: &str) -> String {
        mailbox.to_string()
    }

    async fn poll(&mut self) -> Result<Polled, StoreError> {
        let error = match self.poll_once().await {
            Ok(PollEnd::Done { added }) => {
                self.health
                    .set_source_error(&Self::health_key(&self.mailbox), None);
                return Ok(Polled::Done { added });
            }
            Ok(PollEnd::LeaseLost) => return Ok(Polled::LeaseLost),
            Err(PollError::Store(e)) => return Err(e),
            Err(PollError::Graph(e)) => e,
        };
        let retry = match error {
            GraphError::SyncStateGone => {
                tracing::warn!(
                    "delta cursor expired (410): starting a full resync; idempotency drops repeats"
                );
                self.reset_cursor().await?;
                Retry::Now
            }
            GraphError::Throttled(d) => Retry::After(d),
            ref e if e.is_transient() => Retry::Backoff,
            ref e => {
                self.health
                    .set_source_error(&Self::health_key(&self.mailbox), Some(e.to_string()));
                Retry::Schedule
            }
        };
        Ok(Polled::Failed {
            error: error.to_string(),
            retry,
        })
    }
}

impl PollLoop {
    async fn reset_cursor(&self) -> Result<(), StoreError> {
        let page = PolledPage {
            mailbox: &self.mailbox,
            next: None,
            phase: "",
            ..Default::default()
        };
        let _ = self
            .store
            .write_page(&page, &self.token, crate::clock::now_ms(), 1)
            .await?;
        Ok(())
    }

    /// Reads pages until the mailbox is caught up, writing each page with its cursor.
    ///
    /// While a page is written, the next one is read (its link is on the page): the write's
    /// script holds Redis for milliseconds, and the read is Graph's and the parser's time, so
    /// neither waits for the other. A page read ahead is written only after the page before
    /// it, with its own cursor: a crash at any instant re-reads it from the cursor, as when
    /// it was read after the write, and leaves at most the page being written to repeat.
    async fn poll_once(&self) -> Result<PollEnd, PollError> {
        let g = &self.settings.graph;
        let mut listing = None;
        let mut url = match g.mode {
            GraphMode::Delta => self
                .store
                .cursor(&self.mailbox)
                .await?
                .link
                .unwrap_or_else(|| self.graph.delta_url(&self.mailbox, &g.folder)),
            GraphMode::Unread => {
                let mark = self.store.unread_mark(&self.mailbox).await?;
                let l = UnreadListing::plan(&mark, now_ms(), g.unread_overlap_s, g.unread_sweep_s);
                tracing::debug!(sweep = l.is_sweep(), since_ms = ?l.since_ms, "unread listing");
                let url = self
                    .graph
                    .unread_url(&self.mailbox, &g.folder, g.page_size, l.since_ms);
                listing = Some(l);
                url
            }
        };
        let mut added = 0;
        // The next page, read while the one before it was written.
        let mut ahead: Option<Result<Read, PollError>> = None;
        loop {
            let Read { page, next } = match ahead.take() {
                Some(read) => read?,
                None => match self.ready_to_read().await? {
                    Ready::Read => {
                        let page = self.graph.page(&self.mailbox, &url, g.page_size).await?;
                        let next = self.admission_after(&page).await?;
                        Read { page, next }
                    }
                    Ready::LeaseLost => return Ok(PollEnd::LeaseLost),
                    Ready::Draining => return Ok(PollEnd::Done { added }),
                },
            };
            let mut polled = self.polled(&page);
            if let Some(l) = listing.as_mut() {
                l.saw(&page);
                if page.next_link.is_none() {
                    // The listing is complete once this page is written: its mark goes with it.
                    polled.unread_mark = Some(l.mark_after(now_ms()));
                }
            }
            let written = match (next, page.next_link.as_deref()) {
                (Some(admitted), Some(link)) => {
                    let read = self.read_ahead(admitted, link);
                    let (written, read) = tokio::join!(self.write(&polled), read);
                    ahead = Some(read);
                    written?
                }
                _ => self.write(&polled).await?,
            };
            match written {
                Ok(n) => {
                    added += n;
                    metrics::counter!(m::POLLED, "mode" => mode_name(g.mode)).increment(n);
                }
                Err(_) => return Ok(PollEnd::LeaseLost),
            }
            match page.next_link {
                Some(n) => url = n,
                None => return Ok(PollEnd::Done { added }),
            }
        }
    }

    /// Before a page is read without an admission taken ahead: waits while the backlog is
    /// above `pipeline.max_backlog`, and renews the lease.
    async fn ready_to_read(&self) -> Result<Ready, StoreError> {
        let ttl = Duration::from_secs(self.settings.graph.lease_ttl_s);
        let lease = (self.mailbox.as_str(), self.token.as_str(), ttl);
        if !wait_for_backlog(&self.store, &self.settings, &self.shutdown, lease).await? {
            return Ok(Ready::LeaseLost);
        }
        if self.shutdown.is_raised() {
            return Ok(Ready::Draining);
        }
        if !self
            .store
            .hold_lease(&self.mailbox, &self.token, ttl)
            .await?
        {
            return Ok(Ready::LeaseLost);
        }
        Ok(Ready::Read)
    }

    /// Reads the page at `link`, then takes the admission of the read after it. That
    /// admission reaches Redis while the page before is still being written, so it is
    /// granted as soon as that write ends instead of being asked for after it.
    async fn read_ahead(&self, admitted: Admitted, link: &str) -> Result<Read, PollError> {
        let g = &self.settings.graph;
        let page = self
            .graph
            .page_admitted(admitted, &self.mailbox, link, g.page_size)
            .await?;
        let next = self.admission_after(&page).await?;
        Ok(Read { page, next })
    }

    /// The admission of the read after `page`, when there is one and nothing stands against
    /// it now: not draining, the backlog within `pipeline.max_backlog`, the lease renewed,
    /// and a permit of Graph's budget granted within [`AHEAD_WAIT`] (the page in hand is not
    /// held back longer). `None` otherwise: the next page is then read after this one is
    /// written, once [`ready_to_read`](Self::ready_to_read) says so.
    async fn admission_after(&self, page: &Page) -> Result<Option<Admitted>, StoreError> {
        if page.next_link.is_none() || self.shutdown.is_raised() {
            return Ok(None);
        }
        let ttl = Duration::from_secs(self.settings.graph.lease_ttl_s);
        let (backlog, held, admitted) = tokio::join!(
            self.store.backlog(self.settings.ms4.batch_size),
            self.store.hold_lease(&self.mailbox, &self.token, ttl),
            tokio::time::timeout(AHEAD_WAIT, self.graph.admit(&self.mailbox, 1)),
        );
        // Neither the page in hand nor the one being written may be in the streams yet: both
        // count already (the one being written as a full page), so a poller never takes the
        // backlog more than one page past the limit, as without reading ahead.
        let in_hand = page.items.len() as u64 + u64::from(self.settings.graph.page_size);
        if backlog? + in_hand > self.settings.pipeline.max_backlog || !held? {
            // Dropped unused: its slot is given back (its window entry stays, on the safe
            // side of Graph's limit).
            return Ok(None);
        }
        Ok(admitted.ok().and_then(Result::ok))
    }

    /// A page as the store writes it: its new messages and the cursor after it.
    fn polled<'a>(&'a self, page: &'a Page) -> PolledPage<'a> {
        let mode = self.settings.graph.mode;
        let (next, phase) = match (&page.next_link, &page.delta_link, mode) {
            (Some(n), _, GraphMode::Delta) => (Some(n.as_str()), "sync"),
            (None, Some(d), GraphMode::Delta) => (Some(d.as_str()), "delta"),
            // Unread mode keeps no cursor: the unread flag is the state.
            _ => (None, ""),
        };
        PolledPage {
            mailbox: &self.mailbox,
            messages: messages_of(page, &self.mailbox),
            next,
            phase,
            mark_read: mode == GraphMode::Unread,
            unread_mark: None,
        }
    }

    /// Writes a page with its cursor, fenced by the lease.
    async fn write(&self, page: &PolledPage<'_>) -> Result<Result<u64, LeaseLost>, StoreError> {
        self.store
            .write_page(
                page,
                &self.token,
                crate::clock::now_ms(),
                self.settings.redis.idempotency_ttl_s,
            )
            .await
    }
}

/// The daemon's clock in ms, as the unread listings' marks hold it.
fn now_ms() -> i64 {
    i64::try_from(crate::clock::now_ms()).unwrap_or(i64::MAX)
}

/// Longest a read ahead waits for its Graph permit (asked for while a page is being written,
/// it waits for that write in Redis first) before the page in hand is written without it: the
/// budget has no room now, and the next read waits for it after the write instead.
const AHEAD_WAIT: Duration = Duration::from_millis(100);

/// A page read, and the admission of the read after it when one was taken.
struct Read {
    page: Page,
    next: Option<Admitted>,
}

/// Whether the next page may be read.
enum Ready {
    Read,
    LeaseLost,
    Draining,
}

fn mode_name(mode: GraphMode) -> &'static str {
    match mode {
        GraphMode::Delta => "delta",
        GraphMode::Unread => "unread",
    }
}

/// The page's new messages with their idempotency keys and content digests (as the transform
/// computes them).
fn messages_of<'a>(page: &'a Page, mailbox: &str) -> Vec<PolledMessage<'a>> {
    page.items
        .iter()
        .filter(|i| !i.removed && !i.id.is_empty())
        .map(|i| PolledMessage {
            key: crate::model::graph_key(i.internet_message_id.as_deref(), mailbox, &i.id),
            digest: i.content_digest.clone(),
            id: &i.id,
            json: &i.raw,
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
enum PollError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Graph(#[from] GraphError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clients::graph::parse_page;

    #[test]
    fn removed_items_are_skipped_and_keys_match_the_transform() {
        let page = parse_page(
            br#"{"value":[
                {"id":"A1","internetMessageId":"<a@x>"},
                {"id":"A2"},
                {"id":"A3","@removed":{"reason":"deleted"}}]}"#,
        )
        .unwrap();
        let msgs = messages_of(&page, "mb@x.example");
        let keys: Vec<&str> = msgs.iter().map(|m| m.key.as_str()).collect();
        assert_eq!(keys, vec!["<a@x>", "graph:mb@x.example:A2"]);
    }

    #[test]
    fn intake_marks_and_records_use_one_key_and_one_digest() {
        // Padded Message-IDs, none, and one with a sender: the poller's intake mark and the
        // processor's record must agree, or intake and idempotency marks name different keys.
        let page = parse_page(
            br#"{"value":[
                {"id":"A1","internetMessageId":"  <a@x> ","from":{"emailAddress":{"address":"s@x"}},
                 "subject":"Invoice 1","sentDateTime":"2026-11-01T00:00:00Z",
                 "receivedDateTime":"2026-11-01T00:00:05Z"},
                {"id":"A2","from":{"emailAddress":{"address":"s@x"}},
                 "receivedDateTime":"2026-11-01T00:00:05Z"}]}"#,
        )
        .unwrap();
        for m in messages_of(&page, "mb@x.example") {
            let record =
                crate::model::graph_to_record("mb@x.example", m.json, None, Default::default())
                    .unwrap();
            assert_eq!(m.key, record.idempotency_key);
            assert_eq!(m.digest, record.content_digest);
        }
    }
}
