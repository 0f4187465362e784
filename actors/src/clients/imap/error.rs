//! Why an IMAP step failed, classified once by what the caller does about it. The poller
//! names every failure in `/ready` and counts it in `ms1_imap_errors_total` ([`kind`]); the
//! after-delivery action retries, or dead-letters what the server refused:
//!
//! | class | variants | the poller | the after-delivery action |
//! | --- | --- | --- | --- |
//! | refused configuration ([`is_permanent`]) | `Login`, `Token` (rejected), `Tls`, `Folder` | tries again at its poll interval | retries (`Folder`: dead-letters) |
//! | the server said NO ([`refusal`]) | `Refused`, `Folder` | `Refused`: reconnects with backoff (to `IDLE`: polls on schedule instead) | dead-letters |
//! | transient | `Connect`, `Lost`, `Protocol`, `Timeout`, `Token` (for now) | reconnects with backoff | retries |
//!
//! [`kind`]: ImapError::kind
//! [`is_permanent`]: ImapError::is_permanent
//! [`refusal`]: ImapError::refusal
//!
//! Every message names the source and never holds a secret.

use crate::clients::oauth::OAuthError;
use std::future::Future;
use std::time::Duration;

/// Why an IMAP step failed. See the module doc for the classes.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum ImapError {
    /// No TCP connection.
    #[error("IMAP source `{source_name}`: cannot connect to {addr}: {reason}")]
    Connect {
        source_name: String,
        addr: String,
        reason: String,
    },
    /// The TLS handshake (or STARTTLS) failed: the certificate or the CA file is wrong.
    #[error("IMAP source `{source_name}`: TLS with {host} failed: {reason}")]
    Tls {
        source_name: String,
        host: String,
        reason: String,
    },
    /// The server refused the credentials.
    #[error("IMAP source `{source_name}`: the server refused the login of `{user}` ({mechanism}): {reason}")]
    Login {
        source_name: String,
        user: String,
        mechanism: &'static str,
        reason: String,
    },
    /// No access token for XOAUTH2 (refused for good or for now: see [`OAuthError`]).
    #[error("IMAP source `{source_name}`: no OAuth2 token for XOAUTH2: {error}")]
    Token {
        source_name: String,
        error: OAuthError,
    },
    /// The server said NO to SELECT: the folder does not exist (or may not be read).
    #[error("IMAP source `{source_name}`: folder `{folder}`: {reason}")]
    Folder {
        source_name: String,
        folder: String,
        reason: String,
    },
    /// The server said NO to `command` (a missing target folder, a refused IDLE): the same
    /// command gets the same answer.
    #[error("IMAP source `{source_name}`: {command}: no response: {reason}")]
    Refused {
        source_name: String,
        command: &'static str,
        reason: String,
    },
    /// The connection broke (I/O error, closed by the server).
    #[error("IMAP source `{source_name}`: {reason}")]
    Lost { source_name: String, reason: String },
    /// An answer the client cannot use (BAD, unparsable, missing data).
    #[error("IMAP source `{source_name}`: {reason}")]
    Protocol { source_name: String, reason: String },
    /// No answer within `imap.timeout_ms`.
    #[error("IMAP source `{source_name}`: no answer within {after_ms} ms ({during})")]
    Timeout {
        source_name: String,
        after_ms: u64,
        during: &'static str,
    },
}

impl ImapError {
    /// Classifies the failure of `command`: NO is [`Refused`](Self::Refused), a broken
    /// connection is [`Lost`](Self::Lost), anything else (BAD, a parse error) is
    /// [`Protocol`](Self::Protocol).
    pub(crate) fn of_command(
        source_name: &str,
        command: &'static str,
        e: async_imap::error::Error,
    ) -> Self {
        use async_imap::error::Error;
        let source_name = source_name.to_string();
        match e {
            Error::No(reason) => ImapError::Refused {
                source_name,
                command,
                reason,
            },
            Error::Io(_) | Error::ConnectionLost => ImapError::Lost {
                source_name,
                reason: format!("{command}: {e}"),
            },
            other => ImapError::Protocol {
                source_name,
                reason: format!("{command}: {other}"),
            },
        }
    }

    /// Classifies a failed start of IDLE. async-imap reports the server's tagged answer to
    /// `IDLE` (BAD, or NO) as an I/O error of kind `ConnectionRefused`: that is a refusal.
    pub(crate) fn of_idle_start(source_name: &str, e: async_imap::error::Error) -> Self {
        use async_imap::error::Error;
        match e {
            Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
                ImapError::Refused {
                    source_name: source_name.to_string(),
                    command: "IDLE",
                    reason: io.to_string(),
                }
            }
            Error::Bad(reason) => ImapError::Refused {
                source_name: source_name.to_string(),
                command: "IDLE",
                reason,
            },
            other => Self::of_command(source_name, "IDLE", other),
        }
    }

    /// No answer to `during` within `after`.
    pub(crate) fn timeout(source_name: &str, after: Duration, during: &'static str) -> Self {
        ImapError::Timeout {
            source_name: source_name.to_string(),
            after_ms: after.as_millis() as u64,
            during,
        }
    }

    /// Nothing changes until the configuration (or the server's account) does: readiness says
    /// why, and the source tries again at its poll interval instead of hammering the server.
    pub(crate) fn is_permanent(&self) -> bool {
        match self {
            ImapError::Login { .. } | ImapError::Folder { .. } | ImapError::Tls { .. } => true,
            ImapError::Token { error, .. } => !matches!(error, OAuthError::Transient(_)),
            _ => false,
        }
    }

    /// The server's NO to a command, as `COMMAND: its text`; `None` for every other failure.
    pub(crate) fn refusal(&self) -> Option<String> {
        match self {
            ImapError::Refused {
                command, reason, ..
            } => Some(format!("{command}: {reason}")),
            ImapError::Folder { reason, .. } => Some(format!("SELECT: {reason}")),
            _ => None,
        }
    }

    /// The `kind` label of `ms1_imap_errors_total`.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            ImapError::Connect { .. } => "connect",
            ImapError::Tls { .. } => "tls",
            ImapError::Login { .. } => "login",
            ImapError::Token { .. } => "token",
            ImapError::Folder { .. } => "folder",
            ImapError::Refused { .. } | ImapError::Lost { .. } | ImapError::Protocol { .. } => {
                "protocol"
            }
            ImapError::Timeout { .. } => "timeout",
        }
    }
}

/// Bounds `fut` by `after`: no answer in time is a [`Timeout`](ImapError::Timeout) of `during`.
pub(crate) async fn within<T>(
    source_name: &str,
    after: Duration,
    during: &'static str,
    fut: impl Future<Output = Result<T, ImapError>>,
) -> Result<T, ImapError> {
    tokio::time::timeout(after, fut)
        .await
        .unwrap_or_else(|_| Err(ImapError::timeout(source_name, after, during)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_imap::error::Error;

    #[test]
    fn a_no_is_a_refusal_a_broken_connection_is_lost_and_a_bad_is_a_protocol_error() {
        let no = ImapError::of_command("gmail", "UID MOVE", Error::No("[TRYCREATE] no".into()));
        assert!(
            matches!(
                no,
                ImapError::Refused {
                    command: "UID MOVE",
                    ..
                }
            ),
            "{no:?}"
        );
        assert_eq!(no.refusal().as_deref(), Some("UID MOVE: [TRYCREATE] no"));
        assert_eq!(
            no.to_string(),
            "IMAP source `gmail`: UID MOVE: no response: [TRYCREATE] no"
        );
        let lost = ImapError::of_command("gmail", "UID FETCH", Error::ConnectionLost);
        assert!(matches!(lost, ImapError::Lost { .. }), "{lost:?}");
        assert_eq!(
            lost.to_string(),
            "IMAP source `gmail`: UID FETCH: connection lost"
        );
        let io = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "broken pipe");
        let io = ImapError::of_command("gmail", "UID FETCH", Error::Io(io));
        assert!(matches!(io, ImapError::Lost { .. }), "{io:?}");
        let bad = ImapError::of_command("gmail", "SELECT", Error::Bad("syntax".into()));
        assert!(matches!(bad, ImapError::Protocol { .. }), "{bad:?}");
        assert_eq!(
            bad.to_string(),
            "IMAP source `gmail`: SELECT: bad response: syntax"
        );
        for e in [&lost, &io, &bad] {
            assert!(!e.is_permanent() && e.refusal().is_none(), "{e}");
            assert_eq!(e.kind(), "protocol");
        }
        assert!(!no.is_permanent());
    }

    #[test]
    fn a_refused_idle_is_a_refusal_a_lost_one_is_not() {
        // async-imap 0.12 turns the server's tagged BAD to IDLE into this I/O error.
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "IDLE disabled");
        let e = ImapError::of_idle_start("s", Error::Io(refused));
        assert!(
            matches!(
                e,
                ImapError::Refused {
                    command: "IDLE",
                    ..
                }
            ),
            "{e:?}"
        );
        let e = ImapError::of_idle_start("s", Error::ConnectionLost);
        assert!(matches!(e, ImapError::Lost { .. }), "{e:?}");
    }

    #[test]
    fn refused_configuration_is_permanent_and_a_missing_folder_also_refuses_an_action() {
        let login = ImapError::Login {
            source_name: "gmail".into(),
            user: "u@x.example".into(),
            mechanism: "LOGIN",
            reason: "no response: [AUTHENTICATIONFAILED]".into(),
        };
        assert!(login.is_permanent() && login.refusal().is_none());
        assert!(login.to_string().contains("`gmail`"), "{login}");
        assert_eq!(login.kind(), "login");
        let folder = ImapError::Folder {
            source_name: "gmail".into(),
            folder: "Invoices".into(),
            reason: "Mailbox doesn't exist".into(),
        };
        assert!(folder.is_permanent());
        assert_eq!(
            folder.refusal().as_deref(),
            Some("SELECT: Mailbox doesn't exist")
        );
        let token = |error| ImapError::Token {
            source_name: "o365".into(),
            error,
        };
        assert!(token(OAuthError::Rejected {
            credential: "refresh token",
            status: 400,
            code: "invalid_grant".into()
        })
        .is_permanent());
        assert!(!token(OAuthError::Transient("503".into())).is_permanent());
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_answer_is_a_timeout_of_its_step() {
        let slow = async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok(())
        };
        let e = within("s", Duration::from_millis(1500), "UID SEARCH", slow)
            .await
            .unwrap_err();
        assert!(matches!(
            e,
            ImapError::Timeout {
                after_ms: 1500,
                during: "UID SEARCH",
                ..
            }
        ));
        assert_eq!(e.kind(), "timeout");
        assert!(!e.is_permanent());
    }
}
