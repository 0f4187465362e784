//! Graph mark-read (unread mode): JSON `$batch` requests of at most 20
//! `PATCH /users/{mailbox}/messages/{id}` with `{"isRead": true}`, per mailbox.

use super::{Action, Outcome};
use crate::clients::graph::{GraphError, BATCH_MAX};
use crate::clients::graph_tenants::GraphTenants;
use crate::metrics as m;
use crate::store::keys::GRAPH_MARK_READ;
use crate::store::{Entry, Keys};
use std::rc::Rc;

/// Marks delivered messages read in their Graph mailbox.
pub(crate) struct MarkRead {
    pub graph: Rc<GraphTenants>,
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

    fn kind(&self, _target: &str) -> String {
        "mark_read".into()
    }

    async fn act(&mut self, mailbox: &str, entries: &[Entry]) -> Vec<Outcome> {
        let mut out = Vec::with_capacity(entries.len());
        for chunk in entries.chunks(BATCH_MAX) {
            let ids: Vec<String> = chunk
                .iter()
                .map(|e| {
                    e.field(crate::store::schema::follow_up::MESSAGE_ID)
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
                    out.extend(outcomes);
                }
                Err(GraphError::Rejected { status, body }) => {
                    out.extend(chunk.iter().map(|_| Outcome::Refused {
                        reason: format!("Graph refused the $batch ({status}): {body}"),
                        status,
                    }));
                }
                Err(e) => {
                    // The whole mailbox is unavailable for now (throttled, refused, down):
                    // leave the rest of its entries for the retry too, without more requests.
                    let why = e.to_string();
                    out.extend(
                        entries[out.len()..]
                            .iter()
                            .map(|_| Outcome::Retry(why.clone())),
                    );
                    break;
                }
            }
        }
        out
    }
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
