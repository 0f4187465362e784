//! A steady trickle of new mail over every mailbox (`--trickle-per-s`, `/_sim/config`
//! `trickle_per_s`): the load of the fleet benchmark, where thousands of mailboxes each get a
//! message now and then.
//!
//! Mail arrives on whole wall-clock seconds, one message per mailbox in turn (round robin),
//! so that its `receivedDateTime` — which Graph writes in whole seconds — is the instant it
//! arrived: the MS4 simulator measures arrival → MS4 from that field alone. Storing a tick's
//! mail takes a few ms after its second; `max_stamp_lag_ms` says how many, the most by which
//! that measurement can overstate a latency (it never understates one).

use super::control::arrive;
use super::messages::draft;
use super::state::{lock, Shared};
use chrono::Utc;
use serde::Serialize;
use std::time::Duration;

/// How much mail the trickle adds, where the next goes, and what it added.
#[derive(Debug, Default, Clone, Serialize)]
pub(super) struct Trickle {
    /// New messages per second over all mailboxes (0: none).
    pub(super) per_s: f64,
    /// Messages owed but not yet added (the fraction a slow rate carries to the next tick).
    #[serde(skip)]
    credit: f64,
    /// The mailbox the next message goes to.
    #[serde(skip)]
    next_mailbox: usize,
    /// Messages added so far.
    pub(super) sent: u64,
    /// Most ms between a tick's second and the moment its last message was stored.
    pub(super) max_stamp_lag_ms: u64,
}

impl Trickle {
    pub(super) fn new(per_s: f64) -> Self {
        Self {
            per_s: per_s.max(0.0),
            ..Self::default()
        }
    }

    /// A new rate from now on; stopping drops what was owed.
    pub(super) fn set_rate(&mut self, per_s: f64) {
        self.per_s = per_s.max(0.0);
        if self.per_s == 0.0 {
            self.credit = 0.0;
        }
    }

    /// The mailboxes (indices among `mailboxes`) that get one new message each after
    /// `elapsed` at the current rate, in turn.
    pub(super) fn tick(&mut self, elapsed: Duration, mailboxes: usize) -> Vec<usize> {
        if mailboxes == 0 {
            return Vec::new();
        }
        self.credit += self.per_s * elapsed.as_secs_f64();
        let due = self.credit.floor();
        self.credit -= due;
        let picks: Vec<usize> = (0..due as usize)
            .map(|i| (self.next_mailbox + i) % mailboxes)
            .collect();
        self.next_mailbox = (self.next_mailbox + picks.len()) % mailboxes;
        self.sent += picks.len() as u64;
        picks
    }
}

/// Adds the trickle's mail on every whole second, for as long as the simulator runs.
pub(super) async fn run(state: Shared) {
    let mut last_second = Utc::now().timestamp_millis().div_euclid(1000) * 1000;
    loop {
        let now_ms = Utc::now().timestamp_millis();
        let to_next = 1000 - now_ms.rem_euclid(1000);
        actix_web::rt::time::sleep(Duration::from_millis(to_next as u64)).await;
        let second = Utc::now().timestamp_millis().div_euclid(1000) * 1000;
        let elapsed = Duration::from_millis((second - last_second).max(0) as u64);
        last_second = second;
        add_mail(&state, elapsed);
        let lag = (Utc::now().timestamp_millis() - second).max(0) as u64;
        let mut s = lock(&state);
        s.trickle.max_stamp_lag_ms = s.trickle.max_stamp_lag_ms.max(lag);
    }
}

/// One tick's mail: numbers reserved under the lock, messages drafted outside it.
fn add_mail(state: &Shared, elapsed: Duration) {
    let picks: Vec<(usize, String, u64)> = {
        let mut s = lock(state);
        let count = s.mailboxes.len();
        let picks = s.trickle.tick(elapsed, count);
        picks
            .into_iter()
            .map(|m| {
                let mb = &mut s.mailboxes[m];
                mb.next_n += 1;
                (m, mb.upn.clone(), mb.next_n - 1)
            })
            .collect()
    };
    for (mbx, upn, n) in picks {
        arrive(state, mbx, vec![draft(n, &upn, true)]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn the_trickle_visits_the_mailboxes_in_turn_at_its_rate() {
        let mut t = Trickle::new(3.0);
        assert_eq!(t.tick(SECOND, 4), [0, 1, 2]);
        assert_eq!(t.tick(SECOND, 4), [3, 0, 1]);
        assert_eq!(t.tick(Duration::from_secs(2), 4), [2, 3, 0, 1, 2, 3]);
        assert_eq!(t.sent, 12);
    }

    #[test]
    fn a_slow_trickle_carries_the_fraction_over_and_stopping_drops_it() {
        let mut t = Trickle::new(0.4);
        let per_tick: Vec<usize> = (0..5).map(|_| t.tick(SECOND, 2000).len()).collect();
        assert_eq!(per_tick, [0, 0, 1, 0, 1], "two messages in five seconds");
        t.tick(Duration::from_millis(1500), 2000); // 0.6 owed
        t.set_rate(0.0);
        assert!(t.tick(SECOND, 2000).is_empty());
        t.set_rate(0.5);
        assert!(
            t.tick(SECOND, 2000).is_empty(),
            "nothing was carried over the stop"
        );
        assert_eq!(t.tick(SECOND, 2000), [2]);
        assert_eq!(Trickle::new(-1.0).per_s, 0.0);
        assert!(Trickle::new(5.0).tick(SECOND, 0).is_empty(), "no mailbox");
    }
}
