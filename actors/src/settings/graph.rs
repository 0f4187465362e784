//! The `[graph]` section: the tenants (each with its cloud, how the daemon signs in to its
//! Entra ID, and its mailboxes) and how every mailbox is read.
//!
//! A tenant is one `[[graph.tenants]]` entry ([`GraphTenant`]); the single-tenant keys directly
//! under `[graph]` (`tenant_id`, `client_id`, `credential`, …, `mailboxes`) are a shorthand for
//! one entry. [`GraphSettings::tenants`] gives the list either way.

use super::checks::{bad, endpoint, imds_endpoint};
use super::{InvalidSetting, RetryBounds};
use crate::secret::Secret;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Microsoft Graph: app credentials, mailboxes and how they are read.
#[derive(Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GraphSettings {
    /// The Microsoft cloud the tenant lives in: its Graph and sign-in hosts and the token
    /// scope. Explicit `base_url`/`authority` still win (a proxy, a private endpoint).
    pub cloud: GraphCloud,
    /// Graph API root, ending in `/v1.0`. Empty: the cloud's (see [`GraphSettings::base_url`]).
    pub base_url: String,
    /// Token authority; `{tenant}` is replaced by `tenant_id`. The token URL is
    /// `{authority}/oauth2/v2.0/token`. Empty: the cloud's sign-in host.
    pub authority: String,
    pub tenant_id: String,
    pub client_id: String,
    /// How the daemon proves who it is to Entra ID (see [`GraphCredential`]).
    pub credential: GraphCredential,
    /// App secret (`credential = "secret"`): the value, `env:NAME`, `file:/path` or
    /// `credential:NAME`. Never logged, never stored in Redis.
    pub client_secret: Secret,
    /// `credential = "certificate"`: path of the PEM certificate uploaded to the app
    /// registration. Read again for every token, so a rotated file is used without a restart.
    pub client_certificate: String,
    /// Its PEM private key (PKCS#8, or PKCS#1 RSA): the key, `env:NAME`, `file:/path` or
    /// `credential:NAME`; a key from a file is read again for every token. Never logged.
    pub client_certificate_key: Secret,
    /// `credential = "managed_identity"`: the instance metadata (IMDS) token endpoint.
    pub managed_identity_endpoint: String,
    /// The client id of a user-assigned managed identity; empty: the system-assigned one.
    pub managed_identity_client_id: String,
    /// `credential = "workload_identity"`: the file holding the federated token (Kubernetes
    /// projects and rotates it); read again for every token. Empty: `AZURE_FEDERATED_TOKEN_FILE`.
    pub federated_token_file: String,
    /// Mailboxes (UPNs or ids) to ingest. Empty: no Graph polling.
    pub mailboxes: Vec<String>,
    /// Several tenants, one `[[graph.tenants]]` table each (its own credential, cloud and
    /// mailboxes). Empty: the keys above are the one tenant. Both at once is refused.
    pub tenants: Vec<GraphTenant>,
    /// Mail folder read in every mailbox.
    pub folder: String,
    /// `delta` (deltaLink cursor) or `unread` (isRead filter; messages are marked read after
    /// MS4 accepted them).
    pub mode: GraphMode,
    /// Once a message was dead-lettered (MS4 refused its record, or it cannot be one): `leave`
    /// it unread, `mark_read` it, or `move` it to `dead_letter_move_to` (unread mode only), so
    /// that refused invoices leave the unread listing.
    pub after_dead_letter: GraphAfterDeadLetter,
    /// Target folder of `after_dead_letter = "move"` in every mailbox: a well-known folder name
    /// (`archive`, `junkemail`, …) or a folder id, as Graph's `destinationId` takes it (a
    /// display name is not looked up: it need not be unique). It must exist.
    pub dead_letter_move_to: String,
    /// Seconds between polls of a mailbox (webhook mode polls too, as a safety net).
    pub poll_interval_s: u64,
    /// Messages per page: `$top` (unread) and `Prefer: odata.maxpagesize` (delta).
    pub page_size: u32,
    /// Unread mode: a poll lists the messages received since the start of the previous
    /// complete listing, less this many seconds (0-86,400), for the messages Exchange shows
    /// late (eventual consistency, clock skew between its servers, between daemons). The
    /// intake marks skip the repeats the overlap lists again.
    pub unread_overlap_s: u64,
    /// Unread mode: a listing from the folder's start (a sweep) at least this often, in
    /// seconds (0-604,800; 0: every poll, as before issue 15), for messages with an older
    /// receivedDateTime (moved in from another folder, marked unread again).
    pub unread_sweep_s: u64,
    /// Requests in flight at once per mailbox, across every daemon on the same Redis (Graph: 4).
    pub max_concurrent_per_mailbox: u32,
    /// Requests per mailbox per `window_s`, across every daemon (Graph: 10,000 per 10 min).
    pub requests_per_window: u32,
    /// Length of that window in seconds.
    pub window_s: u64,
    /// Requests per app registration (client id) per `app_window_s`, across every tenant,
    /// mailbox and daemon (Graph's global limit: 130,000 per 10 s per app).
    pub app_requests_per_window: u32,
    /// Length of that window in seconds.
    pub app_window_s: u64,
    /// A Graph request unanswered after this long is a transient failure, in ms.
    pub request_timeout_ms: u64,
    /// Fetch attachment metadata (name, type, size) for messages that have attachments.
    pub fetch_attachments: bool,
    /// A mailbox's poller lease lasts this long unless renewed (seconds); another daemon takes
    /// over a mailbox whose daemon died after at most this long.
    pub lease_ttl_s: u64,
    /// A message Graph keeps failing to serve (5xx, timeouts, throttling) is retried this many
    /// times with backoff; then its mailbox is parked. A refusal (401/403: an application access
    /// policy that excludes the mailbox, a refused credential) parks it at once. Parked entries
    /// wait in Redis (`stream:parked:{mailbox}`) while every other mailbox flows.
    pub park_after_attempts: u32,
    /// First retry of a parked mailbox after this many seconds (one entry goes back as a
    /// probe); the wait doubles with each failed retry up to `park_retry_max_s`.
    pub park_retry_min_s: u64,
    pub park_retry_max_s: u64,
    /// First retry delay after a transient Graph failure (a poll, a fetch), in milliseconds
    /// (exponential, with jitter).
    pub retry_min_ms: u64,
    /// Longest retry delay, in milliseconds.
    pub retry_max_ms: u64,
}

impl Default for GraphSettings {
    fn default() -> Self {
        Self {
            cloud: GraphCloud::Global,
            base_url: String::new(),
            authority: String::new(),
            tenant_id: String::new(),
            client_id: String::new(),
            credential: GraphCredential::Secret,
            client_secret: Secret::default(),
            client_certificate: String::new(),
            client_certificate_key: Secret::default(),
            managed_identity_endpoint: "http://169.254.169.254/metadata/identity/oauth2/token"
                .into(),
            managed_identity_client_id: String::new(),
            federated_token_file: String::new(),
            mailboxes: Vec::new(),
            tenants: Vec::new(),
            folder: "inbox".into(),
            mode: GraphMode::Delta,
            after_dead_letter: GraphAfterDeadLetter::Leave,
            dead_letter_move_to: String::new(),
            poll_interval_s: 60,
            page_size: 100,
            unread_overlap_s: 300,
            unread_sweep_s: 3_600,
            max_concurrent_per_mailbox: 4,
            requests_per_window: 10_000,
            window_s: 600,
            app_requests_per_window: 130_000,
            app_window_s: 10,
            request_timeout_ms: 30_000,
            fetch_attachments: true,
            lease_ttl_s: 30,
            park_after_attempts: 3,
            park_retry_min_s: 30,
            park_retry_max_s: 900,
            retry_min_ms: 200,
            retry_max_ms: 30_000,
        }
    }
}

impl std::fmt::Debug for GraphSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphSettings")
            .field("base_url", &self.base_url)
            .field("authority", &self.authority)
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("credential", &self.credential)
            .field("client_secret", &self.client_secret)
            .field("client_certificate", &self.client_certificate)
            .field("client_certificate_key", &self.client_certificate_key)
            .field("managed_identity_endpoint", &self.managed_identity_endpoint)
            .field(
                "managed_identity_client_id",
                &self.managed_identity_client_id,
            )
            .field("mailboxes", &self.mailboxes)
            .field("tenants", &self.tenants)
            .field("mode", &self.mode)
            .field("after_dead_letter", &self.after_dead_letter)
            .finish_non_exhaustive()
    }
}

impl GraphSettings {
    /// The backoff bounds of transient Graph failures.
    pub fn retry(&self) -> RetryBounds {
        RetryBounds::from_ms(self.retry_min_ms, self.retry_max_ms)
    }

    /// Every tenant: the `[[graph.tenants]]` entries, or the single-tenant keys as one (none
    /// when they name no mailbox).
    pub fn tenants(&self) -> Vec<GraphTenant> {
        if !self.tenants.is_empty() {
            let mut tenants = self.tenants.clone();
            for t in tenants.iter_mut().filter(|t| t.name.trim().is_empty()) {
                t.name = t.tenant_id.clone();
            }
            return tenants;
        }
        let single = self.single_tenant();
        if single.mailboxes.is_empty() {
            Vec::new()
        } else {
            vec![single]
        }
    }

    /// The single-tenant keys as a tenant, named after its `tenant_id` (or `default`).
    pub fn single_tenant(&self) -> GraphTenant {
        GraphTenant {
            name: if self.tenant_id.trim().is_empty() {
                "default".into()
            } else {
                self.tenant_id.clone()
            },
            cloud: self.cloud,
            base_url: self.base_url.clone(),
            authority: self.authority.clone(),
            tenant_id: self.tenant_id.clone(),
            client_id: self.client_id.clone(),
            credential: self.credential,
            client_secret: self.client_secret.clone(),
            client_certificate: self.client_certificate.clone(),
            client_certificate_key: self.client_certificate_key.clone(),
            managed_identity_endpoint: self.managed_identity_endpoint.clone(),
            managed_identity_client_id: self.managed_identity_client_id.clone(),
            federated_token_file: self.federated_token_file.clone(),
            mailboxes: self.mailboxes.clone(),
        }
    }

    /// The tenants are usable: each one's credential settings and hosts, every tenant named
    /// once, every mailbox in one tenant, and the single-tenant keys not mixed with
    /// `[[graph.tenants]]`.
    pub(super) fn validate_tenants(&self) -> Result<(), InvalidSetting> {
        let tenants = self.tenants();
        if tenants.is_empty() {
            // No mailbox: nothing signs in, but the hosts must still make sense.
            return self.single_tenant().validate_hosts("graph");
        }
        if !self.tenants.is_empty()
            && self.single_tenant()
                != (GraphTenant {
                    name: "default".into(),
                    ..GraphTenant::default()
                })
        {
            return bad(
                "graph.tenants",
                "the single-tenant keys under [graph] (tenant_id, client_id, credential, mailboxes, …) are a shorthand for one tenant: with [[graph.tenants]], put them in an entry",
            );
        }
        let mut names = std::collections::HashSet::new();
        let mut owners = std::collections::HashMap::new();
        for (i, t) in tenants.iter().enumerate() {
            let at = if self.tenants.is_empty() {
                "graph".to_string()
            } else {
                format!("graph.tenants[{i}]")
            };
            if t.name.trim().is_empty() {
                return bad(
                    format!("{at}.name"),
                    "is required when tenant_id is empty (a managed identity)",
                );
            }
            if !names.insert(t.name.as_str()) {
                return bad(
                    format!("{at}.name"),
                    format!("\"{}\" names another tenant too", t.name),
                );
            }
            if t.mailboxes.is_empty() {
                return bad(format!("{at}.mailboxes"), "must name at least one mailbox");
            }
            for m in &t.mailboxes {
                if m.trim().is_empty() {
                    return bad(format!("{at}.mailboxes"), "must not contain empty names");
                }
                if let Some(other) = owners.insert(m.to_lowercase(), t.name.as_str()) {
                    return bad(
                        format!("{at}.mailboxes"),
                        format!("{m} is a mailbox of tenant \"{other}\" too: a mailbox belongs to one tenant (its records, cursor and lease are keyed by its name)"),
                    );
                }
            }
            t.validate_credential(&at)?;
            t.validate_hosts(&at)?;
        }
        Ok(())
    }

    /// Every Graph mailbox of every tenant.
    pub fn all_mailboxes(&self) -> Vec<String> {
        self.tenants()
            .into_iter()
            .flat_map(|t| t.mailboxes)
            .collect()
    }

    /// With `credential = "workload_identity"`, what a tenant leaves empty is taken from the
    /// variables the AKS workload identity webhook sets (see
    /// [`GraphTenant::apply_workload_identity_environment`]): for the single-tenant keys and
    /// for every `[[graph.tenants]]` entry. `var` reads one.
    pub fn apply_workload_identity_environment(&mut self, var: impl Fn(&str) -> Option<String>) {
        let mut single = self.single_tenant();
        single.apply_workload_identity_environment(&var);
        self.tenant_id = single.tenant_id;
        self.client_id = single.client_id;
        self.federated_token_file = single.federated_token_file;
        self.authority = single.authority;
        for tenant in &mut self.tenants {
            tenant.apply_workload_identity_environment(&var);
        }
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
    pub fn poll_interval(&self) -> Duration {
        Duration::from_secs(self.poll_interval_s)
    }
    /// Wait before the retry that follows `failed` failed retries of a parked mailbox.
    pub fn park_retry_after(&self, failed: u32) -> Duration {
        let secs = self
            .park_retry_min_s
            .saturating_mul(1u64 << failed.min(20))
            .min(self.park_retry_max_s);
        Duration::from_secs(secs)
    }
}

/// One Entra ID tenant: where it lives, how the daemon signs in to it, and its mailboxes. Its
/// keys mean what the single-tenant keys of `[graph]` mean.
#[derive(Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GraphTenant {
    /// The tenant's name in readiness, metrics (`tenant` label), logs and errors. Empty: its
    /// `tenant_id`.
    pub name: String,
    pub cloud: GraphCloud,
    pub base_url: String,
    pub authority: String,
    pub tenant_id: String,
    pub client_id: String,
    pub credential: GraphCredential,
    pub client_secret: Secret,
    pub client_certificate: String,
    pub client_certificate_key: Secret,
    pub managed_identity_endpoint: String,
    pub managed_identity_client_id: String,
    pub federated_token_file: String,
    /// The tenant's mailboxes; a mailbox belongs to one tenant only.
    pub mailboxes: Vec<String>,
}

/// The single-tenant keys' defaults, without a name.
impl Default for GraphTenant {
    fn default() -> Self {
        let mut t = GraphSettings::default().single_tenant();
        t.name.clear();
        t
    }
}

impl std::fmt::Debug for GraphTenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GraphTenant")
            .field("name", &self.name)
            .field("cloud", &self.cloud)
            .field("tenant_id", &self.tenant_id)
            .field("client_id", &self.client_id)
            .field("credential", &self.credential)
            .field("client_secret", &self.client_secret)
            .field("client_certificate_key", &self.client_certificate_key)
            .field("mailboxes", &self.mailboxes)
            .finish_non_exhaustive()
    }
}

impl GraphTenant {
    /// The Graph API root in use: `base_url`, else the cloud's (`https://graph.microsoft.us/v1.0`, …).
    pub fn base_url(&self) -> String {
        if self.base_url.is_empty() {
            format!("{}/v1.0", self.cloud.graph_root())
        } else {
            self.base_url.clone()
        }
    }

    /// The token authority in use: `authority`, else the cloud's sign-in host and `{tenant}`.
    pub fn authority(&self) -> String {
        if self.authority.is_empty() {
            format!("{}/{{tenant}}", self.cloud.login_host())
        } else {
            self.authority.clone()
        }
    }

    /// `{authority}/oauth2/v2.0/token` with the tenant filled in.
    pub fn token_url(&self) -> String {
        format!(
            "{}/oauth2/v2.0/token",
            self.authority()
                .replace("{tenant}", &self.tenant_id)
                .trim_end_matches('/')
        )
    }

    /// The app-only token scope: the cloud's Graph resource and `/.default`. Always the
    /// cloud's, also behind an explicit `base_url`: a token is only good in its own cloud.
    pub fn token_scope(&self) -> String {
        format!("{}/.default", self.cloud.graph_root())
    }

    /// The app registration Graph counts its per-app limit against: the client id (one
    /// multi-tenant app shares one budget across its tenants), or for a system-assigned managed
    /// identity, whose id the settings do not know, the tenant.
    pub fn app(&self) -> String {
        match self.credential {
            GraphCredential::ManagedIdentity if self.managed_identity_client_id.is_empty() => {
                format!("managed-identity:{}", self.name)
            }
            GraphCredential::ManagedIdentity => self.managed_identity_client_id.clone(),
            _ => self.client_id.clone(),
        }
    }

    /// The settings `credential` needs are there (their files' content is checked by
    /// `clients::oauth::check_credential`, which the daemon runs at start and in
    /// `check-config`). `at` is the tenant's place in the settings (`graph`,
    /// `graph.tenants[1]`), for the key a refusal names.
    pub(super) fn validate_credential(&self, at: &str) -> Result<(), InvalidSetting> {
        use GraphCredential as C;
        let needs = |key: &str, value: &str, what: &str| {
            if value.trim().is_empty() {
                bad(
                    format!("{at}.{key}"),
                    format!(
                        "is required with credential = \"{}\"{what}",
                        self.credential.name()
                    ),
                )
            } else {
                Ok(())
            }
        };
        let (tenant, client) = match self.credential {
            C::WorkloadIdentity => (" (or AZURE_TENANT_ID)", " (or AZURE_CLIENT_ID)"),
            _ => ("", ""),
        };
        if self.credential != C::ManagedIdentity {
            needs("tenant_id", &self.tenant_id, tenant)?;
            needs("client_id", &self.client_id, client)?;
        }
        match self.credential {
            C::Secret => needs("client_secret", self.client_secret.expose(), ""),
            C::Certificate => {
                needs("client_certificate", &self.client_certificate, "")?;
                needs(
                    "client_certificate_key",
                    self.client_certificate_key.expose(),
                    "",
                )
            }
            C::ManagedIdentity => imds_endpoint(
                &format!("{at}.managed_identity_endpoint"),
                &self.managed_identity_endpoint,
            ),
            C::WorkloadIdentity => needs(
                "federated_token_file",
                &self.federated_token_file,
                " (or AZURE_FEDERATED_TOKEN_FILE)",
            ),
        }
    }

    /// The Graph and sign-in hosts are endpoints, and a Microsoft host is one of the tenant's
    /// own cloud (a token of one Microsoft cloud is not accepted by another).
    fn validate_hosts(&self, at: &str) -> Result<(), InvalidSetting> {
        endpoint(&format!("{at}.base_url"), &self.base_url())?;
        endpoint(&format!("{at}.authority"), &self.authority())?;
        for (key, url, login) in [
            ("authority", &self.authority, true),
            ("base_url", &self.base_url, false),
        ] {
            let owners = GraphCloud::owners_of(url, login);
            if !owners.is_empty() && !owners.contains(&self.cloud) {
                return bad(
                    format!("{at}.{key}"),
                    format!(
                        "{url} belongs to the {} cloud but {at}.cloud = \"{}\": tokens of one Microsoft cloud are not accepted by another (set {at}.cloud, or leave {at}.{key} empty to use the cloud's)",
                        owners[0].name(),
                        self.cloud.name()
                    ),
                );
            }
        }
        Ok(())
    }

    /// With `credential = "workload_identity"`, what the settings leave empty is taken from the
    /// variables the AKS workload identity webhook sets, as the Azure SDKs do:
    /// `AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_FEDERATED_TOKEN_FILE`, and
    /// `AZURE_AUTHORITY_HOST` for an `authority` left at its default. `var` reads one.
    pub fn apply_workload_identity_environment(&mut self, var: impl Fn(&str) -> Option<String>) {
        if self.credential != GraphCredential::WorkloadIdentity {
            return;
        }
        let var = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        for (field, name) in [
            (&mut self.tenant_id, "AZURE_TENANT_ID"),
            (&mut self.client_id, "AZURE_CLIENT_ID"),
            (&mut self.federated_token_file, "AZURE_FEDERATED_TOKEN_FILE"),
        ] {
            if field.is_empty() {
                if let Some(v) = var(name) {
                    *field = v;
                }
            }
        }
        if self.authority.is_empty() {
            if let Some(host) = var("AZURE_AUTHORITY_HOST") {
                self.authority = format!("{}/{{tenant}}", host.trim_end_matches('/'));
            }
        }
    }
}

/// The Microsoft clouds Graph runs in (learn.microsoft.com/graph/deployments). Each has its own
/// sign-in and Graph hosts; a token of one is not accepted by another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GraphCloud {
    /// The global service (and Microsoft 365 GCC, which uses it).
    #[default]
    Global,
    /// US Government L4 (GCC High).
    Usgov,
    /// US Government L5 (DoD).
    UsgovDod,
    /// Microsoft 365 operated by 21Vianet in China.
    China,
}

impl GraphCloud {
    const ALL: [GraphCloud; 4] = [Self::Global, Self::Usgov, Self::UsgovDod, Self::China];

    /// Microsoft Entra ID's sign-in host.
    pub fn login_host(self) -> &'static str {
        match self {
            Self::Global => "https://login.microsoftonline.com",
            Self::Usgov | Self::UsgovDod => "https://login.microsoftonline.us",
            Self::China => "https://login.chinacloudapi.cn",
        }
    }

    /// The Microsoft Graph service root (also the token resource).
    pub fn graph_root(self) -> &'static str {
        match self {
            Self::Global => "https://graph.microsoft.com",
            Self::Usgov => "https://graph.microsoft.us",
            Self::UsgovDod => "https://dod-graph.microsoft.us",
            Self::China => "https://microsoftgraph.chinacloudapi.cn",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Global => "global",
            Self::Usgov => "usgov",
            Self::UsgovDod => "usgov_dod",
            Self::China => "china",
        }
    }

    /// The clouds whose sign-in host (`login`) or Graph host is `url`'s host.
    pub(super) fn owners_of(url: &str, login: bool) -> Vec<GraphCloud> {
        let host = |u: &str| {
            url::Url::parse(u)
                .ok()
                .and_then(|u| u.host_str().map(str::to_owned))
        };
        let Some(h) = host(url) else { return vec![] };
        Self::ALL
            .into_iter()
            .filter(|c| {
                host(if login {
                    c.login_host()
                } else {
                    c.graph_root()
                })
                .as_deref()
                    == Some(&h)
            })
            .collect()
    }
}

/// How the daemon signs in to Entra ID for Graph (app-only, every one of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GraphCredential {
    /// Client credentials with `client_secret`.
    Secret,
    /// Client credentials with a JWT signed by the key of `client_certificate`
    /// (`client_assertion`, RFC 7523): no shared secret leaves the machine.
    Certificate,
    /// The Azure resource's managed identity, from the instance metadata service
    /// (`managed_identity_endpoint`): no credential on the machine at all.
    ManagedIdentity,
    /// Kubernetes workload identity: client credentials with the federated token the cluster
    /// projects into `federated_token_file` as `client_assertion`.
    WorkloadIdentity,
}

impl GraphCredential {
    /// Its name in the settings and in errors (`certificate`, `managed_identity`, …).
    pub fn name(self) -> &'static str {
        match self {
            GraphCredential::Secret => "secret",
            GraphCredential::Certificate => "certificate",
            GraphCredential::ManagedIdentity => "managed_identity",
            GraphCredential::WorkloadIdentity => "workload_identity",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GraphMode {
    Delta,
    Unread,
}

/// What becomes of a Graph message once it was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GraphAfterDeadLetter {
    /// Left unread.
    Leave,
    /// Marked read (`PATCH isRead`), as a delivered message is.
    MarkRead,
    /// Moved to `dead_letter_move_to` (`POST …/move`); it gets a new id there.
    Move,
}
