//! Secrets never leak (issue 10, item 7): `check-config` (the unit's `ExecStartPre`, so its
//! output lands in the journal) prints no password, key or token, yet the daemon uses them —
//! from a systemd credentials directory; `/ready` without the control token tells states, not
//! the error text behind them (users, hosts, the servers' own words).

mod common;

use common::*;
use ms1_sim::dovecot_launcher::PrivateDovecot;
use std::process::Command;
use std::time::Duration;

const REDIS_PASSWORD: &str = "redis-pw-Zq81";
const CONTROL_TOKEN: &str = "control-token-0123456789abcdefghijklmnop";
const GRAPH_SECRET: &str = "graph-secret-Kx77";
const CLIENT_STATE: &str = "client-state-Lm42";

/// A systemd credentials directory (what `LoadCredential=` makes) holding the secrets.
fn credentials(w: &World) -> std::path::PathBuf {
    let dir = w.dir.path().join("credentials");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, value) in [
        ("ms4-key", API_KEY),
        ("control-token", CONTROL_TOKEN),
        ("graph-secret", GRAPH_SECRET),
        ("client-state", CLIENT_STATE),
    ] {
        std::fs::write(dir.join(name), format!("{value}\n")).unwrap();
    }
    dir
}

/// A configuration whose secrets are all `credential:` references and whose redis.url carries
/// a password.
fn config(w: &World) -> std::path::PathBuf {
    let path = w.dir.path().join("ms1.toml");
    std::fs::write(
        &path,
        format!(
            "[redis]\nurl = \"redis://:{REDIS_PASSWORD}@127.0.0.1:{port}\"\n\
             [ms4]\nbase_url = \"{ms4}\"\napi_key = \"credential:ms4-key\"\n\
             [graph]\nclient_secret = \"credential:graph-secret\"\n\
             [webhook]\nclient_state = \"credential:client-state\"\n\
             [control]\ntoken = \"credential:control-token\"\n",
            port = w.redis.port(),
            ms4 = w.ms4.url,
        ),
    )
    .unwrap();
    path
}

fn assert_no_secret(what: &str, text: &str) {
    for secret in [
        REDIS_PASSWORD,
        API_KEY,
        CONTROL_TOKEN,
        GRAPH_SECRET,
        CLIENT_STATE,
    ] {
        assert!(!text.contains(secret), "{what} shows a secret:\n{text}");
    }
}

#[test]
fn check_config_prints_no_secret_yet_the_daemon_uses_the_credentials() {
    let w = World::new(&["--rate-limit-per-min", "0"]);
    let creds = credentials(&w);
    let config = config(&w);
    let out = Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&config)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CREDENTIALS_DIRECTORY", &creds)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_no_secret("check-config's stdout", &stdout);
    assert_no_secret("check-config's stderr", &stderr);
    assert!(
        stdout.contains(&format!("redis://:****@127.0.0.1:{}", w.redis.port())),
        "{stdout}"
    );

    // The daemon reads the same credentials: MS4 takes its key (the simulator refuses any
    // other with 401), Redis its password, the control API its token.
    w.load(0..5, |_| false);
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg(REDIS_PASSWORD)
        .query(&mut w.redis())
        .unwrap();
    let creds = creds.display().to_string();
    let config = config.display().to_string();
    let redis_url = format!("redis://:{REDIS_PASSWORD}@127.0.0.1:{}", w.redis.port());
    let daemon = w.daemon(&[
        ("MS1_CONFIG", config.as_str()),
        ("CREDENTIALS_DIRECTORY", creds.as_str()),
        // The world's settings (environment) would override the file's.
        ("MS1__REDIS__URL", redis_url.as_str()),
        ("MS1__MS4__API_KEY", "credential:ms4-key"),
    ]);
    w.wait_delivered(5, Duration::from_secs(30), &daemon);
    assert!(
        w.ms4.stats()["responses"].get("401").is_none(),
        "{}",
        w.ms4.stats()
    );
    let status = format!("{}/session/status", daemon.control);
    assert_eq!(get(&status).0, 401, "the token is required");
    assert_eq!(bearer_get(&status, CONTROL_TOKEN).0, 200);
    assert_no_secret("the daemon's log", &daemon.log_tail(10_000));
}

/// GET with `Authorization: Bearer <token>`: (status, body).
fn bearer_get(url: &str, token: &str) -> (u16, String) {
    let answer = ureq::get(url)
        .set("Authorization", &format!("Bearer {token}"))
        .timeout(Duration::from_secs(10))
        .call();
    match answer {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

#[test]
fn ready_without_the_token_shows_states_and_no_error_text() {
    const USER: &str = "invoices@contoso.example";
    let w = World::new(&[]);
    let dc = PrivateDovecot::start(&w.dir.path().join("dovecot"), &[(USER, "right")], false)
        .expect("dovecot starts (apt-get install dovecot-imapd)");
    let path = w.dir.path().join("imap.toml");
    std::fs::write(
        &path,
        format!(
            "[[imap.sources]]\nname = \"bad\"\nhost = \"127.0.0.1\"\nport = {}\ntls = \"none\"\n\
             username = \"{USER}\"\npassword = \"wrong-pw-Qy3\"\npoll_interval_s = 1\n",
            dc.port()
        ),
    )
    .unwrap();
    let path = path.display().to_string();
    let daemon = w.daemon(&[
        ("MS1_CONFIG", path.as_str()),
        ("MS1__CONTROL__TOKEN", CONTROL_TOKEN),
    ]);
    let ready = format!("{}/ready", daemon.control);
    let degraded = wait_until(Duration::from_secs(30), || {
        daemon.ready().1["degraded_source_count"].as_u64() == Some(1)
    });
    let (public_status, public) = get(&ready);
    assert!(degraded, "{public}\n{}", daemon.log_tail(20));
    assert_eq!(
        public_status, 200,
        "a degraded source keeps the daemon ready"
    );
    let body: serde_json::Value = serde_json::from_str(&public).unwrap();
    assert!(body.get("reasons").is_none(), "{public}");
    assert!(body.get("degraded_sources").is_none(), "{public}");
    for text in [
        USER,
        "127.0.0.1",
        "wrong-pw-Qy3",
        "imap:bad",
        "LOGIN",
        "password",
    ] {
        assert!(
            !public.contains(text),
            "`{text}` shown without the token: {public}"
        );
    }
    assert_eq!(body["redis"], true, "{public}");

    // With the token: the whole story.
    let (status, full) = bearer_get(&ready, CONTROL_TOKEN);
    assert_eq!(status, public_status);
    let body: serde_json::Value = serde_json::from_str(&full).unwrap();
    let reason = body["degraded_sources"]["imap:bad"].as_str().unwrap_or("");
    assert!(reason.contains(USER), "{full}");
    assert!(!full.contains("wrong-pw-Qy3"), "{full}");
    // A wrong token sees what no token sees.
    let (_, wrong) = bearer_get(&ready, "not-the-token");
    assert!(!wrong.contains(USER), "{wrong}");
}
