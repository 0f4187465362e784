//! Console sign-in: the control token is exchanged once for a session cookie (`HttpOnly`,
//! `SameSite=Strict`, `Secure` over TLS), and every state-changing request made with that
//! cookie must carry the session's CSRF token (`X-CSRF-Token`, or the `csrf` form field) and,
//! when the browser sends one, an `Origin` of this very host.
//!
//! Sessions live in this daemon's memory: a restart signs everyone out, which is the safe
//! side. They last [`LIFETIME`] and at most [`MAX_SESSIONS`] exist at once (the oldest goes).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The session cookie's name.
pub const COOKIE: &str = "ms1_console";
/// How long a sign-in lasts.
pub const LIFETIME: Duration = Duration::from_secs(8 * 3_600);
/// Most sessions held at once.
const MAX_SESSIONS: usize = 256;

/// One signed-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    /// Sent back with every state-changing request.
    pub csrf: String,
    expires: Instant,
}

/// The signed-in browsers of this daemon.
#[derive(Clone, Default)]
pub struct Sessions(Arc<Mutex<HashMap<String, Session>>>);

/// 256 random bits, hex (two v4 UUIDs: the OS's random source).
fn secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

impl Sessions {
    /// A new session: its id (the cookie's value) and its CSRF token.
    pub fn open(&self) -> (String, Session) {
        let now = Instant::now();
        let id = secret();
        let session = Session {
            csrf: secret(),
            expires: now + LIFETIME,
        };
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        all.retain(|_, s| s.expires > now);
        if all.len() >= MAX_SESSIONS {
            if let Some(oldest) = all
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
            {
                all.remove(&oldest);
            }
        }
        all.insert(id.clone(), session.clone());
        (id, session)
    }

    /// The live session of a cookie value.
    pub fn get(&self, id: &str) -> Option<Session> {
        let all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        all.get(id).filter(|s| s.expires > Instant::now()).cloned()
    }

    /// Signs a session out.
    pub fn close(&self, id: &str) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(id);
    }
}

/// The value of cookie `name` in a `Cookie` header.
pub fn cookie_value<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k == name).then_some(v)
    })
}

/// The `Set-Cookie` value of a session (`id`), or of its removal (`None`).
pub fn set_cookie(id: Option<&str>, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    match id {
        Some(id) => format!(
            "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
            LIFETIME.as_secs()
        ),
        None => format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0{secure}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_has_a_random_id_and_csrf_token_and_ends_on_close() {
        let sessions = Sessions::default();
        let (a, sa) = sessions.open();
        let (b, _) = sessions.open();
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert_ne!(sa.csrf, a);
        assert_eq!(sessions.get(&a).unwrap().csrf, sa.csrf);
        sessions.close(&a);
        assert!(sessions.get(&a).is_none());
        assert!(sessions.get(&b).is_some());
        assert!(sessions.get("forged").is_none());
    }

    #[test]
    fn sessions_are_bounded_the_oldest_goes_first() {
        let sessions = Sessions::default();
        let first = sessions.open().0;
        for _ in 0..MAX_SESSIONS {
            sessions.open();
        }
        assert!(sessions.get(&first).is_none());
        assert_eq!(sessions.0.lock().unwrap().len(), MAX_SESSIONS);
    }

    #[test]
    fn cookies_are_found_by_name_and_set_strict_and_http_only() {
        let h = "theme=dark; ms1_console=abc123; other=x";
        assert_eq!(cookie_value(h, COOKIE), Some("abc123"));
        assert_eq!(cookie_value("ms1_console_x=1", COOKIE), None);
        let set = set_cookie(Some("abc"), true);
        for part in [
            "ms1_console=abc",
            "HttpOnly",
            "SameSite=Strict",
            "Secure",
            "Path=/",
        ] {
            assert!(set.contains(part), "{set}");
        }
        assert!(!set_cookie(Some("abc"), false).contains("Secure"));
        assert!(set_cookie(None, false).contains("Max-Age=0"));
    }
}
