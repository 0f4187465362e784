//! The Microsoft Graph simulator over real HTTP: the binary (`ms1-sim graph`) as a child process,
//! a real HTTP client, and a real local endpoint standing in for the daemon's webhook.

use ms1_sim::process::SimulatorProcess;
use ms1_sim::wait::until as wait_until;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

const MB0: &str = "invoices-0@contoso.example";
const MB1: &str = "invoices-1@contoso.example";
const SCOPE: &str = "https://graph.microsoft.com/.default";
const CONTRACT_FILTER: &str = "receivedDateTime ge 1900-01-01T00:00:00Z and isRead eq false";
const SELECT: &str =
    "id,internetMessageId,subject,from,toRecipients,receivedDateTime,hasAttachments,bodyPreview";
const WAIT: Duration = Duration::from_secs(10);
const BIN: &str = env!("CARGO_BIN_EXE_ms1-sim");

/// One HTTP answer, whatever its status.
#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<String>,
    preference_applied: Option<String>,
    body: Value,
}

fn answer(result: Result<ureq::Response, ureq::Error>) -> Answer {
    let r = match result {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("transport error: {e}"),
    };
    let status = r.status();
    let retry_after = r.header("Retry-After").map(str::to_string);
    let preference_applied = r.header("Preference-Applied").map(str::to_string);
    let text = r.into_string().unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    Answer {
        status,
        retry_after,
        preference_applied,
        body,
    }
}

fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(20))
        .build()
}

/// The Graph simulator as a child process, killed when dropped.
struct GraphSim {
    _process: SimulatorProcess,
    url: String,
    http: ureq::Agent,
}

impl GraphSim {
    fn start(args: &[&str]) -> Self {
        let process = SimulatorProcess::start(Path::new(BIN), "graph", args, Stdio::inherit())
            .expect("start the Graph simulator");
        Self {
            url: process.url.clone(),
            _process: process,
            http: agent(),
        }
    }

    fn request_token(&self, pairs: &[(&str, &str)]) -> Answer {
        answer(
            self.http
                .post(&format!("{}/contoso/oauth2/v2.0/token", self.url))
                .send_form(pairs),
        )
    }

    fn token(&self) -> String {
        let a = self.request_token(&[
            ("client_id", "ms1-app"),
            ("client_secret", "sim-secret"),
            ("scope", SCOPE),
            ("grant_type", "client_credentials"),
        ]);
        assert_eq!(a.status, 200, "{a:?}");
        a.body["access_token"].as_str().unwrap().to_string()
    }

    /// A `/v1.0` request (`path` after `/v1.0`, or an absolute nextLink/deltaLink).
    fn api(&self, token: &str, method: &str, path: &str) -> ureq::Request {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}/v1.0{path}", self.url)
        };
        self.http
            .request(method, &url)
            .set("Authorization", &format!("Bearer {token}"))
    }

    fn get(&self, token: &str, path: &str) -> Answer {
        answer(self.api(token, "GET", path).call())
    }

    fn send(&self, token: &str, method: &str, path: &str, body: Value) -> Answer {
        answer(self.api(token, method, path).send_json(body))
    }

    fn control(&self, path: &str, body: Value) -> Answer {
        answer(
            self.http
                .post(&format!("{}/_sim/{path}", self.url))
                .send_json(body),
        )
    }

    fn stats(&self) -> Value {
        answer(self.http.get(&format!("{}/_sim/stats", self.url)).call()).body
    }

    fn messages(&self, mailbox: &str) -> Vec<Value> {
        let a = answer(
            self.http
                .get(&format!("{}/_sim/messages", self.url))
                .query("mailbox", mailbox)
                .call(),
        );
        a.body.as_array().cloned().unwrap_or_default()
    }

    fn unread_page_url(&self, mailbox: &str, top: usize) -> String {
        let mut url = url::Url::parse(&format!(
            "{}/v1.0/users/{mailbox}/mailFolders/inbox/messages",
            self.url
        ))
        .unwrap();
        url.query_pairs_mut()
            .append_pair("$filter", CONTRACT_FILTER)
            .append_pair("$orderby", "receivedDateTime")
            .append_pair("$top", &top.to_string())
            .append_pair("$select", SELECT);
        url.to_string()
    }
}

/// How the stand-in endpoint answers validation requests.
#[derive(Clone, Copy)]
enum Validation {
    Echo,
    WrongToken,
}

/// A request the endpoint received.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    /// The raw query string, as sent.
    query: String,
    body: String,
}

/// A tiny HTTP endpoint standing in for the daemon's webhook: answers validation requests
/// (with the token, or wrongly) and 202 to everything else, and records what it received.
struct Endpoint {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Endpoint {
    fn start(validation: Validation) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let record = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let record = record.clone();
                std::thread::spawn(move || serve_connection(stream, validation, &record));
            }
        });
        Self { url, seen }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn validations(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.query.contains("validationToken="))
            .collect()
    }

    /// Notification items posted to `path` (validation requests excluded).
    fn items(&self, path: &str) -> Vec<Value> {
        self.seen()
            .into_iter()
            .filter(|s| s.path == path && !s.query.contains("validationToken="))
            .flat_map(|s| {
                let v: Value = serde_json::from_str(&s.body).expect("notification JSON");
                v["value"].as_array().cloned().unwrap_or_default()
            })
            .collect()
    }

    fn posts_to(&self, path: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.path == path && !s.query.contains("validationToken="))
            .count()
    }
}

/// Serves one keep-alive connection until the client closes it.
fn serve_connection(stream: TcpStream, validation: Validation, seen: &Mutex<Vec<Seen>>) {
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let target = request_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .to_string();
        let mut length = 0;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.trim().eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        seen.lock().unwrap().push(Seen {
            path: path.to_string(),
            query: query.to_string(),
            body: String::from_utf8_lossy(&body).into_owned(),
        });
        let token = url::form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "validationToken")
            .map(|(_, v)| v.into_owned());
        let response = match (token, validation) {
            (Some(t), Validation::Echo) => format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\r\n{t}",
                t.len()
            ),
            (Some(_), Validation::WrongToken) => {
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
                    .to_string()
            }
            (None, _) => "HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n".to_string(),
        };
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

fn in_minutes(minutes: i64) -> String {
    (chrono::Utc::now() + chrono::Duration::minutes(minutes)).to_rfc3339()
}

fn subscribe(sim: &GraphSim, token: &str, endpoint: &Endpoint, lifecycle: bool) -> Answer {
    let mut body = json!({
        "changeType": "created",
        "notificationUrl": format!("{}/webhook/notifications", endpoint.url),
        "resource": format!("users/{MB0}/mailFolders('inbox')/messages"),
        "expirationDateTime": in_minutes(60),
        "clientState": "client-state-secret",
    });
    if lifecycle {
        body["lifecycleNotificationUrl"] = json!(format!("{}/webhook/lifecycle", endpoint.url));
    }
    sim.send(token, "POST", "/subscriptions", body)
}

#[test]
fn a_token_is_issued_for_the_app_credentials_and_refused_for_wrong_ones() {
    let sim = GraphSim::start(&[]);
    let good = [
        ("client_id", "ms1-app"),
        ("client_secret", "sim-secret"),
        ("scope", SCOPE),
        ("grant_type", "client_credentials"),
    ];
    let a = sim.request_token(&good);
    assert_eq!(a.status, 200);
    assert_eq!(a.body["token_type"], "Bearer");
    assert_eq!(a.body["expires_in"], 3599);
    assert!(a.body["access_token"].as_str().unwrap().len() >= 32);

    let mut bad = good;
    bad[1].1 = "guessed";
    let a = sim.request_token(&bad);
    assert_eq!(
        (a.status, a.body["error"].as_str()),
        (401, Some("invalid_client"))
    );
    let mut bad = good;
    bad[2].1 = "https://graph.microsoft.com/Mail.Read";
    let a = sim.request_token(&bad);
    assert_eq!(
        (a.status, a.body["error"].as_str()),
        (400, Some("invalid_scope"))
    );
    let mut bad = good;
    bad[3].1 = "authorization_code";
    let a = sim.request_token(&bad);
    assert_eq!(
        (a.status, a.body["error"].as_str()),
        (400, Some("unsupported_grant_type"))
    );

    let stats = sim.stats();
    assert_eq!(stats["token_requests"], 4);
    assert_eq!(stats["tokens_issued"], 1);
}

#[test]
fn the_api_answers_401_without_a_valid_token_and_counts_expired_ones_as_violations() {
    let sim = GraphSim::start(&["--messages-per-mailbox", "1"]);
    let path = format!("/users/{MB0}/messages/AAMk-0-0");
    assert_eq!(sim.get("made-up", &path).status, 401);
    let token = sim.token();
    assert_eq!(sim.get(&token, &path).status, 200);

    // Tokens expire with the current lifetime: shortening it expires the token held.
    let typo = sim.control("config", json!({"token_lifetime": 0}));
    assert_eq!(typo.status, 400, "unknown settings are refused");
    sim.control("config", json!({"token_lifetime_s": 0}));
    let a = sim.get(&token, &path);
    assert_eq!(a.status, 401);
    assert_eq!(a.body["error"]["code"], "InvalidAuthenticationToken");

    sim.control("config", json!({"token_lifetime_s": 1}));
    let fresh = sim.token();
    assert_eq!(sim.get(&fresh, &path).status, 200);
    assert!(
        wait_until(Duration::from_secs(5), || sim.get(&fresh, &path).status
            == 401),
        "a one-second token expires"
    );

    let stats = sim.stats();
    assert!(
        stats["expired_token_used"].as_u64().unwrap() >= 2,
        "{stats}"
    );
    assert_eq!(
        stats["unauthorized"].as_u64().unwrap(),
        stats["expired_token_used"].as_u64().unwrap() + 1
    );
    assert_eq!(stats["violations"], stats["expired_token_used"]);
}

#[test]
fn unread_paging_returns_every_message_once_while_half_are_marked_read_between_pages() {
    let sim = GraphSim::start(&["--messages-per-mailbox", "95"]);
    let token = sim.token();
    let mut next = Some(sim.unread_page_url(MB0, 10));
    let mut seen: Vec<String> = Vec::new();
    let mut pages = 0;
    while let Some(url) = next {
        let a = sim.get(&token, &url);
        assert_eq!(a.status, 200, "{a:?}");
        pages += 1;
        let page = a.body["value"].as_array().unwrap();
        for (i, m) in page.iter().enumerate() {
            assert_eq!(m["isRead"], Value::Null, "not selected");
            assert!(m["internetMessageId"].is_string());
            assert!(m.get("attachments").is_none());
            let id = m["id"].as_str().unwrap();
            seen.push(id.to_string());
            if i % 2 == 0 {
                let patched = sim.send(
                    &token,
                    "PATCH",
                    &format!("/users/{MB0}/messages/{id}"),
                    json!({"isRead": true}),
                );
                assert_eq!(patched.status, 200);
                assert_eq!(patched.body["isRead"], true);
            }
        }
        next = a.body["@odata.nextLink"].as_str().map(str::to_string);
    }
    let want: Vec<String> = (0..95).map(|n| format!("AAMk-0-{n}")).collect();
    assert_eq!(seen, want, "each message once, oldest first");
    assert_eq!(pages, 10);

    let stats = sim.stats();
    let mb = &stats["mailboxes"][MB0];
    assert_eq!(mb["marked_read"], 48);
    assert_eq!(mb["unread"], 47);
    assert_eq!(mb["list_requests"], 10);
    assert_eq!(mb["messages_served"], 95);
    let read = sim
        .messages(MB0)
        .iter()
        .filter(|m| m["isRead"] == true)
        .count();
    assert_eq!(read, 48);
}

#[test]
fn with_skip_paging_marking_read_between_pages_loses_messages_as_graph_does() {
    let sim = GraphSim::start(&["--messages-per-mailbox", "30", "--list-paging", "skip"]);
    let token = sim.token();
    let mut next = Some(sim.unread_page_url(MB0, 10));
    let mut seen = 0;
    while let Some(url) = next {
        assert!(url.contains("%24skip=") || seen == 0, "{url}");
        let a = sim.get(&token, &url);
        for m in a.body["value"].as_array().unwrap() {
            seen += 1;
            let id = m["id"].as_str().unwrap();
            let path = format!("/users/{MB0}/messages/{id}");
            assert_eq!(
                sim.send(&token, "PATCH", &path, json!({"isRead": true}))
                    .status,
                200
            );
        }
        next = a.body["@odata.nextLink"].as_str().map(str::to_string);
    }
    assert!(
        seen < 30,
        "following $skip nextLinks over a shrinking set skips messages"
    );
}

#[test]
fn ordering_by_a_property_that_does_not_lead_the_filter_is_an_inefficient_filter() {
    let sim = GraphSim::start(&["--messages-per-mailbox", "3"]);
    let token = sim.token();
    for filter in [
        "isRead eq false",
        "isRead eq false and receivedDateTime ge 1900-01-01T00:00:00Z",
    ] {
        let a = answer(
            sim.api(
                &token,
                "GET",
                &format!("/users/{MB0}/mailFolders/inbox/messages"),
            )
            .query("$filter", filter)
            .query("$orderby", "receivedDateTime")
            .call(),
        );
        assert_eq!(a.status, 400, "{filter}");
        assert_eq!(a.body["error"]["code"], "InefficientFilter");
    }
    let a = sim.get(&token, &format!("/users/{MB0}/mailFolders/Drafts/messages"));
    assert_eq!(
        (a.status, a.body["error"]["code"].as_str()),
        (404, Some("ErrorItemNotFound"))
    );
}

#[test]
fn delta_syncs_everything_then_returns_only_changes_and_410_once_the_cursor_is_expired() {
    let sim = GraphSim::start(&["--messages-per-mailbox", "25"]);
    let token = sim.token();
    let delta = |url: &str| {
        answer(
            sim.api(&token, "GET", url)
                .set("Prefer", "odata.maxpagesize=10")
                .call(),
        )
    };
    let mut url = format!("/users/{MB1}/mailFolders('inbox')/messages/delta?$select={SELECT}");
    let mut sizes = Vec::new();
    let mut ids = Vec::new();
    let delta_link = loop {
        let a = delta(&url);
        assert_eq!(a.status, 200, "{a:?}");
        assert_eq!(
            a.preference_applied.as_deref(),
            Some("odata.maxpagesize=10")
        );
        let page = a.body["value"].as_array().unwrap();
        sizes.push(page.len());
        ids.extend(page.iter().map(|m| m["id"].as_str().unwrap().to_string()));
        assert!(page
            .iter()
            .all(|m| m["subject"].is_string() && m.get("isRead").is_none()));
        if let Some(link) = a.body["@odata.deltaLink"].as_str() {
            assert!(a.body.get("@odata.nextLink").is_none());
            break link.to_string();
        }
        url = a.body["@odata.nextLink"].as_str().unwrap().to_string();
    };
    assert_eq!(sizes, [10, 10, 5]);
    assert_eq!(
        ids,
        (0..25).map(|n| format!("AAMk-1-{n}")).collect::<Vec<_>>()
    );

    assert_eq!(
        sim.control("mail", json!({"mailbox": MB1, "count": 3}))
            .status,
        200
    );
    let a = delta(&delta_link);
    let new: Vec<&str> = a.body["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(new, ["AAMk-1-25", "AAMk-1-26", "AAMk-1-27"]);
    assert!(
        a.body["value"][0]["subject"].is_string(),
        "the $select is kept"
    );
    let delta_link = a.body["@odata.deltaLink"].as_str().unwrap().to_string();

    assert_eq!(
        sim.control("delete", json!({"mailbox": MB1, "count": 2}))
            .body["deleted"],
        2
    );
    let a = delta(&delta_link);
    let removed = a.body["value"].as_array().unwrap();
    assert_eq!(removed.len(), 2);
    assert_eq!(removed[0]["id"], "AAMk-1-0");
    assert_eq!(removed[0]["@removed"]["reason"], "deleted");
    let delta_link = a.body["@odata.deltaLink"].as_str().unwrap().to_string();

    sim.control("expire-delta", json!({"mailbox": MB1}));
    let a = delta(&delta_link);
    assert_eq!(a.status, 410);
    assert_eq!(a.body["error"]["code"], "SyncStateNotFound");
    let made_up = format!("/users/{MB1}/mailFolders/inbox/messages/delta?$deltatoken=abc");
    assert_eq!(delta(&made_up).status, 410);

    let stats = sim.stats();
    assert_eq!(stats["mailboxes"][MB1]["delta_410"], 2);
    assert_eq!(stats["mailboxes"][MB1]["messages_served"], 25 + 3);
    assert_eq!(stats["mailboxes"][MB1]["delta_requests"], 7);
    assert_eq!(stats["mailboxes"][MB1]["messages"], 26);
}

#[test]
fn a_message_is_read_with_its_select_and_its_attachments_listed_by_metadata() {
    let sim = GraphSim::start(&["--messages-per-mailbox", "4"]);
    let token = sim.token();
    let guid = sim.stats()["mailboxes"][MB0]["guid"]
        .as_str()
        .unwrap()
        .to_string();
    // Addressed by GUID, with a $select.
    let a = sim.get(
        &token,
        &format!("/users/{guid}/messages/AAMk-0-3?$select=subject,hasAttachments"),
    );
    assert_eq!(a.status, 200);
    let keys: Vec<&String> = a.body.as_object().unwrap().keys().collect();
    assert!(
        keys.iter().all(
            |k| k.starts_with('@') || ["id", "subject", "hasAttachments"].contains(&k.as_str())
        ),
        "{keys:?}"
    );
    assert_eq!(a.body["hasAttachments"], true);

    let a = sim.get(
        &token,
        &format!("/users/{MB0}/messages/AAMk-0-3/attachments?$select=name,contentType,size"),
    );
    let attachments = a.body["value"].as_array().unwrap();
    assert_eq!(attachments.len(), 1);
    assert_eq!(
        attachments[0]["@odata.type"],
        "#microsoft.graph.fileAttachment"
    );
    assert_eq!(attachments[0]["name"], "INV-000003.pdf");
    assert_eq!(attachments[0]["contentType"], "application/pdf");
    assert!(attachments[0]["size"].is_u64());
    let a = sim.get(
        &token,
        &format!("/users/{MB0}/messages/AAMk-0-1/attachments"),
    );
    assert_eq!(a.body["value"], json!([]));

    let a = sim.get(&token, &format!("/users/{MB0}/messages/AAMk-0-99"));
    assert_eq!(
        (a.status, a.body["error"]["code"].as_str()),
        (404, Some("ErrorItemNotFound"))
    );
    let path = format!("/users/{MB0}/messages/AAMk-0-2");
    sim.send(&token, "PATCH", &path, json!({"isRead": true}));
    sim.send(&token, "PATCH", &path, json!({"isRead": true}));
    let mb = &sim.stats()["mailboxes"][MB0];
    assert_eq!(
        (
            mb["marked_read"].as_u64(),
            mb["patch_already_read"].as_u64()
        ),
        (Some(1), Some(1))
    );
    assert_eq!(mb["attachment_requests"], 2);
}

#[test]
fn a_batch_over_20_is_refused_and_a_batch_of_20_patches_marks_them_read() {
    let sim = GraphSim::start(&["--messages-per-mailbox", "25"]);
    let token = sim.token();
    let patch = |n: u64| {
        json!({"id": n.to_string(), "method": "PATCH",
               "url": format!("/users/{MB0}/messages/AAMk-0-{n}"),
               "headers": {"Content-Type": "application/json"},
               "body": {"isRead": true}})
    };
    let over: Vec<Value> = (0..21).map(patch).collect();
    let a = sim.send(&token, "POST", "/$batch", json!({"requests": over}));
    assert_eq!(
        (a.status, a.body["error"]["code"].as_str()),
        (400, Some("BadRequest"))
    );
    assert!(sim.messages(MB0).iter().all(|m| m["isRead"] == false));

    let twenty: Vec<Value> = (0..20).map(patch).collect();
    let a = sim.send(&token, "POST", "/$batch", json!({"requests": twenty}));
    assert_eq!(a.status, 200, "{a:?}");
    let responses = a.body["responses"].as_array().unwrap();
    assert_eq!(responses.len(), 20);
    assert!(responses
        .iter()
        .all(|r| r["status"] == 200 && r["body"]["isRead"] == true));
    let read: Vec<bool> = sim
        .messages(MB0)
        .iter()
        .map(|m| m["isRead"] == true)
        .collect();
    assert_eq!(read.iter().filter(|r| **r).count(), 20);
    assert!(!read[20] && read[19]);

    let stats = sim.stats();
    assert_eq!(stats["batch_over_20"], 1);
    assert_eq!(stats["mailboxes"][MB0]["marked_read"], 20);
    assert_eq!(stats["mailboxes"][MB0]["batch_requests"], 2);
    assert_eq!(stats["violations"], 1, "the batch of 21 broke the contract");
}

#[test]
fn batch_items_are_throttled_one_by_one_with_retry_after_inside_the_batch() {
    let sim = GraphSim::start(&["--messages-per-mailbox", "3"]);
    let token = sim.token();
    sim.control(
        "throttle",
        json!({"mailbox": MB0, "count": 2, "retry_after_s": 7}),
    );
    let gets: Vec<Value> = (0..3)
        .map(|n| json!({"id": format!("g{n}"), "method": "GET", "url": format!("users/{MB0}/messages/AAMk-0-{n}")}))
        .collect();
    let a = sim.send(&token, "POST", "/$batch", json!({"requests": gets}));
    let r = a.body["responses"].as_array().unwrap();
    assert_eq!(r[0]["status"], 429);
    assert_eq!(r[0]["headers"]["Retry-After"], "7");
    assert_eq!(r[0]["body"]["error"]["code"], "ApplicationThrottled");
    assert_eq!(r[1]["status"], 429);
    assert_eq!(r[2]["status"], 200);
    assert_eq!(r[2]["body"]["id"], "AAMk-0-2");
    assert_eq!(sim.stats()["mailboxes"][MB0]["throttled"], 2);
}

#[test]
fn creating_a_subscription_performs_the_handshake_and_new_mail_is_notified_with_client_state_and_a_guid_resource(
) {
    let sim = GraphSim::start(&[]);
    let token = sim.token();
    let endpoint = Endpoint::start(Validation::Echo);
    let a = subscribe(&sim, &token, &endpoint, false);
    assert_eq!(a.status, 201, "{a:?}");
    let id = a.body["id"].as_str().unwrap().to_string();
    assert_eq!(a.body["clientState"], "client-state-secret");
    assert!(a.body["expirationDateTime"].is_string());

    let validations = endpoint.validations();
    assert_eq!(validations.len(), 1);
    assert_eq!(validations[0].path, "/webhook/notifications");
    assert!(
        validations[0]
            .query
            .contains("validationToken=Validation%3A+"),
        "form-encoded, spaces as + and colons as %3A: {}",
        validations[0].query
    );

    sim.control("mail", json!({"mailbox": MB0, "count": 3}));
    assert!(
        wait_until(WAIT, || endpoint.items("/webhook/notifications").len() == 3),
        "three notifications arrive: {:?}",
        endpoint.seen()
    );
    let stats = sim.stats();
    let guid = stats["mailboxes"][MB0]["guid"].as_str().unwrap();
    let tenant = stats["tenant_id"].as_str().unwrap();
    let ids: Vec<String> = sim
        .messages(MB0)
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    for item in endpoint.items("/webhook/notifications") {
        assert_eq!(item["subscriptionId"], id.as_str());
        assert_eq!(item["clientState"], "client-state-secret");
        assert_eq!(item["changeType"], "created");
        assert_eq!(item["tenantId"], tenant);
        let message = item["resourceData"]["id"].as_str().unwrap();
        assert!(ids.iter().any(|i| i == message));
        assert_eq!(item["resource"], format!("Users/{guid}/Messages/{message}"));
        assert_eq!(
            item["resourceData"]["@odata.type"],
            "#Microsoft.Graph.Message"
        );
        assert!(
            !item["resource"].as_str().unwrap().contains('@'),
            "a GUID, not the UPN"
        );
    }

    // Many at once: grouped, at most 100 per POST.
    sim.control("mail", json!({"mailbox": MB0, "count": 250}));
    assert!(wait_until(WAIT, || endpoint
        .items("/webhook/notifications")
        .len()
        == 253));
    assert_eq!(endpoint.posts_to("/webhook/notifications"), 1 + 3);
    assert!(wait_until(WAIT, || sim.stats()["notification_posts"] == 4));
    let stats = sim.stats();
    assert_eq!(stats["notifications_sent"], 253);
    assert_eq!(stats["notification_answers"]["202"], 4);
    assert_eq!(stats["notifications_slow"], 0);
    assert!(stats["notification_latency_ms"]["p99"].as_u64().unwrap() < 3_000);
    assert_eq!(stats["subscriptions"][0]["id"], id.as_str());
    assert_eq!(stats["subscriptions_created"], 1);
}

#[test]
fn a_subscription_is_refused_when_the_endpoint_answers_the_wrong_token() {
    let sim = GraphSim::start(&[]);
    let token = sim.token();
    let endpoint = Endpoint::start(Validation::WrongToken);
    let a = subscribe(&sim, &token, &endpoint, false);
    assert_eq!(a.status, 400);
    assert_eq!(a.body["error"]["code"], "ValidationError");
    assert!(a.body["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("Subscription validation request failed."));

    // Nobody listening at all fails the same way.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let gone = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let endpoint_gone = Endpoint {
        url: gone,
        seen: Arc::default(),
    };
    assert_eq!(subscribe(&sim, &token, &endpoint_gone, false).status, 400);

    let stats = sim.stats();
    assert_eq!(stats["validation_failed"], 2);
    assert_eq!(stats["subscriptions"], json!([]));
}

#[test]
fn subscription_rules_refuse_long_lives_long_client_states_and_remote_urls_before_any_handshake() {
    let sim = GraphSim::start(&[]);
    let token = sim.token();
    let endpoint = Endpoint::start(Validation::Echo);
    let base = json!({
        "changeType": "created",
        "notificationUrl": format!("{}/webhook/notifications", endpoint.url),
        "resource": format!("users/{MB0}/mailFolders('inbox')/messages"),
        "expirationDateTime": in_minutes(60),
        "clientState": "s",
    });
    for (field, value) in [
        ("expirationDateTime", json!(in_minutes(10_081))),
        ("expirationDateTime", json!(in_minutes(-1))),
        ("clientState", json!("x".repeat(129))),
        ("notificationUrl", json!("https://hooks.example.com/graph")),
        (
            "resource",
            json!("users/nobody@contoso.example/mailFolders('inbox')/messages"),
        ),
        ("changeType", json!("deleted")),
    ] {
        let mut body = base.clone();
        body[field] = value;
        let a = sim.send(&token, "POST", "/subscriptions", body);
        assert_eq!(a.status, 400, "{field}: {a:?}");
        assert_eq!(a.body["error"]["code"], "InvalidRequest", "{field}");
        assert!(!a.body["error"]["message"].as_str().unwrap().is_empty());
    }
    assert!(
        endpoint.seen().is_empty(),
        "no handshake for a refused subscription"
    );
    assert_eq!(sim.send(&token, "POST", "/subscriptions", base).status, 201);
}

#[test]
fn a_subscription_renews_with_a_new_handshake_and_is_deleted() {
    let sim = GraphSim::start(&[]);
    let token = sim.token();
    let endpoint = Endpoint::start(Validation::Echo);
    let created = subscribe(&sim, &token, &endpoint, true);
    assert_eq!(created.status, 201);
    assert_eq!(
        endpoint.validations().len(),
        2,
        "notification and lifecycle URLs"
    );
    let path = format!("/subscriptions/{}", created.body["id"].as_str().unwrap());

    let a = sim.send(
        &token,
        "PATCH",
        &path,
        json!({"expirationDateTime": in_minutes(4_000)}),
    );
    assert_eq!(a.status, 200, "{a:?}");
    assert_ne!(
        a.body["expirationDateTime"],
        created.body["expirationDateTime"]
    );
    assert_eq!(endpoint.validations().len(), 4);
    let a = sim.send(
        &token,
        "PATCH",
        &path,
        json!({"expirationDateTime": in_minutes(20_000)}),
    );
    assert_eq!(
        (a.status, a.body["error"]["code"].as_str()),
        (400, Some("InvalidRequest"))
    );
    assert_eq!(sim.get(&token, &path).status, 200);

    assert_eq!(answer(sim.api(&token, "DELETE", &path).call()).status, 204);
    assert_eq!(answer(sim.api(&token, "DELETE", &path).call()).status, 404);
    assert_eq!(sim.get(&token, &path).status, 404);
    let stats = sim.stats();
    assert_eq!(stats["renewals"], 1);
    assert_eq!(stats["deleted_subscriptions"], 1);
    let activity = &stats["subscription_activity"];
    let sum = |per_minute: &Value| -> u64 {
        per_minute
            .as_object()
            .unwrap()
            .values()
            .map(|n| n.as_u64().unwrap())
            .sum()
    };
    assert_eq!(sum(&activity["created_per_minute"]), 1);
    assert_eq!(sum(&activity["renewed_per_minute"]), 1);
    assert_eq!(activity["most_renewed_in_a_minute"], 1);
    assert_eq!(activity["expiration_spread"]["live"], 0, "deleted");
}

#[test]
fn an_expired_subscription_is_removed_and_no_longer_notified() {
    let sim = GraphSim::start(&[]);
    let token = sim.token();
    let endpoint = Endpoint::start(Validation::Echo);
    let mut body = json!({
        "changeType": "created",
        "notificationUrl": format!("{}/webhook/notifications", endpoint.url),
        "resource": format!("users/{MB0}/messages"),
        "expirationDateTime": (chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339(),
    });
    assert_eq!(
        sim.send(&token, "POST", "/subscriptions", body.take())
            .status,
        201
    );
    assert!(wait_until(WAIT, || sim.stats()["expired_subscriptions"] == 1));
    assert_eq!(sim.stats()["subscriptions"], json!([]));
    sim.control("mail", json!({"mailbox": MB0, "count": 1}));
    let a = sim.control("notify", json!({"mailbox": MB0}));
    assert_eq!(a.status, 409, "no active subscription is left");
    assert_eq!(endpoint.posts_to("/webhook/notifications"), 0);
}

#[test]
fn lifecycle_events_reach_the_lifecycle_url_and_subscription_removed_deletes_the_subscription() {
    let sim = GraphSim::start(&[]);
    let token = sim.token();
    let endpoint = Endpoint::start(Validation::Echo);
    let created = subscribe(&sim, &token, &endpoint, true);
    let id = created.body["id"].as_str().unwrap().to_string();

    let a = sim.control(
        "lifecycle",
        json!({"mailbox": MB0, "event": "reauthorizationRequired"}),
    );
    assert_eq!(a.body["posts"][0]["status"], 202, "{a:?}");
    let items = endpoint.items("/webhook/lifecycle");
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["lifecycleEvent"], "reauthorizationRequired");
    assert_eq!(items[0]["subscriptionId"], id.as_str());
    assert_eq!(items[0]["clientState"], "client-state-secret");

    sim.control(
        "lifecycle",
        json!({"mailbox": MB0, "event": "subscriptionRemoved"}),
    );
    assert_eq!(
        endpoint.items("/webhook/lifecycle")[1]["lifecycleEvent"],
        "subscriptionRemoved"
    );
    assert_eq!(sim.get(&token, &format!("/subscriptions/{id}")).status, 404);
    assert_eq!(
        sim.control("lifecycle", json!({"mailbox": MB0, "event": "sleep"}))
            .status,
        400
    );
    assert_eq!(sim.stats()["lifecycle_posts"], 2);
}

#[test]
fn a_notification_with_a_wrong_client_state_is_sent_on_demand() {
    let sim = GraphSim::start(&["--messages-per-mailbox", "2"]);
    let token = sim.token();
    let endpoint = Endpoint::start(Validation::Echo);
    assert_eq!(subscribe(&sim, &token, &endpoint, false).status, 201);
    let a = sim.control("notify", json!({"mailbox": MB0, "client_state": "forged"}));
    assert_eq!(a.status, 200);
    assert_eq!(a.body["message_id"], "AAMk-0-1", "the newest message");
    assert_eq!(a.body["posts"][0]["status"], 202);
    let items = endpoint.items("/webhook/notifications");
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["clientState"], "forged");
}

#[test]
fn more_than_four_concurrent_requests_on_a_mailbox_get_429_and_are_counted() {
    let sim = GraphSim::start(&["--messages-per-mailbox", "1"]);
    let token = sim.token();
    sim.control("config", json!({"latency_ms": 1500}));
    let url = format!("{}/v1.0/users/{MB0}/messages/AAMk-0-0", sim.url);
    let barrier = Arc::new(Barrier::new(8));
    let answers: Vec<Answer> = (0..8)
        .map(|_| {
            let (url, token, barrier) = (url.clone(), token.clone(), barrier.clone());
            std::thread::spawn(move || {
                let http = agent();
                barrier.wait();
                answer(
                    http.get(&url)
                        .set("Authorization", &format!("Bearer {token}"))
                        .call(),
                )
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    let ok = answers.iter().filter(|a| a.status == 200).count();
    let throttled: Vec<&Answer> = answers.iter().filter(|a| a.status == 429).collect();
    assert_eq!(ok + throttled.len(), 8, "{answers:?}");
    assert!((1..=4).contains(&ok), "{ok} admitted");
    assert!(!throttled.is_empty());
    for a in &throttled {
        assert_eq!(a.retry_after.as_deref(), Some("1"));
        assert_eq!(a.body["error"]["code"], "ApplicationThrottled");
    }
    let mb = sim.stats()["mailboxes"][MB0].clone();
    assert!(mb["max_concurrent"].as_u64().unwrap() >= 5, "{mb}");
    assert_eq!(mb["concurrency_exceeded"], throttled.len() as u64);
    assert_eq!(mb["in_flight"], 0, "every answer released its slot");
}

#[test]
fn a_request_during_a_retry_after_window_is_counted_as_a_violation() {
    let sim = GraphSim::start(&["--messages-per-mailbox", "1"]);
    let token = sim.token();
    let path0 = format!("/users/{MB0}/messages/AAMk-0-0");
    let path1 = format!("/users/{MB1}/messages/AAMk-1-0");
    sim.control(
        "throttle",
        json!({"mailbox": MB0, "count": 1, "retry_after_s": 3, "status": 503}),
    );
    let a = sim.get(&token, &path0);
    assert_eq!((a.status, a.retry_after.as_deref()), (503, Some("3")));
    // Past the in-flight grace, well inside the three seconds: the client ignored them.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(sim.get(&token, &path0).status, 200);
    assert_eq!(
        sim.get(&token, &path1).status,
        200,
        "other mailboxes are free"
    );

    let stats = sim.stats();
    assert_eq!(stats["mailboxes"][MB0]["requests_during_retry_after"], 1);
    assert_eq!(stats["mailboxes"][MB1]["requests_during_retry_after"], 0);
    assert_eq!(stats["mailboxes"][MB0]["throttled"], 1);
    assert_eq!(stats["totals"]["requests"], 3);
    assert_eq!(stats["violations"], 1);
}

#[test]
fn the_request_window_answers_429_with_the_wait_until_the_oldest_request_leaves() {
    let sim = GraphSim::start(&[
        "--messages-per-mailbox",
        "1",
        "--window-limit",
        "3",
        "--window-ms",
        "60000",
    ]);
    let token = sim.token();
    let path = format!("/users/{MB0}/messages/AAMk-0-0");
    for _ in 0..3 {
        assert_eq!(sim.get(&token, &path).status, 200);
    }
    let a = sim.get(&token, &path);
    assert_eq!(a.status, 429);
    let wait: u64 = a.retry_after.unwrap().parse().unwrap();
    assert!((59..=60).contains(&wait), "{wait}");
    let stats = sim.stats();
    assert_eq!(stats["mailboxes"][MB0]["max_requests_in_window"], 3);
    assert_eq!(stats["mailboxes"][MB0]["window_exceeded"], 1);
    assert_eq!(
        stats["limit_violations"],
        json!({"concurrency": 0, "window": 1, "app": 0, "total": 1})
    );
}

#[test]
fn the_app_limit_throttles_every_mailbox_of_the_app_and_counts_each_request_over_it() {
    let sim = GraphSim::start(&[
        "--messages-per-mailbox",
        "1",
        "--app-limit",
        "3",
        "--app-window-ms",
        "60000",
    ]);
    let token = sim.token();
    for path in [MB0, MB1, MB0].map(|mb| format!("/users/{mb}/messages")) {
        assert_eq!(sim.get(&token, &path).status, 200);
    }
    let a = sim.get(&token, &format!("/users/{MB1}/messages"));
    assert_eq!(
        (a.status, a.body["error"]["code"].as_str()),
        (429, Some("ApplicationThrottled"))
    );
    let wait: u64 = a.retry_after.unwrap().parse().unwrap();
    assert!((59..=60).contains(&wait), "{wait}");
    let stats = sim.stats();
    assert_eq!(
        stats["apps"]["ms1-app"],
        json!({"requests": 4, "exceeded": 1, "max_requests_in_window": 3})
    );
    assert_eq!(stats["limit_violations"]["app"], 1);
    assert_eq!(stats["limit_violations"]["total"], 1);
    assert_eq!(
        stats["violations"], 0,
        "a 429 is Graph's answer, not a mistake"
    );
}

#[test]
fn a_trickle_adds_mail_on_whole_seconds_to_one_mailbox_after_the_other() {
    let sim = GraphSim::start(&["--mailbox-count", "2000", "--trickle-per-s", "5"]);
    assert_eq!(sim.stats()["mailboxes"].as_object().unwrap().len(), 2000);
    assert!(wait_until(WAIT, || sim.stats()["trickle"]["sent"]
        .as_u64()
        .unwrap()
        >= 10));
    let a = sim.control("config", json!({"trickle_per_s": 0}));
    assert_eq!(a.body["trickle_per_s"], 0.0);
    let sent = sim.stats()["trickle"]["sent"].as_u64().unwrap();
    assert!(
        wait_until(WAIT, || sim.stats()["totals"]["messages"] == sent),
        "every message it sent is stored"
    );
    assert!(sim.stats()["trickle"]["max_stamp_lag_ms"].as_u64().unwrap() < 1000);
    let mailbox = |i: u64| sim.messages(&format!("invoices-{i}@contoso.example"));
    let first = mailbox(0);
    assert_eq!(first.len(), 1, "one message a mailbox");
    assert_eq!(first[0]["isRead"], false);
    let stamp = |m: &[Value]| m[0]["receivedDateTime"].as_str().unwrap().to_string();
    let (t0, t4, t5) = (stamp(&first), stamp(&mailbox(4)), stamp(&mailbox(5)));
    assert_eq!(t0, t4, "five a second arrive on the same second");
    assert!(t5 > t4, "the sixth on the next: {t4} {t5}");
    assert!(mailbox(sent).is_empty(), "not reached yet");
    std::thread::sleep(Duration::from_millis(1_200));
    assert_eq!(sim.stats()["trickle"]["sent"], sent, "stopped");
}
