//! The small checks every section's validation uses: a refusal naming its key, and endpoint URLs
//! (https, or plain http to loopback only).

use super::InvalidSetting;

/// The refusal of `key`, for the checks of [`Settings::validate`](super::Settings::validate).
pub(super) fn bad(
    key: impl Into<String>,
    problem: impl Into<String>,
) -> Result<(), InvalidSetting> {
    Err(InvalidSetting {
        key: key.into(),
        problem: problem.into(),
    })
}

/// Checks an outbound endpoint: an http(s) URL with a host, and plain `http://` only to a
/// loopback address (anything else would carry the API key, the client secret or tokens in
/// clear text over the network).
pub(super) fn endpoint(key: &str, value: &str) -> Result<(), InvalidSetting> {
    let url = match url::Url::parse(value) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => u,
        _ => return bad(key, "must be an http:// or https:// URL"),
    };
    let host = url.host_str().unwrap_or_default();
    if url.scheme() == "http" && !is_loopback_host(host) {
        return bad(
            key,
            format!(
                "plain http:// to {host} would send credentials in clear text: use https://, or http:// to a loopback address only (e.g. a local TLS-terminating proxy)"
            ),
        );
    }
    Ok(())
}

/// The instance metadata endpoint: plain http:// is how IMDS is reached, on its link-local
/// address (169.254.169.254) or through a loopback proxy; no other host gets a token request
/// in clear.
pub(super) fn imds_endpoint(key: &str, value: &str) -> Result<(), InvalidSetting> {
    match url::Url::parse(value) {
        Ok(u) if u.scheme() == "http" && u.host_str() == Some("169.254.169.254") => Ok(()),
        _ => endpoint(key, value),
    }
}

pub(super) fn is_loopback_host(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}
