//! Invariants the fuzz targets assert on whatever the parsers produce. A failed assertion is a
//! crash to libFuzzer, like a panic in the code under test.

use chrono::DateTime;
use ms1_actors::model::{preview, Ms4Record, PREVIEW_CHARS};

/// What every record sent to MS4 must satisfy, whatever the input (CONTRACTS.md, "Record").
pub fn check_record(r: &Ms4Record, mailbox: &str) {
    assert!(!r.id.trim().is_empty(), "empty id: {r:?}");
    assert!(!r.sender.trim().is_empty(), "empty sender: {r:?}");
    assert!(
        !r.idempotency_key.is_empty(),
        "empty idempotency key: {r:?}"
    );
    assert_eq!(r.mailbox, mailbox);
    let received = DateTime::parse_from_rfc3339(&r.received_date_time)
        .unwrap_or_else(|e| panic!("receivedDateTime {:?}: {e}", r.received_date_time));
    assert!(
        r.received_date_time.ends_with('Z') && received.offset().local_minus_utc() == 0,
        "receivedDateTime not in UTC: {:?}",
        r.received_date_time
    );
    check_preview(&r.body_preview);
    let json = serde_json::to_string(r).expect("a record serializes to JSON");
    let back: Ms4Record = serde_json::from_str(&json).expect("its JSON reads back");
    assert_eq!(&back, r, "the record survives a JSON round trip");
}

/// A preview is at most [`PREVIEW_CHARS`] characters, whitespace collapsed to single spaces,
/// trimmed, and stable under a second pass.
pub fn check_preview(p: &str) {
    assert!(
        p.chars().count() <= PREVIEW_CHARS,
        "preview of {} chars",
        p.chars().count()
    );
    assert_eq!(p.trim(), p, "preview not trimmed: {p:?}");
    assert!(!p.contains("  "), "preview with a double space: {p:?}");
    assert!(
        p.chars().all(|c| c == ' ' || !c.is_whitespace()),
        "preview with whitespace other than spaces: {p:?}"
    );
    assert_eq!(preview(p), p, "preview not stable: {p:?}");
}
