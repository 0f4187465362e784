use super::*;

const MSG: &str = r#"{
        "id": "AAMkAD-1",
        "internetMessageId": "<inv-1042@vendor.example>",
        "subject": "Invoice INV-1042",
        "from": {"emailAddress": {"name": "Billing", "address": "billing@vendor.example"}},
        "toRecipients": [{"emailAddress": {"address": "invoices@contoso.example"}},
                         {"emailAddress": {"address": "ap@contoso.example"}}],
        "receivedDateTime": "2026-11-21T10:00:00Z",
        "hasAttachments": true,
        "bodyPreview": "Please find attached",
        "attachments": [{"name": "INV-1042.pdf", "contentType": "application/pdf", "size": 48213}]
    }"#;

#[test]
fn a_graph_message_becomes_the_contract_record() {
    let r = graph_to_record("invoices@contoso.example", MSG, None, Default::default()).unwrap();
    assert_eq!(r.id, "AAMkAD-1");
    assert_eq!(r.idempotency_key, "<inv-1042@vendor.example>");
    assert_eq!(r.sender, "billing@vendor.example");
    assert_eq!(
        r.recipients,
        vec!["invoices@contoso.example", "ap@contoso.example"]
    );
    assert_eq!(r.received_date_time, "2026-11-21T10:00:00Z");
    assert!(r.has_attachments);
    assert_eq!(r.raw_message, None);
    assert_eq!(r.attachments[0].name, "INV-1042.pdf");
    let json = serde_json::to_value(&r).unwrap();
    for field in [
        "id",
        "subject",
        "hasAttachments",
        "sender",
        "receivedDateTime",
        "raw_message",
        "idempotency_key",
        "source",
        "mailbox",
        "recipients",
        "bodyPreview",
        "attachments",
    ] {
        assert!(json.get(field).is_some(), "missing {field}");
    }
    assert_eq!(json["source"], "graph");
    assert_eq!(json["attachments"][0]["contentType"], "application/pdf");
}

#[test]
fn without_internet_message_id_the_key_is_source_mailbox_id() {
    let msg = r#"{"id":"X1","from":{"emailAddress":{"address":"a@b.example"}},
                      "receivedDateTime":"2026-01-01T00:00:00Z"}"#;
    let r = graph_to_record("mb@x.example", msg, None, Default::default()).unwrap();
    assert_eq!(r.idempotency_key, "graph:mb@x.example:X1");
    assert_eq!(r.attachments, vec![]);
    assert!(!r.has_attachments);
    assert_eq!(r.subject, "");
}

#[test]
fn include_raw_copies_the_payload() {
    let r = graph_to_record(
        "m",
        MSG,
        None,
        TransformOptions {
            include_raw: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(r.raw_message.as_deref(), Some(MSG));
}

#[test]
fn dates_are_normalized_to_utc_seconds() {
    assert_eq!(
        normalize_date("2026-11-21T12:00:00.123+02:00").unwrap(),
        "2026-11-21T10:00:00Z"
    );
    assert!(matches!(
        normalize_date("yesterday"),
        Err(Malformed::BadDate(_))
    ));
}

#[test]
fn preview_is_cut_at_255_characters_on_a_char_boundary() {
    let long = "é".repeat(300);
    let p = preview(&long);
    assert_eq!(p.chars().count(), 255);
    assert_eq!(preview("  a \n\n b  "), "a b");
}

#[test]
fn malformed_messages_say_what_is_missing() {
    let cases = [
        ("not json", "not a Graph message"),
        (r#"{"from":{"emailAddress":{"address":"a@b"}}}"#, "`id`"),
        (
            r#"{"id":"1","receivedDateTime":"2026-01-01T00:00:00Z"}"#,
            "from.emailAddress.address",
        ),
        (
            r#"{"id":"1","from":{"emailAddress":{"address":"a@b"}}}"#,
            "receivedDateTime",
        ),
        (
            r#"{"id":"1","from":{"emailAddress":{"address":"a@b"}},"receivedDateTime":"x"}"#,
            "ISO 8601",
        ),
        ("[1,2]", "not a Graph message"),
    ];
    for (payload, want) in cases {
        let err = graph_to_record("m", payload, None, Default::default()).unwrap_err();
        assert!(err.to_string().contains(want), "{payload}: {err}");
    }
}

#[test]
fn fetched_attachments_win_and_are_needed_only_when_missing() {
    let msg = r#"{"id":"X1","hasAttachments":true,"from":{"emailAddress":{"address":"a@b.example"}},
                      "receivedDateTime":"2026-01-01T00:00:00Z"}"#;
    assert_eq!(graph_needs_attachments(msg).as_deref(), Some("X1"));
    assert_eq!(graph_needs_attachments(MSG), None, "listed already");
    let fetched = [AttachmentMeta {
        name: "a.pdf".into(),
        content_type: "application/pdf".into(),
        size: 9,
    }];
    let r = graph_to_record("m", msg, Some(&fetched), Default::default()).unwrap();
    assert_eq!(r.attachments, fetched.to_vec());
    assert!(r.has_attachments);
}

#[test]
fn imap_entries_carry_the_raw_message_in_base64() {
    use base64::Engine;
    let raw = b"From: a@b.example\r\nSubject: caf\xe9\r\n\r\nbody \xff\r\n";
    let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
    let f = InboundFields {
        source: Some("imap"),
        mailbox: Some("gmail"),
        payload: Some(&b64),
        internal_date: Some("2026-03-04T05:06:07+01:00"),
        ..Default::default()
    };
    let r = entry_to_record(&f, Default::default()).unwrap();
    assert_eq!(r.source, Source::Imap);
    assert_eq!(r.received_date_time, "2026-03-04T04:06:07Z");
    let f = InboundFields {
        payload: Some("%%% not base64"),
        ..f
    };
    let err = entry_to_record(&f, Default::default()).unwrap_err();
    assert!(err.to_string().contains("base64"), "{err}");
}

#[test]
fn a_plain_imap_entry_is_the_message_itself_and_gives_the_record_its_base64_form_gives() {
    use base64::Engine;
    let raw = "From: a@b.example\r\nSubject: café\r\nMessage-ID: <p1@b.example>\r\n\r\nbody\r\n";
    let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
    let base64_form = InboundFields {
        source: Some("imap"),
        mailbox: Some("gmail"),
        payload: Some(&b64),
        internal_date: Some("2026-03-04T05:06:07+01:00"),
        ..Default::default()
    };
    let plain_form = InboundFields {
        payload: Some(raw),
        plain: true,
        ..base64_form
    };
    let opts = TransformOptions {
        include_raw: true,
        ..Default::default()
    };
    let plain = entry_to_record(&plain_form, opts).unwrap();
    assert_eq!(plain, entry_to_record(&base64_form, opts).unwrap());
    assert_eq!(plain.subject, "café");
    assert_eq!(plain.raw_message.as_deref(), Some(raw));
    // Without the flag, the message itself is not base64.
    let unflagged = InboundFields {
        plain: false,
        ..plain_form
    };
    assert!(entry_to_record(&unflagged, opts).is_err());
}

#[test]
fn an_oversized_imap_entry_becomes_a_flagged_record_without_body_or_a_dead_letter() {
    use base64::Engine;
    let header = b"From: a@b.example\r\nSubject: big\r\nMessage-ID: <big@b.example>\r\nDate: Sat, 21 Nov 2026 10:00:00 +0000\r\n\r\n";
    let b64 = base64::engine::general_purpose::STANDARD.encode(header);
    let omitted = OmittedBody::parse(
        "31457280:26214400",
        Some(r#"[{"name":"scan.pdf","contentType":"application/pdf","size":31000000}]"#),
    )
    .unwrap();
    let f = InboundFields {
        source: Some("imap"),
        mailbox: Some("gmail"),
        payload: Some(&b64),
        omitted: Some(&omitted),
        ..Default::default()
    };
    let opts = TransformOptions {
        include_raw: true,
        ..Default::default()
    };
    let r = entry_to_record(&f, opts).unwrap();
    assert_eq!(r.idempotency_key, "<big@b.example>");
    assert_eq!(r.raw_message, None);
    assert_eq!(r.body_preview, "");
    assert!(r.has_attachments);
    assert_eq!(r.attachments[0].name, "scan.pdf");
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["bodyOmitted"]["size"], 31457280);
    assert_eq!(json["bodyOmitted"]["limit"], 26214400);
    let opts = TransformOptions {
        oversize_dead_letter: true,
        ..Default::default()
    };
    let err = entry_to_record(&f, opts).unwrap_err().to_string();
    assert!(
        err.contains("31457280 bytes") && err.contains("26214400"),
        "{err}"
    );
    // A normal record carries no bodyOmitted at all.
    let normal = InboundFields { omitted: None, ..f };
    let json = serde_json::to_value(entry_to_record(&normal, Default::default()).unwrap()).unwrap();
    assert!(json.get("bodyOmitted").is_none());
}

#[test]
fn entries_need_mailbox_payload_and_a_known_source() {
    let f = InboundFields {
        source: Some("fax"),
        mailbox: Some("m"),
        payload: Some(MSG),
        ..Default::default()
    };
    assert_eq!(
        entry_to_record(&f, Default::default()).unwrap_err(),
        Malformed::UnknownSource("fax".into())
    );
    let f = InboundFields {
        payload: Some(MSG),
        ..Default::default()
    };
    assert_eq!(
        entry_to_record(&f, Default::default()).unwrap_err(),
        Malformed::MissingField("mailbox")
    );
}
