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

/// One RFC 5322 invoice e-mail (as an IMAP server stores it) of invoice `n`, about `size`
/// bytes: a text part, and every third message a PDF attachment that makes up the size.
pub fn mime_message(n: u64, tag: &str, size: usize) -> Vec<u8> {
    let head = format!(
        "From: Billing <billing{}@vendor{}.example>\r\n\
To: Invoices <invoices@contoso.example>\r\n\
Subject: =?UTF-8?Q?Invoice_INV-{n:06}_=E2=82=AC?=\r\n\
Date: Sat, {:02} Nov 2026 {:02}:{:02}:00 +0100\r\n\
Message-ID: <inv-{n}.{tag}@vendor.example>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b-{n}\"\r\n\
\r\n\
--b-{n}\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
\r\n\
Dear customer, please find attached invoice INV-{n:06}. Amount due: {}.{:02} EUR.\r\n",
        n % 17,
        n % 5,
        1 + n % 28,
        n % 24,
        n % 60,
        100 + n % 9_000,
        n % 100,
    );
    let mut out = head.into_bytes();
    let filler = size.saturating_sub(out.len() + 200);
    if n.is_multiple_of(3) {
        out.extend_from_slice(
            format!(
                "--b-{n}\r\nContent-Type: application/pdf; name=\"INV-{n:06}.pdf\"\r\n\
Content-Disposition: attachment; filename=\"INV-{n:06}.pdf\"\r\n\
Content-Transfer-Encoding: base64\r\n\r\n"
            )
            .as_bytes(),
        );
        for line in 0..filler / 78 {
            let c = b'A' + (line % 26) as u8;
            out.extend(std::iter::repeat_n(c, 76));
            out.extend_from_slice(b"\r\n");
        }
    } else {
        for line in 0..filler / 78 {
            // 78 bytes a line, like the attachment's, so that `size` holds for both kinds.
            let text = format!("Line {line:04} of the invoice details, item {n}.");
            out.extend_from_slice(text.as_bytes());
            out.extend(std::iter::repeat_n(
                b' ',
                76usize.saturating_sub(text.len()),
            ));
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(format!("--b-{n}--\r\n").as_bytes());
    out
}

/// Inbound stream entry fields for one synthetic message.
pub fn inbound_entry(n: u64, mailbox: &str, valid: bool) -> Vec<(&'static str, String)> {
    use ms1_actors::store::schema::inbound as f;
    // As the Graph poller writes it: `source` (graph) and `kind` (message) are the defaults.
    vec![
        (f::MAILBOX, mailbox.to_string()),
        (f::PAYLOAD, graph_message(n, mailbox, valid)),
    ]
}

/// What `load` puts into the inbound stream.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    pub count: u64,
    pub mailboxes: u64,
    /// Number of the first message (several loads do not repeat keys).
    pub start: u64,
    /// How many of them MS4 refuses, spread evenly.
    pub invalid: u64,
    /// Extra entries that are not Graph messages at all.
    pub malformed: u64,
    /// Offered rate; `None` for as fast as Redis takes them.
    pub rate_per_s: Option<u64>,
}

impl LoadPlan {
    /// The entries, in order.
    pub fn entries(&self) -> Vec<Vec<(&'static str, String)>> {
        use ms1_actors::store::schema::inbound as f;
        let every = (self.count / self.invalid.max(1)).max(1);
        let mut entries: Vec<Vec<(&str, String)>> = (self.start..self.start + self.count)
            .map(|n| {
                let mailbox = format!("invoices-{}@contoso.example", n % self.mailboxes.max(1));
                let i = n - self.start;
                let valid = !(i.is_multiple_of(every) && i / every < self.invalid);
                inbound_entry(n, &mailbox, valid)
            })
            .collect();
        for i in 0..self.malformed {
            entries.push(vec![
                (f::MAILBOX, "invoices-0@contoso.example".into()),
                (f::PAYLOAD, format!("{{\"id\": \"broken-{i}\", truncated")),
            ]);
        }
        entries
    }
}

/// Loads a plan into the inbound stream; returns how many entries were added.
pub async fn load(store: &ms1_actors::Store, plan: &LoadPlan) -> anyhow::Result<u64> {
    let entries = plan.entries();
    match plan.rate_per_s {
        None => store.add_inbound(&entries).await?,
        Some(rate) => {
            // Chunks every 10 ms, paced against the start so the average rate holds.
            let per_tick = (rate / 100).max(1) as usize;
            let started = std::time::Instant::now();
            for (i, chunk) in entries.chunks(per_tick).enumerate() {
                let due = started + std::time::Duration::from_millis(10 * i as u64);
                tokio::time::sleep_until(due.into()).await;
                store.add_inbound(chunk).await?;
            }
        }
    }
    Ok(entries.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ms1_actors::model::graph_to_record;

    #[test]
    fn a_plan_spreads_its_invalid_messages_and_appends_malformed_ones() {
        let plan = LoadPlan {
            count: 100,
            mailboxes: 3,
            start: 0,
            invalid: 4,
            malformed: 2,
            rate_per_s: None,
        };
        let entries = plan.entries();
        assert_eq!(entries.len(), 102);
        let payload = |e: &Vec<(&str, String)>| {
            let p = e.iter().find(|(k, _)| *k == "payload").expect("a payload");
            p.1.clone()
        };
        let invalid = entries
            .iter()
            .filter(|e| payload(e).contains("not-an-address"))
            .count();
        assert_eq!(invalid, 4);
        assert!(payload(&entries[101]).contains("truncated"));
    }

    #[test]
    fn synthetic_messages_transform_into_records() {
        let r = graph_to_record(
            "inv@contoso.example",
            &graph_message(3, "inv@contoso.example", true),
            None,
            Default::default(),
        )
        .unwrap();
        assert_eq!(
            r.idempotency_key,
            "<inv-3.inv@contoso.example@vendor.example>"
        );
        assert!(r.has_attachments);
        assert!(r.sender.contains('@'));
        let bad =
            graph_to_record("m", &graph_message(4, "m", false), None, Default::default()).unwrap();
        assert!(!bad.sender.contains('@'));
    }
}
