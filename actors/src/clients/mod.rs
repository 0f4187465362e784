//! Outbound HTTP clients the actors call.

pub mod graph;
pub(crate) mod graph_tenants;
pub(crate) mod imap;
pub(crate) mod ms4;
pub mod oauth;
pub(crate) mod xoauth2;

/// The HTTP version every outbound client speaks: HTTP/1.1 only (TLS ALPN offers just
/// `http/1.1`), so that the h2 0.3 that awc pulls in (RUSTSEC-2026-0258) never runs; the
/// clients keep connections alive and pool them instead.
pub(crate) const HTTP_VERSION: awc::http::Version = awc::http::Version::HTTP_11;

/// The one way outbound HTTP clients are built: redirects are never followed. awc follows up
/// to 10 by default and re-sends the request (its body and its `X-API-Key` or bearer token) to
/// whatever host a 307/308 names, and a maintenance page answering 200 after a 302 would count
/// as an accepted batch. A 3xx is an answer like any other: each client classifies it as a
/// failure, so credentials only ever go to the configured origin.
pub(crate) fn http_client(pool: Pool, timeout: std::time::Duration) -> awc::Client {
    let connector = awc::Connector::new()
        .max_http_version(HTTP_VERSION)
        .timeout(pool.connect_timeout)
        .conn_keep_alive(pool.keep_alive)
        .limit(pool.limit);
    awc::Client::builder()
        .disable_redirects()
        .connector(connector)
        .timeout(timeout)
        .finish()
}

/// A client's connection pool: how long a connect may take, how long an idle connection is
/// kept, and how many connections at most.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pool {
    pub connect_timeout: std::time::Duration,
    pub keep_alive: std::time::Duration,
    pub limit: usize,
}

impl Default for Pool {
    /// awc's own defaults.
    fn default() -> Self {
        Self {
            connect_timeout: std::time::Duration::from_secs(5),
            keep_alive: std::time::Duration::from_secs(15),
            limit: 100,
        }
    }
}

/// What a 3xx means, for logs and `/ready`: the redirect is named, never followed.
pub(crate) fn redirect_refused(service: &str, status: u16, location: Option<&str>) -> String {
    let to: String = location
        .unwrap_or("(no Location)")
        .chars()
        .take(200)
        .collect();
    format!("{service} answered {status}, a redirect to {to}, which is never followed: check the configured URL")
}
