//! Bad input at the daemon's doors, over raw TCP so that nothing is cleaned up on the way:
//! oversized (announced or streamed), truncated and non-UTF-8 bodies on the control API and on
//! Graph's webhook routes get a clear 4xx with the API's JSON error, never a 5xx, and change
//! nothing; the webhook's `validationToken` echo stays a text/plain body that no CR/LF can turn
//! into a header; the daemon is healthy afterwards.

mod common;

use common::{get, wait_until, Daemon, World, MAILBOXES, PREFIX};
use ms1_actors::store::schema::dead_letter;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

const TOKEN: &str = "control-token-123";
const CLIENT_STATE: &str = "webhook-secret-1234";

/// How a request carries its body.
enum Body<'a> {
    None,
    /// With its exact `Content-Length`.
    Exact(&'a [u8]),
    /// `Transfer-Encoding: chunked`, in 8 KiB chunks (the size is never announced).
    Chunked(&'a [u8]),
    /// `Content-Length: n` and no body at all (the server can refuse before reading).
    Announced(usize),
    /// `Content-Length: n`, fewer bytes, then the client closes its side.
    Truncated(usize, &'a [u8]),
}

/// An answer as it came over the wire.
#[derive(Debug)]
struct Reply {
    status: u16,
    /// The status line and the header lines, as sent.
    head: String,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then_some(v.trim())
        })
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    /// A 4xx with `Content-Type: application/json` and `{"error":{"code","message"}}`.
    fn assert_json_error(&self, status: u16, what: &str) {
        assert_eq!(self.status, status, "{what}: {self:?}");
        assert_eq!(
            self.header("content-type"),
            Some("application/json"),
            "{what}: {}",
            self.head
        );
        let v = self.json();
        assert!(
            v["error"]["code"].is_string() && v["error"]["message"].is_string(),
            "{what}: not the API's error shape: {}",
            String::from_utf8_lossy(&self.body)
        );
    }
}

/// Sends one request (`Connection: close`) and reads the answer while it writes, so that an
/// early answer (413 before the body is read) is not lost to a reset. `None` when the server
/// closed without answering.
fn send(
    daemon: &Daemon,
    method: &str,
    target: &[u8],
    headers: &[(&str, &[u8])],
    body: Body<'_>,
) -> Option<Reply> {
    let addr = daemon.control.trim_start_matches("http://");
    let mut stream = TcpStream::connect(addr).expect("connect to the daemon");
    stream
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut reader = stream.try_clone().unwrap();
    let read = std::thread::spawn(move || {
        let mut got = Vec::new();
        let _ = reader.read_to_end(&mut got);
        got
    });
    let mut head = Vec::new();
    head.extend_from_slice(method.as_bytes());
    head.push(b' ');
    head.extend_from_slice(target);
    head.extend_from_slice(
        format!(" HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n").as_bytes(),
    );
    for (k, v) in headers {
        head.extend_from_slice(k.as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(v);
        head.extend_from_slice(b"\r\n");
    }
    let length = |n: usize| format!("Content-Length: {n}\r\n\r\n").into_bytes();
    // Write errors are expected once the server answered early and closed: ignore them.
    let _ = match body {
        Body::None => stream.write_all(&[head, b"\r\n".to_vec()].concat()),
        Body::Exact(b) => stream.write_all(&[head, length(b.len()), b.to_vec()].concat()),
        Body::Announced(n) => stream.write_all(&[head, length(n)].concat()),
        Body::Truncated(n, b) => stream
            .write_all(&[head, length(n), b.to_vec()].concat())
            .and_then(|_| stream.shutdown(Shutdown::Write)),
        Body::Chunked(b) => (|| {
            stream.write_all(&[head, b"Transfer-Encoding: chunked\r\n\r\n".to_vec()].concat())?;
            for chunk in b.chunks(8 * 1024) {
                stream.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())?;
                stream.write_all(chunk)?;
                stream.write_all(b"\r\n")?;
            }
            stream.write_all(b"0\r\n\r\n")
        })(),
    };
    let raw = read.join().unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some(Reply {
        status,
        head,
        body: raw[split + 4..].to_vec(),
    })
}

fn json_post(daemon: &Daemon, path: &str, body: Body<'_>) -> Option<Reply> {
    send(
        daemon,
        "POST",
        path.as_bytes(),
        &[
            ("Authorization", format!("Bearer {TOKEN}").as_bytes()),
            ("Content-Type", b"application/json"),
        ],
        body,
    )
}

/// GET with the token, as JSON.
fn control_get(daemon: &Daemon, path: &str) -> Value {
    let r = send(
        daemon,
        "GET",
        path.as_bytes(),
        &[("Authorization", format!("Bearer {TOKEN}").as_bytes())],
        Body::None,
    )
    .expect("an answer");
    assert_eq!(r.status, 200, "GET {path}: {r:?}");
    r.json()
}

/// The daemon is alive, ready and still answers a well-formed request.
fn assert_healthy(daemon: &mut Daemon) {
    assert!(daemon.is_running(), "{}", daemon.log_tail(30));
    assert_eq!(get(&format!("{}/health", daemon.control)).0, 200);
    let ready = wait_until(Duration::from_secs(10), || daemon.ready().0 == 200);
    assert!(ready, "not ready: {:?}", daemon.ready());
}

/// The bodies every JSON route must refuse, with the status each gets.
fn bad_bodies(limit: usize, valid_prefix: &[u8]) -> Vec<(&'static str, u16, Vec<u8>)> {
    let mut big = valid_prefix.to_vec();
    big.extend(std::iter::repeat_n(b' ', limit + 1024));
    big.extend_from_slice(b"}");
    let mut utf16 = vec![0xff, 0xfe];
    utf16.extend("{}".encode_utf16().flat_map(u16::to_le_bytes));
    vec![
        ("streamed past the limit", 413, big),
        ("truncated JSON", 400, valid_prefix.to_vec()),
        ("empty", 400, Vec::new()),
        ("not JSON", 400, b"\x00\x01\x02 not json".to_vec()),
        ("UTF-16 with a BOM", 400, utf16),
        (
            "Latin-1 inside a string",
            400,
            b"{\"reason\": \"caf\xe9\"}".to_vec(),
        ),
        ("garbage after the JSON", 400, b"{}\xff\xfe".to_vec()),
        (
            "lone surrogate escape",
            400,
            b"{\"reason\": \"\\ud800\"}".to_vec(),
        ),
    ]
}

#[test]
fn control_api_refuses_oversized_truncated_and_non_utf8_bodies_with_json_4xx_and_applies_nothing() {
    let world = World::new(&["--rate-limit-per-min", "0"]);
    let mut d = world.daemon(&[
        ("MS1__CONTROL__TOKEN", TOKEN),
        ("MS1__SESSION__AUTOSTART", "false"),
    ]);
    // A dead letter that a half-applied purge would remove.
    let _: String = redis::cmd("XADD")
        .arg(format!("{PREFIX}stream:dlq"))
        .arg("*")
        .arg(dead_letter::STAGE)
        .arg("process")
        .arg(dead_letter::REASON)
        .arg("planted by the test")
        .arg(dead_letter::PAYLOAD)
        .arg("{}")
        .query(&mut world.redis())
        .unwrap();

    let routes: [(&str, &[u8]); 4] = [
        (
            "/session/start",
            b"{\"polling_mode\": \"manual\", \"polling_interval\": ",
        ),
        ("/session/stop", b"{\"reason\": \"half a reas"),
        ("/dlq/purge", b"{\"all\": tru"),
        ("/dlq/replay", b"{\"ids\": [\"0-1\", \"0-"),
    ];
    for (path, prefix) in routes {
        for (what, status, body) in bad_bodies(64 * 1024, prefix) {
            let what = format!("POST {path}, {what}");
            let body = if status == 413 {
                Body::Chunked(&body)
            } else {
                Body::Exact(&body)
            };
            json_post(&d, path, body)
                .unwrap_or_else(|| panic!("{what}: no answer"))
                .assert_json_error(status, &what);
        }
        json_post(&d, path, Body::Announced(10 << 20))
            .expect("an answer to an announced oversized body")
            .assert_json_error(413, &format!("POST {path}, 10 MiB announced"));
        // The client gives up mid-body: a 400 if the server still answers, never a 5xx.
        if let Some(r) = json_post(&d, path, Body::Truncated(200, prefix)) {
            r.assert_json_error(400, &format!("POST {path}, client closed mid-body"));
        }
        // Not JSON at all, or JSON in disguise.
        let r = send(
            &d,
            "POST",
            path.as_bytes(),
            &[
                ("Authorization", format!("Bearer {TOKEN}").as_bytes()),
                ("Content-Type", b"text/plain; charset=\xff"),
            ],
            Body::Exact(b"{}"),
        )
        .expect("an answer");
        r.assert_json_error(415, &format!("POST {path}, non-UTF-8 content type"));
    }
    // A token that is not UTF-8 is just a wrong token.
    send(
        &d,
        "GET",
        b"/session/status",
        &[("Authorization", b"Bearer \xff\xfe")],
        Body::None,
    )
    .expect("an answer")
    .assert_json_error(401, "non-UTF-8 token");

    // Ids that are not stream ids never reach Redis (which refuses the whole command): 404 for
    // a path, 400 in a query or a body, and nothing purged alongside a valid id.
    let auth = format!("Bearer {TOKEN}");
    for (method, target, status) in [
        ("GET", &b"/dlq/not-an-id"[..], 404),
        ("DELETE", b"/dlq/%C3%A9-1", 404),
        ("GET", b"/dlq/1", 404),
        ("GET", b"/dlq?after=", 400),
        ("GET", b"/dlq?after=%FF", 400),
    ] {
        send(
            &d,
            method,
            target,
            &[("Authorization", auth.as_bytes())],
            Body::None,
        )
        .expect("an answer")
        .assert_json_error(status, &String::from_utf8_lossy(target));
    }
    let planted: String = redis::cmd("XRANGE")
        .arg(format!("{PREFIX}stream:dlq"))
        .arg("-")
        .arg("+")
        .query::<Vec<(String, Vec<String>)>>(&mut world.redis())
        .unwrap()[0]
        .0
        .clone();
    for (path, body) in [
        ("/dlq/purge", json!({"ids": [planted, "x"]})),
        ("/dlq/purge", json!({"id": ""})),
        ("/dlq/replay", json!({"ids": [planted, "1-2-3"]})),
        ("/dlq/replay", json!({"id": "+"})),
    ] {
        json_post(&d, path, Body::Exact(body.to_string().as_bytes()))
            .expect("an answer")
            .assert_json_error(400, &format!("{path} {body}"));
    }

    // Nothing was applied: no session, the dead letter still there.
    let status = control_get(&d, "/session/status");
    assert_ne!(status["status"], "running", "{status}");
    assert_eq!(
        world.xlen("dlq"),
        1,
        "a refused purge removed a dead letter"
    );
    assert_eq!(control_get(&d, "/dlq")["total"], 1);

    // A running session survives a refused stop.
    let ok = json_post(
        &d,
        "/session/start",
        Body::Exact(b"{\"polling_mode\":\"manual\"}"),
    )
    .expect("an answer");
    assert_eq!(ok.status, 200, "{ok:?}");
    for (what, status, body) in bad_bodies(64 * 1024, b"{\"reason\": \"x") {
        let body = if status == 413 {
            Body::Chunked(&body)
        } else {
            Body::Exact(&body)
        };
        json_post(&d, "/session/stop", body)
            .expect("an answer")
            .assert_json_error(status, &format!("stop, {what}"));
    }
    assert_eq!(control_get(&d, "/session/status")["status"], "running");

    // The server speaks HTTP/1.1 only: an HTTP/2 connection preface (h2c prior knowledge) gets
    // an HTTP/1.1 refusal, never an h2 SETTINGS frame (h2 0.3, RUSTSEC-2026-0258, never runs).
    let mut s = TcpStream::connect(d.control.trim_start_matches("http://")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1.1 4"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    assert_healthy(&mut d);
}

/// A webhook daemon whose subscriptions exist; returns it and the id of the first mailbox's.
fn webhook_daemon(world: &World) -> (Daemon, String) {
    let port = ms1_sim::redis_launcher::free_port().unwrap();
    let bind = format!("127.0.0.1:{port}");
    let public = format!("http://{bind}");
    let d = world.graph_daemon(&[
        ("MS1__CONTROL__BIND", &bind),
        ("MS1__WEBHOOK__ENABLED", "true"),
        ("MS1__WEBHOOK__PUBLIC_URL", &public),
        ("MS1__WEBHOOK__CLIENT_STATE", CLIENT_STATE),
        ("MS1__GRAPH__POLL_INTERVAL_S", "3600"),
    ]);
    let created = wait_until(Duration::from_secs(30), || {
        world.graph().stats()["subscriptions_created"].as_u64() == Some(3)
    });
    assert!(created, "{}\n{}", world.graph().stats(), d.log_tail(20));
    let id: String = redis::cmd("HGET")
        .arg(format!("{PREFIX}webhook:subscription:{}", MAILBOXES[0]))
        .arg("id")
        .query(&mut world.redis())
        .unwrap();
    (d, id)
}

#[test]
fn webhook_refuses_oversized_truncated_and_non_utf8_bodies_with_json_4xx_and_enqueues_nothing() {
    let world = World::with_graph(&["--rate-limit-per-min", "0"], &[]);
    let (mut d, subscription) = webhook_daemon(&world);
    let item = json!({
        "subscriptionId": subscription, "clientState": CLIENT_STATE, "changeType": "created",
        "resource": "Users/6f0b/Messages/AAMk-bad-input",
        "resourceData": {"@odata.type": "#Microsoft.Graph.Message", "id": "AAMk-bad-input"},
    });
    // A body that starts with a notification we would accept, then breaks.
    let prefix = format!("{{\"value\":[{item},");
    let limit = 1024 * 1024;
    for path in ["/webhook/notifications", "/webhook/lifecycle"] {
        let mut cases = bad_bodies(limit, prefix.as_bytes());
        cases.push(("value is not a list", 400, br#"{"value":{}}"#.to_vec()));
        let latin = format!("{{\"value\":[{item}]}}").replace("AAMk-bad-input", "AAMk-\u{1}");
        let latin: Vec<u8> = latin
            .bytes()
            .map(|b| if b == 1 { 0xe9 } else { b })
            .collect();
        cases.push(("Latin-1 inside an accepted notification", 400, latin));
        for (what, status, body) in cases {
            let what = format!("POST {path}, {what}");
            let body = if status == 413 {
                Body::Chunked(&body)
            } else {
                Body::Exact(&body)
            };
            send(
                &d,
                "POST",
                path.as_bytes(),
                &[("Content-Type", b"application/json")],
                body,
            )
            .unwrap_or_else(|| panic!("{what}: no answer"))
            .assert_json_error(status, &what);
        }
        send(
            &d,
            "POST",
            path.as_bytes(),
            &[("Content-Type", b"application/json")],
            Body::Announced(64 << 20),
        )
        .expect("an answer")
        .assert_json_error(413, &format!("POST {path}, 64 MiB announced"));
        if let Some(r) = send(
            &d,
            "POST",
            path.as_bytes(),
            &[],
            Body::Truncated(10_000, prefix.as_bytes()),
        ) {
            r.assert_json_error(400, &format!("POST {path}, client closed mid-body"));
        }
    }
    // None of it reached the pipeline.
    assert_eq!(
        d.metric("ms1_webhook_notifications_total"),
        0.0,
        "{}",
        d.metrics()
    );
    assert_eq!(world.xlen("inbound"), 0);

    // The very notification those bodies began with is accepted on its own.
    let whole = format!("{{\"value\":[{item}]}}");
    let r = send(
        &d,
        "POST",
        b"/webhook/notifications",
        &[("Content-Type", b"application/json")],
        Body::Exact(whole.as_bytes()),
    )
    .expect("an answer");
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.json()["accepted"], 1);
    assert_healthy(&mut d);
}

#[test]
fn the_validation_token_echo_is_plain_text_and_no_cr_lf_can_split_its_headers() {
    let world = World::new(&["--rate-limit-per-min", "0"]);
    let mut d = world.daemon(&[("MS1__CONTROL__TOKEN", TOKEN)]);
    let handshake = |path: &str, query: &[u8]| {
        let mut target = path.as_bytes().to_vec();
        target.extend_from_slice(b"?validationToken=");
        target.extend_from_slice(query);
        send(
            &d,
            "POST",
            &target,
            &[("Content-Type", b"text/plain; charset=utf-8")],
            Body::Exact(b""),
        )
        .expect("an answer")
    };
    for path in ["/webhook/notifications", "/webhook/lifecycle"] {
        // Echoed, exactly, as a text/plain body.
        for (query, token) in [
            (
                &b"Validation%3A+Testing+client+application+reachability+for+subscription+Request-Id%3A+3f2c"[..],
                "Validation: Testing client application reachability for subscription Request-Id: 3f2c",
            ),
            (b"caf%C3%A9+%E2%82%AC+%F0%9F%98%80+%E6%97%A5%E6%9C%AC", "café € 😀 日本"),
            (b"line%E2%80%A8separator", "line\u{2028}separator"),
            (&[b'x'; 1024], &"x".repeat(1024)),
        ] {
            let r = handshake(path, query);
            assert_eq!(r.status, 200, "{token:?}: {r:?}");
            assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
            assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
            assert_eq!(r.body, token.as_bytes(), "the echo is the decoded token");
        }
        // Refused with the JSON error, and no injected header.
        for (what, query) in [
            ("CR LF", &b"a%0D%0ASet-Cookie%3A+evil%3D1"[..]),
            ("LF", b"a%0ASet-Cookie:%20evil=1"),
            ("CR", b"a%0DSet-Cookie:%20evil=1"),
            ("NUL", b"a%00b"),
            ("C1 NEL", b"a%C2%85Set-Cookie:%20evil=1"),
            ("not UTF-8", b"%FF%FE%C3%28"),
            ("empty", b""),
            ("1,025 bytes", &[b'y'; 1025]),
            (
                "1,024 characters of 2 bytes",
                "%C3%A9".repeat(1024).as_bytes(),
            ),
        ] {
            let r = handshake(path, query);
            r.assert_json_error(400, &format!("{path}: {what}"));
            assert!(r.header("set-cookie").is_none(), "{what}: {}", r.head);
        }
        // Raw CR/LF in the request target: the HTTP parser refuses the request line.
        let r = send(
            &d,
            "POST",
            b"/webhook/notifications?validationToken=a\r\nSet-Cookie: evil=1\r\nX: ",
            &[],
            Body::Exact(b""),
        );
        if let Some(r) = r {
            assert!((400..500).contains(&r.status), "{r:?}");
            assert!(r.header("set-cookie").is_none(), "{}", r.head);
        }
        // A very long query: refused, not a 5xx.
        let long = "z".repeat(60 * 1024);
        if let Some(r) = send(
            &d,
            "POST",
            format!("{path}?validationToken={long}").as_bytes(),
            &[],
            Body::Exact(b""),
        ) {
            assert!((400..500).contains(&r.status), "{}", r.head);
        }
    }
    assert_healthy(&mut d);
}
