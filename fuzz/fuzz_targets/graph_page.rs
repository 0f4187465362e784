//! A page of messages as Graph answers a delta or unread listing (`parse_page`), then each
//! message it holds into a record, as the poller and the BatchProcessor do.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ms1_actors::clients::graph::parse_page;
use ms1_actors::model::graph_to_record;
use ms1_fuzz::check_record;

fuzz_target!(|body: &[u8]| {
    let Ok(page) = parse_page(body) else {
        return;
    };
    for item in &page.items {
        serde_json::from_str::<serde::de::IgnoredAny>(&item.raw)
            .expect("an item's raw text is the JSON it was read from");
        if let Ok(r) = graph_to_record("m", &item.raw, None, Default::default()) {
            check_record(&r, "m");
            assert_eq!(r.id, item.id, "the page and the record agree on the id");
        }
    }
});
