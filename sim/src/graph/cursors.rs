//! Cursors: what a `$skiptoken` or `$deltatoken` holds, and the [`Sealer`] that makes
//! them opaque and unforgeable.

use std::hash::{BuildHasher, RandomState};

/// Lower-case hex digits of `bytes`.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 15) as usize] as char);
    }
    out
}

/// The bytes of hex digits `s`; `None` unless every pair is a hex byte.
fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

/// Seals cursors (`$skiptoken`, `$deltatoken`): only tokens this process made open again, so a
/// token from an earlier run, or a made-up one, is unknown.
pub(super) struct Sealer(pub(super) RandomState);

impl Sealer {
    /// The token for `payload`: its hex digits, then a keyed hash of it.
    pub(super) fn seal(&self, payload: &str) -> String {
        format!(
            "{}{:016x}",
            hex(payload.as_bytes()),
            self.0.hash_one(payload)
        )
    }

    /// The payload of a token this sealer made; `None` for any other.
    pub(super) fn open(&self, token: &str) -> Option<String> {
        if token.len() < 16 || !token.is_ascii() {
            return None;
        }
        let (body, mac) = token.split_at(token.len() - 16);
        let payload = String::from_utf8(unhex(body)?).ok()?;
        (format!("{:016x}", self.0.hash_one(payload.as_str())) == mac).then_some(payload)
    }
}

/// Where a delta round stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DeltaPos {
    /// Initial sync: messages `next..end` (the mailbox as it was when the round began), then
    /// the changes from `changes` on.
    Sync {
        next: usize,
        end: usize,
        changes: usize,
    },
    /// Catch-up: changes `next..end`.
    Changes { next: usize, end: usize },
    /// A deltaLink: everything after change `changes`.
    Link { changes: usize },
}

/// What a `$skiptoken` or `$deltatoken` holds (sealed, so clients cannot forge one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Cursor {
    /// Unread-list position: after the message with this receivedDateTime and id.
    List {
        mailbox: usize,
        received_ms: i64,
        id: String,
    },
    /// A delta position; `epoch` must match the mailbox's (`/_sim/expire-delta` bumps it);
    /// `select` is the `$select` of the round (Graph keeps it in the token).
    Delta {
        mailbox: usize,
        epoch: u32,
        issued_ms: i64,
        pos: DeltaPos,
        select: String,
    },
}

impl Cursor {
    /// The cursor as a payload to seal.
    pub(super) fn encode(&self) -> String {
        match self {
            Cursor::List {
                mailbox,
                received_ms,
                id,
            } => format!("L|{mailbox}|{received_ms}|{id}"),
            Cursor::Delta {
                mailbox,
                epoch,
                issued_ms,
                pos,
                select,
            } => {
                let (kind, a, b, c) = match *pos {
                    DeltaPos::Sync { next, end, changes } => ('S', next, end, changes),
                    DeltaPos::Changes { next, end } => ('C', next, end, 0),
                    DeltaPos::Link { changes } => ('K', changes, 0, 0),
                };
                format!("D|{mailbox}|{epoch}|{issued_ms}|{kind}|{a}|{b}|{c}|{select}")
            }
        }
    }

    /// A payload back as a cursor; `None` if it is not one.
    pub(super) fn decode(s: &str) -> Option<Self> {
        match s.split_once('|')? {
            ("L", rest) => {
                let mut p = rest.splitn(3, '|');
                Some(Cursor::List {
                    mailbox: p.next()?.parse().ok()?,
                    received_ms: p.next()?.parse().ok()?,
                    id: p.next()?.to_string(),
                })
            }
            ("D", rest) => {
                let p: Vec<&str> = rest.splitn(8, '|').collect();
                if p.len() != 8 {
                    return None;
                }
                let n = |i: usize| p[i].parse::<usize>().ok();
                let pos = match p[3] {
                    "S" => DeltaPos::Sync {
                        next: n(4)?,
                        end: n(5)?,
                        changes: n(6)?,
                    },
                    "C" => DeltaPos::Changes {
                        next: n(4)?,
                        end: n(5)?,
                    },
                    "K" => DeltaPos::Link { changes: n(4)? },
                    _ => return None,
                };
                Some(Cursor::Delta {
                    mailbox: p[0].parse().ok()?,
                    epoch: p[1].parse().ok()?,
                    issued_ms: p[2].parse().ok()?,
                    pos,
                    select: p[7].to_string(),
                })
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_sealed_and_forged_or_foreign_tokens_do_not_open() {
        let sealer = Sealer(RandomState::new());
        for cursor in [
            Cursor::List {
                mailbox: 2,
                received_ms: 1_767_225_600_123,
                id: "AAMk-2-7|x".into(),
            },
            Cursor::Delta {
                mailbox: 1,
                epoch: 3,
                issued_ms: 42,
                pos: DeltaPos::Sync {
                    next: 10,
                    end: 20,
                    changes: 30,
                },
                select: "id,subject".into(),
            },
            Cursor::Delta {
                mailbox: 0,
                epoch: 0,
                issued_ms: 1,
                pos: DeltaPos::Link { changes: 9 },
                select: String::new(),
            },
        ] {
            let token = sealer.seal(&cursor.encode());
            let opened = sealer.open(&token).and_then(|p| Cursor::decode(&p));
            assert_eq!(opened.as_ref(), Some(&cursor));
            let mut forged = token.clone();
            forged.replace_range(0..2, "4d");
            assert_eq!(sealer.open(&forged), None);
            assert_eq!(
                Sealer(RandomState::new()).open(&token),
                None,
                "another run's"
            );
        }
        assert_eq!(sealer.open("not a token"), None);
        assert_eq!(sealer.open(""), None);
    }

    #[test]
    fn hex_round_trips_and_refuses_odd_lengths_and_foreign_digits() {
        assert_eq!(hex(b"\x00\xffab"), "00ff6162");
        assert_eq!(unhex(&hex(b"\x00\xffab")).unwrap(), b"\x00\xffab");
        assert_eq!(unhex("ABCD"), Some(vec![0xab, 0xcd]));
        assert_eq!(unhex("abc"), None);
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex(""), Some(Vec::new()));
    }

    #[test]
    fn a_sealed_payload_opens_only_untouched() {
        let sealer = Sealer(RandomState::new());
        let token = sealer.seal("L|0|1|AAMk-0-1");
        assert_eq!(sealer.open(&token).as_deref(), Some("L|0|1|AAMk-0-1"));
        let mut tampered = token.clone();
        let last = tampered.pop().unwrap();
        tampered.push(if last == '0' { '1' } else { '0' });
        assert_eq!(sealer.open(&tampered), None, "a changed seal");
        let seal = &token[token.len() - 16..];
        let swapped = format!("{}{seal}", hex(b"L|0|1|AAMk-0-2"));
        assert_eq!(
            sealer.open(&swapped),
            None,
            "another payload under the seal"
        );
        assert_eq!(sealer.open(&token[2..]), None, "a truncated token");
        assert_eq!(sealer.open(&format!("é{token}")), None, "not ASCII");
    }

    #[test]
    fn malformed_cursor_payloads_do_not_decode() {
        for payload in [
            "",
            "L",
            "L|x|1|id",
            "L|0|1",
            "D|0|0|1|S|1|2",
            "D|0|0|1|Q|1|2|3|",
            "D|0|0|1|K|a|0|0|",
            "X|0",
        ] {
            assert_eq!(Cursor::decode(payload), None, "{payload:?}");
        }
        let Some(Cursor::Delta { pos, select, .. }) = Cursor::decode("D|0|0|1|K|4|0|0|id|x") else {
            panic!("a deltaLink cursor")
        };
        assert_eq!(pos, DeltaPos::Link { changes: 4 });
        assert_eq!(
            select, "id|x",
            "the select keeps what follows the eighth bar"
        );
    }
}
