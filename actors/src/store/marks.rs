//! Idempotency marks: the record keys the BatchProcessor has handed off, each with the content
//! digest of its message (sender, subject, the sender's date; `1` for marks older than digests).
//!
//! A key whose mark holds the same digest is a repeat (a later copy, see
//! [`copies`](super::copies)); with another digest it is another message reusing the
//! Message-ID, delivered under the key and its digest.
//!
//! The marks of one day are one hash (`marks:{day}`: key → digest), written with the hand-off
//! that queues the records and kept `redis.idempotency_ttl_s` plus a day after its last write.
//! A key is looked up in every day hash that can still hold a mark younger than the TTL, the
//! newest first, so a mark lives at least the TTL and at most a day longer. One `HSET` a
//! hand-off costs Redis less than a key with its own lifetime a record did (issue 14: ~1.7 µs a
//! record, in a keyspace growing by every record).
//!
//! Versions before wrote one such key a mark (`seen:{key}`, [`Keys::legacy_seen`]). When this
//! version first looks at a deployment that ran one (its `stats` hash exists), it records
//! until when those marks may still live (the TTL plus a day from then:
//! [`Keys::marks_legacy_until`]), and until then they are read too, after the day hashes. A
//! rolling upgrade finished within that day leaves no mark unread. A fresh deployment records
//! `0` and never reads them.
//!
//! [`Keys::legacy_seen`]: super::keys::Keys::legacy_seen
//! [`Keys::marks_legacy_until`]: super::keys::Keys::marks_legacy_until

use super::keys::{live_days, DAY_MS};
use super::outbound::OutboundRecord;
use super::{Store, StoreResult};
use redis::Script;
use std::sync::LazyLock;

/// Records, once, until when the marks of versions before may live (see the module) and
/// returns it. KEYS[1] the `marks:legacy_until` key, KEYS[2] the `stats` hash; ARGV[1] the
/// time to record when `stats` exists.
static LEGACY_UNTIL: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local at = redis.call('GET', KEYS[1])
if not at then
  at = '0'
  if redis.call('EXISTS', KEYS[2]) == 1 then
    at = ARGV[1]
  end
  redis.call('SET', KEYS[1], at)
end
return tonumber(at)
",
    )
});

impl Store {
    /// Adds to a transaction being built: `pairs` into the day hash `day`, which then lives
    /// `ttl_s` plus a day (so every entry lives at least `ttl_s`; readers look in
    /// [`live_days`]). Nothing when `pairs` is empty.
    pub(super) fn push_day_hash<'a>(
        pipe: &mut redis::Pipeline,
        day: &str,
        pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
        ttl_s: u64,
    ) {
        let mut pairs = pairs.into_iter().peekable();
        if pairs.peek().is_none() {
            return;
        }
        pipe.cmd("HSET").arg(day);
        for (field, value) in pairs {
            pipe.arg(field).arg(value);
        }
        pipe.ignore();
        pipe.cmd("EXPIRE")
            .arg(day)
            .arg(ttl_s + DAY_MS / 1_000)
            .ignore();
    }

    /// Adds the idempotency marks of `records` to a hand-off being built.
    pub(super) fn push_marks(
        &self,
        pipe: &mut redis::Pipeline,
        records: &[OutboundRecord],
        ttl_s: u64,
    ) {
        let day = self.keys.marks_on(crate::clock::now_ms());
        let pairs = records.iter().map(|r| (r.key.as_str(), r.digest.as_str()));
        Self::push_day_hash(pipe, &day, pairs, ttl_s);
    }

    /// The day hashes a mark younger than `ttl_s` can be in, today's first.
    pub(super) fn mark_days(&self, now_ms: u64, ttl_s: u64) -> Vec<String> {
        live_days(now_ms, ttl_s)
            .map(|ms| self.keys.marks_on(ms))
            .collect()
    }

    /// Whether marks of versions before may still exist (see the module). Asked of Redis once
    /// a store (and its clones); the answer's time does not change.
    pub(super) async fn legacy_marks(&self, now_ms: u64, ttl_s: u64) -> StoreResult<bool> {
        let until = match self.legacy_marks_until.get() {
            Some(until) => *until,
            None => {
                let until: u64 = LEGACY_UNTIL
                    .key(self.keys.marks_legacy_until())
                    .key(self.keys.stats())
                    .arg(now_ms + ttl_s.saturating_mul(1_000) + DAY_MS)
                    .invoke_async(&mut self.conn())
                    .await?;
                *self.legacy_marks_until.get_or_init(|| until)
            }
        };
        Ok(now_ms < until)
    }

    /// The idempotency mark of each of `keys` (marks live `ttl_s`): the content digest of the
    /// message handed off under it (`1` for marks older than digests), or `None`.
    pub(crate) async fn marks(
        &self,
        keys: &[&str],
        ttl_s: u64,
    ) -> StoreResult<Vec<Option<String>>> {
        if keys.is_empty() {
            return Ok(vec![]);
        }
        let now = crate::clock::now_ms();
        let mut pipe = redis::pipe();
        for day in self.mark_days(now, ttl_s) {
            pipe.cmd("HMGET").arg(day).arg(keys);
        }
        if self.legacy_marks(now, ttl_s).await? {
            let names: Vec<String> = keys.iter().map(|k| self.keys.legacy_seen(k)).collect();
            pipe.cmd("MGET").arg(names);
        }
        let found: Vec<Vec<Option<String>>> = pipe.query_async(&mut self.conn()).await?;
        Ok(first_found(found, keys.len()))
    }
}

/// Position by position, the first value any of `lists` holds (they are in the order to look).
fn first_found(lists: Vec<Vec<Option<String>>>, n: usize) -> Vec<Option<String>> {
    let mut out = vec![None; n];
    for list in lists {
        for (o, v) in out.iter_mut().zip(list) {
            if o.is_none() {
                *o = v;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_mark_of_a_key_wins_and_older_lists_fill_the_gaps() {
        let s = |v: &str| Some(v.to_string());
        let lists = vec![
            vec![None, s("today"), None],
            vec![s("yesterday"), s("older"), None],
            vec![s("legacy"), None, None],
        ];
        assert_eq!(
            first_found(lists, 3),
            vec![s("yesterday"), s("today"), None]
        );
        assert_eq!(first_found(vec![], 2), vec![None, None]);
    }

    #[test]
    fn a_mark_is_looked_up_in_every_day_its_ttl_spans_and_the_day_its_hash_outlives() {
        let now = 20_422 * DAY_MS + 5;
        let days: Vec<u64> = live_days(now, 7 * 86_400).map(|ms| ms / DAY_MS).collect();
        assert_eq!(days, (20_414..=20_422).rev().collect::<Vec<_>>());
        // Less than a day: today's, yesterday's and the day before's.
        assert_eq!(live_days(now, 3_600).count(), 3);
        assert_eq!(live_days(0, 7 * 86_400).max(), Some(0));
    }
}
