//! Several Entra ID tenants in one daemon (`[[graph.tenants]]`, issue 12): each signs in with
//! its own credential; one tenant's refused credential degrades only its own mailboxes, and
//! its rotated secret is picked up without a restart. Each tenant here is a Graph simulator
//! of its own (its own token endpoint, app and mailboxes), as two organisations are.

mod common;

use common::{wait_until, Daemon, Sim, World};
use std::time::Duration;

const MINUTE: Duration = Duration::from_secs(60);
const CONTOSO: [&str; 2] = ["ap-0@contoso.example", "ap-1@contoso.example"];
const FABRIKAM: &str = "ap@fabrikam.example";

/// The value of the metric line holding every one of `parts`, if any.
fn metric_with(daemon: &Daemon, parts: &[&str]) -> Option<f64> {
    daemon
        .metrics()
        .lines()
        .filter(|l| !l.starts_with('#') && parts.iter().all(|p| l.contains(p)))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

fn mail(sim: &Sim, mailbox: &str, count: u64) {
    sim.post(
        "/_sim/mail",
        serde_json::json!({"mailbox": mailbox, "count": count}),
    );
}

#[test]
fn one_tenants_refused_credential_leaves_the_other_tenants_mail_flowing() {
    let w = World::new(&["--rate-limit-per-min", "0"]);
    let contoso = Sim::graph(&["--tenant", "contoso", "--mailboxes", &CONTOSO.join(",")]);
    let fabrikam = Sim::graph(&[
        "--tenant",
        "fabrikam",
        "--client-id",
        "fabrikam-app",
        "--client-secret",
        "fabrikam-secret",
        "--mailboxes",
        FABRIKAM,
    ]);
    // Fabrikam's secret comes from a file that holds a wrong one for now.
    let secret_file = w.dir.path().join("fabrikam-secret");
    std::fs::write(&secret_file, "an-expired-secret\n").unwrap();
    let config = w.dir.path().join("tenants.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[graph]
poll_interval_s = 1

[[graph.tenants]]
name = "contoso"
tenant_id = "contoso"
client_id = "ms1-app"
client_secret = "sim-secret"
base_url = "{c}/v1.0"
authority = "{c}/{{tenant}}"
mailboxes = ["{c0}", "{c1}"]

[[graph.tenants]]
name = "fabrikam"
tenant_id = "fabrikam"
client_id = "fabrikam-app"
client_secret = "file:{secret}"
base_url = "{f}/v1.0"
authority = "{f}/{{tenant}}"
mailboxes = ["{fm}"]
"#,
            c = contoso.url,
            f = fabrikam.url,
            c0 = CONTOSO[0],
            c1 = CONTOSO[1],
            fm = FABRIKAM,
            secret = secret_file.display(),
        ),
    )
    .unwrap();
    let daemon = w.daemon(&[("MS1_CONFIG", config.to_str().unwrap())]);
    for mb in CONTOSO {
        mail(&contoso, mb, 5);
    }
    mail(&fabrikam, FABRIKAM, 4);

    // Contoso flows while Fabrikam is refused.
    w.wait_delivered(10, MINUTE, &daemon);
    let refused = wait_until(MINUTE, || {
        let why = daemon.ready().1["degraded_sources"][FABRIKAM].to_string();
        why.contains("tenant fabrikam") && why.contains("client secret")
    });
    let ready = daemon.ready().1;
    assert!(refused, "{ready}\n{}", daemon.log_tail(30));
    for mb in CONTOSO {
        assert!(ready["degraded_sources"][mb].is_null(), "{ready}");
    }
    // Once for the whole tenant too: the line to read when a tenant has 500 mailboxes.
    let tenant = ready["degraded_sources"]["tenant:fabrikam"].to_string();
    assert!(
        tenant.contains("refused the client secret credential"),
        "{ready}"
    );
    assert!(
        ready["degraded_sources"]["tenant:contoso"].is_null(),
        "{ready}"
    );
    assert!(
        !ready.to_string().contains("an-expired-secret")
            && !daemon.log_tail(300).contains("an-expired-secret"),
        "the secret leaked"
    );
    assert!(
        metric_with(
            &daemon,
            &[
                "ms1_oauth_token_failures_total",
                "graph:fabrikam",
                "refused"
            ]
        ) >= Some(1.0),
        "{}",
        daemon.metrics()
    );
    assert_eq!(
        metric_with(
            &daemon,
            &["ms1_oauth_token_failures_total", "graph:contoso", "refused"]
        ),
        Some(0.0)
    );
    assert!(
        metric_with(
            &daemon,
            &["ms1_graph_requests_total", "tenant=\"contoso\"", "\"ok\""]
        ) >= Some(1.0)
    );
    assert_eq!(fabrikam.stats()["tokens_issued"].as_u64().unwrap_or(0), 0);

    // The operator rotates the secret: picked up at the next poll, no restart.
    std::fs::write(&secret_file, "fabrikam-secret\n").unwrap();
    w.wait_delivered(14, MINUTE, &daemon);
    let cleared = wait_until(MINUTE, || {
        let ready = daemon.ready().1;
        ready["degraded_sources"][FABRIKAM].is_null()
            && ready["degraded_sources"]["tenant:fabrikam"].is_null()
    });
    assert!(cleared, "{}", daemon.ready().1);
    assert_eq!(contoso.stats()["violations"], 0);
    assert_eq!(fabrikam.stats()["violations"], 0);
    w.assert_drained();
}
