//! Graph mark-read (unread mode): JSON `$batch` requests of at most 20
//! `PATCH /users/{mailbox}/messages/{id}` with `{"isRead": true}`, per mailbox: for messages
//! MS4 accepted, and for dead-lettered ones with `graph.after_dead_letter = "mark_read"`.

use super::{Action, Outcome};
use crate::clients::graph::{GraphError, BATCH_MAX};
use crate::clients::graph_tenants::GraphTenants;
use crate::metrics as m;
use crate::settings::GraphAfterDeadLetter;
use crate::store::keys::GRAPH_MARK_READ;
use crate::store::schema;
use crate::store::{Entry, Keys};
use std::rc::Rc;

/// Marks delivered messages read in their Graph mailbox, and dead-lettered ones with
/// `graph.after_dead_letter = "mark_read"`.
pub(crate) struct MarkRead {
    pub graph: Rc<GraphTenants>,
    pub after_dead_letter: GraphAfterDeadLetter,
}

/// What a `$batch` sub-response's status means for its message.
fn outcome(status: u16) -> Outcome {
    match status {
        // 404: the message is gone; nothing left to mark.
        200..=299 | 404 => Outcome::Done,
        400 | 405 | 409 | 422 => Outcome::Refused {
            reason: format!("Graph refused to mark the message read ({status})"),
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
        if dead_lettered(entry) {
            "dead_letter_mark_read".into()
        } else {
            "mark_read".into()
        }
    }

    async fn act(&mut self, mailbox: &str, entries: &[Entry]) -> Vec<Outcome> {
        // Dead-letter ends with `leave` (the setting changed since they were queued) are done
        // without a request; the others are marked read alike.
        let mut out: Vec<Option<Outcome>> = entries
            .iter()
            .map(|e| (!self.marks(e)).then_some(Outcome::Done))
            .collect();
        let todo: Vec<usize> = (0..entries.len()).filter(|i| out[*i].is_none()).collect();
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
            let marked = match self.graph.of(mailbox) {
                Ok(graph) => graph.mark_read(mailbox, &ids).await,
                Err(e) => Err(e),
            };
            match marked {
                Ok(statuses) => {
                    let outcomes: Vec<Outcome> = statuses.into_iter().map(outcome).collect();
                    let marked = outcomes.iter().filter(|o| **o == Outcome::Done).count();
                    metrics::counter!(m::MARKED_READ).increment(marked as u64);
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
                    // leave the rest of its entries for the retry too, without more requests.
                    let why = e.to_string();
                    for i in todo.iter().skip(n * BATCH_MAX) {
                        out[*i] = Some(Outcome::Retry(why.clone()));
                    }
                    break;
                }
            }
        }
        out.into_iter()
            .map(|o| o.unwrap_or_else(|| Outcome::Retry("Graph gave no answer".into())))
            .collect()
    }
}

impl MarkRead {
    /// Whether `e` is to be marked read: after delivery always, after a dead letter as
    /// `graph.after_dead_letter` says.
    fn marks(&self, e: &Entry) -> bool {
        !dead_lettered(e) || self.after_dead_letter == GraphAfterDeadLetter::MarkRead
    }
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
