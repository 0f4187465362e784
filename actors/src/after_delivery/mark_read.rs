//! Graph follow-ups (unread mode), per mailbox, in JSON `$batch` requests of at most 20:
//! `PATCH /users/{mailbox}/messages/{id}` with `{"isRead": true}` for messages MS4 accepted,
//! and, for dead-lettered ones, what `graph.after_dead_letter` says: the same mark read, or
//! `POST …/messages/{id}/move` to `graph.dead_letter_move_to` (its id looked up once per
//! mailbox; a folder that does not exist is a refusal, dead-lettered).

use super::{Action, Outcome};
use crate::clients::graph::{GraphError, BATCH_MAX};
use crate::clients::graph_tenants::GraphTenants;
use crate::metrics as m;
use crate::settings::{GraphAfterDeadLetter, GraphSettings};
use crate::store::keys::GRAPH_MARK_READ;
use crate::store::schema;
use crate::store::{Entry, Keys};
use std::collections::HashMap;
use std::rc::Rc;

/// Marks delivered messages read in their Graph mailbox, and ends dead-lettered ones as
/// `graph.after_dead_letter` says.
pub(crate) struct MarkRead {
    graph: Rc<GraphTenants>,
    after_dead_letter: GraphAfterDeadLetter,
    dead_letter_move_to: String,
    /// The id of `dead_letter_move_to` in each mailbox, once looked up.
    folders: HashMap<String, String>,
}

impl MarkRead {
    pub(crate) fn new(graph: Rc<GraphTenants>, settings: &GraphSettings) -> Self {
        Self {
            graph,
            after_dead_letter: settings.after_dead_letter,
            dead_letter_move_to: settings.dead_letter_move_to.clone(),
            folders: HashMap::new(),
        }
    }

    /// What is due for `e`.
    fn step(&self, e: &Entry) -> Step {
        if !dead_lettered(e) {
            return Step::MarkRead;
        }
        match self.after_dead_letter {
            GraphAfterDeadLetter::Leave => Step::Nothing,
            GraphAfterDeadLetter::MarkRead => Step::MarkRead,
            GraphAfterDeadLetter::Move => Step::Move,
        }
    }

    /// The id of the dead-letter folder in `mailbox`, looked up once.
    async fn folder(&mut self, mailbox: &str) -> Result<String, Outcome> {
        if let Some(id) = self.folders.get(mailbox) {
            return Ok(id.clone());
        }
        let graph = self
            .graph
            .of(mailbox)
            .map_err(|e| Outcome::Retry(e.to_string()))?;
        match graph.folder_id(mailbox, &self.dead_letter_move_to).await {
            Ok(Some(id)) => {
                self.folders.insert(mailbox.to_string(), id.clone());
                Ok(id)
            }
            Ok(None) => Err(Outcome::Refused {
                reason: format!(
                    "graph.dead_letter_move_to `{}` is not a folder of the mailbox (create it, or name a well-known folder or a folder id)",
                    self.dead_letter_move_to
                ),
                status: 404,
            }),
            Err(GraphError::Rejected { status, body }) => Err(Outcome::Refused {
                reason: format!("Graph refused to look up the dead-letter folder ({status}): {body}"),
                status,
            }),
            Err(e) => Err(Outcome::Retry(e.to_string())),
        }
    }
}

/// What is done to one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Nothing,
    MarkRead,
    Move,
}

/// What a `$batch` sub-response's status means for its message.
fn outcome(status: u16) -> Outcome {
    match status {
        // 404: the message is gone (deleted, or moved away); nothing left to do.
        200..=299 | 404 => Outcome::Done,
        400 | 405 | 409 | 422 => Outcome::Refused {
            reason: format!("Graph refused the follow-up on the message ({status})"),
            status,
        },
        0 => Outcome::Retry("Graph gave no answer for the message".into()),
        _ => Outcome::Retry(format!("Graph answered {status}")),
    }
}

impl Action for MarkRead {
    const NAME: &'static str = "graph_mark_read";
    const GROUP: &'static str = GRAPH_MARK_READ;
    const SOURCE: &'static str = "graph";

    fn stream(keys: &Keys) -> String {
        keys.mark_read()
    }

    fn kind(&self, _target: &str, entry: &Entry) -> String {
        match (dead_lettered(entry), self.step(entry)) {
            (false, _) => "mark_read",
            (true, Step::Move) => "dead_letter_move",
            (true, _) => "dead_letter_mark_read",
        }
        .into()
    }

    async fn act(&mut self, mailbox: &str, entries: &[Entry]) -> Vec<Outcome> {
        // Dead-letter ends with `leave` (the setting changed since they were queued) are done
        // without a request.
        let mut out: Vec<Option<Outcome>> = entries
            .iter()
            .map(|e| (self.step(e) == Step::Nothing).then_some(Outcome::Done))
            .collect();
        for step in [Step::MarkRead, Step::Move] {
            let todo: Vec<usize> = (0..entries.len())
                .filter(|i| out[*i].is_none() && self.step(&entries[*i]) == step)
                .collect();
            if todo.is_empty() {
                continue;
            }
            let folder = match step {
                Step::Move => match self.folder(mailbox).await {
                    Ok(id) => Some(id),
                    Err(o) => {
                        for i in &todo {
                            out[*i] = Some(o.clone());
                        }
                        continue;
                    }
                },
                _ => None,
            };
            for (n, chunk) in todo.chunks(BATCH_MAX).enumerate() {
                let ids: Vec<String> = chunk
                    .iter()
                    .map(|i| {
                        entries[*i]
                            .field(schema::follow_up::MESSAGE_ID)
                            .unwrap_or_default()
                            .to_string()
                    })
                    .collect();
                let answered = match (self.graph.of(mailbox), &folder) {
                    (Ok(graph), None) => graph.mark_read(mailbox, &ids).await,
                    (Ok(graph), Some(to)) => graph.move_messages(mailbox, &ids, to).await,
                    (Err(e), _) => Err(e),
                };
                match answered {
                    Ok(statuses) => {
                        let outcomes: Vec<Outcome> = statuses.into_iter().map(outcome).collect();
                        let done = outcomes.iter().filter(|o| **o == Outcome::Done).count();
                        match step {
                            Step::Move => metrics::counter!(m::GRAPH_DEAD_LETTER_MOVED),
                            _ => metrics::counter!(m::MARKED_READ),
                        }
                        .increment(done as u64);
                        for (i, o) in chunk.iter().zip(outcomes) {
                            out[*i] = Some(o);
                        }
                    }
                    Err(GraphError::Rejected { status, body }) => {
                        for i in chunk {
                            out[*i] = Some(Outcome::Refused {
                                reason: format!("Graph refused the $batch ({status}): {body}"),
                                status,
                            });
                        }
                    }
                    Err(e) => {
                        // The whole mailbox is unavailable for now (throttled, refused, down):
                        // leave the rest of its entries for the retry too, without more
                        // requests.
                        let why = e.to_string();
                        for i in todo.iter().skip(n * BATCH_MAX) {
                            out[*i] = Some(Outcome::Retry(why.clone()));
                        }
                        return finish(out);
                    }
                }
            }
        }
        finish(out)
    }
}

fn finish(out: Vec<Option<Outcome>>) -> Vec<Outcome> {
    out.into_iter()
        .map(|o| o.unwrap_or_else(|| Outcome::Retry("not attempted".into())))
        .collect()
}

/// Whether a follow-up is a dead letter's end (else it is due after delivery).
pub(crate) fn dead_lettered(e: &Entry) -> bool {
    e.field(schema::follow_up::END) == Some(schema::follow_up::DEAD_LETTERED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_decide_done_retry_or_refused() {
        assert_eq!(outcome(200), Outcome::Done);
        assert_eq!(outcome(404), Outcome::Done);
        assert!(matches!(outcome(429), Outcome::Retry(_)));
        assert!(matches!(outcome(503), Outcome::Retry(_)));
        assert!(matches!(outcome(0), Outcome::Retry(_)));
        assert!(matches!(outcome(401), Outcome::Retry(_)));
        assert!(matches!(outcome(400), Outcome::Refused { status: 400, .. }));
    }
}
