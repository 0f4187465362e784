//! The SASL XOAUTH2 initial response for IMAP (Gmail, Outlook): the string
//! `user={user}\x01auth=Bearer {token}\x01\x01`, base64-encoded once — the seed system encoded
//! it twice, which servers refuse.

/// The unencoded string (what an async-imap authenticator hands to the client, which encodes
/// it itself).
pub(crate) fn raw(user: &str, access_token: &str) -> String {
    format!("user={user}\x01auth=Bearer {access_token}\x01\x01")
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    /// The base64 initial client response of `AUTHENTICATE XOAUTH2`, as async-imap sends it.
    fn initial_response(user: &str, access_token: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(raw(user, access_token))
    }

    #[test]
    fn matches_the_documented_example() {
        // Google's XOAUTH2 documentation (developers.google.com/gmail/imap/xoauth2-protocol).
        assert_eq!(
            initial_response("someuser@example.com", "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg"),
            "dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ=="
        );
    }

    #[test]
    fn is_encoded_once() {
        let once = initial_response("u@x.example", "tok");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(&once)
            .unwrap();
        assert_eq!(decoded, b"user=u@x.example\x01auth=Bearer tok\x01\x01");
    }
}
