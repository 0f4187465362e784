//! The body Graph POSTs to `/webhook/notifications` (and `/webhook/lifecycle`), through the
//! functions the route and the WebhookReceiver use: parse, then sort each notification into a
//! ref to enqueue (each message once), a repeat, or a refusal.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ms1_actors::sources::webhook::{
    client_state_matches, notified_message_id, parse_notifications, sort_notifications,
};
use std::collections::HashMap;

const CLIENT_STATE: &str = "fuzz-client-state";

fuzz_target!(|body: &[u8]| {
    let Ok(batch) = parse_notifications(body) else {
        return;
    };
    let subscriptions = HashMap::from([
        (
            "sub-1".to_string(),
            "invoices-0@contoso.example".to_string(),
        ),
        (
            "sub-2".to_string(),
            "invoices-1@contoso.example".to_string(),
        ),
    ]);
    let sorted = sort_notifications(&batch.value, CLIENT_STATE, &subscriptions);
    assert_eq!(
        sorted.refs.len() + sorted.repeated + sorted.refused.len(),
        batch.value.len(),
        "every notification is enqueued, a repeat of one enqueued, or refused"
    );
    let accepted: Vec<_> = batch
        .value
        .iter()
        .filter(|n| {
            client_state_matches(n.client_state.as_deref(), CLIENT_STATE)
                && subscriptions.contains_key(&n.subscription_id)
                && notified_message_id(n).is_some()
        })
        .collect();
    assert_eq!(accepted.len(), sorted.refs.len() + sorted.repeated);
    // Each message once, in the order of its first notification.
    let mut first = Vec::new();
    for n in &accepted {
        let mailbox = subscriptions.get(&n.subscription_id).unwrap().clone();
        let id = notified_message_id(n).unwrap();
        assert!(!id.is_empty());
        if !first.contains(&(mailbox.clone(), id.clone())) {
            first.push((mailbox, id));
        }
    }
    assert_eq!(first, sorted.refs);
});
