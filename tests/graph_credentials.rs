//! App-only Graph credentials without a client secret (issue 12): the daemon against the Graph
//! simulator, which checks each credential as Entra ID does. Test key material is made with
//! openssl at test time, in the test's own directory.

mod common;

use common::{wait_until, World, BIN, MAILBOXES};
use ms1_sim::private_ca::make_app_certificate;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const MINUTE: Duration = Duration::from_secs(60);

/// `{name}.pem` and `{name}.key` (self-signed RSA, PKCS#8) in the world's directory.
fn app_certificate(w: &World, name: &str) -> (PathBuf, PathBuf) {
    let dir = w.dir.path().join("certificates");
    make_app_certificate(&dir, name).expect("openssl makes an RSA certificate");
    (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    )
}

fn shown(p: &Path) -> String {
    p.display().to_string()
}

/// Daemon settings for the certificate credential, with no client secret at all.
fn certificate_settings(cert: &Path, key: &Path) -> Vec<(String, String)> {
    vec![
        ("MS1__GRAPH__CREDENTIAL".into(), "certificate".into()),
        ("MS1__GRAPH__CLIENT_SECRET".into(), String::new()),
        ("MS1__GRAPH__CLIENT_CERTIFICATE".into(), shown(cert)),
        (
            "MS1__GRAPH__CLIENT_CERTIFICATE_KEY".into(),
            format!("file:{}", shown(key)),
        ),
    ]
}

fn as_refs(v: &[(String, String)]) -> Vec<(&str, &str)> {
    v.iter().map(|(k, s)| (k.as_str(), s.as_str())).collect()
}

fn mail_everywhere(w: &World, count: u64) {
    for mb in MAILBOXES {
        w.mail(mb, count);
    }
}

#[test]
fn a_certificate_credential_signs_in_without_a_secret_and_mail_flows() {
    let w = World::new(&["--rate-limit-per-min", "0"]);
    let (cert, key) = app_certificate(&w, "app");
    let mut w = w;
    w.graph = Some(common::Sim::graph(&["--client-certificate", &shown(&cert)]));
    let daemon = w.graph_daemon(&as_refs(&certificate_settings(&cert, &key)));
    mail_everywhere(&w, 5);
    w.wait_delivered(15, MINUTE, &daemon);
    let stats = w.graph().stats();
    assert!(stats["certificate_tokens"].as_u64() >= Some(1), "{stats}");
    assert_eq!(stats["assertions_refused"], 0, "{stats}");
    assert_eq!(stats["violations"], 0, "{stats}");
    w.assert_drained();
}

#[test]
fn a_certificate_the_app_does_not_know_is_refused_and_named_in_ready() {
    let w = World::new(&["--rate-limit-per-min", "0"]);
    let (registered, _) = app_certificate(&w, "registered");
    let (stranger, stranger_key) = app_certificate(&w, "stranger");
    let mut w = w;
    w.graph = Some(common::Sim::graph(&[
        "--client-certificate",
        &shown(&registered),
    ]));
    let daemon = w.graph_daemon(&as_refs(&certificate_settings(&stranger, &stranger_key)));
    mail_everywhere(&w, 2);
    let mailbox = MAILBOXES[0];
    let refused = wait_until(MINUTE, || {
        let why = daemon.ready().1["degraded_sources"][mailbox].to_string();
        why.contains("refused the certificate credential") && why.contains("AADSTS700027")
    });
    assert!(refused, "{}\n{}", daemon.ready().1, daemon.log_tail(20));
    let key_text = std::fs::read_to_string(&stranger_key).unwrap();
    let key_line = key_text.lines().nth(1).unwrap();
    let ready = daemon.ready().1.to_string();
    assert!(!ready.contains(key_line), "the key leaked: {ready}");
    assert!(
        !daemon.log_tail(200).contains(key_line),
        "the key is in the log"
    );
    assert_eq!(w.ms4.stats()["unique_records"], 0);
    assert!(w.graph().stats()["assertions_refused"].as_u64() >= Some(1));
}

#[test]
fn check_config_refuses_a_key_that_is_not_the_certificates_naming_the_setting_not_the_key() {
    let w = World::new(&[]);
    let (cert, _) = app_certificate(&w, "app");
    let (_, other_key) = app_certificate(&w, "other");
    let check = |key: &Path, cert: &Path| {
        let mut env = certificate_settings(cert, key);
        env.extend([
            ("MS1__GRAPH__TENANT_ID".into(), "contoso".into()),
            ("MS1__GRAPH__CLIENT_ID".into(), "ms1-app".into()),
            ("MS1__GRAPH__MAILBOXES".into(), MAILBOXES[0].into()),
        ]);
        let out = Command::new(BIN)
            .arg("check-config")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, text) = check(&other_key, &cert);
    assert!(!ok, "{text}");
    assert!(
        text.contains("graph.client_certificate_key") && text.contains("not the private key"),
        "{text}"
    );
    let key_text = std::fs::read_to_string(&other_key).unwrap();
    assert!(!text.contains(key_text.lines().nth(1).unwrap()), "{text}");

    let not_pem = w.dir.path().join("not-a-certificate.pem");
    std::fs::write(&not_pem, "hello").unwrap();
    let (ok, text) = check(&other_key, &not_pem);
    assert!(!ok && text.contains("graph.client_certificate:"), "{text}");
    let (ok, text) = check(&w.dir.path().join("absent.key"), &cert);
    assert!(
        !ok && text.contains("graph.client_certificate_key"),
        "{text}"
    );
}

/// After a rotation on disk, the simulator is told to accept only the new credential
/// (`accept`) and the daemon's tokens expire: a new token must come for the new credential
/// (counted in `counter`), 9 more messages flow, and the old credential is never presented
/// again (nothing refused). The world holds 9 delivered messages before.
fn rotation_is_picked_up(w: &World, daemon: &common::Daemon, mut accept: Value, counter: &str) {
    let issued = |w: &World| w.graph().stats()[counter].as_u64().unwrap_or(0);
    let before = issued(w);
    accept["token_lifetime_s"] = json!(5);
    w.graph().configure(accept);
    assert!(
        wait_until(MINUTE, || issued(w) > before),
        "no token for the rotated credential: {}\n{}",
        w.graph().stats(),
        daemon.log_tail(20)
    );
    mail_everywhere(w, 3);
    w.wait_delivered(18, MINUTE, daemon);
    let stats = w.graph().stats();
    assert_eq!(
        stats["assertions_refused"], 0,
        "the old credential was never presented again: {stats}"
    );
    assert_eq!(w.ms4.stats()["duplicate_records"], 0);
}

/// Replaces `to` with a copy of `from` in one step (a rename), as rotation tools do.
fn replace(from: &Path, to: &Path) {
    replace_text(to, &std::fs::read_to_string(from).unwrap());
}

#[test]
fn a_rotated_certificate_and_key_are_used_without_a_restart() {
    let w = World::new(&["--rate-limit-per-min", "0"]);
    let (old, old_key) = app_certificate(&w, "old");
    let (new, new_key) = app_certificate(&w, "new");
    let dir = w.dir.path().join("live");
    std::fs::create_dir_all(&dir).unwrap();
    let (cert, key) = (dir.join("graph.pem"), dir.join("graph.key"));
    std::fs::copy(&old, &cert).unwrap();
    std::fs::copy(&old_key, &key).unwrap();
    let mut w = w;
    w.graph = Some(common::Sim::graph(&["--client-certificate", &shown(&old)]));
    let daemon = w.graph_daemon(&as_refs(&certificate_settings(&cert, &key)));
    mail_everywhere(&w, 3);
    w.wait_delivered(9, MINUTE, &daemon);

    // The operator rotates the files, uploads the new certificate and removes the old one.
    replace(&new, &cert);
    replace(&new_key, &key);
    rotation_is_picked_up(
        &w,
        &daemon,
        json!({"client_certificates": [shown(&new)]}),
        "certificate_tokens",
    );
}

/// Daemon settings for the managed identity of the simulated machine: no tenant, client id or
/// secret.
fn managed_identity_settings(w: &World, client_id: &str) -> Vec<(String, String)> {
    vec![
        ("MS1__GRAPH__CREDENTIAL".into(), "managed_identity".into()),
        ("MS1__GRAPH__TENANT_ID".into(), String::new()),
        ("MS1__GRAPH__CLIENT_ID".into(), String::new()),
        ("MS1__GRAPH__CLIENT_SECRET".into(), String::new()),
        (
            "MS1__GRAPH__MANAGED_IDENTITY_ENDPOINT".into(),
            format!("{}/metadata/identity/oauth2/token", w.graph().url),
        ),
        (
            "MS1__GRAPH__MANAGED_IDENTITY_CLIENT_ID".into(),
            client_id.into(),
        ),
    ]
}

/// MS4 and a Graph simulator whose IMDS knows the user-assigned identity `client_id`.
fn machine_with_identity(client_id: &str) -> World {
    World::with_graph(
        &["--rate-limit-per-min", "0"],
        &["--managed-identity-client-id", client_id],
    )
}

#[test]
fn a_managed_identity_gets_its_tokens_from_imds_with_the_metadata_header_and_mail_flows() {
    let w = machine_with_identity("mi-ingest");
    let daemon = w.graph_daemon(&as_refs(&managed_identity_settings(&w, "mi-ingest")));
    mail_everywhere(&w, 5);
    w.wait_delivered(15, MINUTE, &daemon);
    let stats = w.graph().stats();
    // The simulated IMDS refuses a request without `Metadata: true`: none was refused.
    assert!(stats["imds_tokens"].as_u64() >= Some(1), "{stats}");
    assert_eq!(stats["imds_refused"], 0, "{stats}");
    assert_eq!(
        stats["token_requests"], 0,
        "no client credentials grant: {stats}"
    );
    assert_eq!(stats["violations"], 0, "{stats}");
    w.assert_drained();
}

#[test]
fn a_managed_identity_the_machine_does_not_have_is_named_in_ready() {
    let w = machine_with_identity("mi-ingest");
    let daemon = w.graph_daemon(&as_refs(&managed_identity_settings(&w, "mi-other")));
    mail_everywhere(&w, 1);
    let refused = wait_until(MINUTE, || {
        let why = daemon.ready().1["degraded_sources"][MAILBOXES[0]].to_string();
        why.contains("refused the managed identity credential (400 invalid_request)")
    });
    assert!(refused, "{}\n{}", daemon.ready().1, daemon.log_tail(20));
    assert_eq!(w.ms4.stats()["unique_records"], 0);
}

#[test]
fn a_workload_identity_presents_the_projected_token_and_rereads_it_after_rotation() {
    let w = World::with_graph(
        &["--rate-limit-per-min", "0"],
        &["--federated-assertion", "k8s-sa-token-1"],
    );
    let token_file = w.dir.path().join("azure-identity-token");
    std::fs::write(&token_file, "k8s-sa-token-1\n").unwrap();
    // As the AKS webhook sets them: tenant, client id and token file come from AZURE_*.
    let daemon = w.graph_daemon(&[
        ("MS1__GRAPH__CREDENTIAL", "workload_identity"),
        ("MS1__GRAPH__TENANT_ID", ""),
        ("MS1__GRAPH__CLIENT_ID", ""),
        ("MS1__GRAPH__CLIENT_SECRET", ""),
        ("AZURE_TENANT_ID", "contoso"),
        ("AZURE_CLIENT_ID", "ms1-app"),
        ("AZURE_FEDERATED_TOKEN_FILE", &shown(&token_file)),
    ]);
    mail_everywhere(&w, 3);
    w.wait_delivered(9, MINUTE, &daemon);
    assert!(
        w.graph().stats()["federated_tokens"].as_u64() >= Some(1),
        "{}",
        w.graph().stats()
    );

    // The cluster rotates the projected token; only the new one is valid from now on, and the
    // tokens the daemon holds expire.
    replace_text(&token_file, "k8s-sa-token-2\n");
    rotation_is_picked_up(
        &w,
        &daemon,
        json!({"federated_assertion": "k8s-sa-token-2"}),
        "federated_tokens",
    );
}

/// Replaces the file `to` with `text` in one step (a rename), as the kubelet does.
fn replace_text(to: &Path, text: &str) {
    let next = to.with_extension("next");
    std::fs::write(&next, text).unwrap();
    std::fs::rename(&next, to).unwrap();
}
