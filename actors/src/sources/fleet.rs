//! The fleet: the daemons that share one Redis and one source list, and which of them should
//! poll each source.
//!
//! - **Membership.** One [`Heartbeat`] per daemon renews its entry in the fleet's sorted set
//!   every third of the fleet TTL (one Redis call per daemon, not per source), removes the
//!   entries of daemons that died, and publishes the live members to the daemon's pollers
//!   through a [`watch`] channel: pollers read the cached [`FleetView`], never the set. A drain
//!   leaves the set at once. The set is per source list ([`fleet_name`]): daemons configured
//!   with other mailboxes do not count each other.
//! - **Preferred owner.** Rendezvous (highest-random-weight) hashing: a source's preferred
//!   owner is the live member with the highest [`weight`] for it. Every daemon computes the
//!   same owner from the same view; a new member becomes the preferred owner of about 1/n of
//!   the sources and of no other, a departed one hands each of its sources to the member next
//!   in line for that source. So a daemon that joins takes its share, and each source moves
//!   once, directly, to where it belongs.

use crate::shutdown::Shutdown;
use crate::store::Store;
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// The sources (by lease name) whose leases this daemon holds now: the pollers keep it, the
/// webhook receiver follows it (a mailbox's subscription is renewed by its lease holder).
pub(crate) type HeldSources = Arc<watch::Sender<BTreeSet<String>>>;

/// This daemon's view of its fleet: shared by all its pollers, refreshed by the heartbeat.
#[derive(Debug, Clone)]
pub(crate) struct FleetView {
    /// This daemon instance's id: `{consumer}:{uuid}`, new at every start. It is also the
    /// token of every lease this daemon holds, so a lease names its holder.
    pub(crate) me: Arc<str>,
    /// The live members, this daemon among them (empty until the first heartbeat).
    members: Arc<[String]>,
    /// Counts the changes of `members`: a holder offers a source to its preferred owner once
    /// per view (see [`FleetView::hands_over`]).
    pub(crate) generation: u64,
}

impl FleetView {
    /// The view before the first heartbeat: no member yet.
    pub(crate) fn new(me: String) -> Self {
        Self {
            me: me.into(),
            members: Arc::from(Vec::new()),
            generation: 0,
        }
    }

    /// The first heartbeat is in.
    pub(crate) fn is_ready(&self) -> bool {
        !self.members.is_empty()
    }

    /// The live member that should poll `source`: the highest [`weight`] (ties, which a
    /// 64-bit hash makes unlikely, go to the smaller id).
    pub(crate) fn preferred(&self, source: &str) -> Option<&str> {
        self.members
            .iter()
            .map(|m| (weight(source, m), std::cmp::Reverse(m.as_str())))
            .max()
            .map(|(_, std::cmp::Reverse(m))| m)
    }

    /// This daemon should poll `source` (also while the view is not ready: a daemon alone
    /// takes everything).
    pub(crate) fn prefers_me(&self, source: &str) -> bool {
        self.preferred(source).is_none_or(|m| *m == *self.me)
    }

    /// A holder of `source` should give it to its preferred owner: another live member is
    /// preferred, and the holder has not offered it already in this view (`offered_in`). The
    /// one offer per view keeps a source from bouncing when its preferred owner never takes it
    /// (its poller cannot start): the holder takes it back as a fallback and keeps it until
    /// the view changes.
    pub(crate) fn hands_over(&self, source: &str, offered_in: Option<u64>) -> bool {
        !self.prefers_me(source) && offered_in != Some(self.generation)
    }

    /// The same view with `members` (sorted), as a new generation when they changed.
    fn changed_to(&self, members: Vec<String>) -> Option<Self> {
        (*self.members != *members).then(|| self.with_members(members))
    }

    /// The same view with `members` (sorted), as a new generation.
    pub(crate) fn with_members(&self, members: Vec<String>) -> Self {
        Self {
            me: self.me.clone(),
            members: members.into(),
            generation: self.generation + 1,
        }
    }

    /// How many members are live.
    pub(crate) fn size(&self) -> usize {
        self.members.len()
    }
}

/// The rendezvous weight of `member` for `source`: the first 8 bytes of SHA-256 over both
/// (a hash every build and platform computes alike, so daemons of different versions agree).
pub(crate) fn weight(source: &str, member: &str) -> u64 {
    let digest = Sha256::new()
        .chain_update(source.as_bytes())
        .chain_update([0u8])
        .chain_update(member.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The fleet's name in Redis: a short digest of the sorted lease names of every source this
/// daemon polls, so only daemons with the same sources share a fleet (and sources).
pub(crate) fn fleet_name<'a>(sources: impl IntoIterator<Item = &'a str>) -> String {
    let mut names: Vec<&str> = sources.into_iter().collect();
    names.sort_unstable();
    names.dedup();
    let mut hash = Sha256::new();
    for n in names {
        hash.update(n.as_bytes());
        hash.update([b'\n']);
    }
    hex::encode(&hash.finalize()[..6])
}

/// The one heartbeat of a daemon: renews its fleet entry every `ttl / 3` and publishes the
/// live members; leaves the fleet when the daemon drains.
pub(crate) struct Heartbeat {
    pub(crate) store: Store,
    /// The fleet's name ([`fleet_name`]).
    pub(crate) fleet: String,
    /// How long an entry lives without a heartbeat: a daemon killed now is out of every
    /// view within `ttl` plus one heartbeat of the others.
    pub(crate) ttl: Duration,
    pub(crate) view: watch::Sender<FleetView>,
    pub(crate) shutdown: Shutdown,
}

impl Heartbeat {
    /// Beats until the daemon drains, then leaves the fleet. A failed beat (Redis away) keeps
    /// the last view and is tried again after a second: the leases cannot be renewed meanwhile
    /// either, and the others take over if it lasts past the TTL.
    pub(crate) async fn run(self) {
        let me = self.view.borrow().me.to_string();
        while !self.shutdown.is_raised() {
            let pause = match self.store.fleet_beat(&self.fleet, &me, self.ttl).await {
                Ok(members) => {
                    self.publish(members);
                    self.ttl / 3
                }
                Err(e) => {
                    tracing::warn!(error = %e, "fleet heartbeat failed; retrying");
                    Duration::from_secs(1).min(self.ttl / 3)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.shutdown.raised() => {}
            }
        }
        if let Err(e) = self.store.leave_fleet(&self.fleet, &me).await {
            tracing::warn!(error = %e, "could not leave the fleet; the others wait for this daemon's entry to expire");
        }
    }

    fn publish(&self, members: Vec<String>) {
        let changed = self.view.borrow().changed_to(members);
        if let Some(view) = changed {
            tracing::info!(fleet = %self.fleet, daemons = view.size(), generation = view.generation, "fleet changed");
            self.view.send_replace(view);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(me: &str, members: &[&str]) -> FleetView {
        FleetView::new(me.into()).with_members(members.iter().map(|m| m.to_string()).collect())
    }

    fn mailboxes(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("invoices-{i}@contoso.example"))
            .collect()
    }

    #[test]
    fn three_daemons_each_prefer_about_a_third_of_two_thousand_mailboxes() {
        let members = ["a:1", "b:2", "c:3"];
        let v = view("a:1", &members);
        let boxes = mailboxes(2_000);
        for m in members {
            let share = boxes.iter().filter(|b| v.preferred(b) == Some(m)).count();
            assert!((560..=780).contains(&share), "{m}: {share} of 2000");
        }
    }

    #[test]
    fn a_joining_daemon_takes_only_what_it_now_prefers_and_a_leaving_one_hands_out_only_its_own() {
        let boxes = mailboxes(600);
        let two = view("a:1", &["a:1", "b:2"]);
        let three = view("a:1", &["a:1", "b:2", "c:3"]);
        for b in &boxes {
            let (before, after) = (two.preferred(b), three.preferred(b));
            assert!(
                before == after || after == Some("c:3"),
                "{b} moved between old members"
            );
        }
        let moved = boxes
            .iter()
            .filter(|b| two.preferred(b) != three.preferred(b))
            .count();
        assert!((140..=260).contains(&moved), "{moved} of 600 moved");
    }

    #[test]
    fn a_holder_offers_a_source_once_per_view() {
        let boxes = mailboxes(50);
        let v = view("a:1", &["a:1", "b:2"]);
        let theirs = boxes.iter().find(|b| !v.prefers_me(b)).unwrap();
        let mine = boxes.iter().find(|b| v.prefers_me(b)).unwrap();
        assert!(v.hands_over(theirs, None));
        assert!(!v.hands_over(theirs, Some(v.generation)));
        assert!(!v.hands_over(mine, None));
        let next = v.changed_to(vec!["a:1".into(), "b:2".into(), "c:3".into()]);
        let next = next.unwrap();
        assert!(next.generation > v.generation);
        assert!(next.changed_to(next.members.to_vec()).is_none());
    }

    #[test]
    fn a_daemon_alone_or_before_its_first_heartbeat_prefers_everything() {
        let alone = view("a:1", &["a:1"]);
        let unready = FleetView::new("a:1".into());
        assert!(!unready.is_ready());
        for b in mailboxes(20) {
            assert!(alone.prefers_me(&b));
            assert!(unready.prefers_me(&b));
        }
    }

    #[test]
    fn the_fleet_name_depends_on_the_set_of_sources_only() {
        let a = fleet_name(["x@c", "imap:y", "z@c"]);
        assert_eq!(a, fleet_name(["z@c", "x@c", "imap:y", "x@c"]));
        assert_ne!(a, fleet_name(["x@c", "z@c"]));
        assert_eq!(a.len(), 12);
    }
}
