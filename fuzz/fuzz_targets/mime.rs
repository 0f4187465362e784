//! A raw RFC 5322 message from an IMAP server into an MS4 record: `mime_to_record` directly and
//! through `entry_to_record` (base64 in the inbound stream), which the BatchProcessor calls.
#![no_main]

use base64::Engine;
use chrono::{TimeZone, Utc};
use libfuzzer_sys::fuzz_target;
use ms1_actors::model::mime::mime_to_record;
use ms1_actors::model::{entry_to_record, InboundFields, TransformOptions};
use ms1_fuzz::check_record;

const SOURCE: &str = "gmail";

fuzz_target!(|raw: &[u8]| {
    let internal_date =
        (raw.len() % 2 == 1).then(|| Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap());
    let opts = TransformOptions {
        include_raw: raw.len() % 4 >= 2,
        ..Default::default()
    };
    let direct = mime_to_record(SOURCE, raw, internal_date, opts);
    if let Ok(r) = &direct {
        check_record(r, SOURCE);
        assert_eq!(r.has_attachments, !r.attachments.is_empty());
        assert_eq!(r.raw_message.is_some(), opts.include_raw);
    }
    let payload = base64::engine::general_purpose::STANDARD.encode(raw);
    let date = internal_date.map(|d| d.to_rfc3339());
    let fields = InboundFields {
        source: Some("imap"),
        mailbox: Some(SOURCE),
        payload: Some(&payload),
        attachments: None,
        internal_date: date.as_deref(),
        omitted: None,
    };
    assert_eq!(entry_to_record(&fields, opts), direct);
});
