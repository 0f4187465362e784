//! Every Redis key name, built in one place from `redis.prefix`.
//!
//! Put a Redis Cluster hash tag inside the prefix (`{ms1}:`) and every key of one pipeline lands
//! in one slot, which keeps the MULTI/EXEC hand-offs and the Lua scripts legal on a cluster.
//! Every key starts with the prefix, so its first `{…}` is the prefix's tag whatever follows
//! (a mailbox or a Message-ID with braces in it cannot move a key to another slot).

/// Consumer group that moves inbound entries to the outbound stream.
pub(crate) const PROCESSORS: &str = "processors";
/// Consumer group that delivers outbound entries to MS4.
pub(crate) const SENDERS: &str = "senders";
/// Consumer group that marks delivered messages read in Graph (unread mode).
pub(crate) const GRAPH_MARK_READ: &str = "markers";
/// Consumer group that applies IMAP after-delivery actions (`\Seen`, move).
pub(crate) const IMAP_AFTER_DELIVERY: &str = "imap_finishers";
// (Group names are state in Redis: renaming one would orphan its pending entries.)

/// A day in ms: what is kept by the day (`ended:{day}`, `marks:{day}`) is named by
/// `ms / DAY_MS`.
pub(crate) const DAY_MS: u64 = 86_400_000;

/// Key names under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
        }
    }

    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Source messages waiting to be turned into records.
    pub fn inbound(&self) -> String {
        format!("{}stream:inbound", self.prefix)
    }

    /// Large inbound entries written since a budgeted read last reached the end of the inbound
    /// stream ([`large`](super::large)).
    pub(crate) fn inbound_large(&self) -> String {
        format!("{}stream:inbound:large", self.prefix)
    }

    /// Set (to the time) by the first reader that relied on [`inbound_large`](Self::inbound_large):
    /// every inbound entry written since is counted.
    pub(crate) fn inbound_large_counted(&self) -> String {
        format!("{}stream:inbound:large:counted", self.prefix)
    }

    /// MS4 records waiting to be delivered.
    pub fn outbound(&self) -> String {
        format!("{}stream:outbound", self.prefix)
    }

    /// Dead letters: entries that cannot be processed or that MS4 rejected.
    pub fn dlq(&self) -> String {
        format!("{}stream:dlq", self.prefix)
    }

    /// The idempotency marks (hash: record key → content digest; see [`marks`](super::marks)).
    pub(crate) fn marks(&self) -> String {
        format!("{}marks", self.prefix)
    }

    /// The record keys marked on the day of `ms` (a list), for the sweep that removes their
    /// marks once they are older than the TTL.
    pub(crate) fn marked_on(&self, ms: u64) -> String {
        format!("{}marks:{}", self.prefix, ms / DAY_MS)
    }

    /// The days that have a [`marked_on`](Self::marked_on) list (sorted set: the day, scored
    /// by itself).
    pub(crate) fn marked_days(&self) -> String {
        format!("{}marks:days", self.prefix)
    }

    /// Until when (ms) idempotency marks may also be the keys versions before the marks hash
    /// wrote, [`legacy_seen`](Self::legacy_seen) (`0`: none can exist).
    pub(crate) fn marks_legacy_until(&self) -> String {
        format!("{}marks:legacy_until", self.prefix)
    }

    /// The idempotency mark of one record key as versions before the marks hash wrote it (a
    /// string with its own lifetime): still read until
    /// [`marks_legacy_until`](Self::marks_legacy_until).
    pub(crate) fn legacy_seen(&self, idempotency_key: &str) -> String {
        format!("{}seen:{}", self.prefix, idempotency_key)
    }

    /// Intake mark of a record key: a poller queued it already (skips re-fetched mail).
    pub(crate) fn queued(&self, idempotency_key: &str) -> String {
        format!("{}queued:{}", self.prefix, idempotency_key)
    }

    /// Intake mark of a webhook ref: the message `id` of `mailbox` is queued already (a
    /// repeated notification is not queued again).
    pub(crate) fn ref_queued(&self, mailbox: &str, id: &str) -> String {
        format!("{}queued:ref:{}:{}", self.prefix, mailbox, id)
    }

    /// Fleet-wide counters (processed, delivered, dead_lettered, duplicates), updated in the
    /// same MULTI/EXEC as the work they count.
    pub(crate) fn stats(&self) -> String {
        format!("{}stats", self.prefix)
    }

    /// The current session (hash) and one past session.
    pub(crate) fn session_current(&self) -> String {
        format!("{}session:current", self.prefix)
    }
    pub(crate) fn session(&self, id: &str) -> String {
        format!("{}session:{}", self.prefix, id)
    }
    /// Past sessions by start time (ZSET of ids).
    pub(crate) fn sessions(&self) -> String {
        format!("{}sessions", self.prefix)
    }

    /// Theoretical arrival time of the next permit of a rate budget (GCRA).
    pub(crate) fn rate_tat(&self, budget: &str) -> String {
        format!("{}ratelimit:{}:tat", self.prefix, budget)
    }

    /// Graph requests in flight for a mailbox (permits with lease expiry).
    pub(crate) fn graph_in_flight(&self, mailbox: &str) -> String {
        format!("{}ratelimit:graph:{}:inflight", self.prefix, mailbox)
    }

    /// Graph requests of a mailbox within the sliding window.
    pub(crate) fn graph_window(&self, mailbox: &str) -> String {
        format!("{}ratelimit:graph:{}:window", self.prefix, mailbox)
    }

    /// Sliding window of an app registration's Graph requests, across every tenant and mailbox.
    pub(crate) fn graph_app_window(&self, app: &str) -> String {
        format!("{}ratelimit:graph-app:{}:window", self.prefix, app)
    }

    /// Delta cursor (or poll state) of a mailbox.
    pub(crate) fn cursor(&self, mailbox: &str) -> String {
        format!("{}cursor:{}", self.prefix, mailbox)
    }

    /// Lease of the poller of a mailbox, and its fencing counter.
    pub(crate) fn poller_lease(&self, mailbox: &str) -> String {
        format!("{}lease:poller:{}", self.prefix, mailbox)
    }

    /// Graph subscription of a mailbox.
    pub(crate) fn subscription(&self, mailbox: &str) -> String {
        format!("{}webhook:subscription:{}", self.prefix, mailbox)
    }

    /// The mailbox a Graph subscription id belongs to (any daemon may receive its
    /// notifications, not only the one that created it).
    pub(crate) fn subscription_owner(&self, id: &str) -> String {
        format!("{}webhook:subscription-id:{}", self.prefix, id)
    }

    /// The live daemons of one fleet (sorted set; `fleet`: a digest of their source list).
    pub(crate) fn fleet(&self, fleet: &str) -> String {
        format!("{}fleet:{}", self.prefix, fleet)
    }

    /// Messages to mark read in Graph once MS4 accepted them (unread mode).
    pub(crate) fn mark_read(&self) -> String {
        format!("{}stream:markread", self.prefix)
    }

    /// IMAP messages whose after-delivery action (`\Seen` or move) is due: MS4 accepted them.
    pub(crate) fn imap_done(&self) -> String {
        format!("{}stream:imapdone", self.prefix)
    }

    /// Parked mailboxes: mailbox → its [`ParkState`](super::park::ParkState) as JSON.
    pub(crate) fn parked(&self) -> String {
        format!("{}parked", self.prefix)
    }

    /// The entries of one mailbox that are parked until Graph serves the mailbox again.
    pub(crate) fn parked_entries(&self, mailbox: &str) -> String {
        format!("{}stream:parked:{}", self.prefix, mailbox)
    }

    /// What the poller of a source is doing (hash: state, since_ms, reason), for the operator.
    pub(crate) fn poller_state(&self, lease: &str) -> String {
        format!("{}poller:{}", self.prefix, lease)
    }

    /// Messages each source (Graph mailbox, IMAP source) queued on the UTC day of `now_ms`
    /// (hash: source → count), kept two days.
    pub(crate) fn intake_today(&self, now_ms: u64) -> String {
        format!("{}history:intake:{}", self.prefix, now_ms / DAY_MS)
    }

    /// What became of the records delivered or dead-lettered on the day of `ms` (hash: key →
    /// `1` accepted by MS4, `0` dead-lettered): where a later copy of a message learns its
    /// first copy's end state.
    pub(crate) fn ended_on(&self, ms: u64) -> String {
        format!("{}ended:{}", self.prefix, ms / DAY_MS)
    }

    /// Follow-ups of later copies waiting for their first copy's end state (hash: key → JSON).
    pub(crate) fn follow_ups_waiting(&self) -> String {
        format!("{}followups:waiting", self.prefix)
    }

    /// Records delivered to MS4 in the minute that starts at `minute` (ms since the epoch,
    /// a multiple of 60,000), kept two hours.
    pub(crate) fn delivered_in_minute(&self, minute: u64) -> String {
        format!("{}history:delivered:{}", self.prefix, minute / 60_000)
    }

    /// The permits of a rate budget granted in its last minute (a sorted set by grant time).
    pub(crate) fn rate_log(&self, budget: &str) -> String {
        format!("{}ratelimit:{}:log", self.prefix, budget)
    }

    /// Until when every holder of a rate budget is paused (a Retry-After).
    pub(crate) fn rate_pause(&self, budget: &str) -> String {
        format!("{}ratelimit:{}:pause", self.prefix, budget)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_the_prefix_with_its_hash_tag() {
        let k = Keys::new("{ms1}:");
        assert_eq!(k.inbound(), "{ms1}:stream:inbound");
        assert_eq!(k.dlq(), "{ms1}:stream:dlq");
        assert_eq!(k.legacy_seen("<a@b>"), "{ms1}:seen:<a@b>");
        assert_eq!(k.marked_on(1_764_500_000_000), "{ms1}:marks:20422");
        assert_eq!(k.rate_tat("ms4"), "{ms1}:ratelimit:ms4:tat");
    }

    #[test]
    fn every_key_of_a_tagged_prefix_is_in_one_cluster_slot() {
        use redis::cluster_routing::Slot;
        let k = Keys::new("{ms1}:");
        // Names chosen to tempt a wrong slot: braces of their own, empty, odd characters.
        let odd = ["a{b}c@x.example", "}{", "", "{x}", "<id{1}@host>"];
        let mut all = vec![
            k.inbound(),
            k.outbound(),
            k.dlq(),
            k.stats(),
            k.session_current(),
            k.sessions(),
            k.mark_read(),
            k.imap_done(),
            k.marks(),
            k.marked_days(),
            k.marks_legacy_until(),
        ];
        for n in odd {
            all.extend([
                k.legacy_seen(n),
                k.queued(n),
                k.ref_queued(n, n),
                k.session(n),
                k.rate_tat(n),
                k.graph_in_flight(n),
                k.graph_window(n),
                k.cursor(n),
                k.poller_lease(n),
                k.subscription(n),
                k.subscription_owner(n),
                k.fleet(n),
                k.rate_pause(n),
                k.rate_log(n),
                k.poller_state(n),
                k.graph_app_window(n),
            ]);
        }
        for at in [0, 1_764_500_000_000] {
            all.extend([
                k.intake_today(at),
                k.delivered_in_minute(at),
                k.marked_on(at),
                k.ended_on(at),
            ]);
        }
        let slot = Slot::for_key("ms1");
        for key in &all {
            assert_eq!(Slot::for_key(key), slot, "{key}");
        }
    }
}
