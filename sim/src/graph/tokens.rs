//! Tokens: the token endpoint (client credentials with a secret or a certificate assertion,
//! and refresh token grants), the instance metadata service's managed identity tokens,
//! `Bearer` checks at `/v1.0`, and RFC 7662 introspection for a private Dovecot.

use super::answers::GraphError;
use super::assertions::{Assertion, JWT_BEARER};
use super::codecs::stable_guid;
use super::state::State;
use super::tenants::OtherTenant;
use chrono::{SecondsFormat, Utc};
use ms1_actors::settings::GraphCloud;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// An access token issued: when, and to which application (the client id; a managed
/// identity is an application of its own).
#[derive(Debug, Clone)]
pub(super) struct Issued {
    pub(super) at: Instant,
    pub(super) app: String,
    /// The tenant it was issued in: it reads that tenant's mailboxes only.
    pub(super) tenant: String,
}

/// Entra's answers to an unknown app and to a wrong secret (every tenant's token endpoint).
const UNKNOWN_CLIENT: &str = "AADSTS700016: Application not found in the directory.";
const WRONG_SECRET: &str = "AADSTS7000215: Invalid client secret provided.";

/// A fresh opaque access token.
fn random_token() -> String {
    format!(
        "{:032x}{:032x}",
        rand::random::<u128>(),
        rand::random::<u128>()
    )
}

impl State {
    /// The token endpoint's decision for one form posted to `token_url`.
    pub(super) fn issue_token(
        &mut self,
        tenant: &str,
        token_url: &str,
        form: &HashMap<String, String>,
        now: Instant,
    ) -> Result<Value, (u16, Value)> {
        self.stats.token_requests += 1;
        let refuse = |status: u16, error: &str, description: &str| {
            (
                status,
                json!({"error": error, "error_description": description,
                       "timestamp": Utc::now().to_rfc3339_opts(SecondsFormat::Secs, true),
                       "trace_id": uuid::Uuid::new_v4().to_string()}),
            )
        };
        if let Some(other) = self.other_tenants.iter().find(|t| t.is_named(tenant)) {
            let other = other.clone();
            return self.issue_other(&other, form, now, refuse);
        }
        if !tenant.eq_ignore_ascii_case(&self.tenant)
            && !tenant.eq_ignore_ascii_case(&self.tenant_id)
        {
            return Err(refuse(
                400,
                "invalid_request",
                &format!("AADSTS90002: Tenant '{tenant}' not found."),
            ));
        }
        let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
        // Both grants name the client, and may give its secret, the same way.
        let unknown_client = || refuse(401, "invalid_client", UNKNOWN_CLIENT);
        let wrong_secret = || refuse(401, "invalid_client", WRONG_SECRET);
        let mut scope = format!("{}/.default", self.graph_resource);
        let mut refresh = None;
        match field("grant_type") {
            "" => {
                return Err(refuse(
                    400,
                    "invalid_request",
                    "AADSTS900144: The request body must contain the following parameter: 'grant_type'.",
                ))
            }
            "client_credentials" => {
                let assertion = field("client_assertion");
                if field("client_id").is_empty()
                    || (field("client_secret").is_empty() && assertion.is_empty())
                {
                    return Err(refuse(
                        400,
                        "invalid_request",
                        "AADSTS7000218: The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
                    ));
                }
                if field("client_id") != self.client_id {
                    return Err(unknown_client());
                }
                if !assertion.is_empty() {
                    if field("client_assertion_type") != JWT_BEARER {
                        return Err(refuse(
                            400,
                            "invalid_request",
                            "AADSTS50027: client_assertion_type must be urn:ietf:params:oauth:client-assertion-type:jwt-bearer.",
                        ));
                    }
                    let unix = Utc::now().timestamp();
                    let verdict =
                        self.assertions
                            .verify(assertion, &self.client_id, token_url, unix);
                    match verdict {
                        Ok(Assertion::Certificate) => self.stats.certificate_tokens += 1,
                        Ok(Assertion::Federated) => self.stats.federated_tokens += 1,
                        Err(description) => {
                            self.stats.assertions_refused += 1;
                            return Err(refuse(401, "invalid_client", &description));
                        }
                    }
                } else if field("client_secret") != self.client_secret {
                    return Err(wrong_secret());
                }
                let wanted = format!("{}/.default", self.graph_resource);
                let asked = field("scope");
                let graph_of_another_cloud = [
                    GraphCloud::Global,
                    GraphCloud::Usgov,
                    GraphCloud::UsgovDod,
                    GraphCloud::China,
                ]
                .iter()
                .any(|c| asked == format!("{}/.default", c.graph_root()));
                if asked != wanted && graph_of_another_cloud {
                    // A Graph scope of another cloud: that resource does not exist here.
                    return Err(refuse(
                        400,
                        "invalid_resource",
                        &format!(
                            "AADSTS500011: The resource principal named {} was not found in the tenant named {}.",
                            asked.trim_end_matches("/.default"),
                            self.tenant
                        ),
                    ));
                }
                if asked != wanted {
                    return Err(refuse(
                        400,
                        "invalid_scope",
                        "AADSTS1002012: The provided value for scope is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier.",
                    ));
                }
            }
            "refresh_token" => {
                if field("client_id") != self.client_id {
                    return Err(unknown_client());
                }
                if !field("client_secret").is_empty() && field("client_secret") != self.client_secret
                {
                    return Err(wrong_secret());
                }
                if field("refresh_token") != self.refresh_token {
                    return Err(refuse(
                        400,
                        "invalid_grant",
                        "AADSTS70000: The provided refresh token is invalid or has expired.",
                    ));
                }
                if !field("scope").is_empty() {
                    scope = field("scope").to_string();
                }
                refresh = Some(self.refresh_token.clone());
            }
            other => {
                return Err(refuse(
                    400,
                    "unsupported_grant_type",
                    &format!("AADSTS70003: The app requested an unsupported grant type '{other}'."),
                ))
            }
        }
        if self.tokens.len() > 10_000 {
            let keep = self.token_lifetime + Duration::from_secs(3600);
            self.tokens
                .retain(|_, issued| now.duration_since(issued.at) < keep);
        }
        let token = random_token();
        let app = self.client_id.clone();
        let tenant = self.tenant.clone();
        self.tokens.insert(
            token.clone(),
            Issued {
                at: now,
                app,
                tenant,
            },
        );
        self.stats.tokens_issued += 1;
        let secs = self.token_lifetime.as_secs();
        let mut body = json!({"token_type": "Bearer", "expires_in": secs,
                              "ext_expires_in": secs, "access_token": token});
        if let Some(r) = refresh {
            body["refresh_token"] = json!(r);
            body["scope"] = json!(scope);
        }
        Ok(body)
    }

    /// The token endpoint of another tenant (`--extra-tenant`): client credentials with its
    /// app's secret, for this cloud's Graph scope.
    fn issue_other(
        &mut self,
        tenant: &OtherTenant,
        form: &HashMap<String, String>,
        now: Instant,
        refuse: impl Fn(u16, &str, &str) -> (u16, Value),
    ) -> Result<Value, (u16, Value)> {
        let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
        if field("grant_type") != "client_credentials" {
            return Err(refuse(
                400,
                "unsupported_grant_type",
                "AADSTS70003: The app requested an unsupported grant type.",
            ));
        }
        if field("client_id") != tenant.client_id {
            return Err(refuse(401, "invalid_client", UNKNOWN_CLIENT));
        }
        if field("client_secret") != tenant.client_secret {
            return Err(refuse(401, "invalid_client", WRONG_SECRET));
        }
        if field("scope") != format!("{}/.default", self.graph_resource) {
            return Err(refuse(
                400,
                "invalid_scope",
                "AADSTS1002012: The provided value for scope is not valid.",
            ));
        }
        let token = random_token();
        self.tokens.insert(
            token.clone(),
            Issued {
                at: now,
                app: tenant.client_id.clone(),
                tenant: tenant.name.clone(),
            },
        );
        self.stats.tokens_issued += 1;
        let secs = self.token_lifetime.as_secs();
        Ok(
            json!({"token_type": "Bearer", "expires_in": secs, "ext_expires_in": secs,
                  "access_token": token}),
        )
    }

    /// The instance metadata service's answer to a managed identity token request: refused
    /// without `Metadata: true`, for another resource than Graph, or for a user-assigned
    /// identity the machine does not have (`--managed-identity-client-id`).
    pub(super) fn issue_imds_token(
        &mut self,
        metadata: Option<&str>,
        query: &HashMap<String, String>,
        now: Instant,
    ) -> Result<Value, (u16, Value)> {
        let refuse = |error: &str, description: &str| {
            (
                400,
                json!({"error": error, "error_description": description}),
            )
        };
        let field = |k: &str| query.get(k).map(String::as_str).unwrap_or("");
        let verdict = if metadata.map(str::trim) != Some("true") {
            Err(refuse(
                "invalid_request",
                "Required metadata header not specified",
            ))
        } else if field("api-version").is_empty() {
            Err(refuse(
                "invalid_request",
                "Required query variable 'api-version' is missing",
            ))
        } else if field("resource").trim_end_matches('/') != self.graph_resource {
            Err(refuse(
                "invalid_resource",
                &format!(
                    "AADSTS500011: The resource principal named {} was not found in the tenant.",
                    field("resource")
                ),
            ))
        } else if !field("client_id").is_empty()
            && self.managed_identity_client_id.as_deref() != Some(field("client_id"))
        {
            Err(refuse("invalid_request", "Identity not found"))
        } else {
            Ok(())
        };
        if let Err(refusal) = verdict {
            self.stats.imds_refused += 1;
            return Err(refusal);
        }
        let token = random_token();
        let app = match field("client_id") {
            "" => "system-assigned managed identity".to_string(),
            id => id.to_string(),
        };
        let tenant = self.tenant.clone();
        self.tokens.insert(
            token.clone(),
            Issued {
                at: now,
                app,
                tenant,
            },
        );
        self.stats.imds_tokens += 1;
        self.stats.tokens_issued += 1;
        let secs = self.token_lifetime.as_secs();
        let unix = Utc::now().timestamp();
        Ok(
            json!({"access_token": token, "refresh_token": "", "expires_in": secs.to_string(),
                  "expires_on": (unix + secs as i64).to_string(), "not_before": unix.to_string(),
                  "resource": self.graph_resource, "token_type": "Bearer"}),
        )
    }

    /// Checks `Authorization: Bearer …` against the tokens issued and the current lifetime;
    /// the application and tenant the token was issued to.
    pub(super) fn authorize(
        &mut self,
        header: Option<&str>,
        now: Instant,
    ) -> Result<Issued, GraphError> {
        let token = header
            .map(str::trim)
            .and_then(|h| {
                h.get(..7)
                    .filter(|p| p.eq_ignore_ascii_case("bearer "))
                    .map(|_| h[7..].trim())
            })
            .filter(|t| !t.is_empty());
        let refuse = |message: &str| GraphError::new(401, "InvalidAuthenticationToken", message);
        match token.map(|t| self.tokens.get(t)) {
            None => {
                self.stats.unauthorized += 1;
                Err(refuse("Access token is empty."))
            }
            Some(None) => {
                self.stats.unauthorized += 1;
                Err(refuse("IDX14100: JWT is not well formed."))
            }
            Some(Some(issued)) if now.duration_since(issued.at) >= self.token_lifetime => {
                self.stats.unauthorized += 1;
                self.stats.expired_token_used += 1;
                Err(refuse("Lifetime validation failed, the token is expired."))
            }
            Some(Some(issued)) => Ok(issued.clone()),
        }
    }

    /// The RFC 7662 answer for `token`: active, for the introspection user, while it lives.
    /// Presenting an expired token is the client's mistake, counted as at `/v1.0`.
    pub(super) fn introspect(&mut self, token: &str, now: Instant) -> Value {
        self.stats.introspections += 1;
        let Some(issued) = self.tokens.get(token.trim()).map(|i| i.at) else {
            self.stats.introspections_inactive += 1;
            return json!({"active": false});
        };
        let age = now.duration_since(issued);
        if age >= self.token_lifetime {
            self.stats.introspections_inactive += 1;
            self.stats.expired_token_used += 1;
            return json!({"active": false});
        }
        let unix = Utc::now().timestamp();
        let exp = unix + (self.token_lifetime - age).as_secs() as i64;
        let user = &self.introspect_user;
        json!({"active": true, "token_type": "Bearer", "client_id": self.client_id,
               "email": user, "username": user, "upn": user, "sub": stable_guid(user),
               "iat": unix - age.as_secs() as i64, "exp": exp})
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::options;
    use super::*;

    const GRAPH_SCOPE: &str = "https://graph.microsoft.com/.default";

    #[test]
    fn a_national_cloud_issues_tokens_only_for_its_own_graph_scope() {
        let mut s = State::new(&options(&["--cloud", "usgov"])).unwrap();
        let form = |scope: &str| -> HashMap<String, String> {
            [
                ("client_id", "ms1-app"),
                ("client_secret", "sim-secret"),
                ("scope", scope),
                ("grant_type", "client_credentials"),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
        };
        let now = Instant::now();
        assert!(s
            .issue_token(
                "contoso",
                URL,
                &form("https://graph.microsoft.us/.default"),
                now
            )
            .is_ok());
        let refused = s
            .issue_token("contoso", URL, &form(GRAPH_SCOPE), now)
            .unwrap_err();
        let (status, body) = (refused.0, refused.1.to_string());
        assert_eq!(status, 400);
        assert!(body.contains("AADSTS500011"), "{body}");
    }

    const URL: &str = "http://127.0.0.1:8500/contoso/oauth2/v2.0/token";

    /// A form or a query string's fields.
    fn fields(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn tokens_are_issued_for_the_right_credentials_and_expire_with_the_current_lifetime() {
        let mut s = State::new(&options(&["--token-lifetime-s", "60"])).unwrap();
        let form = fields;
        let good = [
            ("client_id", "ms1-app"),
            ("client_secret", "sim-secret"),
            ("scope", GRAPH_SCOPE),
            ("grant_type", "client_credentials"),
        ];
        let t0 = Instant::now();
        let issued = s.issue_token("contoso", URL, &form(&good), t0).unwrap();
        assert_eq!(issued["expires_in"], 60);
        let token = issued["access_token"].as_str().unwrap().to_string();
        let bearer = format!("Bearer {token}");
        let issued = s.authorize(Some(&bearer), t0 + Duration::from_secs(59));
        let issued = issued.expect("a live token");
        assert_eq!(
            (issued.app.as_str(), issued.tenant.as_str()),
            ("ms1-app", "contoso"),
            "the token's application and tenant"
        );
        let e = s
            .authorize(Some(&bearer), t0 + Duration::from_secs(60))
            .unwrap_err();
        assert_eq!((e.status, e.code), (401, "InvalidAuthenticationToken"));
        assert_eq!(s.stats.expired_token_used, 1);
        s.token_lifetime = Duration::from_secs(10);
        assert!(s
            .authorize(Some(&bearer), t0 + Duration::from_secs(11))
            .is_err());
        assert!(s.authorize(None, t0).is_err());
        assert!(s.authorize(Some("Bearer nonsense"), t0).is_err());
        assert_eq!((s.stats.unauthorized, s.stats.expired_token_used), (4, 2));

        let refused = |s: &mut State, tenant: &str, pairs: &[(&str, &str)]| {
            let (status, body) = s.issue_token(tenant, URL, &form(pairs), t0).unwrap_err();
            (status, body["error"].as_str().unwrap().to_string())
        };
        let mut bad = good;
        bad[1].1 = "wrong";
        assert_eq!(
            refused(&mut s, "contoso", &bad),
            (401, "invalid_client".into())
        );
        let mut bad = good;
        bad[2].1 = "https://outlook.office.com/.default";
        assert_eq!(
            refused(&mut s, "contoso", &bad),
            (400, "invalid_scope".into())
        );
        let mut bad = good;
        bad[3].1 = "password";
        assert_eq!(
            refused(&mut s, "contoso", &bad),
            (400, "unsupported_grant_type".into())
        );
        assert_eq!(
            refused(&mut s, "fabrikam", &good),
            (400, "invalid_request".into())
        );
        let tenant_id = s.tenant_id.clone();
        assert!(s.issue_token(&tenant_id, URL, &form(&good), t0).is_ok());

        let refresh = [
            ("client_id", "ms1-app"),
            ("grant_type", "refresh_token"),
            ("refresh_token", "sim-refresh-token"),
            (
                "scope",
                "https://outlook.office.com/IMAP.AccessAsUser.All offline_access",
            ),
        ];
        let r = s.issue_token("contoso", URL, &form(&refresh), t0).unwrap();
        assert!(r["access_token"].is_string());
        let mut bad = refresh;
        bad[2].1 = "stolen";
        assert_eq!(
            refused(&mut s, "contoso", &bad),
            (400, "invalid_grant".into())
        );
        assert_eq!(s.stats.tokens_issued, 3);
    }

    #[test]
    fn imds_issues_graph_tokens_only_with_the_metadata_header_and_a_known_identity() {
        let mut s = State::new(&options(&["--managed-identity-client-id", "mi-1"])).unwrap();
        let query = fields;
        let good = [
            ("api-version", "2018-02-01"),
            ("resource", "https://graph.microsoft.com"),
        ];
        let t0 = Instant::now();
        let e = s.issue_imds_token(None, &query(&good), t0).unwrap_err();
        assert_eq!(e.0, 400);
        assert_eq!(
            e.1["error_description"],
            "Required metadata header not specified"
        );
        let issued = s.issue_imds_token(Some("true"), &query(&good), t0).unwrap();
        assert_eq!(issued["expires_in"], "3599", "IMDS sends a string");
        let bearer = format!("Bearer {}", issued["access_token"].as_str().unwrap());
        assert_eq!(
            s.authorize(Some(&bearer), t0).map(|i| i.app).as_deref(),
            Ok("system-assigned managed identity"),
            "an application of its own"
        );
        let mut mine = good.to_vec();
        mine.push(("client_id", "mi-1"));
        assert!(s.issue_imds_token(Some("true"), &query(&mine), t0).is_ok());
        mine[2].1 = "mi-2";
        let e = s
            .issue_imds_token(Some("true"), &query(&mine), t0)
            .unwrap_err();
        assert_eq!(e.1["error_description"], "Identity not found");
        let e = s
            .issue_imds_token(
                Some("true"),
                &query(&[
                    ("api-version", "2018-02-01"),
                    ("resource", "https://vault.azure.net"),
                ]),
                t0,
            )
            .unwrap_err();
        assert_eq!(e.1["error"], "invalid_resource");
        assert_eq!((s.stats.imds_tokens, s.stats.imds_refused), (2, 3));
    }

    #[test]
    fn introspection_reports_live_tokens_for_the_introspect_user_and_nothing_else_as_active() {
        let mut s = State::new(&options(&["--token-lifetime-s", "60"])).unwrap();
        assert_eq!(s.introspect_user, "invoices-0@contoso.example");
        let mut s2 = State::new(&options(&["--introspect-user", "imap@example.test"])).unwrap();
        assert_eq!(s2.introspect_user, "imap@example.test");
        assert_eq!(
            s2.introspect("never-issued", Instant::now())["active"],
            false
        );

        let form: HashMap<String, String> = [
            ("client_id", "ms1-app"),
            ("grant_type", "refresh_token"),
            ("refresh_token", "sim-refresh-token"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let t0 = Instant::now();
        let issued = s.issue_token("contoso", URL, &form, t0).unwrap();
        let token = issued["access_token"].as_str().unwrap();
        let live = s.introspect(token, t0 + Duration::from_secs(59));
        assert_eq!(live["active"], true);
        assert_eq!(live["email"], "invoices-0@contoso.example");
        assert!(live["exp"].as_i64().unwrap() > live["iat"].as_i64().unwrap());
        assert_eq!(
            s.introspect(token, t0 + Duration::from_secs(60)),
            json!({"active": false}),
            "an expired token is inactive and reveals nothing"
        );
        assert_eq!(s.introspect("forged", t0), json!({"active": false}));
        assert_eq!(
            (
                s.stats.introspections,
                s.stats.introspections_inactive,
                s.stats.expired_token_used
            ),
            (3, 2, 1)
        );
    }

    #[test]
    fn another_tenants_app_signs_in_at_its_own_token_url_and_reads_only_its_mailboxes() {
        let mut s = State::new(&options(&[
            "--extra-tenant",
            "fabrikam:fab-app:fab-secret:ap@fabrikam.example",
        ]))
        .unwrap();
        let t0 = Instant::now();
        let scope = "https://graph.microsoft.com/.default";
        let form = |id: &str, secret: &str| {
            [
                ("grant_type", "client_credentials"),
                ("client_id", id),
                ("client_secret", secret),
                ("scope", scope),
            ]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>()
        };
        let url = "http://sim/fabrikam/oauth2/v2.0/token";
        let mut refusal = |id: &str, secret: &str| {
            let (_, body) = s
                .issue_token("fabrikam", url, &form(id, secret), t0)
                .unwrap_err();
            body["error_description"].as_str().unwrap().to_string()
        };
        assert!(refusal("fab-app", "wrong").starts_with(WRONG_SECRET));
        // Contoso's app is not Fabrikam's.
        assert!(refusal("ms1-app", "sim-secret").starts_with(UNKNOWN_CLIENT));
        let token = s
            .issue_token("fabrikam", url, &form("fab-app", "fab-secret"), t0)
            .unwrap();
        let issued = s
            .authorize(
                Some(&format!(
                    "Bearer {}",
                    token["access_token"].as_str().unwrap()
                )),
                t0,
            )
            .unwrap();
        assert_eq!(
            (issued.app.as_str(), issued.tenant.as_str()),
            ("fab-app", "fabrikam")
        );
        let fabrikam = s.resolve("ap@fabrikam.example").unwrap();
        assert_eq!(s.tenant_of(fabrikam), "fabrikam");
        assert_eq!(
            s.tenant_of(s.resolve("invoices-0@contoso.example").unwrap()),
            "contoso"
        );
    }
}
