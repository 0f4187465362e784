//! What a chunk needs from Graph before it can be transformed: webhook refs fetched, attachment
//! metadata read, refusals and gone messages told apart from transient failures.

use super::Work;
use crate::clients::graph::{GraphClient, GraphError};
use crate::model::{graph_needs_attachments, AttachmentMeta};
use crate::store::park::PROBE;
use crate::store::Entry;

/// What the processor learned from Graph about one entry before transforming it.
#[derive(Debug, Clone, Default)]
pub(super) enum Resolution {
    /// Nothing to fetch.
    #[default]
    AsIs,
    /// A webhook ref, now fetched (message JSON and, if any, its attachments).
    Fetched {
        payload: String,
        attachments: Option<Vec<AttachmentMeta>>,
    },
    /// A polled message whose attachment metadata was fetched.
    Attachments(Vec<AttachmentMeta>),
    /// Cannot be resolved, for a reason of its own (dead letter).
    Dead { reason: String, status: u16 },
    /// Graph refuses the entry's mailbox for now: set aside in its parked stream.
    Park { reason: String },
}

impl Work {
    /// Fetches what the chunk's entries need from Graph, concurrently (the RateLimiter keeps
    /// each mailbox within its limits). An entry of a parked mailbox is parked again without a
    /// request (unless it is the mailbox's probe); a refusal (401/403, a refused credential)
    /// parks the entry at once; a transient failure leaves it unresolved, to be tried again —
    /// or parked when `last_try`. Returns the first transient failure, if any is left.
    pub(super) async fn resolve(
        &self,
        entries: &[Entry],
        done: &mut [Option<Resolution>],
        last_try: bool,
    ) -> Option<GraphError> {
        use crate::store::schema::inbound as f;
        let mut work = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            if done[i].is_some() {
                continue;
            }
            if e.field(f::SOURCE).unwrap_or("graph") != "graph" {
                done[i] = Some(Resolution::AsIs);
                continue;
            }
            let mailbox = e.field(f::MAILBOX).unwrap_or_default();
            let id = if e.field(f::KIND) == Some("ref") {
                Some((e.field(f::MESSAGE_ID).unwrap_or_default().to_string(), true))
            } else if self.settings.graph.fetch_attachments && self.graph.is_some() {
                e.field(f::PAYLOAD)
                    .and_then(graph_needs_attachments)
                    .map(|id| (id, false))
            } else {
                None
            };
            let Some((id, is_ref)) = id else {
                done[i] = Some(Resolution::AsIs);
                continue;
            };
            if e.field(PROBE) != Some("1") {
                if let Some(state) = self.parked.borrow().get(mailbox) {
                    done[i] = Some(Resolution::Park {
                        reason: state.reason.clone(),
                    });
                    continue;
                }
            }
            work.push((i, mailbox, id, is_ref));
        }
        if work.is_empty() {
            return None;
        }
        let Some(graph) = self.graph.clone() else {
            for (i, ..) in work {
                done[i] = Some(Resolution::Dead {
                    reason: "a webhook ref, but no Graph mailbox is configured to fetch it from"
                        .into(),
                    status: 0,
                });
            }
            return None;
        };
        let fetch_attachments = self.settings.graph.fetch_attachments;
        let jobs = work.into_iter().map(|(i, mailbox, id, is_ref)| {
            let graph = graph.clone();
            async move {
                let r = match graph.of(mailbox) {
                    Err(e) => gone_or(e),
                    Ok(graph) if is_ref => fetch_ref(graph, mailbox, &id, fetch_attachments).await,
                    Ok(graph) => match graph.attachments(mailbox, &id).await {
                        Ok(a) => Ok(Resolution::Attachments(a)),
                        Err(e) => gone_or(e),
                    },
                };
                (i, r)
            }
        });
        let mut first_error = None;
        for (i, r) in futures_util::future::join_all(jobs).await {
            match r {
                Ok(resolution) => done[i] = Some(resolution),
                Err(e) if refuses_mailbox(&e) || last_try => {
                    done[i] = Some(Resolution::Park {
                        reason: e.to_string(),
                    })
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error
    }
}

/// Fetches a message a webhook notified, and its attachment metadata.
pub(super) async fn fetch_ref(
    graph: &GraphClient,
    mailbox: &str,
    id: &str,
    fetch_attachments: bool,
) -> Result<Resolution, GraphError> {
    if mailbox.is_empty() || id.is_empty() {
        return Ok(Resolution::Dead {
            reason: "webhook ref without mailbox or message_id".into(),
            status: 0,
        });
    }
    let body = match graph.message(mailbox, id).await {
        Ok(b) => b,
        Err(e) => return gone_or(e),
    };
    let payload = String::from_utf8_lossy(&body).into_owned();
    let attachments = match graph_needs_attachments(&payload) {
        Some(_) if fetch_attachments => match graph.attachments(mailbox, id).await {
            Ok(a) => Some(a),
            Err(e) => return gone_or(e),
        },
        _ => None,
    };
    Ok(Resolution::Fetched {
        payload,
        attachments,
    })
}

/// A message that is gone (404) or that Graph refuses to serve (other 4xx) is dead-lettered;
/// anything else is retried.
pub(super) fn gone_or(e: GraphError) -> Result<Resolution, GraphError> {
    match e {
        GraphError::NotFound => Ok(Resolution::Dead {
            reason: "the message no longer exists in the mailbox (404)".into(),
            status: 404,
        }),
        GraphError::Rejected { status, body } => Ok(Resolution::Dead {
            reason: format!("Graph refused to serve the message ({status}): {body}"),
            status,
        }),
        other => Err(other),
    }
}

/// Graph refuses the mailbox (not one message): access denied, a refused credential.
fn refuses_mailbox(e: &GraphError) -> bool {
    matches!(
        e,
        GraphError::Unauthorized(..)
            | GraphError::Token {
                error: crate::clients::oauth::OAuthError::Rejected { .. }
                    | crate::clients::oauth::OAuthError::Unusable { .. },
                ..
            }
    )
}
