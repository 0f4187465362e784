//! IMAP as a source, end to end: a real Dovecot (Maildir, loopback), a real redis-server, the
//! MS4 simulator and the daemon, as processes.

mod common;

use common::*;
use ms1_actors::store::schema::follow_up;
use ms1_sim::dovecot_launcher::PrivateDovecot;
use ms1_sim::synthetic::mime_message;
use std::io::{BufRead, BufReader, Write};
use std::time::{Duration, Instant};

const USER: &str = "invoices@contoso.example";
const PASSWORD: &str = "dovecot-secret";

fn dovecot(w: &World, users: &[(&str, &str)]) -> PrivateDovecot {
    PrivateDovecot::start(&w.dir.path().join("dovecot"), users, false)
        .expect("dovecot starts (apt-get install dovecot-imapd)")
}

/// One `[[imap.sources]]` table for a plain-text loopback login.
fn source(name: &str, port: u16, user: &str, password: &str, extra: &str) -> String {
    format!(
        "[[imap.sources]]\nname = \"{name}\"\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\n\
username = \"{user}\"\npassword = \"{password}\"\npoll_interval_s = 1\n{extra}\n"
    )
}

/// Starts the daemon with these IMAP sources (TOML) and `extra` settings.
fn daemon(w: &World, sources: &str, extra: &[(&str, &str)]) -> Daemon {
    let path = w.dir.path().join("imap.toml");
    std::fs::write(&path, sources).unwrap();
    let path = path.display().to_string();
    let mut env = vec![("MS1_CONFIG", path.as_str())];
    env.extend_from_slice(extra);
    w.daemon(&env)
}

fn messages(range: std::ops::Range<u64>, tag: &str) -> Vec<Vec<u8>> {
    range.map(|n| mime_message(n, tag, 1_500)).collect()
}

fn polled(d: &Daemon) -> f64 {
    d.metric("ms1_emails_polled_total{mode=\"imap\"}")
}

/// Runs tagged IMAP commands after a login; returns everything the server said.
fn imap(port: u16, user: &str, commands: &[&str]) -> String {
    let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut wr = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut out = String::new();
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let login = format!("LOGIN {user} {PASSWORD}");
    for (i, c) in std::iter::once(login.as_str())
        .chain(commands.iter().copied())
        .enumerate()
    {
        let tag = format!("t{i}");
        write!(wr, "{tag} {c}\r\n").unwrap();
        loop {
            line.clear();
            if r.read_line(&mut line).unwrap() == 0 {
                return out;
            }
            out.push_str(&line);
            if line.starts_with(&format!("{tag} ")) {
                break;
            }
        }
    }
    out
}

#[test]
fn five_thousand_messages_arrive_once_then_only_new_ones_and_an_idle_poll_fetches_nothing() {
    let w = World::new(&[]);
    let mut dc = dovecot(&w, &[(USER, PASSWORD)]);
    dc.deliver(USER, "INBOX", &messages(0..5_000, "a")).unwrap();
    let d = daemon(&w, &source("invoices", dc.port(), USER, PASSWORD, ""), &[]);
    w.wait_at_least(5_000, Duration::from_secs(90), &d);
    assert_eq!(polled(&d), 5_000.0, "each message queued once");

    dc.deliver(USER, "INBOX", &messages(5_000..5_200, "a"))
        .unwrap();
    w.wait_at_least(5_200, Duration::from_secs(30), &d);
    assert!(
        wait_until(Duration::from_secs(5), || polled(&d) == 5_200.0),
        "only the 200 new ones are fetched: polled {}",
        polled(&d)
    );

    // Idle polls (every second, and one triggered now) fetch nothing.
    let (status, _) = post(&format!("{}/polling/trigger", d.control), "{}");
    assert_eq!(status, 200);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        polled(&d),
        5_200.0,
        "an idle poll must not re-push the last message"
    );
    let stats = w.ms4.stats();
    assert_eq!(stats["unique_records"], 5_200);
    assert_eq!(stats["duplicate_records"], 0, "{stats}");
    assert_eq!(w.xlen("stream:inbound"), 0);
    w.assert_drained();
}

#[test]
fn a_poller_whose_lease_is_taken_mid_poll_writes_no_further_chunk() {
    let w = World::new(&[]);
    let mut dc = dovecot(&w, &[(USER, PASSWORD)]);
    dc.deliver(USER, "INBOX", &messages(0..20_000, "f"))
        .unwrap();
    // Chunks of 20: the poll is a thousand writes, and the lease changes hands between two.
    let d = daemon(
        &w,
        &source("invoices", dc.port(), USER, PASSWORD, ""),
        &[("MS1__IMAP__FETCH_CHUNK", "20")],
    );
    assert!(
        wait_until(Duration::from_secs(60), || polled(&d) >= 200.0),
        "the poll started: polled {}",
        polled(&d)
    );
    // Another daemon holds the lease now (as after this one's had expired).
    let mut con = w.redis();
    let cursor = format!("{PREFIX}cursor:imap:invoices");
    let last_uid = |con: &mut redis::Connection| -> u32 {
        redis::cmd("HGET")
            .arg(&cursor)
            .arg("last_uid")
            .query(con)
            .unwrap()
    };
    let (_, at_takeover): ((), u32) = redis::pipe()
        .cmd("SET")
        .arg(format!("{PREFIX}lease:poller:imap:invoices"))
        .arg("another-daemon")
        .arg("PX")
        .arg(60_000)
        .cmd("HGET")
        .arg(&cursor)
        .arg("last_uid")
        .query(&mut con)
        .unwrap();
    assert!(at_takeover < 20_000, "the poll was still running");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        last_uid(&mut con),
        at_takeover,
        "a poller that lost its lease must not write another chunk"
    );
    let polled_now = polled(&d);
    assert!(
        polled_now <= f64::from(at_takeover) + 20.0,
        "queued {polled_now}, cursor {at_takeover} at the takeover"
    );
}

#[test]
fn a_new_uidvalidity_resyncs_the_folder_and_delivers_only_the_new_mail() {
    let w = World::new(&[]);
    let mut dc = dovecot(&w, &[(USER, PASSWORD)]);
    dc.deliver(USER, "INBOX", &messages(0..50, "v")).unwrap();
    let d = daemon(&w, &source("invoices", dc.port(), USER, PASSWORD, ""), &[]);
    w.wait_at_least(50, Duration::from_secs(30), &d);

    // The folder is recreated: the same 50 (renumbered under a new UIDVALIDITY) plus 10 new.
    // Dovecot takes a new folder's UIDVALIDITY from the clock: let a second pass.
    std::thread::sleep(Duration::from_millis(1_100));
    dc.remove_folder(USER, "INBOX").unwrap();
    dc.deliver(USER, "INBOX", &messages(0..60, "v")).unwrap();
    w.wait_at_least(60, Duration::from_secs(30), &d);
    std::thread::sleep(Duration::from_secs(2));
    let stats = w.ms4.stats();
    assert_eq!(stats["unique_records"], 60);
    assert_eq!(
        stats["duplicate_records"], 0,
        "nothing twice at MS4: {stats}"
    );
    assert_eq!(
        d.metric("ms1_imap_uidvalidity_resets_total{source=\"invoices\"}"),
        1.0,
        "{}",
        d.log_tail(30)
    );
    w.assert_drained();
}

#[test]
fn idle_brings_a_new_message_within_two_seconds() {
    let w = World::new(&[]);
    let mut dc = dovecot(&w, &[(USER, PASSWORD)]);
    dc.deliver(USER, "INBOX", &messages(0..3, "i")).unwrap();
    // Polling once an hour: only IDLE can bring the next message quickly.
    let src = source(
        "invoices",
        dc.port(),
        USER,
        PASSWORD,
        "poll_interval_s = 3600",
    )
    .replace("poll_interval_s = 1\n", "");
    let d = daemon(&w, &src, &[]);
    w.wait_at_least(3, Duration::from_secs(30), &d);
    // Let the poller settle into IDLE.
    std::thread::sleep(Duration::from_millis(1_500));
    let t0 = Instant::now();
    dc.deliver(USER, "INBOX", &messages(3..4, "i")).unwrap();
    w.wait_at_least(4, Duration::from_secs(10), &d);
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "IDLE delivered the message to MS4 after {took:?}"
    );
}

#[test]
fn malformed_mime_is_delivered_as_parsed_or_dead_lettered_and_the_poller_goes_on() {
    let w = World::new(&[]);
    let mut dc = dovecot(&w, &[(USER, PASSWORD)]);
    let broken: Vec<Vec<u8>> = vec![
        // Broken header lines and a bad encoded word.
        b"From: x@y.example\r\nSubject: =?utf-8?q?broken=ZZ?=\r\nthis is not a header\r\nDate: Sat, 21 Nov 2026 10:00:00 +0000\r\n\r\nbody\r\n".to_vec(),
        // No Message-ID: keyed by a hash of its bytes.
        b"From: a@b.example\r\nDate: Sat, 21 Nov 2026 10:00:00 +0000\r\nSubject: no id\r\n\r\nhi\r\n".to_vec(),
        // 8-bit garbage in headers and body, an unknown charset.
        b"From: g@h.example\r\nSubject: \xff\xfe\xc3\x28 caf\xe9\r\nContent-Type: text/plain; charset=x-unknown\r\nMessage-ID: <garbage@h.example>\r\n\r\n\x00\x01\xff body\r\n".to_vec(),
        // No Date header: the INTERNALDATE stands in.
        b"From: d@e.example\r\nMessage-ID: <nodate@e.example>\r\n\r\nno date\r\n".to_vec(),
        // No From at all: cannot be a record.
        b"Subject: nobody sent this\r\nDate: Sat, 21 Nov 2026 10:00:00 +0000\r\n\r\n?\r\n".to_vec(),
        // Not even headers.
        b"\xff\xff\xff\xff".to_vec(),
    ];
    dc.deliver(USER, "INBOX", &broken).unwrap();
    let d = daemon(&w, &source("invoices", dc.port(), USER, PASSWORD, ""), &[]);
    w.wait_at_least(4, Duration::from_secs(30), &d);
    assert!(wait_until(Duration::from_secs(10), || w
        .dead_letters()
        .len()
        == 2));
    for dl in w.dead_letters() {
        assert_eq!(dl["source"], "imap");
        assert_eq!(dl["stage"], "process");
        assert_eq!(dl["mailbox"], "invoices");
        assert!(!dl["reason"].is_empty());
    }
    // The poller is still there for the next message.
    dc.deliver(USER, "INBOX", &messages(0..1, "m")).unwrap();
    w.wait_at_least(5, Duration::from_secs(15), &d);
    let keys = w.ms4.keys();
    assert!(
        keys.iter().any(|k| k.starts_with("imap:invoices:")),
        "{keys:?}"
    );
    assert!(keys.contains(&"<nodate@e.example>".to_string()), "{keys:?}");
}

#[test]
fn a_wrong_password_degrades_only_its_source() {
    let w = World::new(&[]);
    let other = "ap@contoso.example";
    let mut dc = dovecot(&w, &[(USER, PASSWORD), (other, PASSWORD)]);
    dc.deliver(USER, "INBOX", &messages(0..20, "g")).unwrap();
    dc.deliver(other, "INBOX", &messages(100..110, "b"))
        .unwrap();
    let sources = source("good", dc.port(), USER, PASSWORD, "")
        + &source("bad", dc.port(), other, "not-the-password", "");
    let d = daemon(&w, &sources, &[]);
    w.wait_at_least(20, Duration::from_secs(30), &d);
    let ok = wait_until(Duration::from_secs(10), || {
        d.ready().1["degraded_sources"].get("imap:bad").is_some()
    });
    let (status, ready) = d.ready();
    assert!(ok, "{ready}");
    assert_eq!(status, 200, "the daemon stays ready: {ready}");
    let reason = ready["degraded_sources"]["imap:bad"].as_str().unwrap();
    assert!(
        reason.contains("`bad`") && reason.contains(other),
        "the error names the source and the user: {reason}"
    );
    assert!(
        ready["degraded_sources"].get("imap:good").is_none(),
        "{ready}"
    );
    assert!(!reason.contains("not-the-password"), "no secret in errors");
    // The good source keeps flowing.
    dc.deliver(USER, "INBOX", &messages(20..25, "g")).unwrap();
    w.wait_at_least(25, Duration::from_secs(15), &d);
    assert_eq!(w.ms4.stats()["unique_records"], 25);
    assert!(d.log_tail(200).contains("IMAP source `bad`"));
}

/// A Dovecot with two users and their sources: `seen` (USER, `after_delivery = "seen"`) with
/// `seen` in its INBOX, and `mover` (MOVER, moving to Processed, which exists) with `moved`.
fn seen_and_mover(w: &World, seen: &[Vec<u8>], moved: &[Vec<u8>]) -> (PrivateDovecot, String) {
    let mut dc = dovecot(w, &[(USER, PASSWORD), (MOVER, PASSWORD)]);
    dc.deliver(USER, "INBOX", seen).unwrap();
    dc.deliver(MOVER, "INBOX", moved).unwrap();
    let created = imap(dc.port(), MOVER, &["CREATE Processed", "LOGOUT"]);
    assert!(created.contains("t1 OK"), "{created}");
    let sources = source(
        "seen",
        dc.port(),
        USER,
        PASSWORD,
        "after_delivery = \"seen\"",
    ) + &source(
        "mover",
        dc.port(),
        MOVER,
        PASSWORD,
        "after_delivery = \"move\"\nmove_to = \"Processed\"",
    );
    (dc, sources)
}

const MOVER: &str = "ap@contoso.example";

#[test]
fn after_delivery_sets_seen_or_moves_only_what_ms4_accepted() {
    let w = World::new(&[]);
    let mover = MOVER;
    let (dc, sources) = seen_and_mover(&w, &messages(0..30, "s"), &messages(100..120, "m"));
    let d = daemon(&w, &sources, &[]);
    w.wait_at_least(50, Duration::from_secs(30), &d);
    let seen = wait_until(Duration::from_secs(15), || {
        let out = imap(
            dc.port(),
            USER,
            &["SELECT INBOX", "SEARCH UNSEEN", "LOGOUT"],
        );
        out.contains("* SEARCH\r\n")
    });
    assert!(seen, "every delivered message is \\Seen");
    let moved = wait_until(Duration::from_secs(15), || {
        let out = imap(
            dc.port(),
            mover,
            &[
                "STATUS INBOX (MESSAGES)",
                "STATUS Processed (MESSAGES)",
                "LOGOUT",
            ],
        );
        out.contains("INBOX (MESSAGES 0)") && out.contains("Processed (MESSAGES 20)")
    });
    assert!(moved, "every delivered message moved to Processed");
    assert_eq!(
        d.metric("ms1_imap_after_delivery_total{action=\"seen\"}"),
        30.0
    );
    assert_eq!(
        d.metric("ms1_imap_after_delivery_total{action=\"move\"}"),
        20.0
    );
    // Moving did not make anything come twice.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(w.ms4.stats()["duplicate_records"], 0);
    assert_eq!(w.xlen("imapdone"), 0);
}

#[test]
fn tls_and_xoauth2_sources_flow_and_a_rejected_xoauth2_login_degrades_only_its_source() {
    use ms1_sim::dovecot_launcher::DovecotOptions;
    let w = World::with_graph(&[], &["--introspect-user", USER]);
    let graph = w.graph().url.clone();
    let other = "ap@contoso.example";
    let options = DovecotOptions {
        tls: true,
        oauth2_introspection_url: Some(format!("{graph}/_sim/introspect")),
    };
    let mut dc = PrivateDovecot::start_with(
        &w.dir.path().join("dovecot"),
        &[(USER, PASSWORD), (other, PASSWORD)],
        false,
        options,
    )
    .expect("dovecot starts with TLS and OAuth2");
    dc.deliver(USER, "INBOX", &messages(0..20, "x")).unwrap();
    dc.deliver(other, "INBOX", &messages(100..115, "t"))
        .unwrap();
    let ca = dc.ca_file().unwrap().display().to_string();
    let oauth = format!(
        "auth = \"xoauth2\"\ntoken_url = \"{graph}/contoso/oauth2/v2.0/token\"\n\
client_id = \"ms1-app\"\nclient_secret = \"sim-secret\"\nrefresh_token = \"sim-refresh-token\"\n"
    );
    let sources = format!(
        // XOAUTH2 after STARTTLS, verified against the private CA by host name.
        "[[imap.sources]]\nname = \"oauth\"\nhost = \"localhost\"\nport = {plain}\ntls = \"starttls\"\n\
ca_file = \"{ca}\"\nusername = \"{USER}\"\n{oauth}poll_interval_s = 1\n\n\
[[imap.sources]]\nname = \"implicit\"\nhost = \"127.0.0.1\"\nport = {tls}\ntls = \"implicit\"\n\
ca_file = \"{ca}\"\nusername = \"{other}\"\npassword = \"{PASSWORD}\"\npoll_interval_s = 1\n\n\
[[imap.sources]]\nname = \"rejected\"\nhost = \"localhost\"\nport = {plain}\ntls = \"starttls\"\n\
ca_file = \"{ca}\"\nusername = \"{other}\"\n{oauth}poll_interval_s = 1\n",
        plain = dc.port(),
        tls = dc.tls_port().unwrap(),
    );
    let d = daemon(&w, &sources, &[]);
    w.wait_at_least(35, Duration::from_secs(30), &d);
    let ok = wait_until(Duration::from_secs(10), || {
        d.ready().1["degraded_sources"]
            .get("imap:rejected")
            .is_some()
    });
    let (_, ready) = d.ready();
    assert!(ok, "{ready}");
    let reason = ready["degraded_sources"]["imap:rejected"].as_str().unwrap();
    assert!(
        reason.contains("`rejected`") && reason.contains("XOAUTH2"),
        "{reason}"
    );
    assert_eq!(
        ready["degraded_sources"].as_object().unwrap().len(),
        1,
        "{ready}"
    );
    assert!(!reason.contains("sim-refresh-token") && !reason.contains("Bearer"));
    let stats = w.ms4.stats();
    assert_eq!(stats["unique_records"], 35, "{stats}");
    assert_eq!(stats["duplicate_records"], 0, "{stats}");
    assert!(w.graph().stats()["introspections"].as_u64() > Some(0));
}

/// An IMAP source that cannot be reached never holds back another source's after-delivery
/// actions: its follow-ups wait (named in `/ready`) while the other source's messages are
/// flagged `\Seen` as they are delivered.
#[test]
fn an_unreachable_source_never_holds_back_another_sources_after_delivery() {
    let w = World::new(&[]);
    let mut dc = dovecot(&w, &[(USER, PASSWORD)]);
    let closed = ms1_sim::redis_launcher::free_port().unwrap();
    let sources = source("down", closed, USER, PASSWORD, "after_delivery = \"seen\"")
        + &source(
            "seen",
            dc.port(),
            USER,
            PASSWORD,
            "after_delivery = \"seen\"",
        );
    // Follow-ups of the unreachable source, queued before (MS4 accepted their messages).
    let mut con = w.redis();
    for uid in 1..=50 {
        let _: String = redis::cmd("XADD")
            .arg(format!("{PREFIX}stream:imapdone"))
            .arg("*")
            .arg(follow_up::MAILBOX)
            .arg("down")
            .arg(follow_up::MESSAGE_ID)
            .arg(format!("7:{uid}"))
            .query(&mut con)
            .unwrap();
    }
    let d = daemon(&w, &sources, &[]);
    assert!(
        wait_until(Duration::from_secs(30), || {
            let (_, ready) = d.ready();
            ready["degraded_sources"]
                .get("imap_after_delivery:down")
                .is_some()
        }),
        "{:?}",
        d.ready()
    );
    dc.deliver(USER, "INBOX", &messages(0..30, "s")).unwrap();
    w.wait_at_least(30, Duration::from_secs(30), &d);
    let seen = wait_until(Duration::from_secs(30), || {
        let out = imap(
            dc.port(),
            USER,
            &["SELECT INBOX", "SEARCH UNSEEN", "LOGOUT"],
        );
        out.contains("* SEARCH\r\n")
    });
    assert!(
        seen,
        "the reachable source's messages are \\Seen\n{}",
        d.log_tail(20)
    );
    assert_eq!(
        w.pending("imapdone", "imap_finishers"),
        50,
        "the other's wait"
    );
    assert!(w.dead_letters().is_empty());
}

/// Issue 15: a message the daemon recognises as delivered before still ends in its final
/// state. A folder recreated with the same messages (new UIDVALIDITY, new UIDs) brings 50
/// copies back: they are not delivered again, and they end \Seen (or moved) like their first
/// copies. Before: the 50 stayed unseen, and in the source folder for good.
#[test]
fn copies_in_a_recreated_folder_end_seen_or_moved_like_their_first_copies() {
    let w = World::new(&[]);
    let mover = MOVER;
    let (mut dc, sources) = seen_and_mover(&w, &messages(0..50, "c"), &messages(100..150, "d"));
    let d = daemon(&w, &sources, &[]);
    w.wait_at_least(100, Duration::from_secs(30), &d);
    let port = dc.port();
    let inbox = |user: &str| {
        imap(
            port,
            user,
            &[
                "STATUS INBOX (MESSAGES UNSEEN)",
                "STATUS Processed (MESSAGES)",
                "LOGOUT",
            ],
        )
    };
    assert!(
        wait_until(Duration::from_secs(15), || inbox(USER)
            .contains("INBOX (MESSAGES 50 UNSEEN 0)")
            && inbox(mover).contains("INBOX (MESSAGES 0")),
        "first copies: {} / {}",
        inbox(USER),
        inbox(mover)
    );

    // Both INBOXes recreated with the same 50 messages and 10 new ones (Dovecot takes a new
    // folder's UIDVALIDITY from the clock: let a second pass).
    std::thread::sleep(Duration::from_millis(1_100));
    dc.remove_folder(USER, "INBOX").unwrap();
    dc.deliver(USER, "INBOX", &messages(0..60, "c")).unwrap();
    // (Removing a Maildir's INBOX removes its other folders: the target is made again.)
    dc.remove_folder(mover, "INBOX").unwrap();
    let created = imap(port, mover, &["CREATE Processed", "LOGOUT"]);
    assert!(created.contains("t1 OK"), "{created}");
    dc.deliver(mover, "INBOX", &messages(100..160, "d"))
        .unwrap();
    w.wait_at_least(120, Duration::from_secs(30), &d);
    let ended = wait_until(Duration::from_secs(20), || {
        inbox(USER).contains("INBOX (MESSAGES 60 UNSEEN 0)")
            && inbox(mover).contains("INBOX (MESSAGES 0")
            && inbox(mover).contains("Processed (MESSAGES 60)")
    });
    assert!(
        ended,
        "copies end as their first copies: {} / {}\n{}",
        inbox(USER),
        inbox(mover),
        d.log_tail(20)
    );
    let stats = w.ms4.stats();
    assert_eq!(stats["unique_records"], 120, "{stats}");
    assert_eq!(
        stats["duplicate_records"], 0,
        "no copy reached MS4 again: {stats}"
    );
    assert_eq!(
        d.metric("ms1_copies_total{end=\"followed_up\"}")
            + d.metric("ms1_copies_total{end=\"waiting\"}"),
        100.0,
        "{}",
        d.metrics()
    );
    w.assert_drained();
}

/// Invoice `n` with a sender that is not an address (`billing3-at-vendor2.example`): MS4
/// refuses its record until it relaxes that rule (`lenient_sender`).
fn refused(n: u64, tag: &str) -> Vec<u8> {
    String::from_utf8(mime_message(n, tag, 1_500))
        .unwrap()
        .replacen("@vendor", "-at-vendor", 1)
        .into_bytes()
}

/// Issue 15: dead letters end as the source chooses. `failing` (`after_delivery = "seen"`,
/// `after_dead_letter = "move"` to `Ingestion failed`): the 4 invoices MS4 refuses and the one
/// that cannot be a record (no From) end in that folder, each exactly once in the dead-letter
/// stream however often the folder is polled, while the 20 delivered ones are \Seen in INBOX.
/// `marker` (no after-delivery action, `after_dead_letter = "seen"`): its 3 refused invoices
/// end \Seen, its delivered ones stay unseen. Once MS4 accepts them, the operator's replay
/// delivers the 7 refused invoices; their after-delivery action finds nothing at their old
/// UIDs (the move took them away) and is done, without a new dead letter. Before: the keys
/// were unknown.
#[test]
fn refused_invoices_end_moved_or_seen_dead_lettered_once_and_a_replay_delivers_them() {
    let w = World::new(&[]);
    let mut dc = dovecot(&w, &[(USER, PASSWORD), (MOVER, PASSWORD)]);
    let mut failing = messages(0..20, "f");
    failing.extend((20..24).map(|n| refused(n, "f")));
    failing.push(
        b"Subject: nobody sent this\r\nDate: Sat, 21 Nov 2026 10:00:00 +0000\r\n\r\n?\r\n".to_vec(),
    );
    dc.deliver(USER, "INBOX", &failing).unwrap();
    let mut marked = messages(100..110, "s");
    marked.extend((110..113).map(|n| refused(n, "s")));
    dc.deliver(MOVER, "INBOX", &marked).unwrap();
    let created = imap(dc.port(), USER, &["CREATE \"Ingestion failed\"", "LOGOUT"]);
    assert!(created.contains("t1 OK"), "{created}");
    let sources = source(
        "failing",
        dc.port(),
        USER,
        PASSWORD,
        "after_delivery = \"seen\"\nafter_dead_letter = \"move\"\ndead_letter_move_to = \"Ingestion failed\"",
    ) + &source(
        "marker",
        dc.port(),
        MOVER,
        PASSWORD,
        "after_dead_letter = \"seen\"",
    );
    let d = daemon(&w, &sources, &[]);
    w.wait_delivered(30, Duration::from_secs(60), &d);
    let port = dc.port();
    let status = |user: &str| {
        imap(
            port,
            user,
            &[
                "STATUS INBOX (MESSAGES UNSEEN)",
                "STATUS \"Ingestion failed\" (MESSAGES)",
                "LOGOUT",
            ],
        )
    };
    let ended = wait_until(Duration::from_secs(20), || {
        status(USER).contains("INBOX (MESSAGES 20 UNSEEN 0)")
            && status(USER).contains("\"Ingestion failed\" (MESSAGES 5)")
            && status(MOVER).contains("INBOX (MESSAGES 13 UNSEEN 10)")
    });
    assert!(
        ended,
        "{} / {}\n{}",
        status(USER),
        status(MOVER),
        d.log_tail(20)
    );
    // Polls go on (every second): nothing is dead-lettered twice.
    std::thread::sleep(Duration::from_secs(3));
    let dead = w.dead_letters();
    assert_eq!(dead.len(), 8, "{dead:?}");
    let by_stage = |stage: &str| dead.iter().filter(|d| d["stage"] == stage).count();
    assert_eq!(
        (by_stage("deliver"), by_stage("process")),
        (7, 1),
        "{dead:?}"
    );
    assert_eq!(
        d.metric("ms1_imap_after_delivery_total{action=\"dead_letter_move\"}"),
        5.0
    );
    assert_eq!(
        d.metric("ms1_imap_after_delivery_total{action=\"dead_letter_seen\"}"),
        3.0
    );
    assert_eq!(w.xlen("imapdone"), 0);

    // MS4 relaxes the rule; the operator replays what it refused.
    w.ms4.configure(serde_json::json!({"lenient_sender": true}));
    let (code, body) = post(
        &format!("{}/dlq/replay", d.control),
        &serde_json::json!({"filter": {"stage": "deliver"}}).to_string(),
    );
    assert_eq!(code, 200, "{body}");
    w.wait_delivered(37, Duration::from_secs(60), &d);
    assert!(wait_until(Duration::from_secs(15), || w.xlen("imapdone")
        == 0
        && w.pending("imapdone", "imap_finishers") == 0));
    std::thread::sleep(Duration::from_secs(2));
    let dead = w.dead_letters();
    assert_eq!(dead.len(), 1, "only the message without From: {dead:?}");
    assert_eq!(dead[0]["stage"], "process");
    assert!(status(USER).contains("\"Ingestion failed\" (MESSAGES 5)"));
    assert_eq!(w.ms4.stats()["duplicate_records"], 0);
    w.assert_drained();
}
