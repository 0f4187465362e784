//! Which messages a poll lists in unread mode, so that a poll costs what is new rather than
//! what stays unread (issue 15: dead letters left unread, a parked mailbox's messages).
//!
//! A poll lists the unread messages received since the **floor** of the last complete listing
//! less `graph.unread_overlap_s`. The floor is a time Graph's clock had certainly passed when
//! that listing started: the floor before it plus the time elapsed since (on the daemon's
//! clock), or the newest receivedDateTime the listing saw less the listing's duration (that
//! message existed when it was seen), whichever is later. Everything unread received before
//! the floor, less the lag the overlap allows for (Exchange showing a message late, clocks
//! apart), was listed by that listing; the intake marks skip what the overlap lists again.
//! So a quiet mailbox's window moves on with time, and a poll reads the messages received
//! during the last poll interval plus the overlap, not every message still unread.
//!
//! A message can still enter the folder unread with an older receivedDateTime (moved in from
//! another folder, marked unread again): a **sweep**, a listing of the whole folder as before,
//! runs at least every `graph.unread_sweep_s` (every poll with 0) and whenever there is no
//! floor yet, and finds it within that period plus one poll interval.
//!
//! The mark ([`UnreadMark`]) is written with the last page of a complete listing, in the
//! lease-fenced page script; a listing cut short (crash, throttling, a lost lease, draining)
//! leaves the mark before it, so the next listing starts at least as early.

use crate::clients::graph::Page;
use crate::store::poll::UnreadMark;

/// One unread listing, from its plan to the mark it leaves when complete.
#[derive(Debug, Clone)]
pub(crate) struct UnreadListing {
    /// Lists the messages received since this (ms); `None`: the whole folder (a sweep).
    pub since_ms: Option<i64>,
    /// When it started, on the daemon's clock (ms).
    started_ms: i64,
    /// A time Graph's clock had passed at the start: the mark's floor plus the time since.
    floor_at_start: Option<i64>,
    /// The newest receivedDateTime on its pages so far.
    newest_ms: Option<i64>,
    /// The sweep before it, when it is not one.
    swept_ms: Option<i64>,
}

impl UnreadListing {
    /// The listing a poll starting at `now_ms` makes after `mark`.
    pub(crate) fn plan(mark: &UnreadMark, now_ms: i64, overlap_s: u64, sweep_s: u64) -> Self {
        let floor_at_start = mark
            .floor_ms
            .zip(mark.listed_ms)
            .map(|(floor, listed)| floor + (now_ms - listed).max(0));
        let sweep_due = match mark.swept_ms {
            _ if sweep_s == 0 || mark.floor_ms.is_none() => true,
            None => true,
            // A clock set back counts as due: the sweep then resets it.
            Some(swept) => now_ms < swept || now_ms - swept >= secs_ms(sweep_s),
        };
        Self {
            since_ms: (!sweep_due)
                .then_some(mark.floor_ms)
                .flatten()
                .map(|floor| floor - secs_ms(overlap_s)),
            started_ms: now_ms,
            floor_at_start,
            newest_ms: None,
            swept_ms: mark.swept_ms,
        }
    }

    /// Whether it reads the whole folder.
    pub(crate) fn is_sweep(&self) -> bool {
        self.since_ms.is_none()
    }

    /// Takes note of a page read.
    pub(crate) fn saw(&mut self, page: &Page) {
        let newest = page.items.iter().filter_map(|i| i.received_ms).max();
        self.newest_ms = self.newest_ms.max(newest);
    }

    /// The mark to write with its last page, read by `ended_ms`.
    pub(crate) fn mark_after(&self, ended_ms: i64) -> UnreadMark {
        let took = (ended_ms - self.started_ms).max(0);
        let floor = self.floor_at_start.max(self.newest_ms.map(|n| n - took));
        UnreadMark {
            floor_ms: floor,
            listed_ms: floor.map(|_| self.started_ms),
            swept_ms: if self.is_sweep() {
                Some(self.started_ms)
            } else {
                self.swept_ms
            },
        }
    }
}

fn secs_ms(s: u64) -> i64 {
    i64::try_from(s.saturating_mul(1_000)).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clients::graph::parse_page;

    const T0: i64 = 1_764_000_000_000;

    fn page_received(times: &[&str]) -> Page {
        let items: Vec<String> = times
            .iter()
            .enumerate()
            .map(|(i, t)| format!(r#"{{"id":"A{i}","receivedDateTime":"{t}"}}"#))
            .collect();
        parse_page(format!(r#"{{"value":[{}]}}"#, items.join(",")).as_bytes()).unwrap()
    }

    #[test]
    fn the_first_listing_sweeps_and_its_newest_message_less_its_duration_becomes_the_floor() {
        let mut l = UnreadListing::plan(&UnreadMark::default(), T0, 300, 3_600);
        assert!(l.is_sweep());
        // 2025-11-24T16:00:00Z = T0 / 1000.
        l.saw(&page_received(&[
            "2025-11-24T15:00:00Z",
            "2025-11-24T16:00:10Z",
        ]));
        l.saw(&page_received(&["2025-11-24T15:30:00Z"]));
        let mark = l.mark_after(T0 + 4_000);
        assert_eq!(mark.floor_ms, Some(T0 + 10_000 - 4_000));
        assert_eq!((mark.listed_ms, mark.swept_ms), (Some(T0), Some(T0)));
    }

    #[test]
    fn a_quiet_mailbox_window_moves_on_with_time_and_lists_since_the_floor_less_the_overlap() {
        let mark = UnreadMark {
            floor_ms: Some(T0),
            listed_ms: Some(T0 + 500),
            swept_ms: Some(T0 + 500),
        };
        let later = T0 + 500 + 60_000;
        let l = UnreadListing::plan(&mark, later, 300, 3_600);
        assert_eq!(l.since_ms, Some(T0 - 300_000));
        // Nothing seen: the floor still moves by the time elapsed.
        let after = l.mark_after(later + 1_000);
        assert_eq!(after.floor_ms, Some(T0 + 60_000));
        assert_eq!(after.listed_ms, Some(later));
        assert_eq!(after.swept_ms, Some(T0 + 500), "not a sweep: kept");
        let next = UnreadListing::plan(&after, later + 60_000, 300, 3_600);
        assert_eq!(next.since_ms, Some(T0 + 60_000 - 300_000));
    }

    #[test]
    fn a_sweep_comes_every_sweep_period_every_poll_with_zero_and_after_a_clock_set_back() {
        let mark = UnreadMark {
            floor_ms: Some(T0),
            listed_ms: Some(T0),
            swept_ms: Some(T0),
        };
        let plan = |now: i64, sweep_s: u64| UnreadListing::plan(&mark, now, 300, sweep_s);
        assert!(!plan(T0 + 3_599_999, 3_600).is_sweep());
        assert!(plan(T0 + 3_600_000, 3_600).is_sweep());
        assert!(plan(T0 + 1_000, 0).is_sweep());
        assert!(plan(T0 - 1_000, 3_600).is_sweep());
        let no_floor = UnreadMark {
            floor_ms: None,
            ..mark
        };
        assert!(UnreadListing::plan(&no_floor, T0 + 1, 300, 3_600).is_sweep());
    }

    #[test]
    fn the_floor_never_moves_back_and_an_empty_first_sweep_leaves_none() {
        let mark = UnreadMark {
            floor_ms: Some(T0),
            listed_ms: Some(T0),
            swept_ms: Some(T0),
        };
        // A slow listing whose newest message is old: the floor from the mark wins.
        let mut l = UnreadListing::plan(&mark, T0 + 10_000, 0, 3_600);
        l.saw(&page_received(&["2025-11-24T15:00:00Z"]));
        assert_eq!(l.mark_after(T0 + 70_000).floor_ms, Some(T0 + 10_000));
        let empty = UnreadListing::plan(&UnreadMark::default(), T0, 300, 3_600);
        let mark = empty.mark_after(T0 + 100);
        assert_eq!((mark.floor_ms, mark.listed_ms), (None, None));
        assert_eq!(mark.swept_ms, Some(T0));
    }
}
