//! Memory bounded in bytes, not in counts, end to end: a real Dovecot, a real redis-server, the
//! MS4 simulator and the daemon, as processes.
//!
//! - A message above `imap.max_message_bytes` is never fetched whole: it becomes a record
//!   without body (flagged `bodyOmitted`) or a dead letter naming its size, the cursor passes
//!   it, and mail after it keeps flowing.
//! - Inbound entries of several MB each are read and sent within `pipeline.read_max_bytes` and
//!   `ms4.max_in_flight_bytes`: the daemon's peak RSS stays near those budgets instead of
//!   growing with `read_chunk` × entry size.

mod common;

use common::*;
use ms1_actors::store::schema::inbound;
use ms1_sim::dovecot_launcher::PrivateDovecot;
use ms1_sim::synthetic::mime_message;
use std::time::Duration;

const USER: &str = "invoices@contoso.example";
const PASSWORD: &str = "dovecot-secret";
const MIB: u64 = 1024 * 1024;

fn dovecot(w: &World) -> PrivateDovecot {
    PrivateDovecot::start(&w.dir.path().join("dovecot"), &[(USER, PASSWORD)], false)
        .expect("dovecot starts (apt-get install dovecot-imapd)")
}

/// The daemon reading one plain-text loopback source, with `extra` settings.
fn imap_daemon(w: &World, port: u16, extra: &[(&str, &str)]) -> Daemon {
    let path = w.dir.path().join("imap.toml");
    std::fs::write(
        &path,
        format!(
            "[[imap.sources]]\nname = \"invoices\"\nhost = \"127.0.0.1\"\nport = {port}\n\
tls = \"none\"\nusername = \"{USER}\"\npassword = \"{PASSWORD}\"\npoll_interval_s = 1\n"
        ),
    )
    .unwrap();
    let path = path.display().to_string();
    let mut env = vec![("MS1_CONFIG", path.as_str())];
    env.extend_from_slice(extra);
    w.daemon(&env)
}

/// Dovecot holding 5 small messages, the [`big`] one, and 5 more small ones.
fn dovecot_with_a_big_message_among_small_ones(w: &World) -> PrivateDovecot {
    let mut dc = dovecot(w);
    dc.deliver(USER, "INBOX", &small(0..5)).unwrap();
    dc.deliver(USER, "INBOX", &[big()]).unwrap();
    dc.deliver(USER, "INBOX", &small(5..10)).unwrap();
    dc
}

fn small(range: std::ops::Range<u64>) -> Vec<Vec<u8>> {
    range.map(|n| mime_message(n, "m", 1_500)).collect()
}

/// Message 300 of tag `big`: 3 MB, with a PDF attachment (every third synthetic message has one).
fn big() -> Vec<u8> {
    mime_message(300, "big", 3_000_000)
}

fn polled(d: &Daemon) -> f64 {
    d.metric("ms1_emails_polled_total{mode=\"imap\"}")
}

#[test]
fn a_message_above_max_message_bytes_becomes_a_record_without_body_and_the_source_flows_on() {
    let w = World::new(&[]);
    let mut dc = dovecot_with_a_big_message_among_small_ones(&w);
    let d = imap_daemon(
        &w,
        dc.port(),
        &[("MS1__IMAP__MAX_MESSAGE_BYTES", "1048576")],
    );
    w.wait_at_least(11, Duration::from_secs(60), &d);

    let stats = w.ms4.stats();
    let omitted = stats["body_omitted_records"].as_array().unwrap();
    assert_eq!(omitted.len(), 1, "one record without body: {stats}");
    let r = &omitted[0];
    assert_eq!(r["idempotency_key"], "<inv-300.big@vendor.example>");
    assert!(
        r["bodyOmitted"]["size"].as_u64().unwrap() > 2_900_000,
        "{r}"
    );
    assert_eq!(r["bodyOmitted"]["limit"], 1_048_576);
    assert_eq!(r["bodyPreview"], "");
    assert!(r["raw_message"].is_null());
    assert_eq!(r["subject"], "Invoice INV-000300 €", "{r}");
    // The attachment as the server's BODYSTRUCTURE lists it (base64 octets, decoded size).
    assert_eq!(r["hasAttachments"], true, "{r}");
    assert_eq!(r["attachments"][0]["name"], "INV-000300.pdf", "{r}");
    assert_eq!(r["attachments"][0]["contentType"], "application/pdf");
    assert!(
        r["attachments"][0]["size"].as_u64().unwrap() > 2_000_000,
        "{r}"
    );

    // The cursor passed it: mail appended after it flows, and nothing is fetched twice.
    dc.deliver(USER, "INBOX", &small(10..13)).unwrap();
    w.wait_at_least(14, Duration::from_secs(60), &d);
    assert!(
        wait_until(Duration::from_secs(5), || polled(&d) == 14.0),
        "polled {}",
        polled(&d)
    );
    assert_eq!(w.ms4.stats()["duplicate_records"], 0);
    assert!(w.dead_letters().is_empty());
    w.assert_drained();
}

#[test]
fn with_oversize_dead_letter_a_message_above_the_limit_is_a_dead_letter_naming_its_size() {
    let w = World::new(&[]);
    let mut dc = dovecot_with_a_big_message_among_small_ones(&w);
    let d = imap_daemon(
        &w,
        dc.port(),
        &[
            ("MS1__IMAP__MAX_MESSAGE_BYTES", "1048576"),
            ("MS1__IMAP__OVERSIZE", "dead_letter"),
        ],
    );
    w.wait_at_least(10, Duration::from_secs(60), &d);
    assert!(wait_until(Duration::from_secs(10), || w
        .dead_letters()
        .len()
        == 1));
    let dead = &w.dead_letters()[0];
    let reason = &dead["reason"];
    assert!(
        reason.contains("imap.max_message_bytes (1048576)") && reason.contains(" bytes is above"),
        "{reason}"
    );
    assert_eq!(dead["stage"], "process");
    assert_eq!(w.ms4.stats()["body_omitted_records"], serde_json::json!([]));

    dc.deliver(USER, "INBOX", &small(10..13)).unwrap();
    w.wait_at_least(13, Duration::from_secs(60), &d);
    assert!(wait_until(Duration::from_secs(5), || polled(&d) == 14.0));
    w.assert_drained();
}

/// The daemon's peak resident memory so far (VmHWM), in bytes.
fn peak_rss(d: &Daemon) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.pid())).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM")
        * 1024
}

#[test]
fn entries_of_several_megabytes_are_read_and_sent_within_the_byte_budgets() {
    // 40 IMAP entries of ~4 MB (5.3 MB in base64): 213 MB waiting in the inbound stream, which a
    // read of `read_chunk` (500) entries would take in at once, and records of ~4 MB each
    // (include_raw), which batches of 50 would hold by the hundred MB.
    let w = World::new(&["--rate-limit-per-min", "0"]);
    let n = 40u64;
    {
        use base64::Engine;
        let mut con = w.redis();
        for i in 0..n {
            let raw = mime_message(i, "huge", 4_000_000);
            let payload = base64::engine::general_purpose::STANDARD.encode(raw);
            let _: String = redis::cmd("XADD")
                .arg("ms1:stream:inbound")
                .arg("*")
                .arg(inbound::SOURCE)
                .arg("imap")
                .arg(inbound::MAILBOX)
                .arg("invoices")
                .arg(inbound::PAYLOAD)
                .arg(payload)
                .query(&mut con)
                .unwrap();
        }
    }
    let d = w.daemon(&[
        ("MS1__MS4__INCLUDE_RAW", "true"),
        ("MS1__PIPELINE__READ_MAX_BYTES", &(8 * MIB).to_string()),
        ("MS1__MS4__MAX_IN_FLIGHT_BYTES", &(16 * MIB).to_string()),
    ]);
    w.wait_delivered(n, Duration::from_secs(120), &d);
    let peak = peak_rss(&d);
    eprintln!("peak RSS {:.1} MiB", peak as f64 / MIB as f64);
    // docs/OPERATIONS.md, "Memory": (base 64 MiB + processor 2·R + 1.5·R + 3·E (R = max(8 MiB, E), E = one
    // 5.3 MB entry) + sender 4·(16 MiB + one 4 MB record)) × 1.25 ≈ (64 + 44 + 80) × 1.25 ≈
    // 235 MiB; this asserts less. Reading by count alone, the processor holds all 213 MB of
    // entries, their reply buffer and ~170 MB of records at once (897 MiB measured).
    assert!(
        peak < 200 * MIB,
        "peak RSS {} MiB with an 8 MiB read budget and 16 MiB in flight",
        peak / MIB
    );
    let stats = w.ms4.stats();
    assert_eq!(stats["duplicate_records"], 0, "{stats}");
    assert!(w.dead_letters().is_empty(), "{:?}", w.dead_letters());
    w.assert_drained();
}
