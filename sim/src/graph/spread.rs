//! When subscriptions were created and renewed, and when the live ones expire: the figures
//! that show whether a fleet spreads its renewals over time or lets them pile up into one
//! burst of PATCHes (and one burst of validation handshakes) every lifetime.

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// Events counted per wall-clock minute.
#[derive(Debug, Default, Clone)]
pub(super) struct PerMinute(BTreeMap<i64, u64>);

impl PerMinute {
    pub(super) fn record(&mut self, at: DateTime<Utc>) {
        *self.0.entry(at.timestamp().div_euclid(60)).or_default() += 1;
    }

    /// `{"2026-11-30T14:05:00Z": n, …}`, oldest first (RFC 3339 keys sort by time).
    pub(super) fn to_json(&self) -> Value {
        let minutes: Map<String, Value> = self
            .0
            .iter()
            .map(|(minute, n)| (shown(minute * 60_000), json!(n)))
            .collect();
        Value::Object(minutes)
    }

    /// The most events in one minute.
    pub(super) fn busiest(&self) -> u64 {
        self.0.values().copied().max().unwrap_or(0)
    }
}

/// Subscription creations and renewals (`PATCH` with a new expiration) over time.
#[derive(Debug, Default, Clone)]
pub(super) struct SubscriptionActivity {
    pub(super) created: PerMinute,
    pub(super) renewed: PerMinute,
}

/// A time in ms as Graph writes it.
fn shown(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// How the expirations of the live subscriptions spread: how many, the earliest, median and
/// latest, and the most that fall within any one minute and any five minutes (a fleet that
/// renews in step shows all of them in one such span).
pub(super) fn expiration_spread(expirations: impl Iterator<Item = DateTime<Utc>>) -> Value {
    let mut ms: Vec<i64> = expirations.map(|t| t.timestamp_millis()).collect();
    ms.sort_unstable();
    let (Some(first), Some(last)) = (ms.first(), ms.last()) else {
        return json!({"live": 0});
    };
    json!({
        "live": ms.len(),
        "min": shown(*first),
        "p50": shown(ms[(ms.len() - 1) / 2]),
        "max": shown(*last),
        "max_within_1_min": busiest_window(&ms, 60_000),
        "max_within_5_min": busiest_window(&ms, 300_000),
    })
}

/// The most of the `sorted` times that fall within any span shorter than `width`.
fn busiest_window(sorted: &[i64], width: i64) -> usize {
    let mut start = 0;
    let mut most = 0;
    for (end, t) in sorted.iter().enumerate() {
        while t - sorted[start] >= width {
            start += 1;
        }
        most = most.max(end + 1 - start);
    }
    most
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(ms).unwrap()
    }

    #[test]
    fn the_busiest_window_counts_the_most_times_within_any_span_of_its_width() {
        assert_eq!(busiest_window(&[], 10), 0);
        assert_eq!(busiest_window(&[0, 5, 9, 10, 19, 30], 10), 3);
        assert_eq!(
            busiest_window(&[0, 10, 20], 10),
            1,
            "a span is shorter than its width"
        );
        assert_eq!(busiest_window(&[7, 7, 7, 7], 1), 4);
    }

    #[test]
    fn expirations_in_step_show_in_one_minute_and_spread_ones_do_not() {
        const MIN: i64 = 60_000;
        let base = 1_764_511_200_000; // 2025-11-30T14:00:00Z
        let in_step = expiration_spread((0..6).map(|i| at(base + i * 1_000)));
        assert_eq!(in_step["live"], 6);
        assert_eq!(in_step["max_within_1_min"], 6);
        let spread = expiration_spread((0..6).map(|i| at(base + i * 2 * MIN)));
        assert_eq!(
            (&spread["min"], &spread["p50"], &spread["max"]),
            (
                &json!("2025-11-30T14:00:00Z"),
                &json!("2025-11-30T14:04:00Z"),
                &json!("2025-11-30T14:10:00Z")
            )
        );
        assert_eq!(
            (&spread["max_within_1_min"], &spread["max_within_5_min"]),
            (&json!(1), &json!(3))
        );
        assert_eq!(expiration_spread(std::iter::empty()), json!({"live": 0}));
    }

    #[test]
    fn events_are_counted_per_wall_clock_minute() {
        let base = 1_764_511_200_000;
        let mut m = PerMinute::default();
        for ms in [base, base + 59_999, base + 60_000] {
            m.record(at(ms));
        }
        assert_eq!(
            m.to_json(),
            json!({"2025-11-30T14:00:00Z": 2, "2025-11-30T14:01:00Z": 1})
        );
        assert_eq!(m.busiest(), 2);
        assert_eq!(PerMinute::default().busiest(), 0);
    }
}
