//! OAuth2 access tokens for Graph (app-only: a client secret, a certificate, the managed
//! identity, or a Kubernetes workload identity) and for IMAP XOAUTH2 (refresh token).
//!
//! [`graph_tokens`] is the one place that turns the settings into the Graph grant; the
//! certificate's client assertion is built in [`assertion`], the managed identity's request
//! in [`imds`].
//!
//! A [`TokenSource`] caches one token and refreshes it before it expires: when less than
//! min(5 min, half its lifetime) remains. Concurrent callers share one refresh. After a 401
//! from the API the caller [`invalidates`](TokenSource::invalidate) the token it used, gets a
//! fresh one and retries once. The client secret and the tokens never appear in logs, in
//! errors, or in Redis.

mod assertion;
mod imds;

use crate::secret::Secret;
use crate::settings::{GraphCredential, GraphTenant, InvalidSetting, Settings};
use assertion::CertificateFiles;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// How the token is obtained.
#[derive(Clone)]
pub(crate) enum Grant {
    /// App-only: `grant_type=client_credentials`, the client proven by `credential`.
    ClientCredentials {
        client_id: String,
        credential: ClientCredential,
        scope: String,
    },
    /// Delegated: `grant_type=refresh_token` (Gmail/Outlook IMAP).
    RefreshToken {
        client_id: String,
        client_secret: Secret,
        refresh_token: Secret,
        scope: String,
    },
    /// The managed identity: `GET` the token URL (built by [`imds::token_url`]) with
    /// `Metadata: true`.
    ManagedIdentity,
}

/// What proves the client in the client credentials grant.
#[derive(Clone)]
pub(crate) enum ClientCredential {
    /// `client_secret`.
    Secret(Secret),
    /// `client_assertion`: a JWT signed with the certificate's key, made for each request.
    Certificate(CertificateFiles),
    /// `client_assertion`: the federated token Kubernetes projects into this file (workload
    /// identity), read again for each request: the cluster rotates it.
    FederatedToken(String),
}

impl Grant {
    /// The credential's name in errors (never its value).
    fn credential(&self) -> &'static str {
        match self {
            Grant::ClientCredentials { credential, .. } => match credential {
                ClientCredential::Secret(_) => "client secret",
                ClientCredential::Certificate(_) => "certificate",
                ClientCredential::FederatedToken(_) => "workload identity",
            },
            Grant::RefreshToken { .. } => "refresh token",
            Grant::ManagedIdentity => "managed identity",
        }
    }
}

impl std::fmt::Debug for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Grant::ClientCredentials { client_id, .. } => write!(
                f,
                "ClientCredentials {{ client_id: {client_id}, credential: {}, .. }}",
                self.credential()
            ),
            Grant::RefreshToken { client_id, .. } => {
                write!(f, "RefreshToken {{ client_id: {client_id}, .. }}")
            }
            Grant::ManagedIdentity => f.write_str("ManagedIdentity"),
        }
    }
}

/// Why no token could be had. Errors name the kind of credential, never its value.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum OAuthError {
    /// The authority refused the credential: nothing will change until the configuration does.
    /// `code` is the OAuth error, with Entra's `AADSTS…` number when it gave one.
    #[error("the token endpoint refused the {credential} credential ({status} {code})")]
    Rejected {
        credential: &'static str,
        status: u16,
        code: String,
    },
    /// The credential on this machine cannot be used (a certificate or key file unreadable, not
    /// PEM, or not a pair — e.g. half-way through a rotation): checked again at the next poll.
    #[error("the {credential} credential cannot be used: {problem}")]
    Unusable {
        credential: &'static str,
        problem: String,
    },
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
    /// Seconds: a number from Entra, a string from IMDS.
    #[serde(default, deserialize_with = "seconds")]
    expires_in: Option<u64>,
}

fn seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Seconds {
        Number(u64),
        Text(String),
    }
    Ok(
        match <Option<Seconds> as serde::Deserialize>::deserialize(d)? {
            Some(Seconds::Number(n)) => Some(n),
            Some(Seconds::Text(t)) => t.trim().parse().ok(),
            None => None,
        },
    )
}

#[derive(serde::Deserialize, Default)]
struct TokenError {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

impl TokenError {
    /// `invalid_client AADSTS700027`: the code and Entra's error number, if any (its
    /// description is not repeated: it may quote what was sent).
    fn code(&self) -> String {
        let mut code: String = self.error.chars().take(64).collect();
        let number = self
            .error_description
            .split(|c: char| !c.is_ascii_alphanumeric())
            .find(|w| w.starts_with("AADSTS") && w.len() <= 16);
        if let Some(n) = number {
            code.push(' ');
            code.push_str(n);
        }
        code
    }
}

/// One cached token from one authority. Not `Send` (awc): one per arbiter.
pub(crate) struct TokenSource {
    http: awc::Client,
    token_url: String,
    grant: Grant,
    cached: RefCell<Option<Cached>>,
    refreshing: tokio::sync::Mutex<()>,
    /// Whose tokens these are (`graph:{tenant}`, `imap:{source}`): the metrics' `owner` label.
    owner: String,
}

impl TokenSource {
    pub(crate) fn new(token_url: String, grant: Grant, timeout: Duration) -> Self {
        Self {
            http: super::http_client(super::Pool::default(), timeout),
            token_url,
            grant,
            cached: RefCell::new(None),
            refreshing: tokio::sync::Mutex::new(()),
            owner: String::new(),
        }
    }

    /// Names whose tokens these are in the metrics (`graph:contoso`, `imap:ap-gmail`).
    pub(crate) fn with_owner(mut self, owner: String) -> Self {
        for reason in ["refused", "unusable", "transient"] {
            metrics::counter!(crate::metrics::TOKEN_FAILURES, "owner" => owner.clone(), "reason" => reason)
                .increment(0);
        }
        metrics::counter!(crate::metrics::TOKEN_REFRESHES, "owner" => owner.clone()).increment(0);
        self.owner = owner;
        self
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
        let (token, lifetime) = self.fetch().await.inspect_err(|e| {
            let reason = match e {
                OAuthError::Rejected { .. } => "refused",
                OAuthError::Unusable { .. } => "unusable",
                OAuthError::Transient(_) => "transient",
            };
            metrics::counter!(crate::metrics::TOKEN_FAILURES, "owner" => self.owner.clone(), "reason" => reason)
                .increment(1);
        })?;
        let token: Rc<str> = token.into();
        *self.cached.borrow_mut() = Some(Cached {
            token: token.clone(),
            refresh_at: Instant::now() + refresh_after(lifetime),
        });
        metrics::counter!(crate::metrics::TOKEN_REFRESHES, "owner" => self.owner.clone())
            .increment(1);
        Ok(token)
    }

    /// The API refused `used`: forget it (unless a newer one replaced it meanwhile).
    pub(crate) fn invalidate(&self, used: &str) {
        let mut cached = self.cached.borrow_mut();
        if cached.as_ref().is_some_and(|c| &*c.token == used) {
            *cached = None;
        }
    }

    /// The form of the token request: the grant and the client's proof.
    fn form(&self) -> Result<Vec<(&'static str, String)>, OAuthError> {
        Ok(match &self.grant {
            Grant::ClientCredentials {
                client_id,
                credential,
                scope,
            } => {
                let mut f = vec![
                    ("client_id", client_id.clone()),
                    ("scope", scope.clone()),
                    ("grant_type", "client_credentials".into()),
                ];
                match credential {
                    ClientCredential::Secret(secret) => {
                        // A secret from a file is read again: a rotated one is used at once.
                        let secret = secret.reread().map_err(|problem| OAuthError::Unusable {
                            credential: self.grant.credential(),
                            problem,
                        })?;
                        f.push(("client_secret", secret.expose().to_string()))
                    }
                    ClientCredential::Certificate(files) => {
                        let unusable = |e: InvalidSetting| OAuthError::Unusable {
                            credential: self.grant.credential(),
                            problem: e.to_string(),
                        };
                        let signer = files.load().map_err(unusable)?;
                        let now = chrono::Utc::now().timestamp();
                        let jti = uuid::Uuid::new_v4().to_string();
                        let jwt = signer
                            .assertion(client_id, &self.token_url, now, &jti)
                            .map_err(unusable)?;
                        f.push(("client_assertion_type", assertion::JWT_BEARER.into()));
                        f.push(("client_assertion", jwt));
                    }
                    ClientCredential::FederatedToken(file) => {
                        let token = federated_token(file, "federated_token_file").map_err(|e| {
                            OAuthError::Unusable {
                                credential: self.grant.credential(),
                                problem: e.to_string(),
                            }
                        })?;
                        f.push(("client_assertion_type", assertion::JWT_BEARER.into()));
                        f.push(("client_assertion", token));
                    }
                }
                f
            }
            Grant::RefreshToken {
                client_id,
                client_secret,
                refresh_token,
                scope,
            } => {
                let mut f = vec![
                    ("client_id", client_id.clone()),
                    ("refresh_token", refresh_token.expose().to_string()),
                    ("grant_type", "refresh_token".into()),
                ];
                if !client_secret.is_empty() {
                    f.push(("client_secret", client_secret.expose().to_string()));
                }
                if !scope.is_empty() {
                    f.push(("scope", scope.clone()));
                }
                f
            }
            Grant::ManagedIdentity => Vec::new(),
        })
    }

    async fn fetch(&self) -> Result<(String, Duration), OAuthError> {
        let form = self.form()?;
        let sent = match self.grant {
            Grant::ManagedIdentity => {
                self.http
                    .get(&self.token_url)
                    .insert_header(imds::METADATA)
                    .send()
                    .await
            }
            _ => self.http.post(&self.token_url).send_form(&form).await,
        };
        let mut resp =
            sent.map_err(|e| OAuthError::Transient(format!("token endpoint unreachable: {e}")))?;
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
                    credential: self.grant.credential(),
                    status,
                    code: e.code(),
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

/// The Graph resource app-only tokens are asked for: the IMDS `resource`, and the scope
/// `{resource}/.default` of the client credentials grant.
fn graph_resource(tenant: &GraphTenant) -> &'static str {
    tenant.cloud.graph_root()
}

/// Builds the OAuth token source of one tenant: the one place that turns a tenant's
/// `credential` into a grant. `timeout` bounds each token request.
pub(crate) fn graph_tokens(g: &GraphTenant, timeout: Duration) -> TokenSource {
    let scope = g.token_scope();
    let client = |credential| Grant::ClientCredentials {
        client_id: g.client_id.clone(),
        credential,
        scope: scope.clone(),
    };
    let (token_url, grant) = match g.credential {
        GraphCredential::Secret => (
            g.token_url(),
            client(ClientCredential::Secret(g.client_secret.clone())),
        ),
        GraphCredential::Certificate => (
            g.token_url(),
            client(ClientCredential::Certificate(certificate_files(g))),
        ),
        GraphCredential::WorkloadIdentity => (
            g.token_url(),
            client(ClientCredential::FederatedToken(
                g.federated_token_file.clone(),
            )),
        ),
        GraphCredential::ManagedIdentity => (
            imds::token_url(
                &g.managed_identity_endpoint,
                graph_resource(g),
                &g.managed_identity_client_id,
            ),
            Grant::ManagedIdentity,
        ),
    };
    TokenSource::new(token_url, grant, timeout)
}

/// The federated token in `file` as it is now (never shown in an error).
fn federated_token(file: &str, key: &str) -> Result<String, InvalidSetting> {
    let problem = match std::fs::read_to_string(file) {
        Ok(token) if !token.trim().is_empty() => return Ok(token.trim().to_string()),
        Ok(_) => format!("{file} is empty"),
        Err(e) => format!("{file} is not a readable file: {e}"),
    };
    Err(InvalidSetting {
        key: key.into(),
        problem,
    })
}

fn certificate_files(g: &GraphTenant) -> CertificateFiles {
    CertificateFiles {
        certificate: g.client_certificate.clone(),
        key: g.client_certificate_key.clone(),
    }
}

/// A refusal of a single-tenant key (`graph.client_certificate`) about the tenant at `at`.
fn in_tenant(mut e: InvalidSetting, at: &str) -> InvalidSetting {
    if let Some(field) = e.key.strip_prefix("graph.") {
        e.key = format!("{at}.{field}");
    }
    e
}

/// Checks every tenant's credential files at start and in `check-config` (the settings are
/// validated already): a certificate and key that are readable PEM and belong together, a
/// federated token file that is readable. The error names the setting, never the key.
pub fn check_credential(settings: &Settings) -> Result<(), InvalidSetting> {
    let several = !settings.graph.tenants.is_empty();
    for (i, g) in settings.graph.tenants().iter().enumerate() {
        let at = if several {
            format!("graph.tenants[{i}]")
        } else {
            "graph".into()
        };
        match g.credential {
            GraphCredential::Certificate => certificate_files(g)
                .load()
                .map_err(|e| in_tenant(e, &at))
                .map(drop)?,
            GraphCredential::WorkloadIdentity => federated_token(
                &g.federated_token_file,
                &format!("{at}.federated_token_file"),
            )
            .map(drop)?,
            GraphCredential::Secret | GraphCredential::ManagedIdentity => {}
        }
    }
    Ok(())
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
    fn refusals_name_the_credential_and_entras_error_number_never_the_description() {
        let e: TokenError = serde_json::from_str(
            r#"{"error":"invalid_client","error_description":"AADSTS700027: Client assertion failed signature validation. Trace ID: 1"}"#,
        )
        .unwrap();
        assert_eq!(e.code(), "invalid_client AADSTS700027");
        let shown = OAuthError::Rejected {
            credential: "certificate",
            status: 401,
            code: e.code(),
        }
        .to_string();
        assert_eq!(
            shown,
            "the token endpoint refused the certificate credential (401 invalid_client AADSTS700027)"
        );
        assert_eq!(TokenError::default().code(), "");
    }

    #[test]
    fn expiry_is_read_as_a_number_from_entra_and_as_a_string_from_imds() {
        let entra: TokenResponse =
            serde_json::from_str(r#"{"access_token":"a","expires_in":3599}"#).unwrap();
        let imds: TokenResponse = serde_json::from_str(
            r#"{"access_token":"b","expires_in":"86399","token_type":"Bearer"}"#,
        )
        .unwrap();
        let none: TokenResponse = serde_json::from_str(r#"{"access_token":"c"}"#).unwrap();
        assert_eq!(
            (entra.expires_in, imds.expires_in, none.expires_in),
            (Some(3599), Some(86399), None)
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
