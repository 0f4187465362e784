//! Delivering one batch: requests of at most `ms4.batch_size` records, each answer acted on
//! (bisection on 400, backoff on transient failures, the budget paused on 429), and the batch
//! finished in one transaction once every record is delivered or dead-lettered.

use super::Core;
use crate::clients::ms4::{batch_body, batch_key, classify, Verdict};
use crate::clock::now_ms;
use crate::metrics as m;
use crate::pipeline::ratelimiter::{self, Acquire, PauseBudget};
use crate::retry::Backoff;
use crate::store::dlq::Stage;
use crate::store::outbound;
use crate::store::schema::outbound as F;
use crate::store::{DeadLetter, Entry, FollowUp, StoreError};
use std::rc::Rc;
use std::time::Instant;

impl Core {
    /// Finishes a batch: acknowledges its entries, queuing the follow-ups of the records MS4
    /// accepted and dead-lettering those it rejected, in one transaction; retries Redis until
    /// it answers (MS4 has the records, so giving up would only cause a re-send).
    async fn finish(&self, ids: &[String], outcome: &Outcome) {
        let mut backoff = Backoff::new(self.settings.ms4.retry());
        while let Err(e) = self
            .store
            .finish_delivery(
                ids,
                &outcome
                    .delivered
                    .iter()
                    .map(String::as_str)
                    .collect::<Vec<_>>(),
                &outcome.follow_ups,
                &outcome.dead,
                &outcome.dead_ends,
                (
                    self.settings.redis.dlq_maxlen,
                    self.settings.redis.idempotency_ttl_s,
                ),
            )
            .await
        {
            tracing::warn!(error = %e, "could not acknowledge a delivered batch; retrying");
            tokio::time::sleep(backoff.next_delay()).await;
        }
        if !outcome.dead.is_empty() {
            metrics::counter!(m::DEAD_LETTERED, "stage" => Stage::Deliver.as_str())
                .increment(outcome.dead.len() as u64);
        }
    }
}

/// What became of a batch's records so far, written when the whole batch is done.
#[derive(Default)]
pub(super) struct Outcome {
    /// The keys of the records MS4 accepted.
    delivered: Vec<String>,
    /// Their follow-ups.
    follow_ups: Vec<FollowUp>,
    /// Records MS4 rejected.
    dead: Vec<DeadLetter>,
    /// The `after_dead_letter` ends of those whose source wants one.
    dead_ends: Vec<FollowUp>,
}

impl Outcome {
    /// `records` were accepted; their follow-ups are due where `acts` says the source has an
    /// action after delivery (an IMAP source may carry targets for its dead letters only).
    fn accepted(&mut self, records: &[Entry], acts: impl Fn(&FollowUp) -> bool) {
        self.delivered.extend(
            records
                .iter()
                .map(|r| r.field(F::KEY).unwrap_or_default().to_string()),
        );
        self.follow_ups.extend(
            records
                .iter()
                .filter_map(outbound::follow_up_of)
                .filter(|f| acts(f)),
        );
    }

    /// `record` is dead-lettered with MS4's answer; its follow-up target gets the source's
    /// `after_dead_letter` end when `ends` says the source wants one.
    fn rejected(
        &mut self,
        record: &Entry,
        (status, body): (u16, &str),
        (attempts, first_ms): (u32, u64),
        ends: impl Fn(&FollowUp) -> bool,
    ) {
        self.dead_ends
            .extend(outbound::follow_up_of(record).filter(|f| ends(f)));
        tracing::warn!(entry = %record.id, key = record.field(F::KEY).unwrap_or_default(), status, "MS4 rejected a record: dead-lettered");
        self.dead.push(DeadLetter {
            stage: Stage::Deliver,
            reason: format!("MS4 rejected the record ({status})"),
            status,
            attempts,
            first_failure_ms: first_ms,
            last_failure_ms: now_ms(),
            payload: record.field(F::RECORD).unwrap_or_default().to_string(),
            mailbox: record_mailbox(record.field(F::RECORD).unwrap_or_default()),
            key: record.field(F::KEY).unwrap_or_default().to_string(),
            entry_id: record.id.clone(),
            response: body.to_string(),
            kind: "record".into(),
            source: String::new(),
            carry: crate::store::dlq::carried(
                record,
                &[F::FOLLOW_UP_MAILBOX, F::FOLLOW_UP_ID, F::FOLLOW_UP_SOURCE],
            ),
        });
    }
}

fn record_mailbox(record: &str) -> String {
    serde_json::from_str::<serde_json::Value>(record)
        .ok()
        .and_then(|v| {
            v.get("mailbox")
                .and_then(|m| m.as_str())
                .map(str::to_string)
        })
        .unwrap_or_default()
}

/// A slice of a batch on its way; 400s split it.
struct Part {
    entries: Vec<Entry>,
    /// Requests that carried these entries so far.
    attempts: u32,
    first_failure_ms: Option<u64>,
}

/// Delivers one batch until every record is accepted or dead-lettered, in requests of at
/// most `ms4.batch_size` records, then finishes its entries in one transaction (a crash before
/// that re-sends the batch: MS4 deduplicates by key, and what it rejects is dead-lettered once).
pub(super) async fn deliver(core: Rc<Core>, batch: Vec<Entry>) {
    let mut ids: Vec<String> = batch.iter().map(|e| e.id.clone()).collect();
    ids.dedup();
    let size = core.settings.ms4.batch_size.max(1);
    let mut requests: Vec<Vec<Entry>> = Vec::with_capacity(batch.len().div_ceil(size));
    let mut rest = batch.into_iter().peekable();
    while rest.peek().is_some() {
        requests.push(rest.by_ref().take(size).collect());
    }
    // Popped from the end: the first request goes first.
    let mut stack: Vec<Part> = requests
        .into_iter()
        .rev()
        .map(|entries| Part {
            entries,
            attempts: 0,
            first_failure_ms: None,
        })
        .collect();
    let mut outcome = Outcome::default();
    while let Some(part) = stack.pop() {
        deliver_part(&core, part, &mut stack, &mut outcome).await;
    }
    core.finish(&ids, &outcome).await;
    let mut held = core.held.borrow_mut();
    for id in &ids {
        held.remove(id);
    }
}

async fn deliver_part(core: &Core, mut part: Part, stack: &mut Vec<Part>, outcome: &mut Outcome) {
    let mut backoff = Backoff::new(core.settings.ms4.retry());
    loop {
        let turn = core.wait_turn().await;
        match core
            .limiter
            .send(Acquire {
                budget: ratelimiter::MS4,
            })
            .await
        {
            Ok(Ok(_permit)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "rate permit unavailable (redis); retrying");
                core.report(turn, None);
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "rate limiter unavailable; retrying");
                core.report(turn, None);
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        }
        let body = batch_body(
            part.entries
                .iter()
                .map(|e| e.field(F::RECORD).unwrap_or("null")),
        );
        let key = batch_key(part.entries.iter().map(|e| e.field(F::KEY).unwrap_or("")));
        part.attempts += 1;
        let started = Instant::now();
        let answer = core.client.post(body, &key).await;
        let status = answer.as_ref().map(|a| a.status).unwrap_or(0);
        let verdict = classify(answer);
        metrics::histogram!(m::MS4_LATENCY, "status" => status.to_string())
            .record(started.elapsed().as_secs_f64());
        metrics::counter!(m::MS4_REQUESTS, "outcome" => verdict.outcome()).increment(1);
        core.report(turn, Some(&verdict));
        match verdict {
            Verdict::Accepted => {
                outcome.accepted(&part.entries, |f| {
                    core.settings.acts_after_delivery(f.source, &f.mailbox)
                });
                let now = now_ms();
                metrics::counter!(m::DELIVERED).increment(part.entries.len() as u64);
                let latency = metrics::histogram!(m::END_TO_END);
                for e in &part.entries {
                    let ms = e
                        .field(F::INBOUND_MS)
                        .and_then(|t| t.parse::<u64>().ok())
                        .unwrap_or(now);
                    latency.record(now.saturating_sub(ms) as f64 / 1_000.0);
                }
                return;
            }
            Verdict::Reject { status, body } => {
                let first = *part.first_failure_ms.get_or_insert_with(now_ms);
                if part.entries.len() == 1 {
                    outcome.rejected(
                        &part.entries[0],
                        (status, &body),
                        (part.attempts, first),
                        |f| core.settings.ends_dead_letters(f.source, &f.mailbox),
                    );
                } else {
                    tracing::info!(
                        records = part.entries.len(),
                        status,
                        "MS4 rejected a batch: bisecting to isolate the invalid records"
                    );
                    let right = part.entries.split_off(part.entries.len() / 2);
                    stack.push(Part {
                        entries: right,
                        attempts: part.attempts,
                        first_failure_ms: Some(first),
                    });
                    stack.push(Part {
                        entries: part.entries,
                        attempts: part.attempts,
                        first_failure_ms: Some(first),
                    });
                }
                return;
            }
            Verdict::Unauthorized { .. } => continue,
            Verdict::RetryAfter(delay) => {
                tracing::warn!(
                    retry_after_ms = delay.as_millis() as u64,
                    "MS4 throttled: pausing every sender"
                );
                if let Ok(Err(e)) | Err(e) = core
                    .limiter
                    .send(PauseBudget {
                        budget: ratelimiter::MS4,
                        delay,
                    })
                    .await
                    .map_err(|e| StoreError::Reply(e.to_string()))
                {
                    tracing::warn!(error = %e, "could not record the pause in redis; waiting locally");
                    tokio::time::sleep(delay).await;
                }
            }
            Verdict::Transient(reason) => {
                let delay = backoff.next_delay();
                tracing::warn!(%reason, retry_in_ms = delay.as_millis() as u64, records = part.entries.len(), "MS4 delivery failed; will retry");
                tokio::time::sleep(delay).await;
            }
        }
    }
}
