//! The ImapFinisher actor: the IMAP sources' after-delivery actions (`\Seen` or a move to
//! another folder), only after MS4 accepted the message.
//!
//! The MS4Sender queues `(source, "{uidvalidity}:{uid}")` in `stream:imapdone` in the same
//! MULTI/EXEC that acknowledges the delivery. This actor reads that stream through the
//! `imap_finishers` group, keeps one connection per source (apart from the poller's, which may
//! be in IDLE), and applies the action to many UIDs per command (`UID STORE +FLAGS.SILENT
//! (\Seen)`, `UID MOVE`, or COPY + `\Deleted` + `UID EXPUNGE` where MOVE is missing).
//! A connection failure is retried with backoff; what the server refuses for good (a target
//! folder that does not exist, a UIDVALIDITY that changed since the message was fetched) is
//! dead-lettered with the reason. Nothing is dropped.

use crate::clients::imap::{Caps, Connector, ImapError, ImapSession};
use crate::retry::Backoff;
use crate::settings::{AfterDelivery, ImapSource, Settings};
use crate::shutdown::Shutdown;
use crate::store::dlq::Stage;
use crate::store::keys::IMAP_FINISHERS;
use crate::store::{DeadLetter, Entry, Store, StoreError};
use crate::supervision::RestartPacer;
use crate::{health::Health, metrics as m};
use actix::prelude::*;
use futures_util::TryStreamExt;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument;

pub struct ImapFinisher {
    store: Store,
    settings: Arc<Settings>,
    health: Health,
    shutdown: Shutdown,
    pacer: RestartPacer,
}

impl ImapFinisher {
    pub fn new(store: Store, settings: Arc<Settings>, health: Health, shutdown: Shutdown) -> Self {
        Self {
            store,
            settings,
            health,
            shutdown,
            pacer: RestartPacer::new("imap_finisher"),
        }
    }
}

impl Actor for ImapFinisher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let delay = self.pacer.delay(Instant::now());
        let (store, settings, shutdown) = (
            self.store.clone(),
            self.settings.clone(),
            self.shutdown.clone(),
        );
        let fut = async move {
            tokio::time::sleep(delay).await;
            run(store, settings, shutdown).await
        }
        .instrument(tracing::info_span!("imap_finisher"));
        ctx.spawn(fut.into_actor(self).map(|res, act, ctx| {
            if let Err(e) = res {
                crate::supervision::restart_after_failure("imap_finisher", &e, &act.health, ctx);
            }
        }));
    }
}

impl Supervised for ImapFinisher {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        self.pacer.on_restart();
    }
}

/// One source's side: its settings, how to connect, and the open connection.
struct Target {
    source: ImapSource,
    connector: Result<Connector, String>,
    conn: Option<(ImapSession, Caps)>,
}

/// What became of a group of entries of one source.
enum Outcome {
    /// Done (or nothing to do): acknowledge.
    Done,
    /// The server refuses for good: dead-letter with this reason.
    Refused(String),
    /// Try again later.
    Retry(ImapError),
}

async fn run(store: Store, settings: Arc<Settings>, shutdown: Shutdown) -> Result<(), StoreError> {
    let stream = store.keys().imap_done();
    let consumer = settings.consumer_name();
    let blocking = store.blocking()?;
    store.ensure_group(&stream, IMAP_FINISHERS).await?;
    let timeout = settings.imap.timeout();
    let mut targets: BTreeMap<String, Target> = settings
        .imap
        .sources
        .iter()
        .map(|s| {
            let target = Target {
                source: s.clone(),
                connector: Connector::new(s, timeout),
                conn: None,
            };
            (s.name.clone(), target)
        })
        .collect();
    let mut queue: VecDeque<Entry> = store
        .own_pending(&stream, IMAP_FINISHERS, &consumer, 1_000)
        .await?
        .into();
    let mut backoff = Backoff::new(&settings.ms4);
    while !shutdown.is_raised() {
        if queue.is_empty() {
            let got = blocking
                .read_group(
                    &stream,
                    IMAP_FINISHERS,
                    &consumer,
                    ">",
                    500,
                    Some(settings.pipeline.block_ms),
                )
                .await?;
            queue.extend(got);
            continue;
        }
        let round: Vec<Entry> = queue.drain(..queue.len().min(500)).collect();
        let mut by_source: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
        for e in round {
            by_source
                .entry(e.field("mailbox").unwrap_or_default().to_string())
                .or_default()
                .push(e);
        }
        let mut done = Vec::new();
        let mut dead = Vec::new();
        let mut failed = false;
        for (name, entries) in by_source {
            let Some(target) = targets.get_mut(&name) else {
                for e in &entries {
                    dead.push(refused(
                        e,
                        &name,
                        "",
                        "the IMAP source is no longer configured",
                    ));
                    done.push(e.id.clone());
                }
                continue;
            };
            let action = target.source.after_delivery;
            // Entries grouped by the UIDVALIDITY they were fetched under.
            let mut by_validity: BTreeMap<&str, Vec<(&Entry, u32)>> = BTreeMap::new();
            for e in &entries {
                let id = e.field("message_id").unwrap_or_default();
                match id
                    .split_once(':')
                    .and_then(|(uv, uid)| Some((uv, uid.parse().ok()?)))
                {
                    Some((uv, uid)) => by_validity.entry(uv).or_default().push((e, uid)),
                    None => {
                        dead.push(refused(
                            e,
                            &name,
                            kind(action),
                            "not a `uidvalidity:uid` id",
                        ));
                        done.push(e.id.clone());
                    }
                }
            }
            for (uv, group) in by_validity {
                let uids: Vec<u32> = group.iter().map(|(_, u)| *u).collect();
                match apply(target, action, uv, &uids, timeout).await {
                    Outcome::Done => {
                        done.extend(group.iter().map(|(e, _)| e.id.clone()));
                        if action != AfterDelivery::None {
                            metrics::counter!(m::IMAP_AFTER_DELIVERY, "action" => kind(action))
                                .increment(group.len() as u64);
                        }
                    }
                    Outcome::Refused(reason) => {
                        tracing::warn!(source = %name, %reason, count = group.len(), "IMAP after-delivery action refused; dead-lettered");
                        for (e, _) in &group {
                            dead.push(refused(e, &name, kind(action), &reason));
                            done.push(e.id.clone());
                        }
                    }
                    Outcome::Retry(err) => {
                        tracing::warn!(source = %name, error = %err, "IMAP after-delivery action failed; retrying");
                        target.conn = None;
                        failed = true;
                        queue.extend(group.iter().map(|(e, _)| (*e).clone()));
                    }
                }
            }
        }
        store
            .dead_letter_and_ack(
                &stream,
                IMAP_FINISHERS,
                &dead,
                &done,
                settings.redis.dlq_maxlen,
            )
            .await?;
        if !dead.is_empty() {
            metrics::counter!(m::DEAD_LETTERED, "stage" => "mark_read")
                .increment(dead.len() as u64);
        }
        if failed {
            let d = backoff.next_delay().min(Duration::from_secs(30));
            tokio::select! {
                _ = tokio::time::sleep(d) => {}
                _ = shutdown.raised() => {}
            }
        } else {
            backoff = Backoff::new(&settings.ms4);
        }
    }
    for t in targets.values_mut() {
        if let Some((mut s, _)) = t.conn.take() {
            let _ = tokio::time::timeout(Duration::from_secs(2), s.logout()).await;
        }
    }
    Ok(())
}

fn kind(action: AfterDelivery) -> &'static str {
    match action {
        AfterDelivery::None => "none",
        AfterDelivery::Seen => "seen",
        AfterDelivery::Move => "move",
    }
}

/// Applies the source's action to `uids` of the folder, if the folder still has `uidvalidity`.
async fn apply(
    target: &mut Target,
    action: AfterDelivery,
    uidvalidity: &str,
    uids: &[u32],
    timeout: Duration,
) -> Outcome {
    if action == AfterDelivery::None {
        return Outcome::Done;
    }
    let connector = match &target.connector {
        Ok(c) => c,
        Err(e) => return Outcome::Refused(e.clone()),
    };
    let step = |during: &'static str| {
        move |e: async_imap::error::Error| match e {
            async_imap::error::Error::No(reason) => Err(format!("{during}: {reason}")),
            other => Ok(connector.protocol(format!("{during}: {other}"))),
        }
    };
    let within = |during: &'static str| ImapError::Timeout {
        source_name: target.source.name.clone(),
        after_ms: timeout.as_millis() as u64,
        during,
    };
    if target.conn.is_none() {
        match connector.connect().await {
            Ok(c) => target.conn = Some(c),
            Err(e) => return Outcome::Retry(e),
        }
    }
    let folder = target.source.folder.clone();
    let move_to = target.source.move_to.clone();
    let (session, caps) = target.conn.as_mut().expect("connected above");
    let caps = *caps;
    let work = async {
        let mailbox = session.select(&folder).await.map_err(step("SELECT"))?;
        if mailbox.uid_validity.map(|v| v.to_string()).as_deref() != Some(uidvalidity) {
            return Err(Err(format!(
                "the folder's UIDVALIDITY changed since the message was fetched ({uidvalidity} -> {}): its UID no longer names it",
                mailbox.uid_validity.unwrap_or(0)
            )));
        }
        let set = uid_set(uids);
        match action {
            AfterDelivery::Seen => {
                session
                    .uid_store(&set, "+FLAGS.SILENT (\\Seen)")
                    .await
                    .map_err(step("UID STORE"))?
                    .try_collect::<Vec<_>>()
                    .await
                    .map_err(step("UID STORE"))?;
            }
            AfterDelivery::Move if caps.mv => {
                session
                    .uid_mv(&set, &move_to)
                    .await
                    .map_err(step("UID MOVE"))?;
            }
            AfterDelivery::Move => {
                session
                    .uid_copy(&set, &move_to)
                    .await
                    .map_err(step("UID COPY"))?;
                session
                    .uid_store(&set, "+FLAGS.SILENT (\\Seen \\Deleted)")
                    .await
                    .map_err(step("UID STORE"))?
                    .try_collect::<Vec<_>>()
                    .await
                    .map_err(step("UID STORE"))?;
                if caps.uidplus {
                    session
                        .uid_expunge(&set)
                        .await
                        .map_err(step("UID EXPUNGE"))?
                        .try_collect::<Vec<_>>()
                        .await
                        .map_err(step("UID EXPUNGE"))?;
                } else {
                    session
                        .expunge()
                        .await
                        .map_err(step("EXPUNGE"))?
                        .try_collect::<Vec<_>>()
                        .await
                        .map_err(step("EXPUNGE"))?;
                }
            }
            AfterDelivery::None => {}
        }
        Ok::<(), Result<ImapError, String>>(())
    };
    match tokio::time::timeout(timeout, work).await {
        Ok(Ok(())) => Outcome::Done,
        Ok(Err(Err(reason))) => Outcome::Refused(reason),
        Ok(Err(Ok(e))) => Outcome::Retry(e),
        Err(_) => Outcome::Retry(within("after-delivery action")),
    }
}

fn uid_set(uids: &[u32]) -> String {
    let mut sorted = uids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    crate::imap_poller::uid_set(&sorted)
}

fn refused(e: &Entry, source: &str, kind: &str, reason: &str) -> DeadLetter {
    let now = crate::processor::now_ms();
    DeadLetter {
        stage: Stage::MarkRead,
        reason: format!("IMAP after-delivery action refused: {reason}"),
        status: 0,
        attempts: 1,
        first_failure_ms: now,
        last_failure_ms: now,
        payload: e.field("message_id").unwrap_or_default().to_string(),
        mailbox: source.to_string(),
        key: String::new(),
        entry_id: e.id.clone(),
        response: String::new(),
        kind: format!("imap_{kind}"),
        source: "imap".into(),
    }
}
