//! MIME (RFC 5322) messages from IMAP into MS4 records, with a real parser (`mail-parser`).
//!
//! Subject with encoded words decoded, From, To, Date → RFC 3339 UTC (the IMAP INTERNALDATE when
//! the Date header is missing or unreadable), Message-ID as the idempotency key (the same key a
//! Graph message of the same mail carries, angle brackets included), a text preview (the text
//! part, or the HTML part stripped), and attachment names, types and sizes. A message without
//! a Message-ID is keyed by a hash of its bytes, which stays the same when a UIDVALIDITY change
//! makes the server renumber it. Pure: unit-tested here, fuzzed later.

use super::keys::content_digest;
use super::record::{preview, AttachmentMeta, Malformed, Ms4Record, Source, TransformOptions};
use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use mail_parser::{HeaderName, Message, MessageParser, MimeHeaders};
use sha2::{Digest, Sha256};
use std::sync::LazyLock;

/// Turns one raw message of `mailbox` (an IMAP source name) into a record.
pub fn mime_to_record(
    mailbox: &str,
    raw: &[u8],
    internal_date: Option<DateTime<Utc>>,
    opts: TransformOptions,
) -> Result<Ms4Record, Malformed> {
    let msg = MessageParser::default()
        .parse(raw)
        .ok_or_else(|| Malformed::NotMime("no header could be parsed".into()))?;
    let sender = msg
        .from()
        .and_then(|a| a.iter().find_map(|x| x.address()))
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .ok_or(Malformed::MissingProperty("From address"))?
        .to_string();
    let date = header_date(&msg)
        .or(internal_date)
        .ok_or(Malformed::MissingProperty("Date"))?;
    let (id, idempotency_key) = match msg.message_id().map(str::trim).filter(|m| !m.is_empty()) {
        Some(mid) => {
            let key = format!("<{}>", mid.trim_start_matches('<').trim_end_matches('>'));
            (key.clone(), key)
        }
        None => {
            let digest = hex::encode(&Sha256::digest(raw)[..16]);
            (
                format!("sha256:{digest}"),
                format!("imap:{mailbox}:{digest}"),
            )
        }
    };
    let recipients = msg
        .to()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.address())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    let text = msg
        .body_text(0)
        .or_else(|| msg.body_html(0))
        .unwrap_or_default();
    // The preview needs the start of the text only: a 25 MB text body is not copied whole.
    let mut head = text.len().min(PREVIEW_SOURCE_BYTES);
    while !text.is_char_boundary(head) {
        head -= 1;
    }
    let attachments: Vec<AttachmentMeta> = msg
        .attachments()
        .map(|a| AttachmentMeta {
            name: a.attachment_name().unwrap_or("").to_string(),
            content_type: a
                .content_type()
                .map(|c| match c.subtype() {
                    Some(sub) => format!("{}/{}", c.ctype(), sub),
                    None => c.ctype().to_string(),
                })
                .unwrap_or_else(|| "application/octet-stream".into()),
            size: a.contents().len() as u64,
        })
        .collect();
    let subject = msg.subject().unwrap_or("").to_string();
    let sent = msg.date().map(|d| d.to_rfc3339()).unwrap_or_default();
    Ok(Ms4Record {
        content_digest: content_digest(&sender, &subject, &sent),
        id,
        subject,
        has_attachments: !attachments.is_empty(),
        sender,
        received_date_time: date.to_rfc3339_opts(SecondsFormat::Secs, true),
        raw_message: opts
            .include_raw
            .then(|| String::from_utf8_lossy(raw).into_owned()),
        idempotency_key,
        source: Source::Imap,
        mailbox: mailbox.to_string(),
        recipients,
        body_preview: preview(&strip_tags(&text[..head])),
        attachments,
        body_omitted: None,
    })
}

/// The Date header as the record takes it, when there is one it can read.
fn header_date(msg: &Message<'_>) -> Option<DateTime<Utc>> {
    msg.date()
        .and_then(|d| Utc.timestamp_opt(d.to_timestamp(), 0).single())
}

/// Whether the record of `raw` will take its date from the Date header, read by the same
/// parser as [`mime_to_record`]; only the header is read. A message without one needs its
/// INTERNALDATE, which the IMAP poller then asks for (few do: RFC 5322 requires a Date).
pub fn has_header_date(raw: &[u8]) -> bool {
    static DATE_ONLY: LazyLock<MessageParser> = LazyLock::new(|| {
        MessageParser::new()
            .header_date(HeaderName::Date)
            .default_header_ignore()
    });
    DATE_ONLY
        .parse_headers(raw)
        .is_some_and(|msg| header_date(&msg).is_some())
}

/// How much of the text body the preview is taken from: far more than its 255 characters, even
/// behind markup and runs of whitespace.
const PREVIEW_SOURCE_BYTES: usize = 64 * 1024;

/// Removes what still looks like markup from a preview (mail-parser already turns an HTML-only
/// body into text; this catches tags that survive, e.g. in a mislabelled text part).
fn strip_tags(s: &str) -> String {
    if !s.contains('<') {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut in_tag = false;
    for c in s.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                out.push(' ');
            }
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const INVOICE: &[u8] = b"From: =?UTF-8?Q?Factur=C3=A9s?= <billing@vendor.example>\r\n\
To: invoices@contoso.example, ap@contoso.example\r\n\
Subject: =?UTF-8?B?SW52b2ljZSBJTlYtMTA0MiDigqw=?=\r\n\
Date: Sat, 21 Nov 2026 12:00:00 +0200\r\n\
Message-ID: <inv-1042@vendor.example>\r\n\
MIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b1\"\r\n\
\r\n\
--b1\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
\r\n\
Please find attached   invoice INV-1042.\r\n\
--b1\r\n\
Content-Type: application/pdf; name=\"INV-1042.pdf\"\r\n\
Content-Disposition: attachment; filename=\"INV-1042.pdf\"\r\n\
Content-Transfer-Encoding: base64\r\n\
\r\n\
JVBERi0xLjQK\r\n\
--b1--\r\n";

    #[test]
    fn an_invoice_becomes_the_contract_record() {
        let r = mime_to_record("gmail", INVOICE, None, Default::default()).unwrap();
        assert_eq!(r.subject, "Invoice INV-1042 €");
        assert_eq!(r.sender, "billing@vendor.example");
        assert_eq!(
            r.recipients,
            vec!["invoices@contoso.example", "ap@contoso.example"]
        );
        assert_eq!(r.received_date_time, "2026-11-21T10:00:00Z");
        assert_eq!(r.idempotency_key, "<inv-1042@vendor.example>");
        assert_eq!(r.source, Source::Imap);
        assert_eq!(r.body_preview, "Please find attached invoice INV-1042.");
        assert_eq!(r.attachments.len(), 1);
        assert_eq!(r.attachments[0].name, "INV-1042.pdf");
        assert_eq!(r.attachments[0].content_type, "application/pdf");
        assert_eq!(r.attachments[0].size, 9);
        assert!(r.has_attachments);
    }

    #[test]
    fn html_only_mail_gets_a_text_preview() {
        let raw = b"From: a@b.example\r\nDate: Sat, 21 Nov 2026 10:00:00 +0000\r\n\
Content-Type: text/html\r\n\r\n<html><body><p>Total <b>42 EUR</b></p></body></html>\r\n";
        let r = mime_to_record("m", raw, None, Default::default()).unwrap();
        assert!(!r.body_preview.contains('<'), "{}", r.body_preview);
        assert!(r.body_preview.contains("Total") && r.body_preview.contains("42 EUR"));
    }

    #[test]
    fn without_message_id_the_key_is_a_hash_of_the_bytes_stable_across_renumbering() {
        let raw = b"From: a@b.example\r\nDate: Sat, 21 Nov 2026 10:00:00 +0000\r\n\r\nhi\r\n";
        let a = mime_to_record("src", raw, None, Default::default()).unwrap();
        let b = mime_to_record("src", raw, None, Default::default()).unwrap();
        assert_eq!(a.idempotency_key, b.idempotency_key);
        assert!(a.idempotency_key.starts_with("imap:src:"));
    }

    #[test]
    fn broken_mail_is_parsed_as_far_as_it_goes_or_refused_with_a_reason() {
        // Bad encoded word, 8-bit garbage, no Date: the INTERNALDATE stands in.
        let raw = b"From: x@y.example\r\nSubject: =?utf-8?q?broken=ZZ?= \xff\xfe\r\n\r\n\xc3\x28 body\r\n";
        let when = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        let r = mime_to_record("m", raw, Some(when), Default::default()).unwrap();
        assert_eq!(r.received_date_time, "2026-01-02T03:04:05Z");
        let no_from = b"Subject: hi\r\nDate: Sat, 21 Nov 2026 10:00:00 +0000\r\n\r\nx";
        let err = mime_to_record("m", no_from, None, Default::default()).unwrap_err();
        assert!(err.to_string().contains("From"), "{err}");
        let no_date = b"From: a@b.example\r\n\r\nx";
        assert!(mime_to_record("m", no_date, None, Default::default()).is_err());
    }

    #[test]
    fn a_header_date_is_found_as_the_record_reads_it() {
        assert!(has_header_date(INVOICE));
        // Folded, and after other headers in any case.
        assert!(has_header_date(
            b"X-A: 1\r\nDATE: Sat, 21 Nov 2026\r\n 10:00:00 +0000\r\n\r\nbody"
        ));
        for raw in [
            &b"From: a@b.example\r\n\r\nDate: Sat, 21 Nov 2026 10:00:00 +0000\r\n"[..],
            b"From: a@b.example\r\nDate: yesterday\r\n\r\nx",
            b"From: a@b.example\r\nX-Date: Sat, 21 Nov 2026 10:00:00 +0000\r\n\r\nx",
            b"",
        ] {
            assert!(!has_header_date(raw), "{}", String::from_utf8_lossy(raw));
            // The record needs the INTERNALDATE for each of these.
            let when = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
            if let Ok(r) = mime_to_record("m", raw, Some(when), Default::default()) {
                assert_eq!(r.received_date_time, "2026-01-02T03:04:05Z");
            }
        }
    }
}
