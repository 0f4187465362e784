//! Who polls a mailbox: two pollers reading one mailbox at once is a client's mistake.

use std::time::{Duration, Instant};

/// Who reads a mailbox's pages (list and delta), by `User-Agent`: a mailbox must have one
/// poller at a time. A poller may hand over to another (its daemon died, or its lease expired)
/// and even get the mailbox back later; but a reader coming back while the other one read a
/// page less than [`POLLER_OVERLAP`] ago means both were polling at once.
#[derive(Debug, Default)]
pub(super) struct PollerLog {
    /// Every reader seen, in order of first appearance, with its last page request.
    pub(super) seen: Vec<(String, Instant)>,
    last: String,
    /// Times a reader came back while another was reading (two pollers at once).
    pub(super) interleavings: u64,
    /// Times a reader got the mailbox back after the other had gone quiet (a hand-back).
    pub(super) handbacks: u64,
}

/// Two readers alternating within this long are polling at the same time.
const POLLER_OVERLAP: Duration = Duration::from_millis(1_000);

impl PollerLog {
    /// `agent` read a page at `now`.
    pub(super) fn saw(&mut self, agent: &str, now: Instant) {
        if agent != self.last {
            let previous = self
                .seen
                .iter()
                .find(|(a, _)| *a == self.last)
                .map(|(_, t)| *t);
            if self.seen.iter().any(|(a, _)| a == agent) {
                match previous {
                    Some(t) if now.duration_since(t) < POLLER_OVERLAP => self.interleavings += 1,
                    _ => self.handbacks += 1,
                }
            } else {
                self.seen.push((agent.to_string(), now));
            }
            self.last = agent.to_string();
        }
        if let Some(entry) = self.seen.iter_mut().find(|(a, _)| a == agent) {
            entry.1 = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poller_may_hand_over_and_back_but_not_read_alongside_another() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut log = PollerLog::default();
        log.saw("A", at(0));
        log.saw("A", at(100));
        log.saw("B", at(5_000));
        log.saw("C", at(9_000));
        assert_eq!(log.interleavings, 0, "hand-overs are fine");
        log.saw("B", at(15_000));
        assert_eq!(
            (log.interleavings, log.handbacks),
            (0, 1),
            "C went quiet: a hand-back"
        );
        log.saw("C", at(15_200));
        assert_eq!(
            log.interleavings, 1,
            "C and B read within a second: both polled"
        );
        assert_eq!(log.seen.len(), 3);
    }

    #[test]
    fn one_reader_alone_is_neither_an_interleaving_nor_a_hand_back() {
        let t0 = Instant::now();
        let mut log = PollerLog::default();
        for ms in [0, 10, 5_000] {
            log.saw("A", t0 + Duration::from_millis(ms));
        }
        assert_eq!(
            (log.interleavings, log.handbacks, log.seen.len()),
            (0, 0, 1)
        );
        assert_eq!(log.seen[0].1, t0 + Duration::from_millis(5_000));
    }
}
