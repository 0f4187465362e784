//! The Microsoft Graph simulator (`ms1-sim graph`).
//!
//! It speaks the "Microsoft Graph (v1.0)" part of CONTRACTS.md closely enough that a daemon
//! passing against it has met the rules that matter against Graph:
//!
//! - **Token endpoint** `POST /{tenant}/oauth2/v2.0/token`: client credentials (with the client
//!   secret, a certificate assertion checked as Entra does, or a workload identity's federated
//!   token: `assertions`), and a refresh
//!   token grant (for IMAP XOAUTH2). The instance metadata service's managed identity
//!   endpoint `GET /metadata/identity/oauth2/token` (refused without `Metadata: true`). Every `/v1.0` route wants `Authorization: Bearer` with a
//!   token that has not outlived the *current* token lifetime (`/_sim/config` can shorten it, so
//!   a test can expire the tokens a client holds).
//! - **Mail**: the unread list with `$filter`, `$orderby` (and Graph's `InefficientFilter` rule),
//!   `$top` and `$select`, paged by an opaque `$skiptoken` that survives messages being marked
//!   read meanwhile (or, with `--list-paging skip`, by `$skip` as Graph itself pages messages);
//!   delta with `Prefer: odata.maxpagesize`, `@removed` items and 410 `SyncStateNotFound`;
//!   get and patch one message; attachment metadata; JSON batching (at most 20 per `$batch`).
//! - **Subscriptions** with the real validation handshake against the notification (and
//!   lifecycle) URL, change notifications posted when mail arrives (up to 100 per POST), and
//!   lifecycle events on demand.
//! - **Throttling** per mailbox: 4 requests in flight, 10,000 per 10 minutes, storms on demand;
//!   and per application across all tenants (130,000 per 10 s). It counts what a client did
//!   wrong (requests inside a Retry-After, too many in flight, batches over 20, expired tokens)
//!   as `violations`, which the daemon's tests assert at zero, and every request beyond one of
//!   Graph's limits (in flight, window, app) as `limit_violations`, which a fleet keeps at zero.
//! - **A trickle** of new mail over many mailboxes (`--mailbox-count`, `--trickle-per-s`), and
//!   when subscriptions were created and renewed and when they expire (`trickle`, `spread`).
//! - **Token introspection** `POST /_sim/introspect` (RFC 7662, form field `token`) for a
//!   private Dovecot's oauth2 passdb: a token this simulator issued and that has not expired is
//!   `active` for the `--introspect-user` (so IMAP `XOAUTH2` logs in as that user).
//! - Control under `/_sim/*`: `mail`, `delete`, `expire-delta`, `throttle`, `notify`,
//!   `lifecycle`, `config`, `stats`, `messages` (`&folder=`: those moved there), `folders`.
//! - Folders to move messages to (`folders`): by well-known name or id, and
//!   `POST /users/{u}/messages/{id}/move`.
//!
//! Messages are serialized once when they arrive (property by property, so `$select` is a
//! filter over ready-made fragments) and kept per mailbox in a `Vec` in arrival order; pages
//! are positioned by index, so serving 1,000 messages costs about one copy of their bytes.
//!
//! The folder, one concept a file: `answers` (what a route answers), `codecs`,
//! `odata` (query options), `cursors` (sealed `$skiptoken`s and `$deltatoken`s),
//! `messages` and `mailboxes` (the store), `pollers`, `throttling`, `tokens`,
//! `mail` (the mail routes), `subscriptions`, `notifications` (outbound posts),
//! `routes` and `batch` (dispatch), `handlers` (the HTTP edge), `control`
//! (`/_sim/*`), `trickle`, `spread`, `state` and `stats`.

// The only paths out of this folder: submodules reach them through `super::`.
use crate::synthetic;
use ms1_ingestor::daemon::install_tls_provider;

use actix_web::{web, App, HttpServer};
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};

mod answers;
mod assertions;
mod batch;
mod codecs;
mod control;
mod cursors;
mod folders;
mod handlers;
mod mail;
mod mailboxes;
mod messages;
mod notifications;
mod odata;
mod pollers;
mod routes;
mod spread;
mod state;
mod stats;
mod subscriptions;
mod tenants;
mod throttling;
mod tokens;
mod trickle;

use control::{
    sim_config, sim_delete, sim_expire_delta, sim_lifecycle, sim_mail, sim_messages, sim_notify,
    sim_stats, sim_throttle,
};
use handlers::{graph_api, imds_token, introspect, token};
use state::{Shared, State};

/// How the unread list pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ListPaging {
    /// An opaque `$skiptoken` holding the position (receivedDateTime + id): marking messages
    /// read between pages loses nothing.
    Skiptoken,
    /// `$skip=N` as Graph really pages messages: marking read between pages skips messages, so
    /// a client that follows nextLink while shrinking the set loses some.
    Skip,
}

/// Start-up options (the limits also change at run time through `/_sim/config`).
#[derive(Debug, Clone, clap::Args)]
pub struct GraphSimOptions {
    /// Address to listen on (loopback only).
    #[arg(long, default_value = "127.0.0.1")]
    pub bind: String,
    /// Port; 0 picks a free one (printed on stdout).
    #[arg(long, default_value_t = 8500)]
    pub port: u16,
    /// Tenant name in the token URL (its stable GUID is accepted too).
    #[arg(long, default_value = "contoso")]
    pub tenant: String,
    /// The application (client) id the token endpoint accepts.
    #[arg(long, default_value = "ms1-app")]
    pub client_id: String,
    /// The client secret the token endpoint accepts.
    #[arg(long, default_value = "sim-secret")]
    pub client_secret: String,
    /// PEM certificates registered on the app (comma-separated paths): client assertions
    /// signed with their keys are accepted.
    #[arg(long, value_delimiter = ',')]
    pub client_certificate: Vec<String>,
    /// The federated token (a workload identity's projected service account token) the token
    /// endpoint accepts as `client_assertion`.
    #[arg(long)]
    pub federated_assertion: Option<String>,
    /// The client id of the user-assigned managed identity IMDS knows (requests without
    /// `client_id` get the system-assigned one).
    #[arg(long)]
    pub managed_identity_client_id: Option<String>,
    /// Another tenant beside `--tenant` (repeatable): `NAME:CLIENT_ID:CLIENT_SECRET:MAILBOX+MAILBOX`.
    /// Its app signs in with its secret at `/{NAME}/oauth2/v2.0/token`; its tokens read only
    /// its own mailboxes, and the other tenants' tokens do not read them (404
    /// `ErrorInvalidUser`, as a user of another directory).
    #[arg(long)]
    pub extra_tenant: Vec<String>,
    /// The refresh token the `refresh_token` grant accepts (IMAP XOAUTH2).
    #[arg(long, default_value = "sim-refresh-token")]
    pub refresh_token: String,
    /// Lifetime of access tokens, in seconds.
    #[arg(long, default_value_t = 3599)]
    pub token_lifetime_s: u64,
    /// The Microsoft cloud it plays (global, usgov, usgov_dod, china): app-only tokens are
    /// issued only for that cloud's Graph scope (`https://graph.microsoft.us/.default`, …), as
    /// Entra ID in that cloud does.
    #[arg(long, default_value = "global", value_parser = ["global", "usgov", "usgov_dod", "china"])]
    pub cloud: String,
    /// The user `POST /_sim/introspect` reports for any live token (as `email`, `username`
    /// and `upn`): the IMAP account those tokens log in as. Default: the first mailbox.
    #[arg(long)]
    pub introspect_user: Option<String>,
    /// Mailboxes (UPNs), comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "invoices-0@contoso.example,invoices-1@contoso.example,invoices-2@contoso.example"
    )]
    pub mailboxes: Vec<String>,
    /// Instead of --mailboxes: this many mailboxes, invoices-0@contoso.example to
    /// invoices-{N-1}@contoso.example (a fleet's worth without a long list).
    #[arg(long, conflicts_with = "mailboxes")]
    pub mailbox_count: Option<usize>,
    /// New unread messages per second over all mailboxes, one mailbox after the other, added
    /// on whole seconds so that `receivedDateTime` is their arrival (0: none; fractions
    /// allowed; `/_sim/config` `trickle_per_s` changes it).
    #[arg(long, default_value_t = 0.0)]
    pub trickle_per_s: f64,
    /// Unread messages each mailbox holds at start.
    #[arg(long, default_value_t = 0)]
    pub messages_per_mailbox: u64,
    /// Largest page served (`$top` and `Prefer: odata.maxpagesize` are capped to it).
    #[arg(long, default_value_t = 1000)]
    pub max_page_size: usize,
    /// Requests in flight at once per mailbox; more are answered 429 (0: no limit).
    #[arg(long, default_value_t = 4)]
    pub concurrency_limit: usize,
    /// Requests per mailbox within the sliding window (0: no limit).
    #[arg(long, default_value_t = 10_000)]
    pub window_limit: usize,
    /// Length of the sliding request window in ms.
    #[arg(long, default_value_t = 600_000)]
    pub window_ms: u64,
    /// Requests per application across all tenants within the app window, Graph's global
    /// limit (0: no limit); `$batch` items count one by one.
    #[arg(long, default_value_t = 130_000)]
    pub app_limit: usize,
    /// Length of the application's sliding request window in ms.
    #[arg(long, default_value_t = 10_000)]
    pub app_window_ms: u64,
    /// Longest subscription lifetime accepted, in minutes.
    #[arg(long, default_value_t = 10_080)]
    pub subscription_max_minutes: i64,
    /// Delta tokens expire after this many seconds (0: never).
    #[arg(long, default_value_t = 0)]
    pub delta_token_ttl_s: u64,
    /// How the unread list pages.
    #[arg(long, value_enum, default_value_t = ListPaging::Skiptoken)]
    pub list_paging: ListPaging,
    /// HTTP worker threads.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
}

impl GraphSimOptions {
    /// The mailboxes' UPNs: `--mailbox-count` generated, or `--mailboxes` trimmed.
    fn mailbox_names(&self) -> Vec<String> {
        match self.mailbox_count {
            Some(n) => (0..n)
                .map(|i| format!("invoices-{i}@contoso.example"))
                .collect(),
            None => self
                .mailboxes
                .iter()
                .map(|m| m.trim().to_string())
                .filter(|m| !m.is_empty())
                .collect(),
        }
    }
}

/// Faults and limits that can change while running (`POST /_sim/config`).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    /// Lifetime of access tokens, applied to tokens already issued too.
    pub token_lifetime_s: Option<u64>,
    /// Delay before answering each `/v1.0` request, in ms.
    pub latency_ms: Option<u64>,
    /// Share of `/v1.0` requests answered 500, 0.0–1.0.
    pub error_rate: Option<f64>,
    pub concurrency_limit: Option<usize>,
    pub window_limit: Option<usize>,
    pub window_ms: Option<u64>,
    pub app_limit: Option<usize>,
    pub app_window_ms: Option<u64>,
    /// New messages per second over all mailboxes from now on (0 stops the trickle).
    pub trickle_per_s: Option<f64>,
    pub max_page_size: Option<usize>,
    pub delta_token_ttl_s: Option<u64>,
    /// Mailboxes an application access policy excludes from now on (the whole list: `[]`
    /// lets every mailbox in again): every request on them is answered 403
    /// `ErrorAccessDenied`, "Access to OData is disabled.", as Exchange Online does.
    pub deny_mailboxes: Option<Vec<String>>,
    /// The app's registered certificates from now on (PEM file paths; the whole list).
    pub client_certificates: Option<Vec<String>>,
    /// The federated token accepted from now on (the cluster rotated it).
    pub federated_assertion: Option<String>,
}

/// Runs the simulator until the process is stopped.
pub async fn serve(opts: GraphSimOptions) -> anyhow::Result<()> {
    let ip = crate::serve::loopback(&opts.bind)?;
    install_tls_provider();
    let state: Shared = Arc::new(Mutex::new(State::new(&opts)?));
    actix_web::rt::spawn(trickle::run(state.clone()));
    let data = web::Data::new(state);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(web::PayloadConfig::new(16 * 1024 * 1024))
            .route("/_sim/stats", web::get().to(sim_stats))
            .route("/_sim/messages", web::get().to(sim_messages))
            .route("/_sim/folders", web::post().to(folders::sim_folders))
            .route("/_sim/config", web::post().to(sim_config))
            .route("/_sim/mail", web::post().to(sim_mail))
            .route("/_sim/delete", web::post().to(sim_delete))
            .route("/_sim/expire-delta", web::post().to(sim_expire_delta))
            .route("/_sim/throttle", web::post().to(sim_throttle))
            .route("/_sim/notify", web::post().to(sim_notify))
            .route("/_sim/lifecycle", web::post().to(sim_lifecycle))
            .route("/_sim/introspect", web::post().to(introspect))
            .route("/{tenant}/oauth2/v2.0/token", web::post().to(token))
            .route("/metadata/identity/oauth2/token", web::get().to(imds_token))
            .default_service(web::to(graph_api))
    })
    .workers(opts.workers.max(1))
    .disable_signals()
    .bind((ip, opts.port))?;
    crate::serve::announce("graph", server.addrs()[0]);
    server.run().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        opts: GraphSimOptions,
    }
    /// Options as `sim graph` would parse them from `args`.
    pub(super) fn options(args: &[&str]) -> GraphSimOptions {
        Cli::parse_from(std::iter::once("sim").chain(args.iter().copied())).opts
    }

    #[test]
    fn the_defaults_are_those_of_the_contract() {
        let o = options(&[]);
        assert_eq!(o.port, 8500);
        assert_eq!(o.mailboxes.len(), 3);
        assert_eq!(o.mailboxes[2], "invoices-2@contoso.example");
        assert_eq!(
            (o.concurrency_limit, o.window_limit, o.window_ms),
            (4, 10_000, 600_000)
        );
        assert_eq!(o.subscription_max_minutes, 10_080);
        assert_eq!(o.list_paging, ListPaging::Skiptoken);
        assert_eq!((o.app_limit, o.app_window_ms), (130_000, 10_000));
        assert_eq!(o.trickle_per_s, 0.0);
    }

    #[test]
    fn a_mailbox_count_names_a_fleet_of_mailboxes_instead_of_the_list() {
        let names = options(&["--mailbox-count", "2000"]).mailbox_names();
        assert_eq!(names.len(), 2000);
        assert_eq!(names[1999], "invoices-1999@contoso.example");
        assert_eq!(options(&[]).mailbox_names().len(), 3);
        let both = ["sim", "--mailbox-count", "2", "--mailboxes", "a@x.example"];
        assert!(Cli::try_parse_from(both).is_err(), "one or the other");
    }
}
