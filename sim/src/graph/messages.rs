//! Messages: a synthetic invoice as a draft, and a message as stored, serialized once
//! property by property so `$select` is a filter over ready-made fragments.

use super::codecs::push_json_str;
use super::odata::{Selection, MESSAGE_PROPERTIES};
use super::synthetic;
use serde_json::Value;

/// A message before it gets its id and arrival time.
pub(super) struct Draft {
    pub(super) n: u64,
    /// (property, serialized value), without `id`, `receivedDateTime`, `isRead`, `attachments`.
    pub(super) props: Vec<(&'static str, Box<str>)>,
    /// (name, contentType, size) of each attachment.
    pub(super) attachments: Vec<(String, String, u64)>,
}

/// Synthetic invoice `n` as a draft (the slow part of adding mail: done outside the lock).
pub(super) fn draft(n: u64, upn: &str, valid: bool) -> Draft {
    let v: Value =
        serde_json::from_str(&synthetic::graph_message(n, upn, valid)).expect("synthetic JSON");
    let Value::Object(map) = v else {
        unreachable!("synthetic messages are objects")
    };
    let mut props = Vec::with_capacity(map.len());
    let mut attachments = Vec::new();
    for (key, value) in map {
        match key.as_str() {
            "id" | "receivedDateTime" | "isRead" => {}
            "attachments" => {
                for a in value.as_array().into_iter().flatten() {
                    attachments.push((
                        a["name"].as_str().unwrap_or("attachment").to_string(),
                        a["contentType"]
                            .as_str()
                            .unwrap_or("application/octet-stream")
                            .to_string(),
                        a["size"].as_u64().unwrap_or(0),
                    ));
                }
            }
            other => {
                if let Some(name) = MESSAGE_PROPERTIES.iter().find(|p| **p == other) {
                    props.push((*name, value.to_string().into_boxed_str()));
                }
            }
        }
    }
    Draft {
        n,
        props,
        attachments,
    }
}

/// One message as stored: its properties serialized once.
pub(super) struct StoredMessage {
    pub(super) id: String,
    /// Arrival time in ms, strictly increasing within a mailbox.
    pub(super) received_ms: i64,
    pub(super) props: Vec<(&'static str, Box<str>)>,
    pub(super) attachments: Vec<Value>,
    pub(super) is_read: bool,
    pub(super) deleted: bool,
    /// Bumped on every change; part of the etag.
    pub(super) version: u32,
}

impl StoredMessage {
    /// receivedDateTime as served: whole seconds, as Graph writes it.
    pub(super) fn shown_ms(&self) -> i64 {
        self.received_ms.div_euclid(1000) * 1000
    }

    /// The `@odata.etag`: changes with every change to the message.
    pub(super) fn etag(&self) -> String {
        format!(
            "W/\"CQAAABYAAA{:010X}{:04X}\"",
            self.received_ms & 0xff_ffff_ffff,
            self.version
        )
    }

    /// Appends the message as JSON: `@odata.etag`, `id`, the selected properties, `isRead`.
    pub(super) fn write_json(&self, sel: &Selection, context: Option<&str>, out: &mut String) {
        out.push('{');
        if let Some(ctx) = context {
            out.push_str("\"@odata.context\":");
            push_json_str(out, ctx);
            out.push(',');
        }
        out.push_str("\"@odata.etag\":");
        push_json_str(out, &self.etag());
        out.push_str(",\"id\":");
        push_json_str(out, &self.id);
        for (name, value) in &self.props {
            if sel.includes(name) {
                out.push_str(",\"");
                out.push_str(name);
                out.push_str("\":");
                out.push_str(value);
            }
        }
        if sel.includes("isRead") {
            out.push_str(if self.is_read {
                ",\"isRead\":true"
            } else {
                ",\"isRead\":false"
            });
        }
        if sel.attachments {
            out.push_str(",\"attachments\":");
            out.push_str(&Value::Array(self.attachments.clone()).to_string());
        }
        out.push('}');
    }

    /// Appends the message as a delta `@removed` item.
    pub(super) fn write_removed(&self, out: &mut String) {
        out.push_str("{\"@odata.type\":\"#microsoft.graph.message\",\"id\":");
        push_json_str(out, &self.id);
        out.push_str(",\"@removed\":{\"reason\":\"deleted\"}}");
    }
}

#[cfg(test)]
mod tests {
    use super::super::mailboxes::Mailbox;
    use super::*;

    const UPN: &str = "m@contoso.example";

    fn mailbox_with(n: u64) -> Mailbox {
        let mut mb = Mailbox::new(0, UPN);
        for i in 0..n {
            mb.append(draft(i, UPN, true), 1_700_000_000_000);
        }
        mb
    }

    #[test]
    fn selection_keeps_id_and_etag_and_refuses_unknown_properties() {
        let mb = mailbox_with(1);
        let sel =
            Selection::parse(Some("Subject, receivedDateTime"), MESSAGE_PROPERTIES, "m").unwrap();
        let mut out = String::new();
        mb.messages[0].write_json(&sel, None, &mut out);
        let v: Value = serde_json::from_str(&out).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["@odata.etag", "id", "receivedDateTime", "subject"]);

        let mut out = String::new();
        mb.messages[0].write_json(&Selection::All, None, &mut out);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["isRead"], false);
        assert!(
            v.get("attachments").is_none(),
            "attachments come from their own route"
        );
        assert_eq!(v["hasAttachments"], true);

        let e = Selection::parse(
            Some("id,subjekt"),
            MESSAGE_PROPERTIES,
            "microsoft.graph.message",
        )
        .unwrap_err();
        assert_eq!(e.code, "RequestBroker--ParseUri");
        assert!(e.message.contains("subjekt"));
    }

    #[test]
    fn every_change_to_a_message_changes_its_etag() {
        let mut mb = mailbox_with(1);
        let before = mb.messages[0].etag();
        assert!(before.starts_with("W/\""), "{before}");
        assert!(mb.set_read(0, true));
        assert_ne!(mb.messages[0].etag(), before);
    }

    #[test]
    fn a_removed_message_is_written_with_its_id_only() {
        let mb = mailbox_with(1);
        let mut out = String::new();
        mb.messages[0].write_removed(&mut out);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"@odata.type": "#microsoft.graph.message", "id": "AAMk-0-0",
                               "@removed": {"reason": "deleted"}})
        );
    }

    #[test]
    fn a_draft_keeps_the_known_properties_but_none_the_mailbox_assigns() {
        let d = draft(6, UPN, true);
        assert_eq!(d.n, 6);
        let names: Vec<&str> = d.props.iter().map(|(p, _)| *p).collect();
        for assigned in ["id", "receivedDateTime", "isRead", "attachments"] {
            assert!(!names.contains(&assigned), "{assigned}");
        }
        assert!(names.contains(&"subject") && names.contains(&"internetMessageId"));
        assert_eq!(d.attachments.len(), 1);
        assert_eq!(d.attachments[0].1, "application/pdf");
        assert!(draft(7, UPN, true).attachments.is_empty());
    }

    #[test]
    fn received_time_shows_whole_seconds_and_context_and_attachments_are_written_when_asked() {
        let mut mb = Mailbox::new(0, UPN);
        mb.append(draft(0, UPN, true), 1_700_000_000_999);
        let m = &mb.messages[0];
        assert_eq!(m.shown_ms(), 1_700_000_000_000);
        let sel = Selection::parse(Some("subject"), MESSAGE_PROPERTIES, "m")
            .unwrap()
            .expand(Some("attachments"))
            .unwrap();
        let mut out = String::new();
        m.write_json(&sel, Some("ctx"), &mut out);
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["@odata.context"], "ctx");
        assert_eq!(v["attachments"][0]["id"], "AAMk-0-0-att-0");
        assert!(v.get("isRead").is_none(), "not selected");
    }
}
