//! Certificate credentials: the client assertion a daemon signs instead of sending a secret.
//!
//! Entra ID takes, in the client credentials grant, `client_assertion_type =
//! urn:ietf:params:oauth:client-assertion-type:jwt-bearer` and `client_assertion` = a JWT
//! (RFC 7523) signed with the private key of a certificate uploaded to the app registration:
//! header `alg = RS256`, `typ = JWT`, `x5t#S256` = the base64url SHA-256 of the certificate's
//! DER (how Entra finds the certificate); claims `aud` = the token endpoint URL, `iss` = `sub`
//! = the client id, a fresh `jti`, `nbf` = `iat` = now and `exp` ten minutes later.
//!
//! A [`Signer`] is a certificate and its key, checked to belong together (the key signs a probe
//! that the certificate's public key verifies). [`CertificateFiles`] loads one for every token
//! request, so a rotated certificate and key are used without a restart; a load error names the
//! setting and the file, never the key.

use crate::secret::Secret;
use crate::settings::InvalidSetting;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// `client_assertion_type` of a JWT assertion.
pub(crate) const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// How long an assertion may be presented (Entra: 5–10 minutes after `nbf`).
const LIFETIME_S: i64 = 600;
const CERTIFICATE: &str = "graph.client_certificate";
const KEY: &str = "graph.client_certificate_key";

/// Where the certificate and its key are read from, again for every token.
#[derive(Clone)]
pub(crate) struct CertificateFiles {
    /// Path of the PEM certificate (the first certificate of the file is the one used).
    pub(crate) certificate: String,
    /// The PEM private key, re-read from its file when it came from one.
    pub(crate) key: Secret,
}

impl CertificateFiles {
    /// The certificate and the key as they are on disk now.
    pub(crate) fn load(&self) -> Result<Signer, InvalidSetting> {
        let pem = std::fs::read(&self.certificate).map_err(|e| {
            invalid(
                CERTIFICATE,
                format!("{} is not a readable file: {e}", self.certificate),
            )
        })?;
        let key = self.key.reread().map_err(|e| invalid(KEY, e))?;
        Signer::from_pem(&pem, key.expose().as_bytes()).map_err(|e| at_path(e, &self.certificate))
    }
}

/// A certificate and its private key, known to belong together.
pub(crate) struct Signer {
    /// `x5t#S256`: base64url (no padding) of the SHA-256 of the certificate's DER.
    thumbprint: String,
    key: RsaKeyPair,
}

impl Signer {
    /// Parses a PEM certificate and a PEM RSA key (PKCS#8 or PKCS#1) and checks that the key
    /// is the certificate's. Errors name the setting; the key's content is never in them.
    pub(crate) fn from_pem(certificate_pem: &[u8], key_pem: &[u8]) -> Result<Self, InvalidSetting> {
        let certificate = CertificateDer::pem_slice_iter(certificate_pem)
            .next()
            .and_then(Result::ok)
            .ok_or_else(|| {
                invalid(
                    CERTIFICATE,
                    "holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                )
            })?;
        let key = match PrivateKeyDer::from_pem_slice(key_pem) {
            Ok(PrivateKeyDer::Pkcs8(k)) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()),
            Ok(PrivateKeyDer::Pkcs1(k)) => RsaKeyPair::from_der(k.secret_pkcs1_der()),
            Ok(_) => {
                return Err(invalid(
                    KEY,
                    "is not an RSA key: Entra ID signs in with RSA certificates",
                ))
            }
            Err(_) => {
                return Err(invalid(
                    KEY,
                    "is not a PEM private key (-----BEGIN PRIVATE KEY----- or -----BEGIN RSA PRIVATE KEY-----)",
                ))
            }
        }
        .map_err(|e| invalid(KEY, format!("is not a usable RSA key ({e})")))?;
        let signer = Self {
            thumbprint: URL_SAFE_NO_PAD.encode(Sha256::digest(certificate.as_ref())),
            key,
        };
        signer.check_belongs_to(&certificate)?;
        Ok(signer)
    }

    /// The certificate's public key verifies what this key signs.
    fn check_belongs_to(&self, certificate: &CertificateDer<'_>) -> Result<(), InvalidSetting> {
        let cert = webpki::EndEntityCert::try_from(certificate).map_err(|e| {
            invalid(
                CERTIFICATE,
                format!("is not a usable X.509 certificate ({e})"),
            )
        })?;
        let probe = b"ms1-ingestor: does this key belong to this certificate?";
        let signature = self.sign(probe)?;
        cert.verify_signature(
            webpki::ring::RSA_PKCS1_2048_8192_SHA256,
            probe,
            &signature,
        )
        .map_err(|_| {
            invalid(
                KEY,
                format!("is not the private key of {CERTIFICATE} (its public key does not verify what this key signs)"),
            )
        })
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, InvalidSetting> {
        let mut signature = vec![0; self.key.public().modulus_len()];
        self.key
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                message,
                &mut signature,
            )
            .map_err(|_| invalid(KEY, "cannot sign with this key"))?;
        Ok(signature)
    }

    /// A client assertion for `client_id` at the token endpoint `audience`, issued at `now`
    /// (Unix seconds) with the id `jti`.
    pub(crate) fn assertion(
        &self,
        client_id: &str,
        audience: &str,
        now: i64,
        jti: &str,
    ) -> Result<String, InvalidSetting> {
        let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "x5t#S256": self.thumbprint});
        let claims = serde_json::json!({
            "aud": audience, "iss": client_id, "sub": client_id, "jti": jti,
            "nbf": now, "iat": now, "exp": now + LIFETIME_S,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self.sign(signing_input.as_bytes())?;
        Ok(format!(
            "{signing_input}.{}",
            URL_SAFE_NO_PAD.encode(signature)
        ))
    }
}

fn invalid(key: &str, problem: impl Into<String>) -> InvalidSetting {
    InvalidSetting {
        key: key.into(),
        problem: problem.into(),
    }
}

/// A certificate problem names the file it is about.
fn at_path(mut e: InvalidSetting, certificate: &str) -> InvalidSetting {
    if e.key == CERTIFICATE && !e.problem.contains(certificate) {
        e.problem = format!("{certificate} {}", e.problem);
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// A self-signed RSA certificate and its PKCS#8 key, made by openssl for this test.
    fn openssl_pair(dir: &std::path::Path, name: &str) -> (Vec<u8>, Vec<u8>) {
        let (cert, key) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        let ok = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            ])
            .arg(format!("/CN={name}"))
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("openssl runs");
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
        (std::fs::read(cert).unwrap(), std::fs::read(key).unwrap())
    }

    fn part(jwt: &str, n: usize) -> Vec<u8> {
        URL_SAFE_NO_PAD
            .decode(jwt.split('.').nth(n).unwrap())
            .unwrap()
    }

    #[test]
    fn the_assertion_is_an_rs256_jwt_for_the_token_endpoint_that_the_certificate_verifies() {
        let dir = tempdir("jwt");
        let (cert_pem, key_pem) = openssl_pair(&dir, "app");
        let signer = Signer::from_pem(&cert_pem, &key_pem).unwrap();
        let url = "https://login.microsoftonline.com/contoso/oauth2/v2.0/token";
        let jwt = signer
            .assertion("app-id", url, 1_700_000_000, "jti-1")
            .unwrap();
        assert_eq!(jwt.split('.').count(), 3);
        assert!(
            !jwt.contains('=') && !jwt.contains('+') && !jwt.contains('/'),
            "{jwt}"
        );

        let header: serde_json::Value = serde_json::from_slice(&part(&jwt, 0)).unwrap();
        let der = CertificateDer::from_pem_slice(&cert_pem).unwrap();
        let thumbprint = URL_SAFE_NO_PAD.encode(Sha256::digest(der.as_ref()));
        assert_eq!(
            header,
            serde_json::json!({"alg": "RS256", "typ": "JWT", "x5t#S256": thumbprint})
        );
        assert_eq!(signer.thumbprint, thumbprint);
        let claims: serde_json::Value = serde_json::from_slice(&part(&jwt, 1)).unwrap();
        assert_eq!(
            claims,
            serde_json::json!({"aud": url, "iss": "app-id", "sub": "app-id", "jti": "jti-1",
                               "nbf": 1_700_000_000, "iat": 1_700_000_000, "exp": 1_700_000_600})
        );

        // The signature verifies with ring against the certificate's public key.
        let cert = webpki::EndEntityCert::try_from(&der).unwrap();
        let (input, _) = jwt.rsplit_once('.').unwrap();
        let signature = part(&jwt, 2);
        cert.verify_signature(
            webpki::ring::RSA_PKCS1_2048_8192_SHA256,
            input.as_bytes(),
            &signature,
        )
        .unwrap();
        let spki_key = RsaKeyPair::from_pkcs8(
            PrivateKeyDer::from_pem_slice(&key_pem)
                .unwrap()
                .secret_der(),
        )
        .unwrap();
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PKCS1_2048_8192_SHA256,
            spki_key.public().as_ref(),
        )
        .verify(input.as_bytes(), &signature)
        .unwrap();
        let mut tampered = input.to_string();
        tampered.push('x');
        assert!(cert
            .verify_signature(
                webpki::ring::RSA_PKCS1_2048_8192_SHA256,
                tampered.as_bytes(),
                &signature
            )
            .is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn a_key_of_another_certificate_or_a_non_pem_file_is_refused_naming_the_setting() {
        let dir = tempdir("mismatch");
        let (cert_a, key_a) = openssl_pair(&dir, "a");
        let (_, key_b) = openssl_pair(&dir, "b");
        let e = Signer::from_pem(&cert_a, &key_b).err().unwrap();
        assert_eq!(e.key, KEY, "{e}");
        assert!(e.problem.contains("not the private key"), "{e}");
        let key_text = String::from_utf8_lossy(&key_b);
        let body = key_text.lines().nth(1).unwrap();
        assert!(!e.to_string().contains(body), "the key leaked into {e}");

        let e = Signer::from_pem(b"not a certificate", &key_a)
            .err()
            .unwrap();
        assert_eq!(e.key, CERTIFICATE, "{e}");
        let e = Signer::from_pem(&cert_a, b"secret-but-not-pem")
            .err()
            .unwrap();
        assert_eq!(e.key, KEY, "{e}");
        assert!(!e.to_string().contains("secret-but-not-pem"), "{e}");

        let files = CertificateFiles {
            certificate: dir.join("absent.pem").display().to_string(),
            key: Secret::new(String::from_utf8(key_a).unwrap()),
        };
        let e = files.load().err().unwrap();
        assert_eq!(e.key, CERTIFICATE, "{e}");
        assert!(e.problem.contains("absent.pem"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempdir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "ms1-assertion-{name}-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
