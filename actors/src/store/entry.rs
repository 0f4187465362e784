//! A stream entry as Redis returns it (its id and fields in order), and the parsing of the
//! replies that carry entries (XRANGE, XREADGROUP, XAUTOCLAIM), in RESP2 or RESP3.

use super::{StoreError, StoreResult};
use redis::Value;

/// One stream entry: its id and its fields in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub id: String,
    pub fields: Vec<(String, String)>,
}

/// Whether `id` is a complete stream entry id (`<ms>-<seq>`, both 64-bit), the only form the
/// API takes for a dead letter: anything else would make Redis refuse the whole command.
pub fn is_entry_id(id: &str) -> bool {
    id.split_once('-').is_some_and(|(ms, seq)| {
        [ms, seq].iter().all(|p| {
            !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u64>().is_ok()
        })
    })
}

impl Entry {
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Milliseconds part of the entry id: when it was added, by Redis' clock.
    pub(crate) fn added_ms(&self) -> u64 {
        self.id
            .split('-')
            .next()
            .and_then(|ms| ms.parse().ok())
            .unwrap_or(0)
    }
}

/// Flattens a RESP2 array of pairs or a RESP3 map (an `XINFO` or `HGETALL` reply) into
/// (name, value) pairs; names that are not strings are left out.
pub(crate) fn pairs(v: Value) -> Vec<(String, Value)> {
    let raw = match v {
        Value::Array(flat) => {
            let mut it = flat.into_iter();
            let mut p = Vec::new();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                p.push((k, v));
            }
            p
        }
        Value::Map(m) => m,
        _ => Vec::new(),
    };
    raw.into_iter()
        .filter_map(|(k, v)| Some((as_string(k).ok()?, v)))
        .collect()
}

pub(crate) fn as_string(v: Value) -> StoreResult<String> {
    match v {
        Value::BulkString(b) => Ok(utf8(b)),
        Value::SimpleString(s) => Ok(s),
        Value::VerbatimString { text, .. } => Ok(text),
        Value::Int(i) => Ok(i.to_string()),
        other => Err(StoreError::Reply(format!(
            "expected a string, got {other:?}"
        ))),
    }
}

/// Parses `[[id, [field, value, …]], …]`. Entries deleted while pending come back as
/// `[id, nil]`: they are skipped (their ids are returned in the second list).
pub(crate) fn parse_entries_public(v: Value) -> StoreResult<Vec<Entry>> {
    Ok(parse_entries(v)?.0)
}

pub(crate) fn parse_entries(v: Value) -> StoreResult<(Vec<Entry>, Vec<String>)> {
    let items = match v {
        Value::Array(items) => items,
        Value::Nil => return Ok((vec![], vec![])),
        other => return Err(StoreError::Reply(format!("entries: {other:?}"))),
    };
    let mut entries = Vec::with_capacity(items.len());
    let mut gone = Vec::new();
    for item in items {
        let Value::Array(mut pair) = item else {
            return Err(StoreError::Reply("entry is not an array".into()));
        };
        if pair.len() != 2 {
            return Err(StoreError::Reply("entry is not [id, fields]".into()));
        }
        let body = pair.pop().unwrap_or(Value::Nil);
        let id = as_string(pair.pop().unwrap_or(Value::Nil))?;
        let flat = match body {
            Value::Array(flat) => flat,
            Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
            Value::Nil => {
                gone.push(id);
                continue;
            }
            other => return Err(StoreError::Reply(format!("entry fields: {other:?}"))),
        };
        let mut fields = Vec::with_capacity(flat.len() / 2);
        let mut it = flat.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            fields.push((as_string(k)?, as_string(v)?));
        }
        entries.push(Entry { id, fields });
    }
    Ok((entries, gone))
}

/// Parses an XREADGROUP reply (RESP2 array or RESP3 map) for a single stream.
pub(crate) fn parse_read(v: Value) -> StoreResult<(Vec<Entry>, Vec<String>)> {
    let streams: Vec<Value> = match v {
        Value::Nil => return Ok((vec![], vec![])),
        Value::Array(s) => s
            .into_iter()
            .filter_map(|kv| match kv {
                Value::Array(mut kv) if kv.len() == 2 => kv.pop(),
                _ => None,
            })
            .collect(),
        Value::Map(m) => m.into_iter().map(|(_, v)| v).collect(),
        other => return Err(StoreError::Reply(format!("xreadgroup: {other:?}"))),
    };
    let mut out = Vec::new();
    let mut gone = Vec::new();
    for s in streams {
        let (e, g) = parse_entries(s)?;
        out.extend(e);
        gone.extend(g);
    }
    Ok((out, gone))
}

pub(crate) fn utf8(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_complete_64_bit_entry_ids_are_entry_ids() {
        for ok in [
            "0-1",
            "1732356000000-0",
            "18446744073709551615-18446744073709551615",
        ] {
            assert!(is_entry_id(ok), "{ok}");
        }
        for bad in [
            "",
            "-",
            "1",
            "1-",
            "-1",
            "a-1",
            "1-a",
            "1-2-3",
            "+1-0",
            " 1-0",
            "1-0 ",
            "18446744073709551616-0",
            "１-0",
            "(1-0",
            "*",
        ] {
            assert!(!is_entry_id(bad), "{bad:?}");
        }
    }

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn entries_parse_and_deleted_ones_are_skipped() {
        let v = Value::Array(vec![
            Value::Array(vec![
                bulk("1-0"),
                Value::Array(vec![
                    bulk("mailbox"),
                    bulk("m"),
                    bulk("payload"),
                    bulk("{}"),
                ]),
            ]),
            Value::Array(vec![bulk("2-0"), Value::Nil]),
        ]);
        let (e, gone) = parse_entries(v).unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].field("payload"), Some("{}"));
        assert_eq!(e[0].added_ms(), 1);
        assert_eq!(gone, vec!["2-0".to_string()]);
    }

    #[test]
    fn a_read_reply_for_one_stream_parses_in_resp2_and_resp3() {
        let entries = Value::Array(vec![Value::Array(vec![
            bulk("5-1"),
            Value::Array(vec![bulk("k"), bulk("v")]),
        ])]);
        let resp2 = Value::Array(vec![Value::Array(vec![bulk("s"), entries.clone()])]);
        let resp3 = Value::Map(vec![(bulk("s"), entries)]);
        assert_eq!(parse_read(resp2).unwrap().0[0].id, "5-1");
        assert_eq!(parse_read(resp3).unwrap().0[0].field("k"), Some("v"));
        assert!(parse_read(Value::Nil).unwrap().0.is_empty());
    }
}
