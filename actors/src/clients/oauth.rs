//! OAuth2 access tokens for Graph (client credentials) and for IMAP XOAUTH2 (refresh token).
//!
//! A [`TokenSource`] caches one token and refreshes it before it expires: when less than
//! min(5 min, half its lifetime) remains. Concurrent callers share one refresh. After a 401
//! from the API the caller [`invalidates`](TokenSource::invalidate) the token it used, gets a
//! fresh one and retries once. The client secret and the tokens never appear in logs, in
//! errors, or in Redis.

use crate::secret::Secret;
use crate::settings::Settings;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// How the token is obtained.
#[derive(Clone)]
pub(crate) enum Grant {
    /// App-only: `grant_type=client_credentials`.
    ClientCredentials {
        client_id: String,
        client_secret: Secret,
        scope: String,
    },
    /// Delegated: `grant_type=refresh_token` (Gmail/Outlook IMAP).
    RefreshToken {
        client_id: String,
        client_secret: Secret,
        refresh_token: Secret,
        scope: String,
    },
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Grant::ClientCredentials { client_id, .. } => {
                write!(f, "ClientCredentials {{ client_id: {client_id}, .. }}")
            }
            Grant::RefreshToken { client_id, .. } => {
                write!(f, "RefreshToken {{ client_id: {client_id}, .. }}")
            }
        }
    }
}

/// Why no token could be had.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum OAuthError {
    /// The authority refused the credentials: nothing will change until the configuration does.
    #[error("the token endpoint refused the credentials ({status} {code})")]
    Rejected { status: u16, code: String },
    /// Network trouble or a 5xx/429 at the authority: try again later.
    #[error("token request failed: {0}")]
    Transient(String),
}

/// A token and when to refresh it.
#[derive(Clone)]
struct Cached {
    token: Rc<str>,
    refresh_at: Instant,
}

/// Refresh when less than min(5 min, half the lifetime) remains.
pub(crate) fn refresh_after(lifetime: Duration) -> Duration {
    let skew = Duration::from_secs(300).min(lifetime / 2);
    lifetime.saturating_sub(skew)
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: Option<u64>,
}

#[derive(serde::Deserialize, Default)]
struct TokenError {
    #[serde(default)]
    error: String,
}

/// One cached token from one authority. Not `Send` (awc): one per arbiter.
pub(crate) struct TokenSource {
    http: awc::Client,
    token_url: String,
    grant: Grant,
    cached: RefCell<Option<Cached>>,
    refreshing: tokio::sync::Mutex<()>,
}

impl TokenSource {
    pub(crate) fn new(token_url: String, grant: Grant, timeout: Duration) -> Self {
        Self {
            http: super::http_client(super::Pool::default(), timeout),
            token_url,
            grant,
            cached: RefCell::new(None),
            refreshing: tokio::sync::Mutex::new(()),
        }
    }

    fn current(&self) -> Option<Rc<str>> {
        self.cached
            .borrow()
            .as_ref()
            .filter(|c| Instant::now() < c.refresh_at)
            .map(|c| c.token.clone())
    }

    /// A valid token, refreshed first when it is close to expiry.
    pub(crate) async fn token(&self) -> Result<Rc<str>, OAuthError> {
        if let Some(t) = self.current() {
            return Ok(t);
        }
        let _one_refresh = self.refreshing.lock().await;
        if let Some(t) = self.current() {
            return Ok(t);
        }
        let (token, lifetime) = self.fetch().await?;
        let token: Rc<str> = token.into();
        *self.cached.borrow_mut() = Some(Cached {
            token: token.clone(),
            refresh_at: Instant::now() + refresh_after(lifetime),
        });
        metrics::counter!(crate::metrics::TOKEN_REFRESHES).increment(1);
        Ok(token)
    }

    /// The API refused `used`: forget it (unless a newer one replaced it meanwhile).
    pub(crate) fn invalidate(&self, used: &str) {
        let mut cached = self.cached.borrow_mut();
        if cached.as_ref().is_some_and(|c| &*c.token == used) {
            *cached = None;
        }
    }

    async fn fetch(&self) -> Result<(String, Duration), OAuthError> {
        let form: Vec<(&str, &str)> = match &self.grant {
            Grant::ClientCredentials {
                client_id,
                client_secret,
                scope,
            } => vec![
                ("client_id", client_id),
                ("client_secret", client_secret.expose()),
                ("scope", scope),
                ("grant_type", "client_credentials"),
            ],
            Grant::RefreshToken {
                client_id,
                client_secret,
                refresh_token,
                scope,
            } => {
                let mut f = vec![
                    ("client_id", client_id.as_str()),
                    ("refresh_token", refresh_token.expose()),
                    ("grant_type", "refresh_token"),
                ];
                if !client_secret.is_empty() {
                    f.push(("client_secret", client_secret.expose()));
                }
                if !scope.is_empty() {
                    f.push(("scope", scope));
                }
                f
            }
        };
        let mut resp = self
            .http
            .post(&self.token_url)
            .send_form(&form)
            .await
            .map_err(|e| OAuthError::Transient(format!("token endpoint unreachable: {e}")))?;
        let status = resp.status().as_u16();
        let body = resp
            .body()
            .limit(64 * 1024)
            .await
            .map_err(|e| OAuthError::Transient(format!("token response unreadable: {e}")))?;
        match status {
            200 => {
                let t: TokenResponse = serde_json::from_slice(&body).map_err(|_| {
                    OAuthError::Transient("token response is not the expected JSON".into())
                })?;
                let lifetime = Duration::from_secs(t.expires_in.unwrap_or(3_600).max(1));
                Ok((t.access_token, lifetime))
            }
            400 | 401 | 403 => {
                let e: TokenError = serde_json::from_slice(&body).unwrap_or_default();
                Err(OAuthError::Rejected {
                    status,
                    code: e.error.chars().take(64).collect(),
                })
            }
            300..=399 => Err(OAuthError::Transient(super::redirect_refused(
                "the token endpoint",
                status,
                resp.headers().get("Location").and_then(|v| v.to_str().ok()),
            ))),
            s => Err(OAuthError::Transient(format!(
                "token endpoint answered {s}"
            ))),
        }
    }
}

/// Builds the OAuth token source for Graph from the settings.
pub(crate) fn graph_tokens(settings: &Settings) -> TokenSource {
    let g = &settings.graph;
    TokenSource::new(
        g.token_url(),
        Grant::ClientCredentials {
            client_id: g.client_id.clone(),
            client_secret: g.client_secret.clone(),
            scope: g.token_scope(),
        },
        g.request_timeout(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_refreshed_five_minutes_or_half_a_lifetime_early() {
        assert_eq!(
            refresh_after(Duration::from_secs(3_599)),
            Duration::from_secs(3_299)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(4)),
            Duration::from_secs(2)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(600)),
            Duration::from_secs(300)
        );
    }

    #[test]
    fn grants_never_print_their_secrets() {
        let g = Grant::RefreshToken {
            client_id: "app".into(),
            client_secret: "s3cret".into(),
            refresh_token: "r3fresh".into(),
            scope: String::new(),
        };
        let shown = format!("{g:?}");
        assert!(
            !shown.contains("s3cret") && !shown.contains("r3fresh"),
            "{shown}"
        );
    }
}
