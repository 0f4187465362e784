//! IMAP after-delivery actions (and `after_dead_letter` ends, the same steps with their own
//! folder): `\\Seen` (`UID STORE +FLAGS.SILENT (\\Seen)`) or a move to
//! another folder (`UID MOVE`, or COPY + `\\Deleted` + `UID EXPUNGE` where MOVE is missing),
//! applied to many UIDs per command over a connection per source kept apart from the
//! poller's (which may be in IDLE). A folder whose UIDVALIDITY changed since the message was
//! fetched, or a target folder that does not exist, is a refusal (dead letter); a connection
//! failure is retried.

use super::mark_read::dead_lettered;
use super::{Action, Outcome};
use crate::clients::imap::{Connector, ImapError, ImapFolder};
use crate::metrics as m;
use crate::settings::{AfterDeadLetter, AfterDelivery, ImapSource, Settings};
use crate::store::keys::IMAP_AFTER_DELIVERY;
use crate::store::{Entry, Keys};
use std::collections::BTreeMap;

/// One source's side: its settings, how to connect, and the open connection.
struct Target {
    source: ImapSource,
    connector: Result<Connector, String>,
    folder: Option<ImapFolder>,
}

/// Applies each IMAP source's `after_delivery` action, and its `after_dead_letter` end to
/// the follow-ups of dead letters.
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

    fn kind(&self, source: &str, entry: &Entry) -> String {
        let step = self
            .targets
            .get(source)
            .map_or(Step::Nothing, |t| step(&t.source, dead_lettered(entry)));
        format!("imap_{}", step.name(dead_lettered(entry)))
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
        let mut out: Vec<Option<Outcome>> = vec![None; entries.len()];
        // Entries grouped by their end (after delivery, after a dead letter) and the
        // UIDVALIDITY they were fetched under.
        let mut groups: BTreeMap<(bool, &str), Vec<(usize, u32)>> = BTreeMap::new();
        for (i, e) in entries.iter().enumerate() {
            let id = e
                .field(crate::store::schema::follow_up::MESSAGE_ID)
                .unwrap_or_default();
            match id
                .split_once(':')
                .and_then(|(uv, uid)| Some((uv, uid.parse().ok()?)))
            {
                Some((uv, uid)) => groups
                    .entry((dead_lettered(e), uv))
                    .or_default()
                    .push((i, uid)),
                None => out[i] = Some(refuse("not a `uidvalidity:uid` id")),
            }
        }
        let mut unreachable: Option<String> = None;
        for ((dead, uv), group) in groups {
            let uids: Vec<u32> = group.iter().map(|(_, u)| *u).collect();
            if let Some(why) = &unreachable {
                // The source just failed: the other groups wait for the same retry.
                for (i, _) in group {
                    out[i] = Some(Outcome::Retry(why.clone()));
                }
                continue;
            }
            // (Its own copy: `apply` needs the target mutably.)
            let settings = target.source.clone();
            let due = step(&settings, dead);
            let outcome = match apply(target, due, uv, &uids).await {
                Ok(()) => {
                    if due != Step::Nothing {
                        metrics::counter!(m::IMAP_AFTER_DELIVERY, "action" => due.name(dead))
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

/// What is done to a message in its folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step<'a> {
    Nothing,
    Seen,
    Move(&'a str),
}

impl Step<'_> {
    /// Its name in metrics and dead letters (`seen`, `dead_letter_move`, …).
    fn name(self, dead: bool) -> &'static str {
        match (self, dead) {
            (Step::Nothing, false) => "none",
            (Step::Seen, false) => "seen",
            (Step::Move(_), false) => "move",
            (Step::Nothing, true) => "dead_letter_leave",
            (Step::Seen, true) => "dead_letter_seen",
            (Step::Move(_), true) => "dead_letter_move",
        }
    }
}

/// The source's step after delivery, or after a dead letter (`dead`).
fn step(source: &ImapSource, dead: bool) -> Step<'_> {
    if dead {
        return match source.after_dead_letter {
            AfterDeadLetter::Leave => Step::Nothing,
            AfterDeadLetter::Seen => Step::Seen,
            AfterDeadLetter::Move => Step::Move(&source.dead_letter_move_to),
        };
    }
    match source.after_delivery {
        AfterDelivery::None => Step::Nothing,
        AfterDelivery::Seen => Step::Seen,
        AfterDelivery::Move => Step::Move(&source.move_to),
    }
}

/// Applies `step` to `uids` of the folder, if the folder still has `uidvalidity`. A UID the
/// folder no longer holds (the message was moved or deleted meanwhile, e.g. a replayed dead
/// letter that its end moved away) is ignored by the server, as IMAP wants: nothing to do.
async fn apply(
    target: &mut Target,
    step: Step<'_>,
    uidvalidity: &str,
    uids: &[u32],
) -> Result<(), Failure> {
    if step == Step::Nothing {
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
    match step {
        Step::Seen => folder.mark_seen(uids).await?,
        Step::Move(to) => folder.move_to(uids, to).await?,
        Step::Nothing => {}
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
