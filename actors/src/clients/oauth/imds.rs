//! Managed identity: tokens from the Azure Instance Metadata Service (IMDS).
//!
//! On an Azure VM (or scale set, or any resource with a managed identity) the token comes from
//! `GET {endpoint}?api-version=2018-02-01&resource={resource}` with the header `Metadata: true`
//! (IMDS refuses requests without it, so a page fetched through a proxy or an SSRF cannot be
//! one); `&client_id=` picks a user-assigned identity. The answer carries `access_token` and
//! `expires_in`, which IMDS sends as a string. No credential lives on the machine at all.

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};

/// The IMDS API version of the identity endpoint.
const API_VERSION: &str = "2018-02-01";

/// The header IMDS wants on every request.
pub(crate) const METADATA: (&str, &str) = ("Metadata", "true");

/// The token request's URL for `resource`, for the user-assigned identity `client_id` (empty:
/// the system-assigned one).
pub(crate) fn token_url(endpoint: &str, resource: &str, client_id: &str) -> String {
    let query = |v: &str| utf8_percent_encode(v, NON_ALPHANUMERIC).to_string();
    let mut url = format!(
        "{endpoint}{}api-version={API_VERSION}&resource={}",
        if endpoint.contains('?') { '&' } else { '?' },
        query(resource)
    );
    if !client_id.is_empty() {
        url.push_str("&client_id=");
        url.push_str(&query(client_id));
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_url_names_the_api_version_the_resource_and_a_user_assigned_identity() {
        let imds = "http://169.254.169.254/metadata/identity/oauth2/token";
        assert_eq!(
            token_url(imds, "https://graph.microsoft.com", ""),
            "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fgraph%2Emicrosoft%2Ecom"
        );
        assert!(token_url(imds, "https://graph.microsoft.com", "a-b 1")
            .ends_with("&client_id=a%2Db%201"));
    }
}
