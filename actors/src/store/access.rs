//! How the store gets into its Redis: the password (`redis.password` or the one in
//! `redis.url`) and, for `rediss://`, the TLS trust anchors (`redis.ca_file`, else the Mozilla
//! roots) and the client certificate (`redis.client_cert` + `redis.client_key`).
//!
//! One [`Access`] builds every client of a [`super::Store`] — the shared connection and each
//! blocking reader's own — for one server and for a cluster alike, so no connection of the
//! daemon goes out without them. TLS is rustls with the process's crypto provider (ring,
//! installed at start), never a second one.
//!
//! The certificate files and the key are read and parsed here, once, so that a file that is
//! not PEM is refused at start naming its setting; and [`describe_refusal`] turns the errors a
//! retry cannot cure (a wrong password, a certificate the server or the daemon does not trust)
//! into a sentence that names the setting to fix.

use super::{StoreError, StoreResult};
use crate::settings::RedisSettings;
use redis::cluster::ClusterClientBuilder;
use redis::{ClientTlsConfig, IntoConnectionInfo, TlsCertificates};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The credentials and TLS material of every connection to the store's Redis.
#[derive(Clone, Default)]
pub(crate) struct Access {
    /// `AUTH` password; `None`: the URL's, if any (there is none then).
    password: Option<String>,
    /// Trust anchors and client certificate for `rediss://`; `None`: the defaults of the URL
    /// (Mozilla roots, no client certificate).
    tls: Option<TlsCertificates>,
}

impl Access {
    /// Reads the password and the TLS files that `settings` name.
    pub(crate) fn from_settings(settings: &RedisSettings) -> StoreResult<Self> {
        let invalid = |e: crate::settings::InvalidSetting| StoreError::Access(e.to_string());
        let password = settings.resolved_password().map_err(invalid)?;
        let root_cert = if settings.ca_file.is_empty() {
            None
        } else {
            let pem = read("redis.ca_file", &settings.ca_file)?;
            let certs = parse_certificates("redis.ca_file", &settings.ca_file, &pem)?;
            let mut roots = rustls::RootCertStore::empty();
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(StoreError::Access(format!(
                    "redis.ca_file: {} holds no usable CA certificate",
                    settings.ca_file
                )));
            }
            Some(pem)
        };
        let client_tls = if settings.client_cert.is_empty() {
            None
        } else {
            let client_cert = read("redis.client_cert", &settings.client_cert)?;
            parse_certificates("redis.client_cert", &settings.client_cert, &client_cert)?;
            let key = settings.resolved_client_key().map_err(invalid)?;
            // The key is a secret: its parse error is reported, never its content.
            PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|e| {
                StoreError::Access(format!(
                    "redis.client_key: not a PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"
                ))
            })?;
            Some(ClientTlsConfig {
                client_cert,
                client_key: key.into_bytes(),
            })
        };
        let tls = (root_cert.is_some() || client_tls.is_some()).then_some(TlsCertificates {
            client_tls,
            root_cert,
        });
        Ok(Self { password, tls })
    }

    /// A client of the one server at `url`.
    pub(crate) fn client(&self, url: &str) -> StoreResult<redis::Client> {
        let mut info = url.into_connection_info()?;
        if let Some(password) = &self.password {
            let redis = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(redis);
        }
        Ok(match &self.tls {
            Some(certs) => redis::Client::build_with_tls(info, certs.clone())?,
            None => redis::Client::open(info)?,
        })
    }

    /// A builder of clients of the cluster that `seeds` belong to; every node the cluster
    /// reveals is reached with the same password and TLS material.
    pub(crate) fn cluster_builder(&self, seeds: &[&str]) -> ClusterClientBuilder {
        let mut builder = ClusterClientBuilder::new(seeds.iter().copied());
        if let Some(password) = &self.password {
            builder = builder.password(password);
        }
        if let Some(certs) = &self.tls {
            builder = builder.certs(certs.clone());
        }
        builder
    }
}

fn read(key: &str, path: &str) -> StoreResult<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| StoreError::Access(format!("{key}: {path} is not a readable file: {e}")))
}

fn parse_certificates(
    key: &str,
    path: &str,
    pem: &[u8],
) -> StoreResult<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StoreError::Access(format!("{key}: {path} is not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(StoreError::Access(format!(
            "{key}: {path} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
        )));
    }
    Ok(certs)
}

/// When `error` is one that retrying cannot cure — Redis refused the password, or TLS failed
/// on a certificate — a sentence saying so and naming the settings to check; `None` for the
/// others (Redis down, a timeout), which the daemon waits out.
pub fn describe_refusal(error: &StoreError) -> Option<String> {
    let StoreError::Redis(e) = error else {
        return match error {
            StoreError::Access(text) => Some(text.clone()),
            _ => None,
        };
    };
    let text = e.to_string();
    let code = e.code().unwrap_or_default();
    if e.kind() == redis::ErrorKind::AuthenticationFailed
        || matches!(code, "WRONGPASS" | "NOAUTH" | "NOPERM")
        || text.contains("WRONGPASS")
        || text.contains("NOAUTH")
    {
        return Some(format!(
            "redis refused to authenticate this daemon ({text}): check redis.password, or the user and password in redis.url"
        ));
    }
    let lower = text.to_ascii_lowercase();
    if lower.contains("certificate")
        || lower.contains("unknownissuer")
        || lower.contains("handshake")
        || lower.contains("alert")
        || lower.contains("tls")
    {
        let hint = if lower.contains("certificaterequired")
            || lower.contains("certificate required")
        {
            "the server wants a client certificate: set redis.client_cert and redis.client_key"
        } else if lower.contains("unknownissuer")
            || lower.contains("unknown issuer")
            || lower.contains("badsignature")
            || lower.contains("unknownca")
        {
            "the server's certificate is not signed by a CA the daemon trusts: set redis.ca_file to the PEM of the CA that signed it (empty: the Mozilla roots)"
        } else if lower.contains("notvalidforname") || lower.contains("not valid for name") {
            "the server's certificate does not name the host of redis.url: connect by a name (or IP) the certificate carries"
        } else {
            "check redis.url (rediss:// for a TLS port, redis:// for a plain one), redis.ca_file, redis.client_cert and redis.client_key"
        };
        return Some(format!("TLS with redis failed ({text}): {hint}"));
    }
    None
}
