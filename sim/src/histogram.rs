//! A latency histogram of bounded size and known precision, for figures such as the time from
//! a message's arrival in Graph to its acceptance by MS4: a simulator may count millions of
//! them without keeping each one.
//!
//! Values below 128 ms have a bucket each; above, every power of two is cut into 64 buckets,
//! so a reported quantile is the upper edge of its bucket: never below the true value, and at
//! most 1/64 (1.6 %) above it. The maximum is kept exactly.

use serde::ser::{Serialize, SerializeMap, Serializer};
use std::collections::BTreeMap;

/// Values below this have a bucket of their own.
const EXACT: u64 = 128;
/// Buckets per power of two above [`EXACT`].
const SUB_BUCKETS: u64 = 64;

/// Counts of values (ms) by bucket.
#[derive(Debug, Default, Clone)]
pub struct LatencyHistogram {
    buckets: BTreeMap<u32, u64>,
    count: u64,
    max: u64,
}

impl LatencyHistogram {
    pub fn record(&mut self, ms: u64) {
        *self.buckets.entry(bucket(ms)).or_default() += 1;
        self.count += 1;
        self.max = self.max.max(ms);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The value at quantile `q` (0.0–1.0): the upper edge of the bucket holding the
    /// ⌈q·count⌉-th smallest value, capped at the maximum; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (&b, &n) in &self.buckets {
            seen += n;
            if seen >= rank {
                return upper_edge(b).min(self.max);
            }
        }
        self.max
    }
}

/// The bucket of a value.
fn bucket(ms: u64) -> u32 {
    if ms < EXACT {
        return ms as u32;
    }
    // ms = 1.m × 2^e with e ≥ 7: the 6 bits after the leading one pick the sub-bucket.
    let e = 63 - u64::from(ms.leading_zeros());
    let sub = (ms >> (e - 6)) - SUB_BUCKETS;
    (EXACT + (e - 7) * SUB_BUCKETS + sub) as u32
}

/// The largest value of a bucket.
fn upper_edge(b: u32) -> u64 {
    let b = u64::from(b);
    if b < EXACT {
        return b;
    }
    let (e, sub) = (7 + (b - EXACT) / SUB_BUCKETS, (b - EXACT) % SUB_BUCKETS);
    ((SUB_BUCKETS + sub + 1) << (e - 6)) - 1
}

/// `{"count", "p50", "p90", "p99", "max"}`.
impl Serialize for LatencyHistogram {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(5))?;
        map.serialize_entry("count", &self.count)?;
        map.serialize_entry("p50", &self.quantile(0.50))?;
        map.serialize_entry("p90", &self.quantile(0.90))?;
        map.serialize_entry("p99", &self.quantile(0.99))?;
        map.serialize_entry("max", &self.max)?;
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_value_falls_in_a_bucket_whose_upper_edge_is_within_one_64th_above_it() {
        for ms in (0..5_000).chain([65_432, 1 << 40, u64::MAX / 2]) {
            let edge = upper_edge(bucket(ms));
            assert!(edge >= ms, "{ms} → {edge}");
            assert!(edge - ms <= ms / 64, "{ms} → {edge}");
            assert_eq!(bucket(edge), bucket(ms), "{ms}: its edge is in its bucket");
        }
        assert_eq!(
            bucket(EXACT - 1) + 1,
            bucket(EXACT),
            "no gap after the exact range"
        );
        assert_eq!(upper_edge(bucket(128)), 129);
    }

    #[test]
    fn quantiles_are_ranks_over_the_values_recorded_capped_at_the_maximum() {
        let mut h = LatencyHistogram::default();
        assert_eq!((h.quantile(0.5), h.count()), (0, 0));
        for ms in 1..=100 {
            h.record(ms);
        }
        assert_eq!(
            (h.quantile(0.5), h.quantile(0.99), h.quantile(1.0)),
            (50, 99, 100)
        );
        h.record(30_000);
        assert_eq!(h.quantile(1.0), 30_000, "the maximum, exactly");
        let v = serde_json::to_value(&h).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"count": 101, "p50": 51, "p90": 91, "p99": 100, "max": 30_000})
        );
    }

    #[test]
    fn a_quantile_in_a_wide_bucket_is_its_upper_edge() {
        let mut h = LatencyHistogram::default();
        for _ in 0..3 {
            h.record(10_000);
        }
        h.record(20_000);
        // 10,000 lies in [9,984, 10,111]: reported as 10,111, within 1.6 %.
        assert_eq!(h.quantile(0.5), 10_111);
        assert_eq!(h.quantile(0.99), 20_000);
    }
}
