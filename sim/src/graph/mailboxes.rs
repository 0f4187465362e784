//! A mailbox: its messages in arrival order, the change log delta replays, and the pages
//! (list and delta) served from them by index.

use super::codecs::stable_guid;
use super::cursors::DeltaPos;
use super::messages::{Draft, StoredMessage};
use super::odata::{ListFilter, Selection};
use super::pollers::PollerLog;
use super::throttling::Budget;
use chrono::{SecondsFormat, TimeZone, Utc};
use serde::Serialize;
use serde_json::json;
use std::collections::HashMap;

/// What changed in a mailbox, in order (delta replays it from a position).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Change {
    Added(usize),
    Removed(usize),
}

/// The outcome of one list page.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ListPage {
    pub(super) served: usize,
    /// Index of the last message served.
    pub(super) last: Option<usize>,
    /// Another matching message follows.
    pub(super) more: bool,
}

/// Per-mailbox counters of the routes served.
#[derive(Debug, Default, Clone, Serialize)]
pub(super) struct MailboxCounters {
    /// Messages served in list and delta pages (`@removed` items and single GETs excluded).
    pub(super) messages_served: u64,
    pub(super) list_requests: u64,
    /// List requests that open a listing (no `$skiptoken`/`$skip`): one per poll.
    pub(super) list_starts: u64,
    /// List requests (any page) of listings that read the folder from its start
    /// ([`ListFilter::reads_the_whole_folder`]), and how many such listings were opened.
    pub(super) full_list_requests: u64,
    pub(super) full_list_starts: u64,
    pub(super) delta_requests: u64,
    pub(super) delta_410: u64,
    pub(super) get_requests: u64,
    pub(super) attachment_requests: u64,
    pub(super) marked_read: u64,
    pub(super) patch_already_read: u64,
    pub(super) batch_requests: u64,
    pub(super) batch_over_20: u64,
    /// Requests refused 403 because the mailbox is denied (`deny_mailboxes`).
    pub(super) denied_requests: u64,
}

/// One mailbox: its messages in arrival order, the change log delta replays, its budget.
pub(super) struct Mailbox {
    pub(super) upn: String,
    pub(super) guid: String,
    /// Position in the simulator's list (part of message ids).
    pub(super) index: usize,
    pub(super) messages: Vec<StoredMessage>,
    pub(super) by_id: HashMap<String, usize>,
    pub(super) changes: Vec<Change>,
    /// Every message before this index is deleted.
    pub(super) first_live: usize,
    /// Every message before this index is read or deleted.
    pub(super) first_unread: usize,
    /// Who polled it, to tell when two pollers read it at once.
    pub(super) pollers: PollerLog,
    pub(super) live: usize,
    pub(super) unread: usize,
    /// Number of the next synthetic message.
    pub(super) next_n: u64,
    pub(super) last_received_ms: i64,
    /// A message was added with an older receivedDateTime than the one before it (moved in
    /// from another folder): the messages are no longer in receivedDateTime order, and lists
    /// check every message's date instead of searching the sorted range.
    pub(super) out_of_order: bool,
    pub(super) delta_epoch: u32,
    pub(super) budget: Budget,
    pub(super) counters: MailboxCounters,
    /// An application access policy excludes this mailbox: every request on it gets 403
    /// `ErrorAccessDenied` (`/_sim/config` `deny_mailboxes`).
    pub(super) denied: bool,
    /// Folders made by `POST /_sim/folders`, and the messages moved out of the inbox
    /// ([`folders`](super::folders)).
    pub(super) folders: Vec<super::folders::Folder>,
    pub(super) moved: Vec<super::folders::Moved>,
}

impl Mailbox {
    /// An empty mailbox, number `index` in the simulator's list.
    pub(super) fn new(index: usize, upn: &str) -> Self {
        Self {
            upn: upn.to_string(),
            guid: stable_guid(upn),
            index,
            messages: Vec::new(),
            by_id: HashMap::new(),
            changes: Vec::new(),
            first_live: 0,
            first_unread: 0,
            live: 0,
            unread: 0,
            next_n: 0,
            last_received_ms: 0,
            out_of_order: false,
            delta_epoch: 0,
            budget: Budget::default(),
            counters: MailboxCounters::default(),
            denied: false,
            pollers: PollerLog::default(),
            folders: Vec::new(),
            moved: Vec::new(),
        }
    }

    /// Appends a message arriving at `now_ms`; returns its index.
    pub(super) fn append(&mut self, draft: Draft, now_ms: i64) -> usize {
        let received_ms = now_ms.max(self.last_received_ms + 1);
        self.last_received_ms = received_ms;
        self.push(draft, received_ms)
    }

    /// Appends a message received at `received_ms`, before the newest one (a message moved
    /// into the folder keeps its receivedDateTime); returns its index.
    pub(super) fn append_received(&mut self, draft: Draft, received_ms: i64) -> usize {
        if received_ms < self.last_received_ms {
            self.out_of_order = true;
        } else {
            self.last_received_ms = received_ms;
        }
        self.push(draft, received_ms)
    }

    fn push(&mut self, draft: Draft, received_ms: i64) -> usize {
        let idx = self.messages.len();
        let mut id = format!("AAMk-{}-{}", self.index, draft.n);
        if self.by_id.contains_key(&id) {
            id = format!("{id}-{idx}");
        }
        let shown = Utc
            .timestamp_millis_opt(received_ms)
            .single()
            .unwrap_or_default()
            .to_rfc3339_opts(SecondsFormat::Secs, true);
        let mut props = draft.props;
        props.push((
            "receivedDateTime",
            serde_json::to_string(&shown)
                .expect("a string serializes")
                .into_boxed_str(),
        ));
        let attachments = draft
            .attachments
            .into_iter()
            .enumerate()
            .map(|(i, (name, content_type, size))| {
                json!({
                    "@odata.type": "#microsoft.graph.fileAttachment",
                    "id": format!("{id}-att-{i}"),
                    "lastModifiedDateTime": shown,
                    "name": name,
                    "contentType": content_type,
                    "size": size,
                    "isInline": false,
                })
            })
            .collect();
        self.by_id.insert(id.clone(), idx);
        self.messages.push(StoredMessage {
            id,
            received_ms,
            props,
            attachments,
            is_read: false,
            deleted: false,
            version: 0,
        });
        self.changes.push(Change::Added(idx));
        self.live += 1;
        self.unread += 1;
        idx
    }

    /// Deletes the `count` oldest messages; returns how many were deleted.
    pub(super) fn delete_oldest(&mut self, count: usize) -> usize {
        let mut deleted = 0;
        let mut i = self.first_live;
        while deleted < count && i < self.messages.len() {
            if self.remove(i) {
                deleted += 1;
            }
            i += 1;
        }
        self.advance_hints();
        deleted
    }

    /// Takes message `i` out of the folder (deleted, or moved away): delta reports it
    /// `@removed`. Returns whether it was there. (The caller advances the hints.)
    pub(super) fn remove(&mut self, i: usize) -> bool {
        let m = &mut self.messages[i];
        if m.deleted {
            return false;
        }
        m.deleted = true;
        m.version += 1;
        if !m.is_read {
            self.unread -= 1;
        }
        self.live -= 1;
        self.changes.push(Change::Removed(i));
        true
    }

    /// Sets `isRead`; returns whether it changed.
    pub(super) fn set_read(&mut self, idx: usize, read: bool) -> bool {
        let m = &mut self.messages[idx];
        if m.is_read == read || m.deleted {
            return false;
        }
        m.is_read = read;
        m.version += 1;
        if read {
            self.unread -= 1;
            self.advance_hints();
        } else {
            self.unread += 1;
            self.first_unread = self.first_unread.min(idx);
        }
        true
    }

    /// Moves `first_live` and `first_unread` past deleted (and read) messages.
    pub(super) fn advance_hints(&mut self) {
        while self
            .messages
            .get(self.first_live)
            .is_some_and(|m| m.deleted)
        {
            self.first_live += 1;
        }
        self.first_unread = self.first_unread.max(self.first_live);
        while self
            .messages
            .get(self.first_unread)
            .is_some_and(|m| m.deleted || m.is_read)
        {
            self.first_unread += 1;
        }
    }

    /// Index of a message that exists (not deleted).
    pub(super) fn find(&self, id: &str) -> Option<usize> {
        self.by_id
            .get(id)
            .copied()
            .filter(|i| !self.messages[*i].deleted)
    }

    /// Writes up to `top` messages matching `f` (comma-separated) after position `after`,
    /// skipping the first `skip` matches.
    pub(super) fn list_page(
        &self,
        f: &ListFilter,
        after: Option<usize>,
        skip: usize,
        top: usize,
        sel: &Selection,
        out: &mut String,
    ) -> ListPage {
        let (mut lo, mut hi) = if self.out_of_order {
            (0, self.messages.len())
        } else {
            f.range(|i| self.messages[i].shown_ms(), self.messages.len())
        };
        lo = lo.max(self.first_live);
        if f.is_read == Some(false) {
            lo = lo.max(self.first_unread);
        }
        let mut page = ListPage {
            served: 0,
            last: None,
            more: false,
        };
        let mut skipped = 0;
        let mut visit = |i: usize| -> bool {
            let m = &self.messages[i];
            if m.deleted
                || f.is_read.is_some_and(|r| r != m.is_read)
                || (self.out_of_order && !f.admits(m.shown_ms()))
            {
                return true;
            }
            if skipped < skip {
                skipped += 1;
                return true;
            }
            if page.served == top {
                page.more = true;
                return false;
            }
            if page.served > 0 {
                out.push(',');
            }
            m.write_json(sel, None, out);
            page.served += 1;
            page.last = Some(i);
            true
        };
        if f.descending {
            if let Some(a) = after {
                hi = hi.min(a);
            }
            for i in (lo..hi.max(lo)).rev() {
                if !visit(i) {
                    break;
                }
            }
        } else {
            if let Some(a) = after {
                lo = lo.max(a + 1);
            }
            for i in lo..hi {
                if !visit(i) {
                    break;
                }
            }
        }
        page
    }

    /// Writes one delta page from `pos`; returns where the next page starts, or (as
    /// `DeltaPos::Link`) the change position the deltaLink holds, and how many messages
    /// (not `@removed` items) it wrote.
    pub(super) fn delta_page(
        &self,
        pos: DeltaPos,
        page: usize,
        sel: &Selection,
        out: &mut String,
    ) -> (DeltaPos, usize) {
        match pos {
            DeltaPos::Sync { next, end, changes } => {
                let end = end.min(self.messages.len());
                let mut served = 0;
                for i in next..end {
                    let m = &self.messages[i];
                    if m.deleted {
                        continue;
                    }
                    if served == page {
                        let next = DeltaPos::Sync {
                            next: i,
                            end,
                            changes,
                        };
                        return (next, served);
                    }
                    if served > 0 {
                        out.push(',');
                    }
                    m.write_json(sel, None, out);
                    served += 1;
                }
                (DeltaPos::Link { changes }, served)
            }
            DeltaPos::Changes { next, end } => {
                self.changes_page(next, end.min(self.changes.len()), page, sel, out)
            }
            DeltaPos::Link { changes } => {
                self.changes_page(changes, self.changes.len(), page, sel, out)
            }
        }
    }

    /// Writes the changes `next..end` (up to `page` items): messages added since (unless
    /// deleted again) and `@removed` entries.
    fn changes_page(
        &self,
        next: usize,
        end: usize,
        page: usize,
        sel: &Selection,
        out: &mut String,
    ) -> (DeltaPos, usize) {
        let (mut served, mut messages) = (0, 0);
        for j in next.min(end)..end {
            let (i, removed) = match self.changes[j] {
                Change::Added(i) => (i, false),
                Change::Removed(i) => (i, true),
            };
            let m = &self.messages[i];
            if !removed && m.deleted {
                continue;
            }
            if served == page {
                return (DeltaPos::Changes { next: j, end }, messages);
            }
            if served > 0 {
                out.push(',');
            }
            if removed {
                m.write_removed(out);
            } else {
                m.write_json(sel, None, out);
                messages += 1;
            }
            served += 1;
        }
        (DeltaPos::Link { changes: end }, messages)
    }
}

#[cfg(test)]
mod tests {
    use super::super::messages::draft;
    use super::super::odata::check_filter;
    use super::*;
    use serde_json::Value;

    const UPN: &str = "m@contoso.example";
    const CONTRACT_FILTER: &str = "receivedDateTime ge 1900-01-01T00:00:00Z and isRead eq false";

    fn mailbox_with(n: u64) -> Mailbox {
        let mut mb = Mailbox::new(0, UPN);
        for i in 0..n {
            mb.append(draft(i, UPN, true), 1_700_000_000_000);
        }
        mb
    }

    /// The ids in a comma-separated run of message objects.
    fn ids(fragment: &str) -> Vec<String> {
        let v: Value = serde_json::from_str(&format!("[{fragment}]")).expect("valid JSON");
        v.as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_string())
            .collect()
    }

    fn unread_oldest_first() -> ListFilter {
        check_filter(Some(CONTRACT_FILTER), Some("receivedDateTime")).unwrap()
    }
    #[test]
    fn unread_pages_serve_every_message_once_while_half_are_marked_read_between_pages() {
        let mut mb = mailbox_with(50);
        let f = unread_oldest_first();
        let mut after = None;
        let mut seen = Vec::new();
        let mut marked = 0;
        loop {
            let mut out = String::new();
            let page = mb.list_page(&f, after, 0, 7, &Selection::All, &mut out);
            let page_ids = ids(&out);
            assert_eq!(page_ids.len(), page.served);
            for id in page_ids.iter().step_by(2) {
                let idx = mb.find(id).unwrap();
                assert!(mb.set_read(idx, true));
                marked += 1;
            }
            seen.extend(page_ids);
            if !page.more {
                break;
            }
            after = page.last;
        }
        let want: Vec<String> = (0..50).map(|n| format!("AAMk-0-{n}")).collect();
        assert_eq!(seen, want);
        assert_eq!(mb.unread, 50 - marked);
    }

    #[test]
    fn skip_paging_over_a_shrinking_set_loses_messages_as_graph_does() {
        let mut mb = mailbox_with(20);
        let f = unread_oldest_first();
        let mut out = String::new();
        let first = mb.list_page(&f, None, 0, 10, &Selection::All, &mut out);
        for id in ids(&out) {
            let idx = mb.find(&id).unwrap();
            mb.set_read(idx, true);
        }
        let mut out = String::new();
        let second = mb.list_page(&f, None, first.served, 10, &Selection::All, &mut out);
        assert_eq!(
            second.served, 0,
            "the $skip jumped over the ten still unread"
        );
    }

    #[test]
    fn newest_first_pages_walk_backwards_and_date_bounds_select_a_range() {
        let mut mb = Mailbox::new(0, UPN);
        for n in 0..6 {
            // One message per second from 2026-01-01T00:00:00Z.
            mb.append(draft(n, UPN, true), 1_767_225_600_000 + n as i64 * 1000);
        }
        let f = check_filter(None, Some("receivedDateTime desc")).unwrap();
        let mut out = String::new();
        let page = mb.list_page(&f, None, 0, 4, &Selection::All, &mut out);
        assert_eq!(ids(&out), ["AAMk-0-5", "AAMk-0-4", "AAMk-0-3", "AAMk-0-2"]);
        let mut out = String::new();
        mb.list_page(&f, page.last, 0, 4, &Selection::All, &mut out);
        assert_eq!(ids(&out), ["AAMk-0-1", "AAMk-0-0"]);

        let f = check_filter(
            Some("receivedDateTime gt 2026-01-01T00:00:01Z and receivedDateTime le 2026-01-01T00:00:04Z"),
            Some("receivedDateTime"),
        )
        .unwrap();
        let mut out = String::new();
        mb.list_page(&f, None, 0, 10, &Selection::All, &mut out);
        assert_eq!(ids(&out), ["AAMk-0-2", "AAMk-0-3", "AAMk-0-4"]);
    }

    #[test]
    fn an_old_message_moved_in_is_listed_with_the_whole_folder_not_since_a_recent_time() {
        let mut mb = Mailbox::new(0, UPN);
        for n in 0..4 {
            mb.append(draft(n, UPN, true), 1_767_225_600_000 + n as i64 * 1000);
        }
        mb.append_received(draft(9, UPN, true), 1_767_225_000_000);
        let list = |filter: &str| {
            let f = check_filter(Some(filter), Some("receivedDateTime")).unwrap();
            let mut out = String::new();
            mb.list_page(&f, None, 0, 10, &Selection::All, &mut out);
            ids(&out)
        };
        assert_eq!(list(CONTRACT_FILTER).len(), 5);
        assert!(list(CONTRACT_FILTER).contains(&"AAMk-0-9".to_string()));
        assert_eq!(
            list("receivedDateTime ge 2026-01-01T00:00:02Z and isRead eq false"),
            ["AAMk-0-2", "AAMk-0-3"]
        );
        assert_eq!(
            mb.last_received_ms, 1_767_225_603_000,
            "the newest stays newest"
        );
    }

    #[test]
    fn delta_syncs_the_mailbox_in_pages_then_replays_only_what_changed() {
        let mut mb = mailbox_with(5);
        let sel = Selection::All.clone();
        let mut pos = DeltaPos::Sync {
            next: 0,
            end: 5,
            changes: mb.changes.len(),
        };
        let mut pages = Vec::new();
        let link = loop {
            let mut out = String::new();
            let (next, served) = mb.delta_page(pos, 2, &sel, &mut out);
            assert_eq!(ids(&out).len(), served);
            pages.push(served);
            pos = next;
            if let DeltaPos::Link { .. } = pos {
                break pos;
            }
        };
        assert_eq!(pages, [2, 2, 1]);
        assert_eq!(link, DeltaPos::Link { changes: 5 });

        mb.append(draft(5, UPN, true), 0);
        mb.append(draft(6, UPN, true), 0);
        assert_eq!(mb.delete_oldest(1), 1);
        let mut out = String::new();
        let (next, served) = mb.delta_page(link, 10, &sel, &mut out);
        assert_eq!(served, 2, "@removed items are not messages");
        let items: Value = serde_json::from_str(&format!("[{out}]")).unwrap();
        assert_eq!(items[0]["id"], "AAMk-0-5");
        assert_eq!(items[1]["id"], "AAMk-0-6");
        assert_eq!(items[2]["id"], "AAMk-0-0");
        assert_eq!(items[2]["@removed"]["reason"], "deleted");
        assert_eq!(next, DeltaPos::Link { changes: 8 });

        let mut out = String::new();
        assert_eq!(mb.delta_page(next, 10, &sel, &mut out), (next, 0));
        assert!(out.is_empty(), "nothing changed since");
    }

    #[test]
    fn deleted_messages_are_gone_from_find_and_cannot_be_marked() {
        let mut mb = mailbox_with(3);
        assert!(mb.set_read(1, true));
        assert_eq!(mb.delete_oldest(2), 2);
        assert_eq!((mb.live, mb.unread), (1, 1));
        assert_eq!(mb.find("AAMk-0-0"), None);
        assert!(!mb.set_read(1, false), "deleted");
        assert_eq!(mb.find("AAMk-0-2"), Some(2));
        assert_eq!((mb.first_live, mb.first_unread), (2, 2));
        assert_eq!(mb.changes.last(), Some(&Change::Removed(1)));
        assert_eq!(mb.delete_oldest(5), 1, "only one was left");
    }

    #[test]
    fn a_message_number_used_twice_still_gets_a_unique_id_and_a_later_arrival() {
        let mut mb = Mailbox::new(0, UPN);
        let a = mb.append(draft(1, UPN, true), 5_000);
        let b = mb.append(draft(1, UPN, true), 4_000);
        assert_eq!(mb.messages[a].id, "AAMk-0-1");
        assert_eq!(mb.messages[b].id, "AAMk-0-1-1");
        assert_eq!(
            mb.messages[b].received_ms, 5_001,
            "arrival times strictly increase"
        );
        assert_eq!(mb.find("AAMk-0-1-1"), Some(b));
    }
}
