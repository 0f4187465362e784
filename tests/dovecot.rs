//! The throwaway Dovecot the IMAP tests and the demo run against (issue 5 groundwork): it
//! starts on a loopback port, takes logins, sees mail delivered as Maildir files, and gives a
//! recreated folder a new UIDVALIDITY. With options, it speaks STARTTLS and implicit TLS with a
//! certificate from its own CA (checked here by rustls, as the IMAP source will), and takes
//! XOAUTH2 / OAUTHBEARER logins with tokens the Graph simulator issued and introspects.

mod common;

use ms1_sim::dovecot_launcher::{DovecotOptions, PrivateDovecot};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Sends tagged commands and returns everything up to each tagged answer.
fn imap(port: u16, commands: &[&str]) -> String {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut out = String::new();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    for (i, c) in commands.iter().enumerate() {
        let tag = format!("t{i}");
        if write!(w, "{tag} {c}\r\n").is_err() {
            break; // the server hung up (e.g. after a refused login)
        }
        loop {
            line.clear();
            if r.read_line(&mut line).unwrap() == 0 {
                break;
            }
            out.push_str(&line);
            if line.starts_with(&format!("{tag} ")) {
                break;
            }
        }
    }
    out
}

fn uidvalidity(text: &str) -> String {
    let at = text
        .find("UIDVALIDITY ")
        .expect("SELECT reports UIDVALIDITY")
        + 12;
    text[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect()
}

fn message(n: u32) -> Vec<u8> {
    format!(
        "From: billing@vendor.example\r\nTo: invoices@example.test\r\nSubject: Invoice {n}\r\n\
Date: Sat, 21 Nov 2026 10:00:00 +0000\r\nMessage-ID: <inv-{n}@vendor.example>\r\n\r\nInvoice {n}\r\n"
    )
    .into_bytes()
}

fn require_dovecot() {
    if std::process::Command::new("dovecot")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("dovecot is not installed: scripts/test.sh installs dovecot-imapd");
    }
}

#[test]
fn a_private_dovecot_serves_delivered_mail_and_renumbers_a_recreated_folder() {
    require_dovecot();
    let dir = tempfile::tempdir().unwrap();
    let mut dc = PrivateDovecot::start(dir.path(), &[("invoices@example.test", "secret")], false)
        .expect("dovecot starts");
    dc.deliver(
        "invoices@example.test",
        "INBOX",
        &[message(1), message(2), message(3)],
    )
    .unwrap();
    let out = imap(
        dc.port(),
        &[
            "LOGIN invoices@example.test secret",
            "SELECT INBOX",
            "LOGOUT",
        ],
    );
    assert!(out.contains("* 3 EXISTS"), "{out}");
    let first = uidvalidity(&out);

    let bad = imap(dc.port(), &["LOGIN invoices@example.test wrong", "LOGOUT"]);
    assert!(bad.contains("t0 NO"), "a wrong password is refused: {bad}");

    dc.remove_folder("invoices@example.test", "INBOX").unwrap();
    dc.deliver(
        "invoices@example.test",
        "INBOX",
        &[message(1), message(2), message(3), message(4)],
    )
    .unwrap();
    let out = imap(
        dc.port(),
        &[
            "LOGIN invoices@example.test secret",
            "SELECT INBOX",
            "LOGOUT",
        ],
    );
    assert!(out.contains("* 4 EXISTS"), "{out}");
    assert_ne!(
        uidvalidity(&out),
        first,
        "a recreated folder has a new UIDVALIDITY"
    );
}

const USER: &str = "invoices@example.test";
const PASSWORD: &str = "secret";

/// One IMAP connection over any stream (plain TCP or TLS).
struct Session<S: Read + Write> {
    r: BufReader<S>,
    next_tag: u32,
}

impl<S: Read + Write> Session<S> {
    /// Wraps a stream whose greeting (if any) has been read.
    fn new(stream: S) -> Self {
        Self {
            r: BufReader::new(stream),
            next_tag: 0,
        }
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.r.read_line(&mut line).expect("the server answers");
        assert!(!line.is_empty(), "the server hung up");
        line
    }

    /// Sends a raw line (a continuation answer).
    fn send(&mut self, line: &str) {
        let w = self.r.get_mut();
        write!(w, "{line}\r\n").unwrap();
        w.flush().unwrap();
    }

    /// Sends a tagged command; returns everything up to and including its tagged answer, or
    /// up to a continuation request (`+ …`) when the server asks for one.
    fn command(&mut self, command: &str) -> String {
        self.next_tag += 1;
        let tag = format!("a{}", self.next_tag);
        self.send(&format!("{tag} {command}"));
        self.until(&tag)
    }

    /// Reads until the tagged answer of `tag` (or a continuation request).
    fn until(&mut self, tag: &str) -> String {
        let mut out = String::new();
        loop {
            let line = self.line();
            out.push_str(&line);
            if line.starts_with(&format!("{tag} ")) || line.starts_with("+ ") {
                return out;
            }
        }
    }

    fn tag(&self) -> String {
        format!("a{}", self.next_tag)
    }
}

fn connect(port: u16) -> Session<TcpStream> {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut session = Session::new(s);
    let greeting = session.line();
    assert!(greeting.starts_with("* OK"), "{greeting}");
    session
}

/// A rustls client trusting only the private CA in `ca_file`.
fn tls_config(ca_file: &Path) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_file).expect("the CA file reads") {
        roots.add(cert.expect("a PEM certificate")).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// Completes a TLS handshake over `tcp` for `name`, verifying the server against `config`.
fn handshake(
    config: &Arc<rustls::ClientConfig>,
    name: &str,
    mut tcp: TcpStream,
) -> Result<TlsStream, rustls::Error> {
    let name = ServerName::try_from(name.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(config.clone(), name)?;
    while conn.is_handshaking() {
        conn.complete_io(&mut tcp).map_err(|e| {
            e.into_inner()
                .and_then(|inner| inner.downcast::<rustls::Error>().ok())
                .map_or(
                    rustls::Error::General("I/O error in handshake".into()),
                    |b| *b,
                )
        })?;
    }
    Ok(rustls::StreamOwned::new(conn, tcp))
}

/// A plain connection upgraded with STARTTLS.
fn starttls(
    port: u16,
    config: &Arc<rustls::ClientConfig>,
    name: &str,
) -> Result<TlsStream, rustls::Error> {
    let mut plain = connect(port);
    let caps = plain.command("CAPABILITY");
    assert!(caps.contains("STARTTLS"), "STARTTLS is offered: {caps}");
    let ok = plain.command("STARTTLS");
    assert!(ok.contains(&format!("{} OK", plain.tag())), "{ok}");
    assert!(
        plain.r.buffer().is_empty(),
        "nothing arrives before the handshake"
    );
    handshake(config, name, plain.r.into_inner())
}

/// An implicit-TLS session whose greeting has been read.
fn tls_session(port: u16, config: &Arc<rustls::ClientConfig>) -> Session<TlsStream> {
    let mut session = Session::new(implicit_tls(port, config, "localhost").expect("TLS verifies"));
    let greeting = session.line();
    assert!(greeting.starts_with("* OK"), "{greeting}");
    session
}

fn implicit_tls(
    port: u16,
    config: &Arc<rustls::ClientConfig>,
    name: &str,
) -> Result<TlsStream, rustls::Error> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    handshake(config, name, tcp)
}

/// Logs in and selects INBOX; returns the SELECT answer.
fn login_and_select<S: Read + Write>(mut session: Session<S>) -> String {
    let login = session.command(&format!("LOGIN {USER} {PASSWORD}"));
    assert!(login.contains(&format!("{} OK", session.tag())), "{login}");
    let select = session.command("SELECT INBOX");
    assert!(
        select.contains(&format!("{} OK", session.tag())),
        "{select}"
    );
    session.command("LOGOUT");
    select
}

#[test]
fn starttls_and_implicit_tls_present_a_certificate_the_private_ca_verifies_and_logins_work() {
    require_dovecot();
    let dir = tempfile::tempdir().unwrap();
    let options = DovecotOptions {
        tls: true,
        ..DovecotOptions::default()
    };
    let mut dc = PrivateDovecot::start_with(dir.path(), &[(USER, PASSWORD)], false, options)
        .expect("dovecot starts with TLS");
    dc.deliver(USER, "INBOX", &[message(1), message(2)])
        .unwrap();
    let tls_port = dc.tls_port().expect("an implicit TLS port");
    assert_ne!(tls_port, dc.port());
    let config = tls_config(&dc.ca_file().expect("a CA file"));

    let stream = starttls(dc.port(), &config, "localhost").expect("STARTTLS handshake verifies");
    assert!(stream.conn.protocol_version().is_some());
    let select = login_and_select(Session::new(stream));
    assert!(select.contains("* 2 EXISTS"), "{select}");

    let stream = implicit_tls(tls_port, &config, "127.0.0.1").expect("implicit TLS verifies");
    let mut session = Session::new(stream);
    let greeting = session.line();
    assert!(greeting.starts_with("* OK"), "{greeting}");
    let select = login_and_select(session);
    assert!(select.contains("* 2 EXISTS"), "{select}");

    for (name, how) in [
        ("mail.example.com", "STARTTLS"),
        ("example.org", "implicit TLS"),
    ] {
        let refused = if how == "STARTTLS" {
            starttls(dc.port(), &config, name)
        } else {
            implicit_tls(tls_port, &config, name)
        };
        assert!(
            matches!(refused, Err(rustls::Error::InvalidCertificate(_))),
            "{how} for a name the certificate does not hold is refused: {:?}",
            refused.err()
        );
    }
    let other_ca = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let refused = implicit_tls(tls_port, &Arc::new(other_ca), "localhost");
    assert!(
        matches!(
            refused,
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer
            ))
        ),
        "a client that does not trust the private CA refuses the server: {:?}",
        refused.err()
    );

    let plain = imap(dc.port(), &[&format!("LOGIN {USER} {PASSWORD}"), "LOGOUT"]);
    assert!(
        plain.contains("t0 OK"),
        "plain-text login still works on loopback: {plain}"
    );
}

/// Standard base64 (the tests add no crate for it).
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn xoauth2(user: &str, token: &str) -> String {
    format!(
        "AUTHENTICATE XOAUTH2 {}",
        base64(format!("user={user}\x01auth=Bearer {token}\x01\x01").as_bytes())
    )
}

fn oauthbearer(user: &str, token: &str, port: u16) -> String {
    format!(
        "AUTHENTICATE OAUTHBEARER {}",
        base64(
            format!("n,a={user},\x01host=127.0.0.1\x01port={port}\x01auth=Bearer {token}\x01\x01")
                .as_bytes()
        )
    )
}

/// Runs an AUTHENTICATE command on a fresh session; answers a failure's continuation
/// (`+ <base64 JSON error>`) with an empty line as a client must. Returns (logged in,
/// everything the server said); once logged in, INBOX is selected too.
fn authenticate<S: Read + Write>(mut s: Session<S>, command: &str) -> (bool, String) {
    let mut out = s.command(command);
    if out.starts_with("+ ") {
        s.send("");
        out.push_str(&s.until(&s.tag()));
    }
    let ok = out.contains(&format!("{} OK", s.tag()));
    if ok {
        let select = s.command("SELECT INBOX");
        assert!(select.contains(&format!("{} OK", s.tag())), "{select}");
        out.push_str(&select);
    }
    (ok, out)
}

/// An access token from the Graph simulator's refresh_token grant (what the IMAP source does).
fn refresh_grant_token(sim: &common::Sim) -> String {
    let answer = ureq::post(&format!("{}/contoso/oauth2/v2.0/token", sim.url))
        .send_form(&[
            ("client_id", "ms1-app"),
            ("grant_type", "refresh_token"),
            ("refresh_token", "sim-refresh-token"),
            (
                "scope",
                "https://outlook.office.com/IMAP.AccessAsUser.All offline_access",
            ),
        ])
        .expect("the simulator issues a token");
    let body: serde_json::Value = answer.into_json().unwrap();
    body["access_token"].as_str().unwrap().to_string()
}

#[test]
fn xoauth2_and_oauthbearer_log_in_with_a_graph_simulator_token_and_refuse_bad_or_expired_ones() {
    require_dovecot();
    let sim = common::Sim::graph(&["--introspect-user", USER]);
    let dir = tempfile::tempdir().unwrap();
    let options = DovecotOptions {
        tls: true,
        oauth2_introspection_url: Some(format!("{}/_sim/introspect", sim.url)),
    };
    let mut dc = PrivateDovecot::start_with(dir.path(), &[(USER, PASSWORD)], false, options)
        .expect("dovecot starts with TLS and an oauth2 passdb");
    dc.deliver(USER, "INBOX", &[message(1)]).unwrap();
    let token = refresh_grant_token(&sim);
    let port = dc.port();

    let caps = connect(port).command("CAPABILITY");
    assert!(
        caps.contains("AUTH=XOAUTH2") && caps.contains("AUTH=OAUTHBEARER"),
        "{caps}"
    );
    let (ok, out) = authenticate(connect(port), &xoauth2(USER, &token));
    assert!(ok, "XOAUTH2 with a live token logs in: {out}");
    assert!(out.contains("* 1 EXISTS"), "{out}");
    let (ok, out) = authenticate(connect(port), &oauthbearer(USER, &token, port));
    assert!(ok, "OAUTHBEARER with a live token logs in: {out}");
    let config = tls_config(&dc.ca_file().unwrap());
    let tls_port = dc.tls_port().unwrap();
    let (ok, out) = authenticate(tls_session(tls_port, &config), &xoauth2(USER, &token));
    assert!(ok, "XOAUTH2 over implicit TLS logs in: {out}");

    let refused = |user: &str, token: &str| {
        let (ok, out) = authenticate(connect(port), &xoauth2(user, token));
        assert!(!ok, "{out}");
        assert!(
            out.starts_with("+ ") && out.contains("\r\na1 NO "),
            "a refusal is a continuation with the error, then NO after the empty answer: {out}"
        );
    };
    refused(USER, "not-a-token-the-simulator-issued");
    refused("someone-else@example.test", &token);
    let plain = imap(port, &[&format!("LOGIN {USER} {PASSWORD}"), "LOGOUT"]);
    assert!(
        plain.contains("t0 OK"),
        "password logins still work: {plain}"
    );

    let stats = sim.stats();
    assert_eq!(
        stats["introspections"], 5,
        "Dovecot asked the simulator: {stats}"
    );
    assert_eq!(stats["introspections_inactive"], 1, "{stats}");
    assert_eq!(stats["violations"], 0, "{stats}");

    sim.configure(serde_json::json!({"token_lifetime_s": 0}));
    refused(USER, &token);
    let stats = sim.stats();
    assert_eq!(
        (
            stats["expired_token_used"].as_u64(),
            stats["violations"].as_u64()
        ),
        (Some(1), Some(1)),
        "presenting an expired token is counted as a client violation: {stats}"
    );
}
