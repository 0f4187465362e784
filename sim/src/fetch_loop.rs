//! `ms1-sim imap-fetch`: the plainest IMAP reader there is, as the benchmark's yardstick —
//! LOGIN, SELECT, then `UID FETCH lo:hi (BODY.PEEK[])` in chunks, reading every literal and
//! discarding it. No parsing beyond what the protocol needs, no storage: what the server gives.
//! Its clock runs from the TCP connect, as the daemon's does from the session start: both log
//! in and select before their first FETCH. A first session (untimed) selects the folder once
//! before: the first SELECT of a fresh Maildir has Dovecot index every file (about a second for
//! 50,000), which is no reader's cost, and the daemon, running after, finds that done too.

use anyhow::{bail, Context};
use std::time::Instant;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// What the loop read.
pub struct Fetched {
    pub messages: u64,
    pub bytes: u64,
    /// From the TCP connect to the last answer (login and SELECT included).
    pub seconds: f64,
    /// From the first FETCH to the last answer.
    pub fetch_seconds: f64,
}

/// The literal length a line announces (`… {1234}\r\n`), if any.
fn literal_len(line: &str) -> Option<usize> {
    let l = line.trim_end_matches(['\r', '\n']);
    let open = l.strip_suffix('}')?.rfind('{')?;
    l[open + 1..l.len() - 1].parse().ok()
}

/// Reads answers up to the tagged one, discarding literals; counts `FETCH` responses and bytes.
async fn until_tagged(
    reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    tag: &str,
    fetched: &mut Fetched,
) -> anyhow::Result<String> {
    let mut line = String::new();
    let mut skip = vec![0u8; 64 * 1024];
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            bail!("the server closed the connection");
        }
        if line.starts_with("* ") && line.contains(" FETCH ") {
            fetched.messages += 1;
        }
        if let Some(mut n) = literal_len(&line) {
            fetched.bytes += n as u64;
            while n > 0 {
                let take = n.min(skip.len());
                reader.read_exact(&mut skip[..take]).await?;
                n -= take;
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix(tag).and_then(|r| r.strip_prefix(' ')) {
            if !rest.starts_with("OK") {
                bail!("{tag} answered {}", rest.trim_end());
            }
            return Ok(rest.to_string());
        }
    }
}

/// Connects, logs in and selects INBOX; returns the halves of the connection and UIDNEXT.
async fn select(
    addr: &str,
    user: &str,
    password: &str,
    fetched: &mut Fetched,
) -> anyhow::Result<(
    BufReader<tokio::net::tcp::OwnedReadHalf>,
    tokio::net::tcp::OwnedWriteHalf,
    u64,
)> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect {addr}"))?;
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut greeting = String::new();
    reader.read_line(&mut greeting).await?;
    write
        .write_all(format!("a1 LOGIN \"{user}\" \"{password}\"\r\n").as_bytes())
        .await?;
    until_tagged(&mut reader, "a1", fetched).await?;
    write.write_all(b"a2 SELECT INBOX\r\n").await?;
    let mut uid_next = 0u64;
    let mut line = String::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).await? == 0 {
            bail!("the server closed the connection");
        }
        if let Some(at) = line.find("[UIDNEXT ") {
            uid_next = line[at + 9..]
                .split(']')
                .next()
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0);
        }
        if line.starts_with("a2 ") {
            break;
        }
    }
    Ok((reader, write, uid_next))
}

/// Selects INBOX once (untimed), then logs in to `addr` (plain text, loopback) again and
/// fetches every message of INBOX in chunks of `chunk` UIDs.
pub async fn run(addr: &str, user: &str, password: &str, chunk: u32) -> anyhow::Result<Fetched> {
    let mut fetched = Fetched {
        messages: 0,
        bytes: 0,
        seconds: 0.0,
        fetch_seconds: 0.0,
    };
    let (_, mut write, _) = select(addr, user, password, &mut fetched).await?;
    let _ = write.write_all(b"z LOGOUT\r\n").await;
    let connecting = Instant::now();
    let (mut reader, mut write, uid_next) = select(addr, user, password, &mut fetched).await?;
    let started = Instant::now();
    let mut lo = 1u64;
    let mut n = 3;
    while lo < uid_next.max(2) {
        let hi = lo + u64::from(chunk.max(1)) - 1;
        let tag = format!("a{n}");
        write
            .write_all(format!("{tag} UID FETCH {lo}:{hi} (BODY.PEEK[])\r\n").as_bytes())
            .await?;
        until_tagged(&mut reader, &tag, &mut fetched).await?;
        lo = hi + 1;
        n += 1;
    }
    fetched.fetch_seconds = started.elapsed().as_secs_f64();
    fetched.seconds = connecting.elapsed().as_secs_f64();
    let _ = write.write_all(b"z LOGOUT\r\n").await;
    Ok(fetched)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_are_found_at_the_end_of_a_line() {
        assert_eq!(
            literal_len("* 1 FETCH (UID 1 BODY[] {4096}\r\n"),
            Some(4096)
        );
        assert_eq!(literal_len("* 1 FETCH (UID 1 FLAGS (\\Seen))\r\n"), None);
        assert_eq!(literal_len("a3 OK done\r\n"), None);
        assert_eq!(literal_len("{12}"), Some(12));
    }
}
