//! IMAP connections of the IMAP sources: TCP, TLS (implicit or STARTTLS, rustls with the
//! Mozilla roots plus an optional private CA), login (LOGIN with a password, or
//! `AUTHENTICATE XOAUTH2` with a token from the refresh-token grant), and the server's
//! capabilities. Every step is bounded by `imap.timeout_ms`.
//!
//! `Connector::connect` opens an `ImapFolder` (`folder.rs`) on the source's folder: the
//! commands the IMAP poller and the after-delivery action send, each bounded the same way.
//!
//! Every failure is one `ImapError` (`error.rs`), classified by what the caller does: a refused
//! login or token is permanent until the configuration changes (readiness reports it), a NO to
//! a command is a refusal (the after-delivery action dead-letters it), a lost connection or a
//! timeout is transient (reconnect with backoff).

mod error;
mod folder;

pub(crate) use error::ImapError;
pub(crate) use folder::{Fetched, ImapFolder, Part, Woken};

use crate::clients::oauth::{Grant, TokenSource};
use crate::clients::xoauth2;
use crate::settings::{ImapAuth, ImapSource, ImapTls, Secret};
use error::within;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, BufReader, BufWriter, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// The bytes under an IMAP session: TCP or TLS.
#[derive(Debug)]
pub(crate) enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The transport as async-imap gets it, buffered both ways. async-imap reads into a buffer of
/// 4 KiB blocks (one `recv` per block: two or three per 4 KB message), and writes a command in
/// four pieces (tag, space, command, CRLF: four packets with `TCP_NODELAY`) before it flushes.
/// Here a read takes up to [`READ_BUFFER`] at once, and a command leaves in one write at
/// async-imap's flush (it flushes after every command it sends).
pub(crate) type ImapStream = BufReader<BufWriter<Transport>>;

/// How much one read from the server may take.
const READ_BUFFER: usize = 64 * 1024;

fn buffered(transport: Transport) -> ImapStream {
    BufReader::with_capacity(READ_BUFFER, BufWriter::new(transport))
}

pub(crate) type ImapSession = async_imap::Session<ImapStream>;

/// What the server can do, as far as the sources care.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Caps {
    pub(crate) idle: bool,
    pub(crate) mv: bool,
    pub(crate) uidplus: bool,
}

/// Opens logged-in sessions to one source. Not `Send` (the token source uses awc).
pub(crate) struct Connector {
    source: ImapSource,
    password: Secret,
    tls: Option<Arc<rustls::ClientConfig>>,
    tokens: Option<Rc<TokenSource>>,
    timeout: Duration,
}

impl Connector {
    /// Resolves the secrets and the trust anchors of `source` (validated settings).
    pub(crate) fn new(source: &ImapSource, timeout: Duration) -> Result<Self, String> {
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
                let tokens = TokenSource::new(source.token_url.clone(), grant, timeout)
                    .with_owner(format!("imap:{}", source.name));
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
        fut: impl std::future::Future<Output = Result<T, ImapError>>,
    ) -> Result<T, ImapError> {
        within(&self.source.name, self.timeout, during, fut).await
    }

    /// Connects, secures and logs in; returns the session on the source's folder (not yet
    /// selected) with the server's capabilities.
    pub(crate) async fn connect(&self) -> Result<ImapFolder, ImapError> {
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
                        let mut c = async_imap::Client::new(buffered(Transport::Plain(tcp)));
                        self.greeting(&mut c).await?;
                        Ok(c)
                    }
                    ImapTls::Implicit => {
                        let tls = self.handshake(tcp).await?;
                        let mut c =
                            async_imap::Client::new(buffered(Transport::Tls(Box::new(tls))));
                        self.greeting(&mut c).await?;
                        Ok(c)
                    }
                    ImapTls::Starttls => {
                        let mut c = async_imap::Client::new(buffered(Transport::Plain(tcp)));
                        self.greeting(&mut c).await?;
                        c.run_command_and_check_ok("STARTTLS", None)
                            .await
                            .map_err(|e| ImapError::Tls {
                                source_name: self.name(),
                                host: src.host.clone(),
                                reason: format!("STARTTLS refused: {e}"),
                            })?;
                        // Whatever was read past the OK in the clear (an attacker's injection
                        // before the handshake, CVE-2011-0411's class) is dropped with the
                        // buffers, here and in async-imap: only what comes over TLS is read.
                        let plain = c.into_inner();
                        let Transport::Plain(tcp) = plain.into_inner().into_inner() else {
                            unreachable!("STARTTLS starts on a plain stream")
                        };
                        let tls = self.handshake(tcp).await?;
                        Ok(async_imap::Client::new(buffered(Transport::Tls(Box::new(
                            tls,
                        )))))
                    }
                }
            })
            .await?;
        let mut session = self.within("login", self.login(client)).await?;
        let caps = self
            .within("CAPABILITY", async {
                session
                    .capabilities()
                    .await
                    .map_err(|e| ImapError::of_command(&src.name, "CAPABILITY", e))
            })
            .await?;
        let caps = Caps {
            idle: caps.has_str("IDLE"),
            mv: caps.has_str("MOVE"),
            uidplus: caps.has_str("UIDPLUS"),
        };
        Ok(ImapFolder::new(
            session,
            caps,
            self.name(),
            src.folder.clone(),
            self.timeout,
        ))
    }

    /// The connection of this source broke.
    fn lost(&self, reason: impl Into<String>) -> ImapError {
        ImapError::Lost {
            source_name: self.name(),
            reason: reason.into(),
        }
    }

    async fn greeting(&self, c: &mut async_imap::Client<ImapStream>) -> Result<(), ImapError> {
        match c.read_response().await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(self.lost("the server closed the connection before greeting")),
            Err(e) => Err(self.lost(format!("no greeting: {e}"))),
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

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_ca_file_without_certificates_is_refused() {
        let path = std::env::temp_dir().join(format!("ms1-ca-{}.pem", std::process::id()));
        std::fs::write(&path, "not a certificate").unwrap();
        let err = tls_config(path.to_str().unwrap()).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(err.contains("no PEM certificate"), "{err}");
        tls_config("").unwrap();
    }
}
