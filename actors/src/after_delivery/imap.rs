//! IMAP after-delivery actions: `\\Seen` (`UID STORE +FLAGS.SILENT (\\Seen)`) or a move to
//! another folder (`UID MOVE`, or COPY + `\\Deleted` + `UID EXPUNGE` where MOVE is missing),
//! applied to many UIDs per command over a connection per source kept apart from the
//! poller's (which may be in IDLE). A folder whose UIDVALIDITY changed since the message was
//! fetched, or a target folder that does not exist, is a refusal (dead letter); a connection
//! failure is retried.

use super::{Action, Outcome};
use crate::clients::imap::{Connector, ImapError, ImapFolder};
use crate::metrics as m;
use crate::settings::{AfterDelivery, ImapSource, Settings};
use crate::store::keys::IMAP_AFTER_DELIVERY;
use crate::store::{Entry, Keys};
use std::collections::BTreeMap;

/// One source's side: its settings, how to connect, and the open connection.
struct Target {
    source: ImapSource,
    connector: Result<Connector, String>,
    folder: Option<ImapFolder>,
}

/// Applies each IMAP source's `after_delivery` action.
pub(crate) struct ImapAction {
    targets: BTreeMap<String, Target>,
}

impl ImapAction {
    pub(crate) fn new(settings: &Settings) -> Self {
        let timeout = settings.imap.timeout();
        let targets = settings
            .imap
            .sources
            .iter()
            .map(|s| {
                let target = Target {
                    source: s.clone(),
                    connector: Connector::new(s, timeout),
                    folder: None,
                };
                (s.name.clone(), target)
            })
            .collect();
        Self { targets }
    }
}

/// Why a group of UIDs was not done.
enum Failure {
    /// For good: the server said NO, or the UIDs no longer name the messages.
    Refused(String),
    /// For now: the connection, a timeout, an unexpected answer.
    Retry(ImapError),
}

impl From<ImapError> for Failure {
    fn from(e: ImapError) -> Self {
        match e.refusal() {
            Some(reason) => Failure::Refused(reason),
            None => Failure::Retry(e),
        }
    }
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
            let outcome = match apply(target, action, uv, &uids).await {
                Ok(()) => {
                    if action != AfterDelivery::None {
                        metrics::counter!(m::IMAP_AFTER_DELIVERY, "action" => kind(action))
                            .increment(group.len() as u64);
                    }
                    Outcome::Done
                }
                Err(Failure::Refused(reason)) => refuse(&reason),
                Err(Failure::Retry(err)) => {
                    target.folder = None;
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
            if let Some(folder) = t.folder.take() {
                folder.logout().await;
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
) -> Result<(), Failure> {
    if action == AfterDelivery::None {
        return Ok(());
    }
    let connector = target
        .connector
        .as_ref()
        .map_err(|e| Failure::Refused(e.clone()))?;
    if target.folder.is_none() {
        // Every connect failure (a refused login too) is retried: the follow-ups wait, named
        // in /ready, instead of being dead-lettered.
        target.folder = Some(connector.connect().await.map_err(Failure::Retry)?);
    }
    let folder = target.folder.as_mut().expect("connected above");
    let selected = folder.select().await?;
    if selected.uid_validity.to_string() != uidvalidity {
        return Err(Failure::Refused(format!(
            "the folder's UIDVALIDITY changed since the message was fetched ({uidvalidity} -> {}): its UID no longer names it",
            selected.uid_validity
        )));
    }
    match action {
        AfterDelivery::Seen => folder.mark_seen(uids).await?,
        AfterDelivery::Move => folder.move_to(uids, &target.source.move_to).await?,
        AfterDelivery::None => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_no_or_a_missing_folder_is_dead_lettered_anything_else_is_retried() {
        let no = async_imap::error::Error::No("[TRYCREATE] Mailbox doesn't exist".into());
        let refused = ImapError::of_command("gmail", "UID MOVE", no);
        assert!(
            matches!(Failure::from(refused), Failure::Refused(r) if r == "UID MOVE: [TRYCREATE] Mailbox doesn't exist")
        );
        let folder = ImapError::Folder {
            source_name: "gmail".into(),
            folder: "INBOX".into(),
            reason: "gone".into(),
        };
        assert!(matches!(Failure::from(folder), Failure::Refused(r) if r == "SELECT: gone"));
        let lost = ImapError::of_command(
            "gmail",
            "UID STORE",
            async_imap::error::Error::ConnectionLost,
        );
        let late = ImapError::timeout("gmail", std::time::Duration::from_secs(30), "UID STORE");
        let login = ImapError::Login {
            source_name: "gmail".into(),
            user: "u".into(),
            mechanism: "LOGIN",
            reason: "no".into(),
        };
        for e in [lost, late, login] {
            assert!(matches!(Failure::from(e), Failure::Retry(_)));
        }
    }
}
