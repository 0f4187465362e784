//! IMAP after-delivery actions: `\\Seen` (`UID STORE +FLAGS.SILENT (\\Seen)`) or a move to
//! another folder (`UID MOVE`, or COPY + `\\Deleted` + `UID EXPUNGE` where MOVE is missing),
//! applied to many UIDs per command over a connection per source kept apart from the
//! poller's (which may be in IDLE). A folder whose UIDVALIDITY changed since the message was
//! fetched, or a target folder that does not exist, is a refusal (dead letter); a connection
//! failure is retried.

use super::{Action, Outcome};
use crate::clients::imap::{Caps, Connector, ImapError, ImapSession};
use crate::metrics as m;
use crate::settings::{AfterDelivery, ImapSource, Settings};
use crate::store::keys::IMAP_AFTER_DELIVERY;
use crate::store::{Entry, Keys};
use futures_util::TryStreamExt;
use std::collections::BTreeMap;
use std::time::Duration;

/// One source's side: its settings, how to connect, and the open connection.
struct Target {
    source: ImapSource,
    connector: Result<Connector, String>,
    conn: Option<(ImapSession, Caps)>,
}

/// Applies each IMAP source's `after_delivery` action.
pub struct ImapAction {
    targets: BTreeMap<String, Target>,
    timeout: Duration,
}

impl ImapAction {
    pub fn new(settings: &Settings) -> Self {
        let timeout = settings.imap.timeout();
        let targets = settings
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
        Self { targets, timeout }
    }
}

/// What became of a group of UIDs.
enum Applied {
    Done,
    Refused(String),
    Retry(ImapError),
}

impl Action for ImapAction {
    const NAME: &'static str = "imap_after_delivery";
    const GROUP: &'static str = IMAP_AFTER_DELIVERY;
    const SOURCE: &'static str = "imap";

    fn stream(keys: &Keys) -> String {
        keys.imap_done()
    }

    fn kind(&self, source: &str) -> String {
        let action = self
            .targets
            .get(source)
            .map_or(AfterDelivery::None, |t| t.source.after_delivery);
        format!("imap_{}", kind(action))
    }

    async fn act(&mut self, source: &str, entries: &[Entry]) -> Vec<Outcome> {
        let refuse = |reason: &str| Outcome::Refused {
            reason: format!("IMAP after-delivery action refused: {reason}"),
            status: 0,
        };
        let Some(target) = self.targets.get_mut(source) else {
            return entries
                .iter()
                .map(|_| refuse("the IMAP source is no longer configured"))
                .collect();
        };
        let action = target.source.after_delivery;
        let mut out: Vec<Option<Outcome>> = vec![None; entries.len()];
        // Entries grouped by the UIDVALIDITY they were fetched under.
        let mut by_validity: BTreeMap<&str, Vec<(usize, u32)>> = BTreeMap::new();
        for (i, e) in entries.iter().enumerate() {
            let id = e
                .field(crate::store::schema::follow_up::MESSAGE_ID)
                .unwrap_or_default();
            match id
                .split_once(':')
                .and_then(|(uv, uid)| Some((uv, uid.parse().ok()?)))
            {
                Some((uv, uid)) => by_validity.entry(uv).or_default().push((i, uid)),
                None => out[i] = Some(refuse("not a `uidvalidity:uid` id")),
            }
        }
        let mut unreachable: Option<String> = None;
        for (uv, group) in by_validity {
            let uids: Vec<u32> = group.iter().map(|(_, u)| *u).collect();
            if let Some(why) = &unreachable {
                // The source just failed: the other groups wait for the same retry.
                for (i, _) in group {
                    out[i] = Some(Outcome::Retry(why.clone()));
                }
                continue;
            }
            let outcome = match apply(target, action, uv, &uids, self.timeout).await {
                Applied::Done => {
                    if action != AfterDelivery::None {
                        metrics::counter!(m::IMAP_AFTER_DELIVERY, "action" => kind(action))
                            .increment(group.len() as u64);
                    }
                    Outcome::Done
                }
                Applied::Refused(reason) => refuse(&reason),
                Applied::Retry(err) => {
                    target.conn = None;
                    unreachable = Some(err.to_string());
                    Outcome::Retry(err.to_string())
                }
            };
            for (i, _) in group {
                out[i] = Some(outcome.clone());
            }
        }
        out.into_iter()
            .map(|o| o.unwrap_or_else(|| Outcome::Retry("not attempted".into())))
            .collect()
    }

    async fn close(&mut self) {
        for t in self.targets.values_mut() {
            if let Some((mut s, _)) = t.conn.take() {
                let _ = tokio::time::timeout(Duration::from_secs(2), s.logout()).await;
            }
        }
    }
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
) -> Applied {
    if action == AfterDelivery::None {
        return Applied::Done;
    }
    let connector = match &target.connector {
        Ok(c) => c,
        Err(e) => return Applied::Refused(e.clone()),
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
            Err(e) => return Applied::Retry(e),
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
        Ok(Ok(())) => Applied::Done,
        Ok(Err(Err(reason))) => Applied::Refused(reason),
        Ok(Err(Ok(e))) => Applied::Retry(e),
        Err(_) => Applied::Retry(within("after-delivery action")),
    }
}

fn uid_set(uids: &[u32]) -> String {
    let mut sorted = uids.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    crate::clients::imap::uid_set(&sorted)
}
