//! OData query options: the query string itself, `$select` / `$expand`, `$filter` /
//! `$orderby` on the unread list, and `Prefer: odata.maxpagesize`.

use super::answers::GraphError;
use chrono::DateTime;
use url::form_urlencoded;

/// Properties of `microsoft.graph.message` that `$select` may name.
pub(super) const MESSAGE_PROPERTIES: &[&str] = &[
    "id",
    "createdDateTime",
    "lastModifiedDateTime",
    "changeKey",
    "categories",
    "receivedDateTime",
    "sentDateTime",
    "hasAttachments",
    "internetMessageId",
    "subject",
    "bodyPreview",
    "importance",
    "parentFolderId",
    "conversationId",
    "conversationIndex",
    "isDeliveryReceiptRequested",
    "isReadReceiptRequested",
    "isRead",
    "isDraft",
    "webLink",
    "inferenceClassification",
    "body",
    "uniqueBody",
    "sender",
    "from",
    "toRecipients",
    "ccRecipients",
    "bccRecipients",
    "replyTo",
    "flag",
    "internetMessageHeaders",
    "attachments",
];

/// Properties of `microsoft.graph.attachment` that `$select` may name.
pub(super) const ATTACHMENT_PROPERTIES: &[&str] = &[
    "id",
    "name",
    "contentType",
    "size",
    "isInline",
    "lastModifiedDateTime",
    "contentBytes",
    "contentId",
    "contentLocation",
];

/// The page size a `Prefer` header asks for (`odata.maxpagesize=N`, possibly among others).
pub(super) fn prefer_max_page_size(prefer: Option<&str>) -> Option<usize> {
    prefer?.split(',').find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("odata.maxpagesize")
            .then(|| v.trim().trim_matches('"').parse().ok())
            .flatten()
    })
}

/// Query parameters, percent-decoded, looked up case-insensitively.
#[derive(Debug, Default)]
pub(super) struct Query(pub(super) Vec<(String, String)>);

impl Query {
    /// Parses a query string.
    pub(super) fn parse(q: &str) -> Self {
        Self(form_urlencoded::parse(q.as_bytes()).into_owned().collect())
    }

    /// The value of `key` (the last one given).
    pub(super) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }
}

/// `$select` (every property, or these canonical names) and whether `$expand=attachments`
/// embeds the attachments' metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Selection {
    pub(super) props: Option<Vec<&'static str>>,
    pub(super) attachments: bool,
}

/// Marks an expanded selection inside a delta token.
const EXPAND_MARK: &str = ";attachments";

impl Selection {
    #[allow(non_upper_case_globals)]
    pub(super) const All: Selection = Selection {
        props: None,
        attachments: false,
    };

    /// Parses `$select` against the properties of `type_name`; an unknown property is Graph's
    /// 400 `RequestBroker--ParseUri`.
    pub(super) fn parse(
        select: Option<&str>,
        known: &'static [&'static str],
        type_name: &str,
    ) -> Result<Self, GraphError> {
        let Some(select) = select.map(str::trim).filter(|s| !s.is_empty() && *s != "*") else {
            return Ok(Selection::All);
        };
        let mut names = Vec::new();
        for raw in select.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let name = known
                .iter()
                .find(|k| k.eq_ignore_ascii_case(raw))
                .ok_or_else(|| {
                    GraphError::new(
                        400,
                        "RequestBroker--ParseUri",
                        format!("Could not find a property named '{raw}' on type '{type_name}'."),
                    )
                })?;
            if !names.contains(name) {
                names.push(*name);
            }
        }
        Ok(Selection {
            props: Some(names),
            attachments: false,
        })
    }

    /// Applies `$expand`: only `attachments` (optionally with its own `$select`) is known.
    pub(super) fn expand(mut self, expand: Option<&str>) -> Result<Self, GraphError> {
        let Some(e) = expand.map(str::trim).filter(|e| !e.is_empty()) else {
            return Ok(self);
        };
        let name = e.split('(').next().unwrap_or("").trim();
        if !name.eq_ignore_ascii_case("attachments") {
            return Err(GraphError::new(
                400,
                "RequestBroker--ParseUri",
                format!("Could not find a navigation property named '{name}' on type 'microsoft.graph.message'."),
            ));
        }
        self.attachments = true;
        Ok(self)
    }

    /// Whether the property `name` is selected.
    pub(super) fn includes(&self, name: &str) -> bool {
        match &self.props {
            None => true,
            Some(names) => names.contains(&name),
        }
    }

    /// As kept in a delta token ("" for all).
    pub(super) fn encode(&self) -> String {
        let mut s = match &self.props {
            None => String::new(),
            Some(names) => names.join(","),
        };
        if self.attachments {
            s.push_str(EXPAND_MARK);
        }
        s
    }

    /// A token's selection back.
    pub(super) fn decode(token: &str) -> Result<Self, GraphError> {
        let (select, expanded) = match token.strip_suffix(EXPAND_MARK) {
            Some(rest) => (rest, true),
            None => (token, false),
        };
        let mut sel =
            Selection::parse(Some(select), MESSAGE_PROPERTIES, "microsoft.graph.message")?;
        sel.attachments = expanded;
        Ok(sel)
    }
}

/// A comparison in `$filter`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cmp {
    Ge,
    Gt,
    Le,
    Lt,
    Eq,
}

/// What the unread list serves, from `$filter` and `$orderby`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct ListFilter {
    /// Bounds on receivedDateTime (ms since the epoch; messages carry whole seconds).
    pub(super) received: Vec<(Cmp, i64)>,
    pub(super) is_read: Option<bool>,
    /// Newest first (Graph's default order for messages).
    pub(super) descending: bool,
}

impl ListFilter {
    /// Whether a message received at `t` (ms) is within the receivedDateTime bounds.
    pub(super) fn admits(&self, t: i64) -> bool {
        self.received.iter().all(|&(cmp, b)| match cmp {
            Cmp::Ge => t >= b,
            Cmp::Gt => t > b,
            Cmp::Le => t <= b,
            Cmp::Lt => t < b,
            Cmp::Eq => t == b,
        })
    }

    /// Whether the listing reads the folder from its start: no lower bound on receivedDateTime
    /// after 2000-01-01 (the contract's `ge 1900-01-01T00:00:00Z`), rather than from a recent time.
    pub(super) fn reads_the_whole_folder(&self) -> bool {
        const Y2000_MS: i64 = 946_684_800_000;
        !self
            .received
            .iter()
            .any(|&(cmp, b)| matches!(cmp, Cmp::Ge | Cmp::Gt | Cmp::Eq) && b > Y2000_MS)
    }

    /// The index range `lo..hi` of `times` (non-decreasing) the receivedDateTime bounds allow.
    pub(super) fn range(&self, times: impl Fn(usize) -> i64, len: usize) -> (usize, usize) {
        let first = |pred: &dyn Fn(i64) -> bool| {
            // partition_point over indices: the first index whose time satisfies `pred`.
            let (mut lo, mut hi) = (0, len);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if pred(times(mid)) {
                    hi = mid;
                } else {
                    lo = mid + 1;
                }
            }
            lo
        };
        let (mut lo, mut hi) = (0, len);
        for &(cmp, t) in &self.received {
            match cmp {
                Cmp::Ge => lo = lo.max(first(&|m| m >= t)),
                Cmp::Gt => lo = lo.max(first(&|m| m > t)),
                Cmp::Le => hi = hi.min(first(&|m| m > t)),
                Cmp::Lt => hi = hi.min(first(&|m| m >= t)),
                Cmp::Eq => {
                    lo = lo.max(first(&|m| m >= t));
                    hi = hi.min(first(&|m| m > t));
                }
            }
        }
        (lo, hi.max(lo))
    }
}

/// Checks `$filter` and `$orderby` as Graph does for messages: `$orderby` properties must also
/// lead `$filter`, in the same order, else 400 `InefficientFilter`. The simulator understands
/// `receivedDateTime` comparisons and `isRead eq|ne true|false` joined by `and`.
pub(super) fn check_filter(
    filter: Option<&str>,
    orderby: Option<&str>,
) -> Result<ListFilter, GraphError> {
    let mut f = ListFilter {
        descending: true,
        ..Default::default()
    };
    let mut order_props: Vec<&'static str> = Vec::new();
    if let Some(orderby) = orderby.map(str::trim).filter(|o| !o.is_empty()) {
        for (i, part) in orderby.split(',').enumerate() {
            let words: Vec<&str> = part.split_whitespace().collect();
            let (prop, dir) = match words.as_slice() {
                [p] => (*p, "asc"),
                [p, d] => (*p, *d),
                _ => {
                    return Err(GraphError::bad_request(format!(
                        "Invalid $orderby: '{part}'"
                    )))
                }
            };
            if !prop.eq_ignore_ascii_case("receivedDateTime") {
                return Err(GraphError::bad_request(format!(
                    "The simulator orders messages by receivedDateTime only, not by '{prop}'."
                )));
            }
            let descending = if dir.eq_ignore_ascii_case("desc") {
                true
            } else if dir.eq_ignore_ascii_case("asc") {
                false
            } else {
                return Err(GraphError::bad_request(format!(
                    "Invalid sort direction '{dir}'."
                )));
            };
            if i == 0 {
                f.descending = descending;
            }
            order_props.push("receivedDateTime");
        }
    }
    let mut filter_props: Vec<&'static str> = Vec::new();
    if let Some(filter) = filter.map(str::trim).filter(|s| !s.is_empty()) {
        let mut terms: Vec<Vec<&str>> = vec![Vec::new()];
        for word in filter.split_whitespace() {
            if word.eq_ignore_ascii_case("and") {
                terms.push(Vec::new());
            } else if word.eq_ignore_ascii_case("or") || word.contains('(') {
                return Err(GraphError::bad_request(
                    "The simulator understands filter terms joined by 'and' only.",
                ));
            } else {
                terms.last_mut().expect("one term at least").push(word);
            }
        }
        for term in terms {
            let [prop, op, value] = term.as_slice() else {
                return Err(GraphError::bad_request(format!(
                    "Invalid filter clause: '{}'.",
                    term.join(" ")
                )));
            };
            let cmp = match op.to_ascii_lowercase().as_str() {
                "ge" => Cmp::Ge,
                "gt" => Cmp::Gt,
                "le" => Cmp::Le,
                "lt" => Cmp::Lt,
                "eq" => Cmp::Eq,
                "ne" if prop.eq_ignore_ascii_case("isRead") => Cmp::Eq,
                _ => {
                    return Err(GraphError::bad_request(format!(
                        "Invalid filter operator '{op}'."
                    )))
                }
            };
            if prop.eq_ignore_ascii_case("receivedDateTime") {
                let t = DateTime::parse_from_rfc3339(value).map_err(|_| {
                    GraphError::bad_request(format!(
                        "Invalid filter clause: '{value}' is not a DateTimeOffset."
                    ))
                })?;
                f.received.push((cmp, t.timestamp_millis()));
                filter_props.push("receivedDateTime");
            } else if prop.eq_ignore_ascii_case("isRead") && cmp == Cmp::Eq {
                let v = match value.to_ascii_lowercase().as_str() {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(GraphError::bad_request(format!(
                            "Invalid filter clause: '{value}' is not a Boolean."
                        )))
                    }
                };
                let negated = op.eq_ignore_ascii_case("ne");
                f.is_read = Some(v != negated);
                filter_props.push("isRead");
            } else {
                return Err(GraphError::bad_request(format!(
                    "The simulator filters on receivedDateTime and isRead only, not '{prop}'."
                )));
            }
        }
        let leads = order_props
            .iter()
            .enumerate()
            .all(|(i, p)| filter_props.get(i) == Some(p));
        if !leads {
            return Err(GraphError::new(
                400,
                "InefficientFilter",
                "The restriction or sort order is too complex for this operation.",
            ));
        }
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTRACT_FILTER: &str = "receivedDateTime ge 1900-01-01T00:00:00Z and isRead eq false";

    #[test]
    fn the_contract_filter_passes_and_orders_oldest_first() {
        let f = check_filter(Some(CONTRACT_FILTER), Some("receivedDateTime")).unwrap();
        assert_eq!(f.is_read, Some(false));
        assert!(!f.descending);
        assert_eq!(f.received, vec![(Cmp::Ge, -2_208_988_800_000)]);
        // Without $orderby Graph serves messages newest first.
        assert!(
            check_filter(Some("isRead eq false"), None)
                .unwrap()
                .descending
        );
        // $orderby alone needs no filter.
        assert!(check_filter(None, Some("receivedDateTime desc")).is_ok());
    }

    #[test]
    fn orderby_on_a_property_absent_from_or_not_leading_the_filter_is_an_inefficient_filter() {
        for filter in [
            "isRead eq false",
            "isRead eq false and receivedDateTime ge 1900-01-01T00:00:00Z",
        ] {
            let e = check_filter(Some(filter), Some("receivedDateTime")).unwrap_err();
            assert_eq!((e.status, e.code), (400, "InefficientFilter"), "{filter}");
        }
    }

    #[test]
    fn filters_the_simulator_does_not_understand_are_refused_with_a_reason() {
        for filter in [
            "subject eq 'x'",
            "isRead eq maybe",
            "receivedDateTime ge yesterday",
            "isRead eq false or isRead eq true",
            "isRead eq",
        ] {
            let e = check_filter(Some(filter), None).unwrap_err();
            assert_eq!(e.status, 400, "{filter}");
            assert!(!e.message.is_empty());
        }
        assert!(check_filter(None, Some("subject")).is_err());
    }

    #[test]
    fn prefer_names_a_page_size_among_other_preferences() {
        assert_eq!(
            prefer_max_page_size(Some("odata.maxpagesize=250")),
            Some(250)
        );
        assert_eq!(
            prefer_max_page_size(Some("odata.track-changes, odata.maxpagesize = 7")),
            Some(7)
        );
        assert_eq!(
            prefer_max_page_size(Some("Odata.MaxPageSize=\"12\"")),
            Some(12)
        );
        assert_eq!(prefer_max_page_size(Some("return=minimal")), None);
        assert_eq!(prefer_max_page_size(Some("odata.maxpagesize=lots")), None);
        assert_eq!(prefer_max_page_size(None), None);
    }

    #[test]
    fn query_options_are_percent_decoded_and_looked_up_case_insensitively() {
        let q = Query::parse("%24top=5&%24filter=isRead+eq+false&$Select=id");
        assert_eq!(q.get("$top"), Some("5"));
        assert_eq!(q.get("$filter"), Some("isRead eq false"));
        assert_eq!(q.get("$select"), Some("id"));
        assert_eq!(q.get("$skip"), None);
        assert_eq!(
            Query::parse("$top=1&$TOP=2").get("$top"),
            Some("2"),
            "the last one wins"
        );
    }

    #[test]
    fn a_selection_survives_the_delta_token_and_expand_knows_attachments_only() {
        let sel = Selection::parse(Some("subject,ID, subject"), MESSAGE_PROPERTIES, "m")
            .unwrap()
            .expand(Some("attachments($select=name)"))
            .unwrap();
        assert_eq!(sel.props.as_deref(), Some(&["subject", "id"][..]));
        assert!(sel.attachments);
        assert_eq!(sel.encode(), "subject,id;attachments");
        assert_eq!(Selection::decode(&sel.encode()).unwrap(), sel);
        assert_eq!(Selection::decode("").unwrap(), Selection::All);
        assert_eq!(
            Selection::parse(Some(" * "), MESSAGE_PROPERTIES, "m").unwrap(),
            Selection::All
        );
        let e = Selection::All.expand(Some("mentions")).unwrap_err();
        assert_eq!((e.status, e.code), (400, "RequestBroker--ParseUri"));
        let e = Selection::parse(Some("body"), ATTACHMENT_PROPERTIES, "a").unwrap_err();
        assert!(e.message.contains("'body' on type 'a'"));
    }

    #[test]
    fn received_bounds_narrow_the_index_range_of_sorted_times() {
        let times = [1_000, 2_000, 2_000, 3_000, 4_000];
        let range = |filter: &str| {
            check_filter(Some(filter), None)
                .unwrap()
                .range(|i| times[i], times.len())
        };
        let at = |s: u32| format!("1970-01-01T00:00:0{s}Z");
        assert_eq!(range(&format!("receivedDateTime ge {}", at(2))), (1, 5));
        assert_eq!(range(&format!("receivedDateTime gt {}", at(2))), (3, 5));
        assert_eq!(range(&format!("receivedDateTime lt {}", at(2))), (0, 1));
        assert_eq!(range(&format!("receivedDateTime le {}", at(2))), (0, 3));
        assert_eq!(range(&format!("receivedDateTime eq {}", at(2))), (1, 3));
        assert_eq!(
            range(&format!(
                "receivedDateTime gt {} and receivedDateTime lt {}",
                at(3),
                at(2)
            )),
            (4, 4),
            "bounds that exclude each other leave an empty range"
        );
    }

    #[test]
    fn is_read_ne_negates_and_ne_on_a_date_is_refused() {
        let read = |filter: &str| check_filter(Some(filter), None).unwrap().is_read;
        assert_eq!(read("isRead ne true"), Some(false));
        assert_eq!(read("IsRead EQ TRUE"), Some(true));
        let e = check_filter(Some("receivedDateTime ne 2026-01-01T00:00:00Z"), None).unwrap_err();
        assert_eq!((e.status, e.code), (400, "BadRequest"));
    }
}
