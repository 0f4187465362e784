//! The throwaway Dovecot the IMAP tests and the demo run against (issue 5 groundwork): it
//! starts on a loopback port, takes logins, sees mail delivered as Maildir files, and gives a
//! recreated folder a new UIDVALIDITY.

use ms1_ingestor::dovecot_launcher::PrivateDovecot;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
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

#[test]
fn a_private_dovecot_serves_delivered_mail_and_renumbers_a_recreated_folder() {
    if std::process::Command::new("dovecot")
        .arg("--version")
        .output()
        .is_err()
    {
        panic!("dovecot is not installed: scripts/test.sh installs dovecot-imapd");
    }
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
