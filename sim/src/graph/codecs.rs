//! Small codecs: JSON strings, percent-decoding, stable GUIDs, Graph's date-time format.

use chrono::{DateTime, Utc};

/// Appends `s` as a JSON string literal.
pub(super) fn push_json_str(out: &mut String, s: &str) {
    out.push_str(&serde_json::to_string(s).expect("a string serializes"));
}

/// Decodes `%XX` escapes in a path segment (`+` stays a plus, as in paths).
pub(super) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex_at = |j: usize| bytes.get(j).and_then(|b| (*b as char).to_digit(16));
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            if let (Some(h), Some(l)) = (hex_at(i + 1), hex_at(i + 2)) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A GUID derived from a name: the same name always gives the same GUID.
pub(super) fn stable_guid(name: &str) -> String {
    fn fnv1a(bytes: &[u8], mut h: u64) -> u64 {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h
    }
    let name = name.to_lowercase();
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&fnv1a(name.as_bytes(), 0xcbf2_9ce4_8422_2325).to_be_bytes());
    bytes[8..].copy_from_slice(&fnv1a(name.as_bytes(), 0x8422_2325_cbf2_9ce4).to_be_bytes());
    uuid::Builder::from_sha1_bytes(bytes)
        .into_uuid()
        .to_string()
}

/// Graph's date-time format for subscriptions: UTC with seven fractional digits.
pub(super) fn graph_time(t: DateTime<Utc>) -> String {
    format!(
        "{}.{:07}Z",
        t.format("%Y-%m-%dT%H:%M:%S"),
        t.timestamp_subsec_nanos() / 100
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    use chrono::TimeZone;

    #[test]
    fn percent_decoding_keeps_plus_signs_and_broken_escapes() {
        assert_eq!(percent_decode("a%40b+c%2"), "a@b+c%2");
        assert_eq!(percent_decode("%zz%41%4a"), "%zzAJ");
        assert_eq!(percent_decode("%C3%A9"), "é");
    }

    #[test]
    fn graph_time_has_seven_fractional_digits() {
        assert_eq!(
            graph_time(Utc.timestamp_opt(0, 123_456_789).unwrap()),
            "1970-01-01T00:00:00.1234567Z"
        );
        assert_eq!(
            graph_time(Utc.timestamp_opt(1_767_225_600, 0).unwrap()),
            "2026-01-01T00:00:00.0000000Z"
        );
    }

    #[test]
    fn json_strings_are_quoted_and_escaped() {
        let mut out = String::from("x=");
        push_json_str(&mut out, "a\"b\n");
        assert_eq!(out, r#"x="a\"b\n""#);
    }

    #[test]
    fn mailbox_guids_are_stable_and_well_formed() {
        let a = stable_guid("invoices-0@contoso.example");
        assert_eq!(a, stable_guid("INVOICES-0@contoso.example"));
        assert_ne!(a, stable_guid("invoices-1@contoso.example"));
        assert!(uuid::Uuid::parse_str(&a).is_ok());
    }
}
