//! The IMAP Poller actor: one per `[[imap.sources]]` entry, feeding the inbound stream.
//!
//! - **Exactly one poller per source** across daemons: a Redis lease
//!   (`lease:poller:imap:{name}`, `imap.lease_ttl_s`) renewed while it works or idles; its
//!   token fences every write.
//! - **Incremental by UID.** The cursor (`cursor:imap:{name}`: UIDVALIDITY and the last UID
//!   queued) is written in the same atomic step as the chunk's XADDs. A poll SELECTs the folder
//!   and fetches only UIDs above the cursor and below UIDNEXT, so an idle poll fetches nothing,
//!   and a server that answers `UID n:*` with the last message cannot make it come twice.
//! - **UIDVALIDITY changed**: the stored UIDs are void; the folder is read again from the
//!   start. Idempotency by Message-ID (or content hash) keeps MS4 free of repeats.
//! - **Chunks**: at most `imap.fetch_chunk` messages and `imap.fetch_max_bytes` per FETCH
//!   (sizes are asked first), so a 100,000-message folder never loads at once. The next chunk
//!   is fetched while the previous one is written, on a Redis connection of the poller's own
//!   (`store/imap.rs`); the write renews the lease and reads the backlog that decides whether
//!   the chunk after may be fetched (`pipeline.max_backlog`).
//! - **Oversized messages**: a message above `imap.max_message_bytes` (by its RFC822.SIZE) is
//!   never fetched whole: its header (at most [`HEADER_MAX_BYTES`]) and BODYSTRUCTURE are, and
//!   it is queued flagged, to become a record without body or a dead letter
//!   (`imap.oversize`). The cursor moves past it like past any other message.
//! - **Push**: IDLE (RFC 2177) when the server offers it, re-issued every `imap.idle_renew_s`
//!   (under the 29-minute limit); otherwise, and as a safety net, polls every
//!   `poll_interval_s` while the session polls on a schedule.
//! - **Failures**: a refused login or token marks the source degraded in readiness (other
//!   sources keep flowing) and is retried at the poll interval; a lost connection reconnects
//!   with backoff. A Redis failure stops the loop for the supervisor.

use super::schedule::{Polled, Poller, PollerContext, Retry, Source, Wait, Waited};
use crate::clients::imap::{Connector, Fetched, ImapError, ImapFolder, Part, Woken};
use crate::messages::Intake;
use crate::model::mime::has_header_date;
use crate::settings::{ImapSource, Settings};
use crate::shutdown::Shutdown;
use crate::store::imap::{lease_name, ChunkLink, FetchedChunk, FetchedMail, Omitted};
use crate::store::{Store, StoreError};
use crate::{health::Health, metrics as m};
use base64::Engine;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The poller of one IMAP source.
pub(crate) type ImapPoller = Poller<ImapLoop>;

/// The poller of `source`.
pub(crate) fn poller(
    source: ImapSource,
    settings: Arc<Settings>,
    ctx: &PollerContext,
) -> ImapPoller {
    let imap = &settings.imap;
    let (ttl, retry) = (Duration::from_secs(imap.lease_ttl_s), imap.retry());
    let (store, health, shutdown) = (ctx.store.clone(), ctx.health.clone(), ctx.shutdown.clone());
    let (name, lease) = (source.name.clone(), lease_name(&source.name));
    Poller::new(name, lease, ttl, retry, ctx, move |token| {
        // Its own connection: a poll's lease renewals and backlog checks do not wait behind
        // the pipeline's long commands on the shared one.
        let store = store
            .own_connection()
            .map_err(|e| format!("IMAP source `{}`: {e}", source.name))?;
        let connector = Connector::new(&source, settings.imap.timeout())
            .map_err(|e| format!("IMAP source `{}`: {e}", source.name))?;
        Ok(ImapLoop {
            source: source.clone(),
            settings: settings.clone(),
            store,
            health: health.clone(),
            shutdown: shutdown.clone(),
            token: token.to_string(),
            lease: lease_name(&source.name),
            connector,
            conn: None,
            link: None,
            idle_refused: false,
        })
    })
}

/// The key of an IMAP source in readiness' `degraded_sources`.
pub(crate) fn health_key(source: &str) -> String {
    format!("imap:{source}")
}

/// One IMAP folder as a [`Source`].
pub(crate) struct ImapLoop {
    source: ImapSource,
    settings: Arc<Settings>,
    store: Store,
    health: Health,
    shutdown: Shutdown,
    token: String,
    /// The source's name in lease and cursor keys.
    lease: String,
    connector: Connector,
    /// The open session, when there is one.
    conn: Option<ImapFolder>,
    /// Where chunks are written (kept between polls; dropped after an error).
    link: Option<ChunkLink>,
    /// The server refused IDLE once: poll on schedule only.
    idle_refused: bool,
}

/// Why a poll stopped early.
#[derive(Debug, thiserror::Error)]
enum PollError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Imap(#[from] ImapError),
    #[error("lost the lease")]
    LeaseLost,
}

/// How a wait in IDLE ended.
enum IdleEnd {
    /// The server reported a change (EXISTS, EXPUNGE, …): poll now.
    Changed,
    /// `idle_renew_s` (or the next scheduled poll) came.
    Timeout,
    Triggered,
    IntakeChanged,
    Shutdown,
    LeaseLost,
    /// The server refused to start IDLE: poll on schedule instead.
    Refused(ImapError),
    Failed(ImapError),
}

impl Source for ImapLoop {
    const NAME: &'static str = "imap_poller";

    fn span(source: &str) -> tracing::Span {
        tracing::info_span!("imap_poller", source = %source)
    }

    fn health_key(source: &str) -> String {
        health_key(source)
    }

    async fn poll(&mut self) -> Result<Polled, StoreError> {
        let health_key = health_key(&self.source.name);
        let e = match self.poll().await {
            Ok(added) => {
                self.health.set_source_error(&health_key, None);
                return Ok(Polled::Done { added });
            }
            Err(PollError::Store(e)) => return Err(e),
            Err(PollError::LeaseLost) => return Ok(Polled::LeaseLost),
            Err(PollError::Imap(e)) => e,
        };
        self.conn = None;
        metrics::counter!(m::IMAP_ERRORS, "source" => self.source.name.clone(), "kind" => e.kind())
            .increment(1);
        self.health
            .set_source_error(&health_key, Some(e.to_string()));
        let retry = if e.is_permanent() {
            // Credentials, TLS, a missing folder: again at the poll interval.
            Retry::Refused(Duration::from_secs(self.source.poll_interval_s))
        } else {
            Retry::Backoff
        };
        Ok(Polled::Failed {
            error: e.to_string(),
            retry,
        })
    }

    async fn wait(&mut self, wait: &mut Wait<'_>) -> Result<Waited, StoreError> {
        // New mail the server announced during the last poll (inside a FETCH answer) or in the
        // answer to DONE is not announced again: IDLE would sit on it until the next scheduled
        // poll. Poll now.
        if wait.holding && self.conn.as_mut().is_some_and(|f| f.announced_mail()) {
            tracing::debug!("the server announced new mail during the last command: polling again");
            return Ok(Waited::Poll);
        }
        let can_idle = wait.holding
            && self.source.idle
            && !self.idle_refused
            && self.conn.as_ref().is_some_and(|f| f.caps().idle);
        if !can_idle {
            return Ok(wait.sleep().await);
        }
        // IDLE until the next poll, at most `idle_renew_s` (the lease is renewed meanwhile).
        let renew = Duration::from_secs(self.settings.imap.idle_renew_s);
        let until = wait.next_poll.map_or(renew, |t| {
            t.saturating_duration_since(Instant::now()).min(renew)
        });
        Ok(match self.idle(until, wait).await? {
            IdleEnd::Changed | IdleEnd::Triggered => Waited::Poll,
            IdleEnd::Timeout => Waited::Timer,
            IdleEnd::IntakeChanged => Waited::Again,
            IdleEnd::Shutdown => Waited::Shutdown,
            IdleEnd::LeaseLost => Waited::LeaseLost,
            IdleEnd::Refused(e) => {
                tracing::warn!(error = %e, "the server refuses IDLE: polling every poll_interval_s instead");
                self.idle_refused = true;
                Waited::Poll
            }
            IdleEnd::Failed(e) => {
                // Reconnect and poll after a backoff (a server that refuses IDLE at once must
                // not turn this into a reconnect loop).
                tracing::info!(error = %e, "IDLE ended by the server; reconnecting");
                Waited::Failed
            }
        })
    }

    async fn let_go(&mut self) {
        self.disconnect().await;
    }

    fn interval(&self, _intake: &Intake) -> Duration {
        Duration::from_secs(self.source.poll_interval_s)
    }
}

impl ImapLoop {
    fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.settings.imap.lease_ttl_s)
    }

    /// Logs out politely (bounded), dropping the connection.
    async fn disconnect(&mut self) {
        if let Some(folder) = self.conn.take() {
            folder.logout().await;
        }
    }

    /// The open session (connected by [`poll_once`](Self::poll_once)).
    fn folder(&mut self) -> &mut ImapFolder {
        self.conn.as_mut().expect("connected")
    }

    /// One poll; a reused connection that turns out dead is replaced once at once.
    async fn poll(&mut self) -> Result<u64, PollError> {
        let reused = self.conn.is_some();
        match self.poll_once().await {
            Err(PollError::Imap(e)) if reused && !e.is_permanent() => {
                tracing::debug!(error = %e, "connection went stale; reconnecting");
                self.conn = None;
                self.poll_once().await
            }
            other => other,
        }
    }

    /// Fetches everything new in the folder, chunk by chunk, each written with its cursor.
    async fn poll_once(&mut self) -> Result<u64, PollError> {
        if self.conn.is_none() {
            let folder = self.connector.connect().await?;
            let caps = folder.caps();
            tracing::info!(idle = caps.idle, r#move = caps.mv, "connected");
            self.conn = Some(folder);
        }
        let name = self.source.name.clone();
        let selected = self.folder().select().await?;
        let uidvalidity = selected.uid_validity;
        let last = match self.store.uid_cursor(&name).await? {
            Some(c) if c.uidvalidity == uidvalidity => c.last_uid,
            Some(c) => {
                tracing::warn!(
                    old = c.uidvalidity,
                    new = uidvalidity,
                    "UIDVALIDITY changed: the stored UIDs are void; reading the folder again from the start (idempotency drops repeats)"
                );
                metrics::counter!(m::IMAP_RESYNCS, "source" => name.clone()).increment(1);
                0
            }
            None => 0,
        };
        let top = match selected.uid_next {
            Some(next) => next.saturating_sub(1),
            // Without UIDNEXT: the highest UID above the cursor.
            None => {
                let above = self.folder().uids_above(last).await?;
                above.last().copied().unwrap_or(last)
            }
        };
        let link = match self.link.take() {
            Some(link) => link,
            None => self.store.chunk_link().await?,
        };
        let mut writer = ChunkWriter {
            store: self.store.clone(),
            link,
            token: self.token.clone(),
            lease: self.lease.clone(),
            lease_ttl: self.lease_ttl(),
            source: name.clone(),
            uidvalidity,
            // Delivered or dead-lettered, the message may have an end in its folder.
            after_delivery: self.source.has_follow_ups(),
            backlog: None,
            batch_size: self.settings.ms4.batch_size,
        };
        // Each step fetches the next batch from the server while the previous one is written
        // to Redis (one of each at a time: what the memory bound counts). The cursor only ever
        // moves by a write, in UID order, so a crash anywhere re-reads at most these two.
        let mut plan = Plan {
            batches: VecDeque::new(),
            through: last,
            top,
        };
        let mut added = 0;
        let mut unwritten: Option<(Vec<FetchedMail>, u32)> = None;
        loop {
            let backlog = writer.backlog.take();
            let (fetched, written) = tokio::join!(
                self.fetch_next(&mut plan, backlog),
                writer.hold_and_write(unwritten.take())
            );
            added += written?;
            match fetched? {
                Some(chunk) => unwritten = Some(chunk),
                None => break,
            }
        }
        self.link = Some(writer.link);
        Ok(added)
    }

    /// Fetches the next batch of `plan` with the cursor to write after it; `None` once the plan
    /// is done (or the daemon drains). Before each `fetch_chunk` UIDs it waits while the
    /// pipeline's backlog is above `pipeline.max_backlog` (unless the last write saw it below:
    /// `backlog`), then asks their sizes.
    async fn fetch_next(
        &mut self,
        plan: &mut Plan,
        backlog: Option<u64>,
    ) -> Result<Option<(Vec<FetchedMail>, u32)>, PollError> {
        if plan.batches.is_empty() {
            if plan.through >= plan.top {
                return Ok(None);
            }
            let max = self.settings.pipeline.max_backlog;
            if backlog.is_none_or(|b| b > max) {
                let lease = (self.lease.as_str(), self.token.as_str(), self.lease_ttl());
                if !super::wait_for_backlog(&self.store, &self.settings, &self.shutdown, lease)
                    .await?
                {
                    return Err(PollError::LeaseLost);
                }
            }
            if self.shutdown.is_raised() {
                return Ok(None);
            }
            let lo = plan.through + 1;
            let hi = plan.through.saturating_add(self.settings.imap.fetch_chunk);
            let hi = hi.min(plan.top);
            plan.batches.extend(self.plan_fetches(lo, hi).await?);
            plan.through = hi;
        }
        let Some((batch, batch_last)) = plan.batches.pop_front() else {
            return Ok(None);
        };
        let limit = self.settings.imap.max_message_bytes;
        let mails = fetch_batch(self.folder(), &batch, limit).await?;
        Ok(Some((mails, batch_last)))
    }

    /// Splits the UIDs `lo..=hi` into FETCHes of at most `fetch_max_bytes` each (one message
    /// bigger than that goes alone; one above `max_message_bytes` is fetched as its header).
    /// Each batch carries the cursor to write after it: the last batch moves it to `hi`, so
    /// gaps (expunged UIDs) are passed once.
    ///
    /// Sizes are asked only of the messages above the range's even share of `fetch_max_bytes`
    /// (one `SEARCH LARGER` finds them); every other UID counts as that share, which bounds it
    /// (a UID that does not exist counts too: the FETCH just gets nothing for it). Mail of a few
    /// KB thus costs one SEARCH a chunk instead of a size line a message.
    async fn plan_fetches(&mut self, lo: u32, hi: u32) -> Result<Vec<(Batch, u32)>, PollError> {
        let (max_bytes, max_message) = (
            self.settings.imap.fetch_max_bytes,
            self.settings.imap.max_message_bytes,
        );
        let share = even_share(max_bytes, max_message, hi - lo + 1);
        let large = self.folder().larger_than(lo, hi, u64::from(share)).await?;
        let exact = self.folder().sizes(&large).await?;
        Ok(batches(
            &bounded_sizes(lo, hi, share, &exact),
            max_bytes,
            max_message,
            hi,
        ))
    }

    /// Waits in IDLE until the server reports a change, `wait` passes, or something else needs
    /// the loop; renews the lease meanwhile.
    async fn idle(&mut self, until: Duration, w: &mut Wait<'_>) -> Result<IdleEnd, StoreError> {
        let Some(folder) = self.conn.take() else {
            return Ok(IdleEnd::Triggered);
        };
        let renew_every = self.lease_ttl() / 3;
        let stop = async {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(renew_every) => {
                        match self.store.hold_lease(&self.lease, &self.token, self.lease_ttl()).await {
                            // The schedule hands the source over at its next check.
                            Ok(true) if w.hand_over_due() => return Ok(IdleEnd::Timeout),
                            Ok(true) => {}
                            Ok(false) => return Ok(IdleEnd::LeaseLost),
                            Err(e) => return Err(e),
                        }
                    }
                    _ = w.wake.notified() => return Ok(IdleEnd::Triggered),
                    _ = w.intake.changed() => return Ok(IdleEnd::IntakeChanged),
                    _ = w.shutdown.raised() => return Ok(IdleEnd::Shutdown),
                }
            }
        };
        let idled = folder.idle(until, stop).await;
        self.conn = idled.folder;
        Ok(match idled.end {
            Ok(Woken::Changed) => IdleEnd::Changed,
            Ok(Woken::Timeout) => IdleEnd::Timeout,
            Ok(Woken::Stopped(end)) => end?,
            Err(e @ ImapError::Refused { .. }) => IdleEnd::Refused(e),
            Err(e) => IdleEnd::Failed(e),
        })
    }
}

/// The UIDs of one poll still to fetch: the batches planned, and the UIDs not planned yet
/// (`through + 1 ..= top`).
struct Plan {
    batches: VecDeque<(Batch, u32)>,
    through: u32,
    top: u32,
}

/// Writes fetched chunks of one poll (each with the cursor after it).
struct ChunkWriter {
    store: Store,
    link: ChunkLink,
    token: String,
    /// The source's name in lease keys, and the lease's TTL.
    lease: String,
    lease_ttl: Duration,
    /// The backlog the last write saw, if it read it.
    backlog: Option<u64>,
    /// Records an outbound entry counts for in the backlog (`ms4.batch_size`).
    batch_size: usize,
    source: String,
    uidvalidity: u32,
    after_delivery: bool,
}

impl ChunkWriter {
    /// Writes `(mails, cursor)`, renewing the lease with it, or only renews the lease (the
    /// first step of a poll); every step of a poll renews it. Returns the messages added.
    async fn hold_and_write(
        &mut self,
        chunk: Option<(Vec<FetchedMail>, u32)>,
    ) -> Result<u64, PollError> {
        let Some((mails, last_uid)) = chunk else {
            let held = (self.store)
                .hold_lease(&self.lease, &self.token, self.lease_ttl)
                .await?;
            return if held {
                Ok(0)
            } else {
                Err(PollError::LeaseLost)
            };
        };
        let chunk = FetchedChunk {
            source: &self.source,
            uidvalidity: self.uidvalidity,
            last_uid,
            after_delivery: self.after_delivery,
            mails,
        };
        let written = self
            .store
            .write_imap_chunk(
                &mut self.link,
                &chunk,
                &self.token,
                self.lease_ttl,
                crate::clock::now_ms(),
            )
            .await?
            .map_err(|_| PollError::LeaseLost)?;
        self.backlog = written.backlog.map(|(inbound, outbound)| {
            crate::store::streams::backlog_of(inbound, outbound, self.batch_size)
        });
        metrics::counter!(m::POLLED, "mode" => "imap").increment(written.added);
        Ok(written.added)
    }
}

/// Fetches one batch: its whole messages, then the headers and BODYSTRUCTUREs of its
/// oversized ones (above `limit`), in UID order.
async fn fetch_batch(
    folder: &mut ImapFolder,
    batch: &Batch,
    limit: u64,
) -> Result<Vec<FetchedMail>, ImapError> {
    // Whole messages come without their INTERNALDATE: only those without a Date header the
    // record can read need it, asked for afterwards.
    let mut undated = Vec::new();
    let mut mails = folder
        .fetch(&batch.whole, Part::Whole, |f| {
            if !has_header_date(f.bytes) {
                undated.push(f.uid);
            }
            Some(mail(f, None))
        })
        .await?;
    if !undated.is_empty() {
        for (uid, date) in folder.internal_dates(&undated).await? {
            if let Some(m) = mails.iter_mut().find(|m| m.uid == uid) {
                m.internal_date = date;
            }
        }
    }
    if !batch.headers.is_empty() {
        let uids: Vec<u32> = batch.headers.iter().map(|(u, _)| *u).collect();
        let part = Part::Header {
            max_bytes: HEADER_MAX_BYTES,
        };
        let headers = folder.fetch(&uids, part, |f| {
            let &(_, size) = batch.headers.iter().find(|(u, _)| *u == f.uid)?;
            tracing::warn!(
                uid = f.uid,
                size,
                limit,
                attachments = f.attachments.len(),
                "message above imap.max_message_bytes: queued without its body"
            );
            let omitted = Omitted {
                size: u64::from(size),
                limit,
                attachments: serde_json::to_string(&f.attachments)
                    .expect("attachment metadata serializes"),
            };
            Some(mail(f, Some(omitted)))
        });
        mails.extend(headers.await?);
        mails.sort_unstable_by_key(|m| m.uid);
    }
    Ok(mails)
}

/// A fetched message (or its header, when `omitted`) as it is queued: its own bytes when they
/// are UTF-8 (7-bit mail always is), else base64 (a stream field is read back as text). Base64
/// cost a third more bytes through Redis, an encode here and a decode in the processor (issue
/// 14: ~8 % of the IMAP intake's rate).
fn mail(f: Fetched<'_>, omitted: Option<Omitted>) -> FetchedMail {
    let (payload, plain) = match std::str::from_utf8(f.bytes) {
        Ok(text) => (text.to_string(), true),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(f.bytes),
            false,
        ),
    };
    FetchedMail {
        uid: f.uid,
        payload,
        plain,
        internal_date: f.internal_date,
        omitted,
    }
}

/// Most bytes of an oversized message's header that are fetched (headers of real mail are a
/// few KB; this bounds a hostile one).
pub(crate) const HEADER_MAX_BYTES: u64 = 64 * 1024;

/// One FETCH step of a poll.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Batch {
    /// UIDs fetched whole.
    whole: Vec<u32>,
    /// `(uid, size)` of messages above `max_message_bytes`: header and BODYSTRUCTURE only.
    headers: Vec<(u32, u32)>,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.whole.is_empty() && self.headers.is_empty()
    }

    fn last_uid(&self) -> u32 {
        let whole = self.whole.last().copied().unwrap_or(0);
        let headers = self.headers.last().map_or(0, |(u, _)| *u);
        whole.max(headers)
    }
}

/// The size every message of a range of `uids` UIDs may have for all of them to fit in one
/// FETCH of `max_bytes`, and at most `max_message_bytes` (a message within it is never
/// oversized).
fn even_share(max_bytes: u64, max_message_bytes: u64, uids: u32) -> u32 {
    let share = (max_bytes / u64::from(uids.max(1))).min(max_message_bytes);
    u32::try_from(share).unwrap_or(u32::MAX)
}

/// `(uid, size)` for every UID of `lo..=hi`: its size where `exact` (ascending) has it, else
/// `share`, the bound a SEARCH LARGER proved.
fn bounded_sizes(lo: u32, hi: u32, share: u32, exact: &[(u32, u32)]) -> Vec<(u32, u32)> {
    let mut exact = exact.iter().peekable();
    (lo..=hi)
        .map(|uid| {
            while exact.next_if(|(u, _)| *u < uid).is_some() {}
            match exact.next_if(|(u, _)| *u == uid) {
                Some(&(_, size)) => (uid, size),
                None => (uid, share),
            }
        })
        .collect()
}

/// Groups `(uid, size)` (sorted) into batches of at most `max_bytes` each (a message above
/// `max_message_bytes` counts as its header, [`HEADER_MAX_BYTES`]), with the cursor to write
/// after each: the last batch's cursor is `hi`.
fn batches(
    sizes: &[(u32, u32)],
    max_bytes: u64,
    max_message_bytes: u64,
    hi: u32,
) -> Vec<(Batch, u32)> {
    let mut out = Vec::new();
    let mut current = Batch::default();
    let mut bytes = 0u64;
    for &(uid, size) in sizes {
        let oversized = u64::from(size) > max_message_bytes;
        let weight = if oversized {
            HEADER_MAX_BYTES
        } else {
            u64::from(size)
        };
        if !current.is_empty() && bytes + weight > max_bytes {
            let last = current.last_uid();
            out.push((std::mem::take(&mut current), last));
            bytes = 0;
        }
        if oversized {
            current.headers.push((uid, size));
        } else {
            current.whole.push(uid);
        }
        bytes += weight;
    }
    if !current.is_empty() {
        out.push((current, hi));
    } else if let Some(last) = out.last_mut() {
        last.1 = hi;
    }
    if out.is_empty() {
        // Nothing in the range (all expunged): still move the cursor past it.
        out.push((Batch::default(), hi));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(uids: &[u32]) -> Batch {
        Batch {
            whole: uids.to_vec(),
            headers: vec![],
        }
    }

    #[test]
    fn a_message_is_queued_as_its_own_bytes_when_they_are_utf8_else_in_base64() {
        let fetched = |bytes| Fetched {
            uid: 7,
            internal_date: String::new(),
            bytes,
            attachments: vec![],
        };
        let utf8 = "Subject: café\r\n\r\nbody\r\n".as_bytes();
        let m = mail(fetched(utf8), None);
        assert!(m.plain);
        assert_eq!(m.payload.as_bytes(), utf8);
        let latin1 = b"Subject: caf\xe9\r\n\r\nbody\r\n";
        let m = mail(fetched(latin1), None);
        assert!(!m.plain);
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(&m.payload)
            .unwrap();
        assert_eq!(decoded, latin1);
    }

    #[test]
    fn uids_without_a_size_count_as_the_share_that_lets_them_all_fit_in_one_fetch() {
        let mb = 1u64 << 20;
        // 500 UIDs, 16 MiB: 33,554 bytes each; never above max_message_bytes.
        assert_eq!(even_share(16 * mb, 25 * mb, 500), 33_554);
        assert_eq!(even_share(16 * mb, 10_000, 500), 10_000);
        assert_eq!(even_share(100, 25 * mb, 500), 0);
        assert_eq!(even_share(u64::MAX, u64::MAX, 1), u32::MAX);
        let sizes = bounded_sizes(3, 8, 100, &[(4, 5_000), (7, 900)]);
        assert_eq!(
            sizes,
            vec![(3, 100), (4, 5_000), (5, 100), (6, 100), (7, 900), (8, 100)]
        );
        // All small: one FETCH of the whole range, which moves the cursor to its end.
        let share = even_share(16 * mb, 25 * mb, 500);
        let all = bounded_sizes(1, 500, share, &[]);
        let b = batches(&all, 16 * mb, 25 * mb, 500);
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].0.whole.len(), 500);
        assert_eq!(b[0].1, 500);
        // One large message among them is weighed at its size, an oversized one as its header.
        let b = batches(
            &bounded_sizes(1, 500, share, &[(10, 15 * mb as u32), (20, 30 * mb as u32)]),
            16 * mb,
            25 * mb,
            500,
        );
        let fetched: usize = b.iter().map(|(x, _)| x.whole.len() + x.headers.len()).sum();
        assert_eq!(fetched, 500);
        assert!(b
            .iter()
            .any(|(x, _)| x.headers == vec![(20, 30 * mb as u32)]));
        for (x, _) in &b {
            let bytes: u64 = x
                .whole
                .iter()
                .map(|u| if *u == 10 { 15 * mb } else { u64::from(share) })
                .sum::<u64>()
                + x.headers.len() as u64 * HEADER_MAX_BYTES;
            assert!(bytes <= 16 * mb, "{bytes}");
        }
    }

    #[test]
    fn fetches_are_bounded_in_bytes_and_the_last_one_moves_the_cursor_to_the_end() {
        let sizes = [(1, 400), (2, 400), (3, 400), (5, 2_000), (6, 10)];
        let b = batches(&sizes, 1_000, u64::MAX, 8);
        assert_eq!(
            b,
            vec![
                (whole(&[1, 2]), 2),
                (whole(&[3]), 3),
                (whole(&[5]), 5),
                (whole(&[6]), 8)
            ]
        );
        assert_eq!(
            batches(&[], 1_000, u64::MAX, 8),
            vec![(Batch::default(), 8)]
        );
    }

    #[test]
    fn a_message_above_max_message_bytes_is_fetched_as_its_header_and_the_cursor_passes_it() {
        let mb = 1 << 20;
        let sizes = [(1, 100), (2, 30 * mb), (3, 100), (4, 5 * mb)];
        let b = batches(&sizes, 16 * mb as u64, 25 * mb as u64, 9);
        assert_eq!(
            b,
            vec![(
                Batch {
                    whole: vec![1, 3, 4],
                    headers: vec![(2, 30 * mb)],
                },
                9
            )]
        );
        // Headers count as HEADER_MAX_BYTES each against fetch_max_bytes.
        let many: Vec<(u32, u32)> = (1..=5).map(|u| (u, 30 * mb)).collect();
        let b = batches(&many, 2 * HEADER_MAX_BYTES, 25 * mb as u64, 5);
        assert_eq!(b.len(), 3);
        assert_eq!(b[0].0.headers, vec![(1, 30 * mb), (2, 30 * mb)]);
        assert_eq!(b[0].1, 2);
        assert_eq!(b[2].1, 5);
    }
}
