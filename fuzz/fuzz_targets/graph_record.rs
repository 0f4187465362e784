//! A Graph message (as it sits in the inbound stream) into an MS4 record: `graph_to_record`
//! directly and through `entry_to_record`, which the BatchProcessor calls.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ms1_actors::model::{
    entry_to_record, graph_needs_attachments, graph_to_record, AttachmentMeta, InboundFields,
    TransformOptions,
};
use ms1_fuzz::check_record;

const MAILBOX: &str = "invoices-0@contoso.example";

fuzz_target!(|data: &[u8]| {
    // Stream fields are text: a payload that is not UTF-8 never gets this far.
    let Ok(payload) = std::str::from_utf8(data) else {
        return;
    };
    // Vary the options with the input's length, so that JSON seeds stay JSON.
    let opts = TransformOptions {
        include_raw: data.len() % 2 == 1,
        ..Default::default()
    };
    let fetched = [AttachmentMeta {
        name: "INV-1.pdf".into(),
        content_type: "application/pdf".into(),
        size: 1,
    }];
    let fetched = (data.len() % 4 >= 2).then_some(&fetched[..]);
    let _ = graph_needs_attachments(payload);
    let direct = graph_to_record(MAILBOX, payload, fetched, opts);
    if let Ok(r) = &direct {
        check_record(r, MAILBOX);
        assert_eq!(
            r.raw_message.as_deref(),
            opts.include_raw.then_some(payload)
        );
        if let Some(f) = fetched {
            assert_eq!(r.attachments, f);
        }
    }
    let fields = InboundFields {
        source: Some("graph"),
        mailbox: Some(MAILBOX),
        payload: Some(payload),
        attachments: fetched,
        internal_date: None,
        omitted: None,
    };
    assert_eq!(entry_to_record(&fields, opts), direct);
});
