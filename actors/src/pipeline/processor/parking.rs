//! Parking: a mailbox Graph refuses (or keeps failing) is set aside in its parked stream while
//! every other mailbox flows; one probe entry goes back on a doubling schedule, and a served
//! probe brings the whole mailbox back.

use super::resolve::Resolution;
use super::Work;
use crate::clock::now_ms;
use crate::metrics as m;
use crate::store::park::{ParkState, PROBE};
use crate::store::{Entry, StoreError};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

impl Work {
    /// Updates the parked mailboxes after a hand-off: a mailbox whose entries were parked
    /// gets (or keeps) its retry schedule, a failed probe pushes it further out, and a mailbox
    /// Graph served again is un-parked whole.
    pub(super) async fn after_parking(
        &self,
        entries: &[Entry],
        resolved: &[Resolution],
    ) -> Result<(), StoreError> {
        use crate::store::schema::inbound as f;
        let mut refused: BTreeMap<&str, (&str, bool)> = BTreeMap::new();
        let mut served: BTreeSet<&str> = BTreeSet::new();
        for (e, r) in entries.iter().zip(resolved) {
            let mailbox = e.field(f::MAILBOX).unwrap_or_default();
            let probe = e.field(PROBE) == Some("1");
            match r {
                Resolution::Park { reason } => {
                    metrics::counter!(m::PARKED, "mailbox" => mailbox.to_string()).increment(1);
                    let slot = refused.entry(mailbox).or_insert((reason, false));
                    slot.1 |= probe;
                }
                Resolution::Fetched { .. } | Resolution::Attachments(_) => {
                    served.insert(mailbox);
                }
                _ => {}
            }
        }
        // A mailbox with entries refused in this chunk stays parked even if others were served
        // (one message Graph refuses must not bring the whole mailbox back round and round).
        served.retain(|m| !refused.contains_key(m));
        let now = now_ms();
        for (mailbox, (reason, probe_failed)) in refused {
            let known = self.parked.borrow().get(mailbox).cloned();
            let state = match known {
                None => {
                    tracing::error!(%mailbox, %reason, "Graph refuses this mailbox: its entries are parked in Redis and retried on a schedule; every other mailbox keeps flowing");
                    ParkState {
                        reason: reason.to_string(),
                        since_ms: now,
                        attempts: 0,
                        next_ms: now + self.park_delay_ms(0),
                    }
                }
                Some(mut s) if probe_failed => {
                    s.attempts += 1;
                    s.reason = reason.to_string();
                    s.next_ms = now + self.park_delay_ms(s.attempts);
                    tracing::warn!(%mailbox, %reason, attempts = s.attempts, retry_in_s = (s.next_ms - now) / 1_000, "a parked mailbox is still refused");
                    s
                }
                Some(s) => {
                    self.store.keep_park_state(mailbox, &s).await?;
                    continue;
                }
            };
            self.store.set_park_state(mailbox, &state).await?;
            self.show_parked(mailbox, &state).await?;
            self.parked.borrow_mut().insert(mailbox.to_string(), state);
        }
        for mailbox in served {
            if self.parked.borrow().contains_key(mailbox) {
                self.unpark_all(mailbox).await?;
            }
        }
        Ok(())
    }

    pub(super) fn park_delay_ms(&self, failed: u32) -> u64 {
        self.settings.graph.park_retry_after(failed).as_millis() as u64
    }

    /// Graph serves a parked mailbox again: every parked entry goes back to the inbound stream.
    pub(super) async fn unpark_all(&self, mailbox: &str) -> Result<(), StoreError> {
        self.store.clear_park_state(mailbox).await?;
        self.parked.borrow_mut().remove(mailbox);
        let mut moved = 0;
        loop {
            let n = self.store.unpark(mailbox, 1_000, false).await?;
            moved += n;
            if n == 0 {
                break;
            }
        }
        tracing::info!(%mailbox, entries = moved, "Graph serves the mailbox again: its parked entries are back in the inbound stream");
        self.health.set_source_error(&park_key(mailbox), None);
        metrics::gauge!(m::PARKED_ENTRIES, "mailbox" => mailbox.to_string()).set(0.0);
        Ok(())
    }

    /// Reads the parked mailboxes (another daemon may have parked or un-parked one), sends one
    /// probe back for each mailbox whose retry is due, and shows them in `/ready` and metrics.
    pub(super) async fn tend_parked(&self) -> Result<(), StoreError> {
        let states = self.store.park_states().await?;
        let now = now_ms();
        let gone: Vec<String> = self
            .parked
            .borrow()
            .keys()
            .filter(|m| !states.contains_key(*m))
            .cloned()
            .collect();
        for mailbox in gone {
            self.health.set_source_error(&park_key(&mailbox), None);
            metrics::gauge!(m::PARKED_ENTRIES, "mailbox" => mailbox).set(0.0);
        }
        for (mailbox, mut state) in states.clone() {
            if state.next_ms <= now {
                if self.store.parked_len(&mailbox).await? == 0 {
                    // Nothing left to retry (replayed, purged, or un-parked elsewhere).
                    self.store.clear_park_state(&mailbox).await?;
                    self.health.set_source_error(&park_key(&mailbox), None);
                    continue;
                }
                // The next probe only after this one had its chance.
                state.next_ms = now + self.park_delay_ms(state.attempts);
                self.store.set_park_state(&mailbox, &state).await?;
                self.store.unpark(&mailbox, 1, true).await?;
                tracing::info!(%mailbox, "retrying a parked mailbox with one probe entry");
            }
            self.show_parked(&mailbox, &state).await?;
        }
        *self.parked.borrow_mut() = states;
        Ok(())
    }

    pub(super) async fn show_parked(
        &self,
        mailbox: &str,
        state: &ParkState,
    ) -> Result<(), StoreError> {
        let n = self.store.parked_len(mailbox).await?;
        metrics::gauge!(m::PARKED_ENTRIES, "mailbox" => mailbox.to_string()).set(n as f64);
        let retry_in = state.next_ms.saturating_sub(now_ms()) / 1_000;
        self.health.set_source_error(
            &park_key(mailbox),
            Some(format!(
                "{n} entries parked: {}; next retry in {retry_in} s",
                state.reason
            )),
        );
        Ok(())
    }
}

/// The `/ready` name of a parked mailbox.
pub(super) fn park_key(mailbox: &str) -> String {
    format!("parked:{mailbox}")
}

/// How often the processor looks at the parked mailboxes (due probes, `/ready`).
pub(super) const PARK_TEND_EVERY: Duration = Duration::from_secs(1);
