//! IMAP connections of the IMAP sources: TCP, TLS (implicit or STARTTLS, rustls with the
//! Mozilla roots plus an optional private CA), login (LOGIN with a password, or
//! `AUTHENTICATE XOAUTH2` with a token from the refresh-token grant), and the server's
//! capabilities. Every step is bounded by `imap.timeout_ms`.
//!
//! Errors say which source failed and whether retrying can help: a refused login or token is
//! [permanent](ImapError::is_permanent) until the configuration changes (readiness reports it),
//! a lost connection is transient (reconnect with backoff).

use crate::clients::oauth::{Grant, OAuthError, TokenSource};
use crate::clients::xoauth2;
use crate::model::AttachmentMeta;
use crate::settings::{ImapAuth, ImapSource, ImapTls, Secret};
use async_imap::imap_proto::{BodyStructure, ContentEncoding};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// The transport under an IMAP session.
#[derive(Debug)]
pub enum ImapStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for ImapStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ImapStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ImapStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ImapStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ImapStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ImapStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ImapStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ImapStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ImapStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ImapStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

pub type ImapSession = async_imap::Session<ImapStream>;

/// Why an IMAP step failed. Messages name the source; they never hold a secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ImapError {
    #[error("IMAP source `{source_name}`: cannot connect to {addr}: {reason}")]
    Connect {
        source_name: String,
        addr: String,
        reason: String,
    },
    #[error("IMAP source `{source_name}`: TLS with {host} failed: {reason}")]
    Tls {
        source_name: String,
        host: String,
        reason: String,
    },
    #[error("IMAP source `{source_name}`: the server refused the login of `{user}` ({mechanism}): {reason}")]
    Login {
        source_name: String,
        user: String,
        mechanism: &'static str,
        reason: String,
    },
    #[error("IMAP source `{source_name}`: no OAuth2 token for XOAUTH2: {error}")]
    Token {
        source_name: String,
        error: OAuthError,
    },
    #[error("IMAP source `{source_name}`: folder `{folder}`: {reason}")]
    Folder {
        source_name: String,
        folder: String,
        reason: String,
    },
    #[error("IMAP source `{source_name}`: {reason}")]
    Protocol { source_name: String, reason: String },
    #[error("IMAP source `{source_name}`: no answer within {after_ms} ms ({during})")]
    Timeout {
        source_name: String,
        after_ms: u64,
        during: &'static str,
    },
}

impl ImapError {
    /// Nothing changes until the configuration (or the server's account) does: readiness says
    /// why, and the source tries again at its poll interval instead of hammering the server.
    pub fn is_permanent(&self) -> bool {
        match self {
            ImapError::Login { .. } | ImapError::Folder { .. } => true,
            ImapError::Token { error, .. } => matches!(error, OAuthError::Rejected { .. }),
            ImapError::Tls { .. } => true,
            _ => false,
        }
    }
}

/// What the server can do, as far as the sources care.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caps {
    pub idle: bool,
    pub mv: bool,
    pub uidplus: bool,
}

/// Opens logged-in sessions to one source. Not `Send` (the token source uses awc).
pub struct Connector {
    source: ImapSource,
    password: Secret,
    tls: Option<Arc<rustls::ClientConfig>>,
    tokens: Option<Rc<TokenSource>>,
    timeout: Duration,
}

impl Connector {
    /// Resolves the secrets and the trust anchors of `source` (validated settings).
    pub fn new(source: &ImapSource, timeout: Duration) -> Result<Self, String> {
        let tls = match source.tls {
            ImapTls::None => None,
            _ => Some(Arc::new(tls_config(&source.ca_file)?)),
        };
        let (password, tokens) = match source.auth {
            ImapAuth::Password => (source.password.clone(), None),
            ImapAuth::Xoauth2 => {
                let grant = Grant::RefreshToken {
                    client_id: source.client_id.clone(),
                    client_secret: source.client_secret.clone(),
                    refresh_token: source.refresh_token.clone(),
                    scope: source.scope.clone(),
                };
                let tokens = TokenSource::new(source.token_url.clone(), grant, timeout);
                (Secret::default(), Some(Rc::new(tokens)))
            }
        };
        Ok(Self {
            source: source.clone(),
            password,
            tls,
            tokens,
            timeout,
        })
    }

    fn name(&self) -> String {
        self.source.name.clone()
    }

    /// Bounds one step by the timeout.
    async fn within<T>(
        &self,
        during: &'static str,
        fut: impl Future<Output = Result<T, ImapError>>,
    ) -> Result<T, ImapError> {
        tokio::time::timeout(self.timeout, fut)
            .await
            .unwrap_or_else(|_| {
                Err(ImapError::Timeout {
                    source_name: self.name(),
                    after_ms: self.timeout.as_millis() as u64,
                    during,
                })
            })
    }

    /// A protocol error of this source.
    pub fn protocol(&self, e: impl std::fmt::Display) -> ImapError {
        ImapError::Protocol {
            source_name: self.name(),
            reason: e.to_string(),
        }
    }

    /// Connects, secures and logs in; returns the session and the server's capabilities.
    pub async fn connect(&self) -> Result<(ImapSession, Caps), ImapError> {
        let src = &self.source;
        let addr = format!("{}:{}", src.host, src.port());
        let tcp = self
            .within("connect", async {
                TcpStream::connect(&addr)
                    .await
                    .map_err(|e| ImapError::Connect {
                        source_name: self.name(),
                        addr: addr.clone(),
                        reason: e.to_string(),
                    })
            })
            .await?;
        let _ = tcp.set_nodelay(true);
        let client = self
            .within("greeting and TLS", async {
                match src.tls {
                    ImapTls::None => {
                        let mut c = async_imap::Client::new(ImapStream::Plain(tcp));
                        self.greeting(&mut c).await?;
                        Ok(c)
                    }
                    ImapTls::Implicit => {
                        let tls = self.handshake(tcp).await?;
                        let mut c = async_imap::Client::new(ImapStream::Tls(Box::new(tls)));
                        self.greeting(&mut c).await?;
                        Ok(c)
                    }
                    ImapTls::Starttls => {
                        let mut c = async_imap::Client::new(ImapStream::Plain(tcp));
                        self.greeting(&mut c).await?;
                        c.run_command_and_check_ok("STARTTLS", None)
                            .await
                            .map_err(|e| ImapError::Tls {
                                source_name: self.name(),
                                host: src.host.clone(),
                                reason: format!("STARTTLS refused: {e}"),
                            })?;
                        let ImapStream::Plain(tcp) = c.into_inner() else {
                            unreachable!("STARTTLS starts on a plain stream")
                        };
                        let tls = self.handshake(tcp).await?;
                        Ok(async_imap::Client::new(ImapStream::Tls(Box::new(tls))))
                    }
                }
            })
            .await?;
        let mut session = self.within("login", self.login(client)).await?;
        let caps = self
            .within("CAPABILITY", async {
                session.capabilities().await.map_err(|e| self.protocol(e))
            })
            .await?;
        let caps = Caps {
            idle: caps.has_str("IDLE"),
            mv: caps.has_str("MOVE"),
            uidplus: caps.has_str("UIDPLUS"),
        };
        Ok((session, caps))
    }

    async fn greeting(&self, c: &mut async_imap::Client<ImapStream>) -> Result<(), ImapError> {
        match c.read_response().await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(self.protocol("the server closed the connection before greeting")),
            Err(e) => Err(self.protocol(format!("no greeting: {e}"))),
        }
    }

    async fn handshake(&self, tcp: TcpStream) -> Result<TlsStream<TcpStream>, ImapError> {
        let tls_err = |reason: String| ImapError::Tls {
            source_name: self.name(),
            host: self.source.host.clone(),
            reason,
        };
        let config = self
            .tls
            .clone()
            .ok_or_else(|| tls_err("no TLS configuration".into()))?;
        let name = ServerName::try_from(self.source.host.clone())
            .map_err(|e| tls_err(format!("not a valid server name: {e}")))?;
        tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| tls_err(e.to_string()))
    }

    async fn login(
        &self,
        client: async_imap::Client<ImapStream>,
    ) -> Result<ImapSession, ImapError> {
        let src = &self.source;
        let refused = |mechanism: &'static str, reason: String| ImapError::Login {
            source_name: self.name(),
            user: src.username.clone(),
            mechanism,
            reason,
        };
        match &self.tokens {
            None => client
                .login(&src.username, self.password.expose())
                .await
                .map_err(|(e, _)| refused("LOGIN", e.to_string())),
            Some(tokens) => {
                let token = tokens.token().await.map_err(|error| ImapError::Token {
                    source_name: self.name(),
                    error,
                })?;
                let mut auth = XOAuth2::new(&src.username, &token);
                match client.authenticate("XOAUTH2", &mut auth).await {
                    Ok(s) => Ok(s),
                    Err((e, _)) => {
                        // The server may still accept a fresh token (revoked or expired early).
                        tokens.invalidate(&token);
                        let detail = auth.failure.map(|f| format!(" ({f})")).unwrap_or_default();
                        Err(refused("XOAUTH2", format!("{e}{detail}")))
                    }
                }
            }
        }
    }
}

/// The SASL XOAUTH2 exchange: the initial response, then (when the server answers with an
/// error challenge) an empty response, after which the server says NO.
struct XOAuth2 {
    initial: Option<String>,
    /// The server's error challenge (a JSON status), kept for the error message.
    failure: Option<String>,
}

impl XOAuth2 {
    fn new(user: &str, token: &str) -> Self {
        Self {
            initial: Some(xoauth2::raw(user, token)),
            failure: None,
        }
    }
}

impl async_imap::Authenticator for &mut XOAuth2 {
    type Response = Vec<u8>;

    fn process(&mut self, challenge: &[u8]) -> Vec<u8> {
        match self.initial.take() {
            // async-imap base64-encodes the response: the raw string goes in, encoded once.
            Some(initial) => initial.into_bytes(),
            None => {
                self.failure = Some(
                    String::from_utf8_lossy(challenge)
                        .chars()
                        .take(200)
                        .collect(),
                );
                Vec::new()
            }
        }
    }
}

/// The attachments a BODYSTRUCTURE lists (for a message whose body is not fetched): every
/// single part that is not a text body, or that has a file name or an `attachment`
/// disposition, with its type and size. The size is the decoded size (for base64, as far as it
/// follows from the encoded octets the server reports: 57 bytes per 78-octet line).
pub fn attachments_of(bs: &BodyStructure<'_>) -> Vec<AttachmentMeta> {
    let mut out = Vec::new();
    walk_parts(bs, &mut out);
    out
}

fn walk_parts(bs: &BodyStructure<'_>, out: &mut Vec<AttachmentMeta>) {
    let (common, other) = match bs {
        BodyStructure::Multipart { bodies, .. } => {
            for b in bodies {
                walk_parts(b, out);
            }
            return;
        }
        BodyStructure::Basic { common, other, .. }
        | BodyStructure::Text { common, other, .. }
        | BodyStructure::Message { common, other, .. } => (common, other),
    };
    let param = |params: &Option<Vec<(std::borrow::Cow<'_, str>, std::borrow::Cow<'_, str>)>>,
                 key: &str| {
        params
            .iter()
            .flatten()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.to_string())
    };
    let disposition = common.disposition.as_ref();
    let name = disposition
        .and_then(|d| param(&d.params, "filename"))
        .or_else(|| param(&common.ty.params, "name"));
    let is_attachment = disposition.is_some_and(|d| d.ty.eq_ignore_ascii_case("attachment"));
    let is_text = common.ty.ty.eq_ignore_ascii_case("text");
    if !(is_attachment || name.is_some() || !is_text) {
        return;
    }
    let octets = u64::from(other.octets);
    let size = match other.transfer_encoding {
        ContentEncoding::Base64 => octets * 57 / 78,
        _ => octets,
    };
    out.push(AttachmentMeta {
        name: name.unwrap_or_default(),
        content_type: format!("{}/{}", common.ty.ty, common.ty.subtype).to_ascii_lowercase(),
        size,
    });
}

/// rustls with the Mozilla roots, plus the certificates of `ca_file` when given.
fn tls_config(ca_file: &str) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if !ca_file.is_empty() {
        let pem = std::fs::read(ca_file).map_err(|e| format!("cannot read {ca_file}: {e}"))?;
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| format!("{ca_file}: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("{ca_file}: unusable certificate: {e}"))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!("{ca_file} holds no PEM certificate"));
        }
    }
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
}

/// `1:3,7,9:10` from sorted UIDs.
pub fn uid_set(uids: &[u32]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < uids.len() {
        let start = uids[i];
        let mut end = start;
        while i + 1 < uids.len() && uids[i + 1] == end + 1 {
            i += 1;
            end = uids[i];
        }
        if !out.is_empty() {
            out.push(',');
        }
        if start == end {
            out.push_str(&start.to_string());
        } else {
            out.push_str(&format!("{start}:{end}"));
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_sets_are_compressed_into_ranges() {
        assert_eq!(uid_set(&[1, 2, 3, 7, 9, 10]), "1:3,7,9:10");
        assert_eq!(uid_set(&[5]), "5");
        assert_eq!(uid_set(&[]), "");
    }
    use async_imap::Authenticator;

    #[test]
    fn xoauth2_sends_the_documented_string_then_an_empty_answer_to_the_error() {
        let mut auth = XOAuth2::new("someuser@example.com", "tok");
        let mut a = &mut auth;
        assert_eq!(
            a.process(b""),
            b"user=someuser@example.com\x01auth=Bearer tok\x01\x01".to_vec()
        );
        assert_eq!(a.process(br#"{"status":"401"}"#), Vec::<u8>::new());
        assert_eq!(auth.failure.as_deref(), Some(r#"{"status":"401"}"#));
    }

    #[test]
    fn refused_logins_are_permanent_lost_connections_are_not() {
        let login = ImapError::Login {
            source_name: "gmail".into(),
            user: "u@x.example".into(),
            mechanism: "LOGIN",
            reason: "no response: [AUTHENTICATIONFAILED]".into(),
        };
        assert!(login.is_permanent());
        assert!(login.to_string().contains("`gmail`"), "{login}");
        let lost = ImapError::Protocol {
            source_name: "gmail".into(),
            reason: "connection lost".into(),
        };
        assert!(!lost.is_permanent());
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let path = std::env::temp_dir().join(format!("ms1-ca-{}.pem", std::process::id()));
        std::fs::write(&path, "not a certificate").unwrap();
        let err = tls_config(path.to_str().unwrap()).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(err.contains("no PEM certificate"), "{err}");
        tls_config("").unwrap();
    }
}
