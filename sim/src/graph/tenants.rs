//! The other tenants one simulator can play beside its own (`--extra-tenant`): each with its
//! app (client id and secret) and its mailboxes. A token is issued at its tenant's token URL
//! and reads only that tenant's mailboxes: a mailbox of another directory is an unknown user
//! to it (404 `ErrorInvalidUser`), as in Graph.

use super::codecs::stable_guid;

/// Another tenant: `NAME:CLIENT_ID:CLIENT_SECRET:MAILBOX+MAILBOX`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct OtherTenant {
    pub(super) name: String,
    /// Its stable GUID (accepted in the token URL too).
    pub(super) tenant_id: String,
    pub(super) client_id: String,
    pub(super) client_secret: String,
    pub(super) mailboxes: Vec<String>,
}

impl OtherTenant {
    /// Parses one `--extra-tenant`.
    pub(super) fn parse(spec: &str) -> anyhow::Result<Self> {
        let parts: Vec<&str> = spec.splitn(4, ':').map(str::trim).collect();
        let [name, client_id, client_secret, mailboxes] = parts[..] else {
            anyhow::bail!(
                "--extra-tenant {spec}: want NAME:CLIENT_ID:CLIENT_SECRET:MAILBOX+MAILBOX"
            );
        };
        let mailboxes: Vec<String> = mailboxes
            .split('+')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(String::from)
            .collect();
        anyhow::ensure!(
            ![name, client_id, client_secret]
                .iter()
                .any(|p| p.is_empty())
                && !mailboxes.is_empty(),
            "--extra-tenant {spec}: a name, a client id, a secret and at least one mailbox"
        );
        Ok(Self {
            name: name.to_string(),
            tenant_id: stable_guid(&format!("tenant:{name}")),
            client_id: client_id.to_string(),
            client_secret: client_secret.to_string(),
            mailboxes,
        })
    }

    /// The token URL's tenant segment names it (by name or GUID, in any case).
    pub(super) fn is_named(&self, segment: &str) -> bool {
        segment.eq_ignore_ascii_case(&self.name) || segment.eq_ignore_ascii_case(&self.tenant_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_spec_names_its_app_and_mailboxes() {
        let t =
            OtherTenant::parse("fabrikam:fab-app:s3cret:ap@fabrikam.example+ar@fabrikam.example")
                .unwrap();
        assert_eq!(t.name, "fabrikam");
        assert_eq!(t.client_id, "fab-app");
        assert_eq!(t.mailboxes, ["ap@fabrikam.example", "ar@fabrikam.example"]);
        assert!(t.is_named("FABRIKAM") && t.is_named(&t.tenant_id.to_uppercase()));
        assert!(!t.is_named("contoso"));
        for bad in ["fabrikam", "f:a:s:", ":a:s:m@x", "f::s:m@x"] {
            assert!(OtherTenant::parse(bad).is_err(), "{bad}");
        }
    }
}
