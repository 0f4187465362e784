//! Issue 15, "IDLE never misses a wake-up": a server may announce new mail (`* n EXISTS`) at
//! any moment, also inside the answer to a command of a poll or before its `+ idling`, and
//! then never again. async-imap puts such an announcement in the session's unsolicited
//! channel instead of handing it to the caller; the poller must still fetch the message at
//! once, not at the next scheduled poll.
//!
//! The server here is a scripted IMAP4rev1 server on loopback (the commands the poller sends,
//! answered as Dovecot answers them), so the announcement comes exactly at the racy moment; the
//! MS4 simulator, Redis and the daemon run as processes, as in `tests/imap.rs`.

mod common;

use common::*;
use ms1_sim::synthetic::mime_message;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Where the scripted server announces the second message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Moment {
    /// Inside the answer to the poll's `UID FETCH` of the first message, before its tagged OK.
    InFetch,
    /// After the client's `IDLE`, before the server's `+ idling`.
    BeforeIdling,
}

/// The scripted server's folder and what the daemon said to it.
struct Folder {
    /// The messages in order: the UID of each is its sequence number (nothing is expunged).
    messages: Vec<Vec<u8>>,
    /// The message announced at the moment, once.
    pending: Option<Vec<u8>>,
    moment: Moment,
    /// When the pending message was announced.
    announced_at: Option<Instant>,
    /// Every line the daemon sent, and the announcement, in order.
    transcript: Vec<String>,
}

/// A scripted IMAP server on 127.0.0.1: one thread per connection.
struct ScriptedImap {
    port: u16,
    folder: Arc<Mutex<Folder>>,
}

impl ScriptedImap {
    /// Holds `first`; announces `second` at `moment`.
    fn start(first: Vec<u8>, second: Vec<u8>, moment: Moment) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let folder = Arc::new(Mutex::new(Folder {
            messages: vec![first],
            pending: Some(second),
            moment,
            announced_at: None,
            transcript: Vec::new(),
        }));
        let shared = folder.clone();
        thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let folder = shared.clone();
                thread::spawn(move || {
                    let _ = serve(conn, &folder);
                });
            }
        });
        Self { port, folder }
    }

    fn announced_at(&self) -> Option<Instant> {
        self.folder.lock().unwrap().announced_at
    }

    fn transcript(&self) -> String {
        self.folder.lock().unwrap().transcript.join("\n")
    }
}

/// Delivers the pending message if `now` is its moment; returns the announcement to send.
fn announce(f: &mut Folder, now: Moment) -> String {
    if f.moment != now {
        return String::new();
    }
    let Some(msg) = f.pending.take() else {
        return String::new();
    };
    f.messages.push(msg);
    f.announced_at = Some(Instant::now());
    let n = f.messages.len();
    f.transcript
        .push(format!("(server announces * {n} EXISTS)"));
    format!("* {n} EXISTS\r\n* 1 RECENT\r\n")
}

/// The UIDs of an IMAP sequence set (`1:3,7,9:*`) among `1..=max`.
fn uid_set(set: &str, max: usize) -> Vec<usize> {
    let mut out = Vec::new();
    for part in set.split(',') {
        let bound = |s: &str| if s == "*" { max } else { s.parse().unwrap() };
        let (lo, hi) = match part.split_once(':') {
            Some((a, b)) => (bound(a), bound(b)),
            None => (bound(part), bound(part)),
        };
        out.extend((lo.min(hi)..=lo.max(hi)).filter(|u| (1..=max).contains(u)));
    }
    out
}

fn serve(conn: TcpStream, folder: &Mutex<Folder>) -> std::io::Result<()> {
    let mut w = conn.try_clone()?;
    let mut r = BufReader::new(conn);
    w.write_all(b"* OK [CAPABILITY IMAP4rev1 IDLE] scripted server ready\r\n")?;
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let text = line.trim_end().to_string();
        folder.lock().unwrap().transcript.push(text.clone());
        let (tag, rest) = text.split_once(' ').unwrap_or((text.as_str(), ""));
        let (verb, args) = rest.split_once(' ').unwrap_or((rest, ""));
        let mut out = Vec::new();
        match (verb.to_ascii_uppercase().as_str(), args) {
            ("LOGIN", _) => out.extend(format!("{tag} OK LOGIN completed\r\n").bytes()),
            ("CAPABILITY", _) => out.extend(
                format!("* CAPABILITY IMAP4rev1 IDLE\r\n{tag} OK CAPABILITY completed\r\n").bytes(),
            ),
            ("SELECT" | "EXAMINE", _) => {
                let n = folder.lock().unwrap().messages.len();
                out.extend(
                    format!(
                        "* FLAGS (\\Seen \\Deleted)\r\n* {n} EXISTS\r\n* 0 RECENT\r\n\
* OK [UIDVALIDITY 7] UIDs valid\r\n* OK [UIDNEXT {}] Predicted next UID\r\n\
{tag} OK [READ-WRITE] SELECT completed\r\n",
                        n + 1
                    )
                    .bytes(),
                );
            }
            ("UID", args) => {
                let mut f = folder.lock().unwrap();
                let (sub, args) = args.split_once(' ').unwrap_or((args, ""));
                match sub.to_ascii_uppercase().as_str() {
                    "SEARCH" => {
                        let args = args.trim_start_matches("UID ").trim();
                        let (set, larger) = match args.split_once(" LARGER ") {
                            Some((set, n)) => (set, n.parse().unwrap()),
                            None => (args, 0),
                        };
                        let mut found = uid_set(set, f.messages.len());
                        found.retain(|u| f.messages[u - 1].len() > larger);
                        let found: Vec<String> = found.iter().map(|u| u.to_string()).collect();
                        out.extend(format!("* SEARCH {}\r\n", found.join(" ")).bytes());
                    }
                    "FETCH" => {
                        let (set, items) = args.split_once(' ').unwrap_or((args, ""));
                        let whole = items.contains("BODY.PEEK[]");
                        for uid in uid_set(set, f.messages.len()) {
                            let msg = &f.messages[uid - 1];
                            if whole {
                                out.extend(
                                    format!(
                                        "* {uid} FETCH (UID {uid} INTERNALDATE \"30-Nov-2026 10:00:00 +0000\" BODY[] {{{}}}\r\n",
                                        msg.len()
                                    )
                                    .bytes(),
                                );
                                out.extend_from_slice(msg);
                                out.extend(b")\r\n");
                            } else {
                                out.extend(
                                    format!(
                                        "* {uid} FETCH (UID {uid} RFC822.SIZE {})\r\n",
                                        msg.len()
                                    )
                                    .bytes(),
                                );
                            }
                        }
                        if whole {
                            // The racy moment: new mail, reported inside this command's answer.
                            out.extend(announce(&mut f, Moment::InFetch).bytes());
                        }
                    }
                    _ => {}
                }
                out.extend(format!("{tag} OK UID {sub} completed\r\n").bytes());
            }
            ("IDLE", _) => {
                // The racy moment: new mail, reported before the continuation.
                let early = announce(&mut folder.lock().unwrap(), Moment::BeforeIdling);
                w.write_all(format!("{early}+ idling\r\n").as_bytes())?;
                // Nothing changes during the IDLE: the announcement above was the only one.
                line.clear();
                if r.read_line(&mut line)? == 0 {
                    return Ok(());
                }
                folder
                    .lock()
                    .unwrap()
                    .transcript
                    .push(line.trim_end().to_string());
                out.extend(format!("{tag} OK IDLE terminated\r\n").bytes());
            }
            ("NOOP", _) => out.extend(format!("{tag} OK NOOP completed\r\n").bytes()),
            ("LOGOUT", _) => {
                w.write_all(
                    format!("* BYE logging out\r\n{tag} OK LOGOUT completed\r\n").as_bytes(),
                )?;
                return Ok(());
            }
            _ => out.extend(format!("{tag} BAD unknown command\r\n").bytes()),
        }
        w.write_all(&out)?;
    }
}

/// The daemon polls the scripted server every 600 s (IDLE on); the first message arrives with
/// the first poll, the second is announced at `moment`: it must reach MS4 within 15 s (the
/// failure shows what the daemon sent).
fn second_message_arrives_without_a_scheduled_poll(moment: Moment) {
    let w = World::new(&[]);
    let server = ScriptedImap::start(
        mime_message(1, "idle", 1_500),
        mime_message(2, "idle", 1_500),
        moment,
    );
    let sources = format!(
        "[[imap.sources]]\nname = \"scripted\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\n\
username = \"invoices@contoso.example\"\npassword = \"secret\"\npoll_interval_s = 600\n",
        server.port
    );
    let path = w.dir.path().join("imap.toml");
    std::fs::write(&path, sources).unwrap();
    let path = path.display().to_string();
    let d = w.daemon(&[("MS1_CONFIG", path.as_str())]);
    w.wait_at_least(1, Duration::from_secs(30), &d);
    assert!(
        wait_until(Duration::from_secs(10), || server.announced_at().is_some()),
        "{moment:?} never came:\n{}",
        server.transcript()
    );
    // Only a wake-up can bring the second message: the next scheduled poll is 10 minutes away.
    let arrived = wait_until(Duration::from_secs(15), || {
        w.ms4.stats()["unique_records"].as_u64() == Some(2)
    });
    let took = server.announced_at().unwrap().elapsed();
    assert!(
        arrived,
        "{moment:?}: the announced message was not delivered {took:?} after its announcement \
(poll_interval_s = 600); MS4 holds {}.\nWhat the daemon sent:\n{}\ndaemon log tail:\n{}",
        w.ms4.stats()["unique_records"],
        server.transcript(),
        d.log_tail(20)
    );
    eprintln!(
        "{moment:?}: the second message reached MS4 within {took:?} of its announcement\n{}",
        server.transcript()
    );
    assert_eq!(w.ms4.stats()["duplicate_records"], 0);
}

#[test]
fn new_mail_announced_inside_a_fetch_answer_is_fetched_at_once_not_at_the_next_poll() {
    second_message_arrives_without_a_scheduled_poll(Moment::InFetch);
}

#[test]
fn new_mail_announced_before_idling_is_fetched_at_once_not_at_the_next_poll() {
    second_message_arrives_without_a_scheduled_poll(Moment::BeforeIdling);
}
