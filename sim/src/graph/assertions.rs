//! Client assertions at the token endpoint, checked as Entra ID checks them: a JWT signed with
//! the key of a certificate registered on the app (`--client-certificate`, or `/_sim/config`
//! `client_certificates`), found by its `x5t#S256`, for this token endpoint (`aud`), from the
//! app (`iss` = `sub` = client id), within its time range, never presented twice; or the
//! federated token of a workload identity the app trusts (`--federated-assertion`, or
//! `/_sim/config` `federated_assertion`: the simulator is told which token text is valid).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashSet;

/// `client_assertion_type` of a JWT assertion.
pub(super) const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Clock skew allowed on `nbf` and `exp`, in seconds.
const SKEW_S: i64 = 300;

/// A certificate uploaded to the app registration.
pub(super) struct RegisteredCertificate {
    der: CertificateDer<'static>,
    /// base64url SHA-256 of the DER: what `x5t#S256` names.
    thumbprint: String,
}

impl RegisteredCertificate {
    /// The first certificate of the PEM file at `path`.
    pub(super) fn read(path: &str) -> anyhow::Result<Self> {
        let pem = std::fs::read(path).map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
        let der = CertificateDer::pem_slice_iter(&pem)
            .next()
            .and_then(Result::ok)
            .ok_or_else(|| anyhow::anyhow!("{path}: no PEM certificate"))?;
        webpki::EndEntityCert::try_from(&der)
            .map_err(|e| anyhow::anyhow!("{path}: not a usable certificate: {e}"))?;
        Ok(Self {
            thumbprint: URL_SAFE_NO_PAD.encode(Sha256::digest(der.as_ref())),
            der,
        })
    }
}

/// What an accepted assertion was.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Assertion {
    Certificate,
    Federated,
}

/// The app's certificates and federated credential, and the assertion ids already used.
#[derive(Default)]
pub(super) struct AssertionCheck {
    pub(super) certificates: Vec<RegisteredCertificate>,
    /// The federated token currently valid (a workload identity's projected token).
    pub(super) federated: Option<String>,
    used: HashSet<String>,
}

impl AssertionCheck {
    pub(super) fn new(certificates: Vec<RegisteredCertificate>, federated: Option<String>) -> Self {
        Self {
            certificates,
            federated,
            used: HashSet::new(),
        }
    }

    /// Entra's verdict on a client assertion (a certificate's JWT or a federated token): `Err`
    /// holds the `AADSTS…` description of an `invalid_client` answer.
    pub(super) fn verify(
        &mut self,
        jwt: &str,
        client_id: &str,
        token_url: &str,
        now: i64,
    ) -> Result<Assertion, String> {
        if self.federated.as_deref() == Some(jwt) {
            return Ok(Assertion::Federated);
        }
        let malformed = || "AADSTS50027: JWT token is invalid or malformed.".to_string();
        let parts: Vec<&str> = jwt.split('.').collect();
        let [header, claims, signature] = parts[..] else {
            return Err(malformed());
        };
        let decode = |p: &str| URL_SAFE_NO_PAD.decode(p).map_err(|_| malformed());
        let json = |p: &str| -> Result<Value, String> {
            serde_json::from_slice(&decode(p)?).map_err(|_| malformed())
        };
        let (head, body, signature) = (json(header)?, json(claims)?, decode(signature)?);
        let alg =
            match head["alg"].as_str() {
                Some("RS256") => webpki::ring::RSA_PKCS1_2048_8192_SHA256,
                Some("PS256") => webpki::ring::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
                _ => return Err(
                    "AADSTS5002738: Invalid JWT token. Unsupported key for the signing algorithm."
                        .into(),
                ),
            };
        let Some(thumbprint) = head["x5t#S256"].as_str() else {
            return Err(
                "AADSTS70021: No matching federated identity record found for presented assertion."
                    .into(),
            );
        };
        let Some(cert) = self
            .certificates
            .iter()
            .find(|c| c.thumbprint == thumbprint)
        else {
            return Err(format!("AADSTS700027: The certificate with identifier used to sign the client assertion is not registered on application. [Reason - The key was not found., Thumbprint of key used by client: '{thumbprint}']"));
        };
        let signed = &jwt[..header.len() + 1 + claims.len()];
        webpki::EndEntityCert::try_from(&cert.der)
            .and_then(|c| c.verify_signature(alg, signed.as_bytes(), &signature))
            .map_err(|_| {
                "AADSTS700027: Client assertion failed signature validation.".to_string()
            })?;
        if body["aud"].as_str() != Some(token_url) {
            return Err(format!("AADSTS700023: Client assertion audience claim does not match Realm issuer (expected '{token_url}')."));
        }
        if body["iss"].as_str() != Some(client_id) || body["sub"].as_str() != Some(client_id) {
            return Err("AADSTS700021: Client assertion application identifier doesn't match 'client_id' parameter.".into());
        }
        let (nbf, exp) = (body["nbf"].as_i64(), body["exp"].as_i64());
        let (Some(nbf), Some(exp)) = (nbf, exp) else {
            return Err(malformed());
        };
        if exp + SKEW_S <= now || nbf - SKEW_S > now {
            return Err(format!("AADSTS700024: Client assertion is not within its valid time range. Current time: {now}, assertion valid from {nbf}, expiry time of assertion {exp}."));
        }
        let jti = body["jti"].as_str().unwrap_or_default();
        if jti.is_empty() || !self.used.insert(jti.to_string()) {
            return Err("AADSTS700025: Client assertion was already used (jti): sign a new one for each request.".into());
        }
        Ok(Assertion::Certificate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{RsaKeyPair, RSA_PKCS1_SHA256};
    use rustls::pki_types::PrivateKeyDer;

    const URL: &str = "http://127.0.0.1:8500/contoso/oauth2/v2.0/token";

    /// An RS256 assertion naming `thumbprint`, signed with `key_pem`.
    fn jwt(key_pem: &[u8], thumbprint: &str, claims: Value) -> String {
        let key =
            RsaKeyPair::from_pkcs8(PrivateKeyDer::from_pem_slice(key_pem).unwrap().secret_der())
                .unwrap();
        let head = serde_json::json!({"alg": "RS256", "typ": "JWT", "x5t#S256": thumbprint});
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(head.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut sig = vec![0; key.public().modulus_len()];
        key.sign(
            &RSA_PKCS1_SHA256,
            &ring::rand::SystemRandom::new(),
            input.as_bytes(),
            &mut sig,
        )
        .unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    #[test]
    fn only_a_fresh_assertion_signed_by_a_registered_certificate_for_this_endpoint_passes() {
        let dir = std::env::temp_dir().join(format!("ms1-sim-assert-{}", uuid::Uuid::new_v4()));
        crate::private_ca::make_app_certificate(&dir, "app").unwrap();
        crate::private_ca::make_app_certificate(&dir, "other").unwrap();
        let path = |f: &str| dir.join(f).display().to_string();
        let registered = RegisteredCertificate::read(&path("app.pem")).unwrap();
        let thumbprint = registered.thumbprint.clone();
        let other = RegisteredCertificate::read(&path("other.pem"))
            .unwrap()
            .thumbprint;
        let key = std::fs::read(path("app.key")).unwrap();
        let other_key = std::fs::read(path("other.key")).unwrap();
        let mut check = AssertionCheck::new(vec![registered], Some("k8s-token".into()));
        let now = 1_700_000_000;
        let claims = |jti: &str, aud: &str, nbf: i64, exp: i64| {
            serde_json::json!({"aud": aud, "iss": "ms1-app", "sub": "ms1-app", "jti": jti,
                               "nbf": nbf, "iat": nbf, "exp": exp})
        };
        let mut verify = |jwt: String| check.verify(&jwt, "ms1-app", URL, now);

        assert_eq!(
            verify(jwt(&key, &thumbprint, claims("1", URL, now, now + 600))),
            Ok(Assertion::Certificate)
        );
        // The federated token passes as it is, as often as it is presented.
        assert_eq!(verify("k8s-token".into()), Ok(Assertion::Federated));
        assert_eq!(verify("k8s-token".into()), Ok(Assertion::Federated));
        let replay = verify(jwt(&key, &thumbprint, claims("1", URL, now, now + 600)));
        assert!(replay.unwrap_err().starts_with("AADSTS700025"));
        // Signed with another key, naming the registered certificate: the signature fails.
        let e = verify(jwt(
            &other_key,
            &thumbprint,
            claims("2", URL, now, now + 600),
        ));
        assert!(e.unwrap_err().contains("signature validation"));
        // A certificate the app does not know.
        let e = verify(jwt(&other_key, &other, claims("3", URL, now, now + 600)));
        assert!(e.unwrap_err().starts_with("AADSTS700027: The certificate"));
        let e = verify(jwt(
            &key,
            &thumbprint,
            claims("4", "https://elsewhere/token", now, now + 600),
        ));
        assert!(e.unwrap_err().starts_with("AADSTS700023"));
        let e = verify(jwt(
            &key,
            &thumbprint,
            claims("5", URL, now - 1_200, now - 600),
        ));
        assert!(e.unwrap_err().starts_with("AADSTS700024"));
        let e = verify(jwt(
            &key,
            &thumbprint,
            claims("6", URL, now + 900, now + 1_500),
        ));
        assert!(e.unwrap_err().starts_with("AADSTS700024"));
        let e = check.verify(
            &jwt(&key, &thumbprint, claims("7", URL, now, now + 600)),
            "intruder",
            URL,
            now,
        );
        assert!(e.unwrap_err().starts_with("AADSTS700021"));
        assert!(check
            .verify("a.b", "ms1-app", URL, now)
            .unwrap_err()
            .starts_with("AADSTS50027"));
        // A JWT without a certificate thumbprint that is not the trusted federated token.
        let stale = format!(
            "{}.{}.c2ln",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","typ":"JWT"}"#),
            URL_SAFE_NO_PAD.encode("{}")
        );
        let e = check.verify(&stale, "ms1-app", URL, now).unwrap_err();
        assert!(e.starts_with("AADSTS70021"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
