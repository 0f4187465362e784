//! Unread mode reads what is new, not what is stuck: messages that stay unread for a known
//! reason (here dead letters, left unread) must not make every poll read more pages. The
//! daemon against the Graph simulator (which counts the list requests of every listing, and
//! those of listings read from the folder's start) and the MS4 simulator (which refuses the
//! stuck messages' records: their sender is not an e-mail address).

mod common;

use common::{wait_until, World, MAILBOXES};
use serde_json::{json, Value};
use std::time::Duration;

const MINUTES: Duration = Duration::from_secs(180);
const PAGE_SIZE: u64 = 50;
/// Rounds of new mail while the requests are counted, and messages per round.
const ROUNDS: u64 = 10;
const PER_ROUND: u64 = 5;
/// The listing's overlap and the sweep period the daemon runs with, in seconds.
const OVERLAP_S: &str = "2";
const SWEEP_S: u64 = 8;

/// What the unread listings of one mailbox cost between two readings of the simulator.
#[derive(Debug, Clone, Copy)]
struct ListingCost {
    /// Listings opened (one a poll) and their pages (list requests).
    polls: u64,
    pages: u64,
    /// Of those, the listings read from the folder's start (sweeps) and their pages.
    full_polls: u64,
    full_pages: u64,
}

impl ListingCost {
    fn read(world: &World, mailbox: &str) -> Self {
        let s: Value = world.graph().stats()["mailboxes"][mailbox].clone();
        let n = |k: &str| s[k].as_u64().unwrap_or(0);
        Self {
            polls: n("list_starts"),
            pages: n("list_requests"),
            full_polls: n("full_list_starts"),
            full_pages: n("full_list_requests"),
        }
    }

    fn since(self, before: Self) -> Self {
        Self {
            polls: self.polls - before.polls,
            pages: self.pages - before.pages,
            full_polls: self.full_polls - before.full_polls,
            full_pages: self.full_pages - before.full_pages,
        }
    }

    /// Polls that listed only from a recent time, and their pages.
    fn incremental(self) -> (u64, u64) {
        (self.polls - self.full_polls, self.pages - self.full_pages)
    }

    fn per_poll(pages: u64, polls: u64) -> f64 {
        pages as f64 / polls.max(1) as f64
    }
}

/// One mailbox in unread mode with `stuck` messages MS4 refuses (dead-lettered, left unread),
/// then new mail in rounds: what the polls cost while it comes in. Every new message is
/// delivered, and a message moved in with a receivedDateTime an hour old is found by a sweep.
fn polls_with_stuck_messages(stuck: u64) -> ListingCost {
    let world = World::with_graph(&["--rate-limit-per-min", "0"], &[]);
    let mailbox = MAILBOXES[0];
    if stuck > 0 {
        world.graph().post(
            "/_sim/mail",
            json!({"mailbox": mailbox, "count": stuck, "invalid": stuck}),
        );
    }
    let sweep_s = SWEEP_S.to_string();
    let page_size = PAGE_SIZE.to_string();
    let daemon = world.graph_daemon(&[
        ("MS1__GRAPH__MODE", "unread"),
        ("MS1__GRAPH__MAILBOXES", mailbox),
        ("MS1__GRAPH__POLL_INTERVAL_S", "1"),
        ("MS1__GRAPH__PAGE_SIZE", &page_size),
        ("MS1__GRAPH__UNREAD_OVERLAP_S", OVERLAP_S),
        ("MS1__GRAPH__UNREAD_SWEEP_S", &sweep_s),
    ]);
    assert!(
        wait_until(MINUTES, || world.dead_letters().len() as u64 == stuck),
        "{} of {stuck} dead letters\n{}",
        world.dead_letters().len(),
        daemon.log_tail(30)
    );
    let unread = || world.graph_unread(mailbox) as u64;
    // One round before counting: the first listings (the first of all reads the folder from
    // its start) are behind once a new message is delivered and the overlap has passed.
    let mut delivered = 0;
    let round = |delivered: &mut u64| {
        world.mail(mailbox, PER_ROUND);
        *delivered += PER_ROUND;
        world.wait_delivered(*delivered, MINUTES, &daemon);
        std::thread::sleep(Duration::from_millis(1_000));
    };
    round(&mut delivered);
    std::thread::sleep(Duration::from_secs(3));
    let before = ListingCost::read(&world, mailbox);
    for _ in 0..ROUNDS {
        round(&mut delivered);
    }
    let cost = ListingCost::read(&world, mailbox).since(before);
    let (polls, pages) = cost.incremental();
    eprintln!(
        "stuck {stuck:>5}: {} polls, {} list requests ({:.2} a poll); incremental {polls} polls, \
         {pages} requests ({:.2} a poll); sweeps {} polls, {} requests",
        cost.polls,
        cost.pages,
        ListingCost::per_poll(cost.pages, cost.polls),
        ListingCost::per_poll(pages, polls),
        cost.full_polls,
        cost.full_pages,
    );
    assert!(
        wait_until(MINUTES, || unread() == stuck),
        "new messages left unread: {} unread, {stuck} stuck",
        unread()
    );

    // Moved in from another folder, an hour old: older than anything a recent listing asks
    // for, found by the next sweep.
    world.graph().post(
        "/_sim/mail",
        json!({"mailbox": mailbox, "count": 1, "received_ago_s": 3_600}),
    );
    let started = std::time::Instant::now();
    world.wait_delivered(delivered + 1, Duration::from_secs(SWEEP_S + 30), &daemon);
    eprintln!(
        "stuck {stuck:>5}: a message an hour old found after {:.1} s (sweep every {SWEEP_S} s)",
        started.elapsed().as_secs_f64()
    );
    world.assert_drained();
    cost
}

#[test]
fn unread_polls_cost_what_is_new_not_what_is_stuck() {
    // Every figure first (they are the measurement), then the checks.
    let costs: Vec<(u64, ListingCost)> = [0, 100, 1_000]
        .into_iter()
        .map(|stuck| (stuck, polls_with_stuck_messages(stuck)))
        .collect();
    let mut per_poll = Vec::new();
    for &(stuck, cost) in &costs {
        let (polls, pages) = cost.incremental();
        // Each poll between sweeps finds at most PER_ROUND new messages: one page; one more
        // is the most the overlap may add.
        assert!(
            polls >= ROUNDS,
            "stuck {stuck}: {polls} of {} polls listed from a recent time: every poll read the \
             folder from its start ({:.2} requests a poll): {costs:?}",
            cost.polls,
            ListingCost::per_poll(cost.pages, cost.polls)
        );
        let c = ListingCost::per_poll(pages, polls);
        assert!(
            c <= 2.0,
            "stuck {stuck}: {c:.2} requests a poll between sweeps: {costs:?}"
        );
        per_poll.push(c);
    }
    let least = per_poll.iter().copied().fold(f64::MAX, f64::min);
    let most = per_poll.iter().copied().fold(0.0, f64::max);
    assert!(
        most - least <= 1.0,
        "requests a poll grew with the stuck messages: {per_poll:?} ({costs:?})"
    );
}
