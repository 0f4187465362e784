//! Outbound HTTP clients the actors call.

pub mod graph;
pub mod imap;
pub mod ms4;
pub mod oauth;
pub mod xoauth2;

/// The HTTP version every outbound client speaks: HTTP/1.1 only (TLS ALPN offers just
/// `http/1.1`), so that the h2 0.3 that awc pulls in (RUSTSEC-2026-0258) never runs; the
/// clients keep connections alive and pool them instead.
pub const HTTP_VERSION: awc::http::Version = awc::http::Version::HTTP_11;
