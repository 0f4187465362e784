//! Idempotency marks: the record keys the BatchProcessor has handed off, each with the content
//! digest of its message (sender, subject, the sender's date; `1` for marks older than digests).
//!
//! A key whose mark holds the same digest is a repeat (a later copy, see
//! [`copies`](super::copies)); with another digest it is another message reusing the
//! Message-ID, delivered under the key and its digest.
//!
//! The marks are one hash (`marks`: key → digest), written with the hand-off that queues the
//! records, and looked up with one `HMGET`. The same hand-off appends the keys to the list of
//! the day (`marks:{day}`, its day in the sorted set `marks:days`). Redis keeps no lifetime a
//! field, so the BatchProcessors sweep: once every mark of a day is older than
//! `redis.idempotency_ttl_s`, its keys are removed from the hash a thousand at a time, and the
//! list with the last of them ([`Store::sweep_marks`]). A mark thus lives at least the TTL, a
//! day more at most while a daemon runs. (Two processors that hand off one key at once, either
//! side of midnight, list it on both days, and the first day's sweep takes its mark a day early:
//! a repeat after that is delivered again, and MS4 drops it by its key.) A field and a list element cost Redis less than a key
//! with its own lifetime a record did (issue 14: ~1.7 µs a record, in a keyspace growing by
//! every record), and the lookup stays one probe a key, however many days the TTL spans.
//!
//! Versions before wrote one such key a mark (`seen:{key}`, [`Keys::legacy_seen`]). When this
//! version first looks at a deployment that ran one (its `stats` hash exists), it records
//! until when those marks may still live (the TTL plus a day from then:
//! [`Keys::marks_legacy_until`]), and until then they are read too. A rolling upgrade finished
//! within that day leaves no mark unread. A fresh deployment records `0` and never reads them.
//!
//! [`Keys::legacy_seen`]: super::keys::Keys::legacy_seen
//! [`Keys::marks_legacy_until`]: super::keys::Keys::marks_legacy_until

use super::keys::DAY_MS;
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

/// Removes the marks of up to ARGV[2] keys from the head of one day's list, and the day from
/// the sorted set once its list is gone; returns how many. Atomic, so sweepers side by side
/// never skip a key. KEYS[1] the marks hash, KEYS[2] the day's list, KEYS[3] `marks:days`;
/// ARGV[1] the day.
static SWEEP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local keys = redis.call('LRANGE', KEYS[2], 0, tonumber(ARGV[2]) - 1)
if #keys > 0 then
  redis.call('HDEL', KEYS[1], unpack(keys))
  redis.call('LTRIM', KEYS[2], #keys, -1)
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('ZREM', KEYS[3], ARGV[1])
end
return #keys
",
    )
});

/// Keys a sweep script call takes.
const SWEEP_BATCH: usize = 1_000;

impl Store {
    /// Adds the idempotency marks of `records` to a hand-off being built.
    pub(super) fn push_marks(&self, pipe: &mut redis::Pipeline, records: &[OutboundRecord]) {
        if records.is_empty() {
            return;
        }
        pipe.cmd("HSET").arg(self.keys.marks());
        for r in records {
            pipe.arg(&r.key).arg(&r.digest);
        }
        pipe.ignore();
        let now = crate::clock::now_ms();
        pipe.cmd("RPUSH").arg(self.keys.marked_on(now));
        for r in records {
            pipe.arg(&r.key);
        }
        pipe.ignore();
        let day = now / DAY_MS;
        pipe.cmd("ZADD")
            .arg(self.keys.marked_days())
            .arg(day)
            .arg(day)
            .ignore();
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
        if !self.legacy_marks(now, ttl_s).await? {
            return Ok(redis::cmd("HMGET")
                .arg(self.keys.marks())
                .arg(keys)
                .query_async(&mut self.conn())
                .await?);
        }
        let names: Vec<String> = keys.iter().map(|k| self.keys.legacy_seen(k)).collect();
        let (marks, legacy): (Vec<Option<String>>, Vec<Option<String>>) = redis::pipe()
            .cmd("HMGET")
            .arg(self.keys.marks())
            .arg(keys)
            .cmd("MGET")
            .arg(names)
            .query_async(&mut self.conn())
            .await?;
        Ok(marks
            .into_iter()
            .zip(legacy)
            .map(|(m, l)| m.or(l))
            .collect())
    }

    /// One step of the sweep (see the module): removes the marks of up to `max` keys whose day
    /// is entirely older than `ttl_s`, the oldest day first. Returns how many it removed (fewer
    /// than `max`: nothing older is left).
    pub(crate) async fn sweep_marks(&self, ttl_s: u64, max: usize) -> StoreResult<usize> {
        let Some(last) = last_expired_day(crate::clock::now_ms(), ttl_s) else {
            return Ok(0);
        };
        let mut removed = 0;
        while removed < max {
            let days: Vec<u64> = redis::cmd("ZRANGEBYSCORE")
                .arg(self.keys.marked_days())
                .arg("-inf")
                .arg(last)
                .arg("LIMIT")
                .arg(0)
                .arg(1)
                .query_async(&mut self.conn())
                .await?;
            let Some(day) = days.first() else {
                break;
            };
            let n: usize = SWEEP
                .key(self.keys.marks())
                .key(self.keys.marked_on(day * DAY_MS))
                .key(self.keys.marked_days())
                .arg(day)
                .arg(SWEEP_BATCH.min(max - removed))
                .invoke_async(&mut self.conn())
                .await?;
            removed += n;
        }
        Ok(removed)
    }
}

/// The last day (`ms / DAY_MS`) that ended at least `ttl_s` before `now_ms`: every mark written
/// on it or before is older than the TTL. `None` before the first such day.
fn last_expired_day(now_ms: u64, ttl_s: u64) -> Option<u64> {
    (now_ms.saturating_sub(ttl_s.saturating_mul(1_000)) / DAY_MS).checked_sub(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_day_is_swept_once_it_ended_the_ttl_ago_and_not_before() {
        let week = 7 * 86_400;
        // Day 10 ends at the start of day 11: swept from 11 days + the TTL on, not a ms before.
        let ends = 11 * DAY_MS + week * 1_000;
        assert_eq!(last_expired_day(ends, week), Some(10));
        assert_eq!(last_expired_day(ends - 1, week), Some(9));
        // Before the first day has ended a TTL ago: nothing; a TTL past the clock: nothing.
        assert_eq!(last_expired_day(DAY_MS + week * 1_000 - 1, week), None);
        assert_eq!(last_expired_day(5, u64::MAX), None);
    }
}
