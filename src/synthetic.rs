//! Synthetic invoice e-mails as Microsoft Graph returns them, for the demo, the benchmarks and
//! the tests (until the Graph simulator feeds the real path).

use serde_json::json;

/// One Graph message (JSON) of invoice number `n` in `mailbox`. `valid = false` gives a sender
/// that is not an e-mail address, which MS4 refuses (the transform passes it through, as Graph
/// can carry such senders).
pub fn graph_message(n: u64, mailbox: &str, valid: bool) -> String {
    let sender = if valid {
        format!("billing{}@vendor{}.example", n % 17, n % 5)
    } else {
        format!("not-an-address-{n}")
    };
    json!({
        "id": format!("AAMkAD{n:012}"),
        "internetMessageId": format!("<inv-{n}.{mailbox}@vendor.example>"),
        "subject": format!("Invoice INV-{n:06} for services rendered"),
        "from": {"emailAddress": {"name": "Billing", "address": sender}},
        "toRecipients": [{"emailAddress": {"name": "Invoices", "address": mailbox}}],
        "receivedDateTime": format!("2026-11-{:02}T{:02}:{:02}:{:02}Z", 1 + n % 28, n % 24, n % 60, (n / 60) % 60),
        "hasAttachments": n.is_multiple_of(3),
        "bodyPreview": format!("Dear customer, please find attached invoice INV-{n:06}. Amount due: {}.{:02} EUR, payable within 30 days.", 100 + n % 9_000, n % 100),
        "attachments": if n.is_multiple_of(3) {
            json!([{"name": format!("INV-{n:06}.pdf"), "contentType": "application/pdf", "size": 40_000 + n % 20_000}])
        } else {
            json!([])
        }
    })
    .to_string()
}

/// Inbound stream entry fields for one synthetic message.
pub fn inbound_entry(n: u64, mailbox: &str, valid: bool) -> Vec<(&'static str, String)> {
    use ms1_actors::processor::inbound_fields as f;
    vec![
        (f::SOURCE, "graph".to_string()),
        (f::MAILBOX, mailbox.to_string()),
        (f::PAYLOAD, graph_message(n, mailbox, valid)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use ms1_actors::model::graph_to_record;

    #[test]
    fn synthetic_messages_transform_into_records() {
        let r = graph_to_record(
            "inv@contoso.example",
            &graph_message(3, "inv@contoso.example", true),
            Default::default(),
        )
        .unwrap();
        assert_eq!(
            r.idempotency_key,
            "<inv-3.inv@contoso.example@vendor.example>"
        );
        assert!(r.has_attachments);
        assert!(r.sender.contains('@'));
        let bad = graph_to_record("m", &graph_message(4, "m", false), Default::default()).unwrap();
        assert!(!bad.sender.contains('@'));
    }
}
