//! The mail routes on one mailbox: the unread list, delta, get and patch one message, its
//! attachments' metadata.

use super::answers::{GraphError, Reply};
use super::codecs::push_json_str;
use super::cursors::{Cursor, DeltaPos};
use super::odata::{
    check_filter, prefer_max_page_size, Query, Selection, ATTACHMENT_PROPERTIES, MESSAGE_PROPERTIES,
};
use super::routes::{Call, MailboxOp};
use super::state::State;
use super::ListPaging;
use chrono::Utc;
use serde_json::{json, Value};
use std::time::Instant;
use url::form_urlencoded;

/// Delta page size without `Prefer: odata.maxpagesize`.
const DEFAULT_DELTA_PAGE: usize = 10;
/// List page size without `$top` (Graph's default for messages).
const DEFAULT_LIST_PAGE: usize = 10;

impl State {
    /// Runs `op` on mailbox `mbx` (admitted by its budget already).
    pub(super) fn execute(
        &mut self,
        mbx: usize,
        op: &MailboxOp,
        call: &Call<'_>,
    ) -> Result<Reply, GraphError> {
        let q = Query::parse(call.query);
        let folder_ok = |f: &Option<String>| {
            if f.as_deref()
                .is_some_and(|f| !f.eq_ignore_ascii_case("inbox"))
            {
                Err(GraphError::item_not_found())
            } else {
                Ok(())
            }
        };
        match (call.method, op) {
            ("GET", MailboxOp::List { folder }) => {
                folder_ok(folder)?;
                self.mailboxes[mbx].pollers.saw(call.agent, Instant::now());
                self.list(mbx, call, &q)
            }
            ("GET", MailboxOp::Delta { folder }) => {
                folder_ok(&Some(folder.clone()))?;
                self.mailboxes[mbx].pollers.saw(call.agent, Instant::now());
                self.delta(mbx, call, &q)
            }
            ("GET", MailboxOp::Message(id)) => self.get_message(mbx, id, &q, call),
            ("PATCH", MailboxOp::Message(id)) => self.patch_message(mbx, id, call),
            ("GET", MailboxOp::Attachments(id)) => self.attachments(mbx, id, &q),
            ("GET", MailboxOp::Folder(key)) => self.get_folder(mbx, key, call),
            ("POST", MailboxOp::Move(id)) => self.move_message(mbx, id, call),
            _ => Err(GraphError::new(
                405,
                "MethodNotAllowed",
                format!("{} is not supported on this resource.", call.method),
            )),
        }
    }

    /// The unread list: `$filter`, `$orderby`, `$select`, `$expand`, `$top`, paged by
    /// `$skiptoken` (or `$skip`).
    fn list(&mut self, mbx: usize, call: &Call<'_>, q: &Query) -> Result<Reply, GraphError> {
        self.mailboxes[mbx].counters.list_requests += 1;
        let filter = check_filter(q.get("$filter"), q.get("$orderby"))?;
        let opens = q.get("$skiptoken").is_none() && q.get("$skip").is_none();
        let c = &mut self.mailboxes[mbx].counters;
        c.list_starts += u64::from(opens);
        if filter.reads_the_whole_folder() {
            c.full_list_requests += 1;
            c.full_list_starts += u64::from(opens);
        }
        let sel = Selection::parse(
            q.get("$select"),
            MESSAGE_PROPERTIES,
            "microsoft.graph.message",
        )?
        .expand(q.get("$expand"))?;
        let number = |key: &str, default: usize| -> Result<usize, GraphError> {
            q.get(key).map_or(Ok(default), |v| {
                v.trim()
                    .parse()
                    .map_err(|_| GraphError::bad_request(format!("Invalid {key} value '{v}'.")))
            })
        };
        let top = number("$top", DEFAULT_LIST_PAGE)?.clamp(1, self.max_page_size);
        let skip = number("$skip", 0)?;
        let after = match q.get("$skiptoken") {
            Some(t) => Some(self.list_position(mbx, t)?),
            None => None,
        };
        let mb = &self.mailboxes[mbx];
        let mut out = String::with_capacity(256 + top * 768);
        out.push_str("{\"@odata.context\":");
        push_json_str(
            &mut out,
            &format!(
                "{}/$metadata#users('{}')/mailFolders('inbox')/messages",
                call.base, mb.upn
            ),
        );
        out.push_str(",\"value\":[");
        let page = mb.list_page(&filter, after, skip, top, &sel, &mut out);
        out.push(']');
        if page.more {
            let mut link = form_urlencoded::Serializer::new(String::new());
            for (k, v) in &q.0 {
                if !k.eq_ignore_ascii_case("$skiptoken") && !k.eq_ignore_ascii_case("$skip") {
                    link.append_pair(k, v);
                }
            }
            match (self.list_paging, page.last) {
                (ListPaging::Skip, _) | (_, None) => {
                    link.append_pair("$skip", &(skip + page.served).to_string());
                }
                (ListPaging::Skiptoken, Some(last)) => {
                    let m = &mb.messages[last];
                    let cursor = Cursor::List {
                        mailbox: mbx,
                        received_ms: m.received_ms,
                        id: m.id.clone(),
                    };
                    link.append_pair("$skiptoken", &self.sealer.seal(&cursor.encode()));
                }
            }
            out.push_str(",\"@odata.nextLink\":");
            push_json_str(
                &mut out,
                &format!("{}{}?{}", call.base, call.path, link.finish()),
            );
        }
        out.push('}');
        self.mailboxes[mbx].counters.messages_served += page.served as u64;
        Ok(Reply::json(200, out))
    }

    /// The index a `$skiptoken` continues after; 400 for a token not made for this mailbox.
    fn list_position(&self, mbx: usize, token: &str) -> Result<usize, GraphError> {
        let bad = || GraphError::bad_request("The $skiptoken is not valid.");
        let Some(Cursor::List {
            mailbox,
            received_ms,
            id,
        }) = self.sealer.open(token).and_then(|p| Cursor::decode(&p))
        else {
            return Err(bad());
        };
        if mailbox != mbx {
            return Err(bad());
        }
        let mb = &self.mailboxes[mbx];
        match mb.by_id.get(&id) {
            Some(&i) if mb.messages[i].received_ms == received_ms => Ok(i),
            _ => Err(bad()),
        }
    }

    /// Delta: a page from the start, a `$skiptoken` or a `$deltatoken`, and the link to
    /// continue from.
    fn delta(&mut self, mbx: usize, call: &Call<'_>, q: &Query) -> Result<Reply, GraphError> {
        self.mailboxes[mbx].counters.delta_requests += 1;
        let requested = prefer_max_page_size(call.prefer);
        let page = requested
            .unwrap_or(DEFAULT_DELTA_PAGE)
            .clamp(1, self.max_page_size);
        let now_ms = Utc::now().timestamp_millis();
        let opened = match (q.get("$deltatoken"), q.get("$skiptoken")) {
            (Some(t), _) => self.open_delta(mbx, t, now_ms, true),
            (None, Some(t)) => self.open_delta(mbx, t, now_ms, false),
            (None, None) => {
                let mb = &self.mailboxes[mbx];
                Ok((
                    DeltaPos::Sync {
                        next: mb.first_live,
                        end: mb.messages.len(),
                        changes: mb.changes.len(),
                    },
                    String::new(),
                ))
            }
        };
        let (pos, token_select) = match opened {
            Ok(o) => o,
            Err(e) => {
                self.mailboxes[mbx].counters.delta_410 += 1;
                return Err(e);
            }
        };
        // An explicit $select / $expand wins over what the token carries.
        let sel = match (q.get("$select"), q.get("$expand")) {
            (None, None) => Selection::decode(&token_select)?,
            (select, expand) => {
                Selection::parse(select, MESSAGE_PROPERTIES, "microsoft.graph.message")?
                    .expand(expand)?
            }
        };
        let mb = &self.mailboxes[mbx];
        let mut out = String::with_capacity(256 + page * 768);
        out.push_str("{\"@odata.context\":");
        push_json_str(
            &mut out,
            &format!("{}/$metadata#Collection(message)", call.base),
        );
        out.push_str(",\"value\":[");
        let (next, served) = mb.delta_page(pos, page, &sel, &mut out);
        out.push(']');
        let cursor = Cursor::Delta {
            mailbox: mbx,
            epoch: mb.delta_epoch,
            issued_ms: now_ms,
            pos: next,
            select: sel.encode(),
        };
        let token = self.sealer.seal(&cursor.encode());
        let (field, param) = match next {
            DeltaPos::Link { .. } => ("@odata.deltaLink", "$deltatoken"),
            _ => ("@odata.nextLink", "$skiptoken"),
        };
        out.push_str(",\"");
        out.push_str(field);
        out.push_str("\":");
        push_json_str(
            &mut out,
            &format!("{}{}?{param}={token}", call.base, call.path),
        );
        out.push('}');
        self.mailboxes[mbx].counters.messages_served += served as u64;
        let mut reply = Reply::json(200, out);
        if requested.is_some() {
            reply
                .headers
                .push(("Preference-Applied", format!("odata.maxpagesize={page}")));
        }
        Ok(reply)
    }

    /// Opens a delta token; any doubt is Graph's 410 `SyncStateNotFound`.
    fn open_delta(
        &self,
        mbx: usize,
        token: &str,
        now_ms: i64,
        delta_link: bool,
    ) -> Result<(DeltaPos, String), GraphError> {
        let Some(Cursor::Delta {
            mailbox,
            epoch,
            issued_ms,
            pos,
            select,
        }) = self.sealer.open(token).and_then(|p| Cursor::decode(&p))
        else {
            return Err(GraphError::sync_state_not_found());
        };
        let mb = &self.mailboxes[mbx];
        let kind_ok = matches!(pos, DeltaPos::Link { .. }) == delta_link;
        let fresh = self
            .delta_ttl
            .is_none_or(|ttl| now_ms.saturating_sub(issued_ms) < ttl.as_millis() as i64);
        if mailbox != mbx || epoch != mb.delta_epoch || !kind_ok || !fresh {
            return Err(GraphError::sync_state_not_found());
        }
        Ok((pos, select))
    }

    /// One message.
    fn get_message(
        &mut self,
        mbx: usize,
        id: &str,
        q: &Query,
        call: &Call<'_>,
    ) -> Result<Reply, GraphError> {
        self.mailboxes[mbx].counters.get_requests += 1;
        let sel = Selection::parse(
            q.get("$select"),
            MESSAGE_PROPERTIES,
            "microsoft.graph.message",
        )?
        .expand(q.get("$expand"))?;
        let mb = &self.mailboxes[mbx];
        let idx = mb.find(id).ok_or_else(GraphError::item_not_found)?;
        let mut out = String::with_capacity(1024);
        let ctx = format!(
            "{}/$metadata#users('{}')/messages/$entity",
            call.base, mb.upn
        );
        mb.messages[idx].write_json(&sel, Some(&ctx), &mut out);
        Ok(Reply::json(200, out))
    }

    /// Sets `isRead` on one message; answers with the message.
    fn patch_message(
        &mut self,
        mbx: usize,
        id: &str,
        call: &Call<'_>,
    ) -> Result<Reply, GraphError> {
        let body = call.json()?;
        let Value::Object(fields) = body else {
            return Err(GraphError::bad_request(
                "The request body must be a JSON object.",
            ));
        };
        let is_read = match fields.get("isRead") {
            None => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => {
                return Err(GraphError::bad_request(
                    "Cannot convert the literal to the expected type 'Edm.Boolean'.",
                ))
            }
        };
        let mb = &mut self.mailboxes[mbx];
        let idx = mb.find(id).ok_or_else(GraphError::item_not_found)?;
        if let Some(read) = is_read {
            let changed = mb.set_read(idx, read);
            if read && changed {
                mb.counters.marked_read += 1;
            } else if read {
                mb.counters.patch_already_read += 1;
            }
        }
        let mut out = String::with_capacity(1024);
        let ctx = format!(
            "{}/$metadata#users('{}')/messages/$entity",
            call.base, mb.upn
        );
        mb.messages[idx].write_json(&Selection::All, Some(&ctx), &mut out);
        Ok(Reply::json(200, out))
    }

    /// One message's attachments' metadata.
    fn attachments(&mut self, mbx: usize, id: &str, q: &Query) -> Result<Reply, GraphError> {
        self.mailboxes[mbx].counters.attachment_requests += 1;
        let sel = Selection::parse(
            q.get("$select"),
            ATTACHMENT_PROPERTIES,
            "microsoft.graph.attachment",
        )?;
        let mb = &self.mailboxes[mbx];
        let idx = mb.find(id).ok_or_else(GraphError::item_not_found)?;
        let value: Vec<Value> = mb.messages[idx]
            .attachments
            .iter()
            .map(|a| {
                let Value::Object(map) = a else {
                    return a.clone();
                };
                Value::Object(
                    map.iter()
                        .filter(|(k, _)| k.starts_with('@') || *k == "id" || sel.includes(k))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                )
            })
            .collect();
        Ok(Reply::json(200, json!({ "value": value }).to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::options;
    use super::*;

    use super::super::routes::{parse_route, Route};

    const BASE: &str = "http://sim/v1.0";
    const CONTRACT_FILTER: &str = "receivedDateTime ge 1900-01-01T00:00:00Z and isRead eq false";

    fn call<'a>(method: &'a str, path: &'a str, query: &'a str, body: &'a [u8]) -> Call<'a> {
        Call {
            method,
            path,
            query,
            prefer: None,
            body,
            base: BASE,
            agent: "test",
            app: "ms1-app",
            tenant: "contoso",
        }
    }

    /// Runs `call` on the mailbox its path names.
    fn run(s: &mut State, call: &Call<'_>) -> Result<Reply, GraphError> {
        let Route::Mailbox { user, op } = parse_route(call.path).unwrap() else {
            panic!("a mailbox route")
        };
        let mbx = s.resolve(&user).unwrap();
        s.execute(mbx, &op, call)
    }

    fn json_of(reply: Reply) -> Value {
        assert_eq!(reply.status, 200);
        serde_json::from_str(reply.body.as_deref().unwrap()).unwrap()
    }

    #[test]
    fn skiptoken_next_links_serve_each_unread_message_once_while_they_are_marked_read() {
        let mut s = State::new(&options(&["--messages-per-mailbox", "5"])).unwrap();
        let first = form_urlencoded::Serializer::new(String::new())
            .append_pair("$top", "2")
            .append_pair("$filter", CONTRACT_FILTER)
            .append_pair("$orderby", "receivedDateTime")
            .append_pair("$select", "subject")
            .finish();
        let path = "/users/invoices-0@contoso.example/mailFolders/inbox/messages";
        let mut next = Some(format!("{BASE}{path}?{first}"));
        let (mut seen, mut pages) = (Vec::new(), 0);
        while let Some(link) = next {
            let (p, q) = link.strip_prefix(BASE).unwrap().split_once('?').unwrap();
            let page = json_of(run(&mut s, &call("GET", p, q, b"")).unwrap());
            for m in page["value"].as_array().unwrap() {
                let id = m["id"].as_str().unwrap();
                let idx = s.mailboxes[0].find(id).unwrap();
                s.mailboxes[0].set_read(idx, true);
                seen.push(id.to_string());
            }
            next = page["@odata.nextLink"].as_str().map(String::from);
            if let Some(n) = &next {
                assert!(
                    n.contains("%24skiptoken=") && n.contains("%24select=subject"),
                    "{n}"
                );
            }
            pages += 1;
        }
        let want: Vec<String> = (0..5).map(|n| format!("AAMk-0-{n}")).collect();
        assert_eq!((seen, pages), (want, 3));
        assert_eq!(s.mailboxes[0].counters.messages_served, 5);
        assert_eq!(s.mailboxes[0].counters.list_requests, 3);
    }

    #[test]
    fn a_skiptoken_opens_only_on_its_own_mailbox() {
        let mut s = State::new(&options(&["--messages-per-mailbox", "3"])).unwrap();
        let page = json_of(
            run(
                &mut s,
                &call(
                    "GET",
                    "/users/invoices-0@contoso.example/messages",
                    "$top=1",
                    b"",
                ),
            )
            .unwrap(),
        );
        let link = page["@odata.nextLink"].as_str().unwrap();
        let (_, q) = link.split_once('?').unwrap();
        let e = run(
            &mut s,
            &call("GET", "/users/invoices-1@contoso.example/messages", q, b""),
        )
        .unwrap_err();
        assert_eq!((e.status, e.code), (400, "BadRequest"));
        let e = run(
            &mut s,
            &call(
                "GET",
                "/users/invoices-0@contoso.example/messages",
                "$skiptoken=00",
                b"",
            ),
        )
        .unwrap_err();
        assert_eq!(e.status, 400);
    }

    #[test]
    fn a_delta_token_opens_only_as_a_delta_link_on_its_mailbox_until_the_epoch_moves() {
        let mut s = State::new(&options(&["--messages-per-mailbox", "3"])).unwrap();
        let delta = |u: usize| {
            format!("/users/invoices-{u}@contoso.example/mailFolders('inbox')/messages/delta")
        };
        let (d0, d1) = (delta(0), delta(1));
        let mut first = call("GET", &d0, "", b"");
        first.prefer = Some("odata.maxpagesize=5");
        let reply = run(&mut s, &first).unwrap();
        assert!(reply
            .headers
            .contains(&("Preference-Applied", "odata.maxpagesize=5".to_string())));
        let page = json_of(reply);
        assert_eq!(page["value"].as_array().unwrap().len(), 3);
        let link = page["@odata.deltaLink"].as_str().unwrap();
        let q = link.split_once('?').unwrap().1.to_string();
        assert!(q.starts_with("$deltatoken="), "{q}");

        let again = json_of(run(&mut s, &call("GET", &d0, &q, b"")).unwrap());
        assert_eq!(again["value"], json!([]), "nothing changed");
        let e = run(&mut s, &call("GET", &d1, &q, b"")).unwrap_err();
        assert_eq!((e.status, e.code), (410, "SyncStateNotFound"));
        let as_next = q.replace("$deltatoken", "$skiptoken");
        assert_eq!(
            run(&mut s, &call("GET", &d0, &as_next, b""))
                .unwrap_err()
                .status,
            410
        );
        s.mailboxes[0].delta_epoch += 1;
        assert_eq!(
            run(&mut s, &call("GET", &d0, &q, b"")).unwrap_err().status,
            410
        );
        let counted = |s: &State, m: usize| s.mailboxes[m].counters.delta_410;
        assert_eq!((counted(&s, 0), counted(&s, 1)), (2, 1));
    }

    #[test]
    fn patching_is_read_marks_once_counts_a_repeat_and_refuses_a_non_boolean() {
        let mut s = State::new(&options(&["--messages-per-mailbox", "1"])).unwrap();
        let path = "/users/invoices-0@contoso.example/messages/AAMk-0-0";
        for _ in 0..2 {
            let m = json_of(run(&mut s, &call("PATCH", path, "", br#"{"isRead":true}"#)).unwrap());
            assert_eq!(m["isRead"], true);
        }
        let c = &s.mailboxes[0].counters;
        assert_eq!((c.marked_read, c.patch_already_read), (1, 1));
        let e = run(&mut s, &call("PATCH", path, "", br#"{"isRead":"yes"}"#)).unwrap_err();
        assert_eq!(e.status, 400);
        let e = run(&mut s, &call("DELETE", path, "", b"")).unwrap_err();
        assert_eq!((e.status, e.code), (405, "MethodNotAllowed"));
    }

    #[test]
    fn an_unknown_message_or_folder_is_not_found_and_attachments_keep_their_type_and_id() {
        let mut s = State::new(&options(&["--messages-per-mailbox", "1"])).unwrap();
        for path in [
            "/users/invoices-0@contoso.example/messages/AAMk-0-9",
            "/users/invoices-0@contoso.example/mailFolders/archive/messages",
            "/users/invoices-0@contoso.example/messages/AAMk-0-9/attachments",
        ] {
            let e = run(&mut s, &call("GET", path, "", b"")).unwrap_err();
            assert_eq!((e.status, e.code), (404, "ErrorItemNotFound"), "{path}");
        }
        let path = "/users/invoices-0@contoso.example/messages/AAMk-0-0/attachments";
        let v = json_of(run(&mut s, &call("GET", path, "$select=name", b"")).unwrap());
        let mut keys: Vec<&str> = v["value"][0]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(keys, ["@odata.type", "id", "name"]);
    }

    #[test]
    fn a_message_moves_to_a_known_folder_under_a_new_id_and_leaves_the_unread_list() {
        let mut s = State::new(&options(&["--messages-per-mailbox", "2"])).unwrap();
        let mb = "/users/invoices-0@contoso.example";
        let folder = json_of(
            run(
                &mut s,
                &call("GET", &format!("{mb}/mailFolders/JunkEmail"), "", b""),
            )
            .unwrap(),
        );
        assert_eq!(folder["displayName"], "junkemail");
        let to = folder["id"].as_str().unwrap().to_string();
        let e = run(
            &mut s,
            &call("GET", &format!("{mb}/mailFolders/Nowhere"), "", b""),
        )
        .unwrap_err();
        assert_eq!(e.status, 404);
        let path = format!("{mb}/messages/AAMk-0-0/move");
        let body = format!(r#"{{"destinationId":"{to}"}}"#);
        let moved = run(&mut s, &call("POST", &path, "", body.as_bytes())).unwrap();
        assert_eq!(moved.status, 201);
        let m: Value = serde_json::from_str(moved.body.as_deref().unwrap()).unwrap();
        assert_ne!(m["id"], "AAMk-0-0");
        assert_eq!(m["parentFolderId"], to.as_str());
        assert_eq!(
            run(&mut s, &call("POST", &path, "", body.as_bytes()))
                .unwrap_err()
                .status,
            404
        );
        let bad = run(
            &mut s,
            &call(
                "POST",
                &format!("{mb}/messages/AAMk-0-1/move"),
                "",
                br#"{"destinationId":"nope"}"#,
            ),
        );
        assert_eq!(bad.unwrap_err().status, 400);
        assert_eq!((s.mailboxes[0].live, s.mailboxes[0].unread), (1, 1));
        assert_eq!(
            super::super::folders::moved_into(&s, 0, "junkemail").len(),
            1
        );
    }
}
