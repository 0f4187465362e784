//! The web console in a real browser: a headless Chromium ([`browser`]) driven over WebDriver
//! against the real daemon, a private redis-server and the simulators. Sign-in, mail flowing on
//! the overview, stopping and starting the session through the confirmation, dead letters found
//! by their reason, opened, replayed (and delivered) or purged, and the requests the console's
//! security must refuse. Each page is photographed into `target/console-screenshots/`.

#[path = "../common/mod.rs"]
mod common;

mod browser;

use browser::Browser;
use common::{Daemon, World, MAILBOXES};
use ms1_actors::store::schema::inbound;
use serde_json::{json, Value};
use std::time::Duration;

const TOKEN: &str = "console-token-7c1e";

/// A runtime for a test's browser, when this machine has one (see [`browser::available`]).
fn browser_runtime() -> Option<tokio::runtime::Runtime> {
    browser::available().then(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    })
}

/// A control API call from outside the browser: `cookie` is a `Cookie` header, `bearer` the
/// control token; returns the status and the JSON answer.
fn call(
    d: &Daemon,
    method: &str,
    path: &str,
    cookie: Option<&str>,
    bearer: Option<&str>,
) -> (u16, Value) {
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(10))
        .redirects(0)
        .build();
    let mut req = agent.request(method, &format!("{}{path}", d.control));
    if let Some(c) = cookie {
        req = req.set("Cookie", c);
    }
    if let Some(t) = bearer {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let answer = if method == "GET" {
        req.call()
    } else {
        req.send_json(json!({}))
    };
    let (code, body) = match answer {
        Ok(r) => (r.status(), r.into_string().unwrap_or_default()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap_or_default()),
        Err(e) => panic!("{method} {path}: {e}"),
    };
    (code, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// The session's state as the API tells it.
fn session_status(d: &Daemon) -> String {
    let (code, status) = call(d, "GET", "/session/status", None, Some(TOKEN));
    assert_eq!(code, 200, "{status}");
    status["status"].as_str().unwrap_or_default().to_string()
}

/// A number as the console prints it ("1,234"); `None` while it says "…" or "–".
fn shown_number(text: &str) -> Option<u64> {
    text.replace(',', "").trim().parse().ok()
}

/// The dead-letter rows shown, read in one go: (id, reason, key).
async fn dead_letter_rows(b: &Browser) -> Vec<(String, String, String)> {
    let rows = b
        .run(
            r##"return [...document.querySelectorAll("#dead-letters tr[data-id]")]
                .map((tr) => [tr.dataset.id, tr.cells[3].textContent, tr.cells[6].textContent]);"##,
        )
        .await;
    serde_json::from_value(rows).expect("rows as [id, reason, key]")
}

/// Signs in with the control token; lands on the overview.
async fn sign_in(b: &Browser) {
    b.open("/console/login").await;
    b.find("#token").await.send_keys(TOKEN).await.unwrap();
    b.click("#login").await;
    b.wait_path("/console/overview").await;
}

#[test]
fn an_operator_signs_in_watches_mail_flow_and_stops_and_starts_the_session_after_confirming() {
    let Some(rt) = browser_runtime() else { return };
    let world = World::with_graph(&["--rate-limit-per-min", "0"], &[]);
    let d = world.graph_daemon(&[("MS1__CONTROL__TOKEN", TOKEN)]);
    rt.block_on(async {
        let b = Browser::start(&d.control).await;
        println!(
            "console screenshots: {}",
            browser::screenshot_dir().display()
        );

        // A page without a session sends the browser to the sign-in.
        b.open("/console/overview").await;
        b.wait_path("/console/login").await;
        b.screenshot("login").await;

        // A wrong token is refused, saying so; the right one opens the overview.
        b.find("#token")
            .await
            .send_keys("not-the-token")
            .await
            .unwrap();
        b.click("#login").await;
        b.wait_text("#login-problem", "the refusal", |t| {
            t == "That is not the control token."
        })
        .await;
        assert_eq!(b.path().await, "/console/login");
        b.screenshot("login-refused").await;
        sign_in(&b).await;
        b.wait_text("#session-state", "running", |t| t == "running")
            .await;

        // Mail arrives: the delivered counter climbs past it and the chart has a bar.
        let before = shown_number(
            &b.wait_text("#count-delivered", "a number", |t| {
                shown_number(t).is_some()
            })
            .await,
        )
        .unwrap();
        for mailbox in MAILBOXES {
            world.mail(mailbox, 10);
        }
        world.wait_at_least(30, Duration::from_secs(60), &d);
        b.wait_text("#count-delivered", "30 more delivered", |t| {
            shown_number(t).is_some_and(|n| n >= before + 30)
        })
        .await;
        // Read in one script: a refresh redraws the bars every 3 s.
        let deadline = std::time::Instant::now() + browser::PATIENCE;
        let bars = r##"return [...document.querySelectorAll("#rate-chart rect")]
            .filter((r) => Number(r.getAttribute("height")) > 0).length;"##;
        while b.run(bars).await.as_u64() == Some(0) {
            assert!(
                std::time::Instant::now() < deadline,
                "the chart never showed a delivered minute"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        assert_ne!(b.text("#rate-hour").await, "0");
        // The daemon runs without an MS4 rate limit (MS1__MS4__RATE_LIMIT_PER_MIN=0).
        b.wait_text("#budget-limit", "no limit", |t| t == "none")
            .await;
        b.screenshot("overview").await;

        // Stopping asks first; "Cancel" leaves the session running.
        let stop = "Stop the running session? Polling stops; what is queued is still delivered.";
        b.confirm("#session-stop", stop, false).await;
        assert_eq!(session_status(&d), "running");
        b.confirm("#session-stop", stop, true).await;
        b.wait_text("#session-state", "stopped", |t| t == "stopped")
            .await;
        b.wait_text("#result", "the stop", |t| {
            t.starts_with("Session ") && t.ends_with(" stopped.")
        })
        .await;
        assert_eq!(session_status(&d), "stopped");
        assert!(b.find("#session-start").await.is_enabled().await.unwrap());
        assert!(!b.find("#session-stop").await.is_enabled().await.unwrap());

        // Starting asks too, naming the polling mode.
        b.confirm(
            "#session-start",
            "Start a session (scheduled polling)?",
            true,
        )
        .await;
        b.wait_text("#session-state", "running", |t| t == "running")
            .await;
        b.wait_text("#result", "the start", |t| {
            t.starts_with("Session started: ")
        })
        .await;
        assert_eq!(session_status(&d), "running");

        // The other pages: every mailbox on Sources, every stream on Queues.
        b.click("#nav-sources").await;
        b.wait_path("/console/sources").await;
        for mailbox in MAILBOXES {
            b.wait_text(
                &format!("#sources tr[data-source=\"{mailbox}\"]"),
                "the mailbox",
                |t| t.contains(mailbox),
            )
            .await;
        }
        b.screenshot("sources").await;
        b.click("#nav-queues").await;
        b.wait_path("/console/queues").await;
        for stream in ["inbound", "outbound"] {
            b.wait_text(
                &format!("#streams tr[data-stream$=\"{stream}\"]"),
                "the stream",
                |t| t.contains(stream),
            )
            .await;
        }
        b.screenshot("queues").await;
        b.close().await;
    });
}

#[test]
fn dead_letters_are_found_by_reason_opened_replayed_into_ms4_and_purged_after_a_confirmation() {
    let Some(rt) = browser_runtime() else { return };
    let world = World::new(&["--rate-limit-per-min", "0"]);
    let d = world.daemon(&[("MS1__CONTROL__TOKEN", TOKEN)]);
    // 40 messages, 4 of which MS4 refuses (dead letters at delivery), and 2 that are not Graph
    // messages at all (dead letters at processing).
    world.load(0..40, |n| n % 10 == 0);
    let mut con = world.redis();
    for _ in 0..2 {
        let _: String = redis::cmd("XADD")
            .arg(format!("{}stream:inbound", common::PREFIX))
            .arg("*")
            .arg(inbound::MAILBOX)
            .arg(MAILBOXES[0])
            .arg(inbound::PAYLOAD)
            .arg("{not json")
            .query(&mut con)
            .unwrap();
    }
    world.wait_delivered(36, Duration::from_secs(60), &d);
    assert!(common::wait_until(Duration::from_secs(30), || world
        .dead_letters()
        .len()
        == 6));

    rt.block_on(async {
        let b = Browser::start(&d.control).await;
        sign_in(&b).await;
        b.click("#nav-dead-letters").await;
        b.wait_path("/console/dead-letters").await;
        b.wait_count("#dead-letters tr[data-id]", 6).await;

        // Found by their reason.
        b.find("#f-reason")
            .await
            .send_keys("MS4 rejected")
            .await
            .unwrap();
        b.click("#f-apply").await;
        b.wait_count("#dead-letters tr[data-id]", 4).await;
        let rows = dead_letter_rows(&b).await;
        assert!(
            rows.iter()
                .all(|(_, reason, _)| reason.contains("MS4 rejected")),
            "{rows:?}"
        );
        b.wait_text("#dlq-total", "the totals", |t| {
            t == "4 shown · 6 in the dead-letter stream"
        })
        .await;

        // Opened: the reason, MS4's answer and the record.
        let (first_id, _, first_key) = rows[0].clone();
        b.click(&format!("tr[data-id=\"{first_id}\"] button.open"))
            .await;
        b.wait_text("#dl-reason", "the reason", |t| t.contains("MS4 rejected"))
            .await;
        assert_eq!(b.text("#dl-id").await, first_id);
        assert!(b.text("#dl-response").await.contains("invalid record"));
        assert!(b.text("#dl-payload").await.contains("not-an-address"));
        b.screenshot("dead-letters").await;

        // MS4 now accepts what it refused: the one replayed is delivered.
        world.ms4.configure(json!({"lenient_sender": true}));
        b.click(&format!("tr[data-id=\"{first_id}\"] input.pick"))
            .await;
        b.confirm("#replay-selected", "Replay 1 dead letter selected?", true)
            .await;
        b.wait_text("#result", "the replay", |t| t == "Replayed 1 dead letter.")
            .await;
        world.wait_delivered(37, Duration::from_secs(60), &d);
        assert!(world.ms4.keys().contains(&first_key), "{first_key}");
        b.wait_count("#dead-letters tr[data-id]", 3).await;
        assert_eq!(world.dead_letters().len(), 5);

        // Purging one asks, states the count, and deletes only it.
        let (second_id, _, second_key) = dead_letter_rows(&b).await[0].clone();
        assert_ne!(second_id, first_id);
        b.click(&format!("tr[data-id=\"{second_id}\"] input.pick"))
            .await;
        let purge_one = "Purge 1 dead letter selected? They are deleted for good.";
        b.confirm("#purge-selected", purge_one, true).await;
        b.wait_text("#result", "the purge", |t| t == "Purged 1 dead letter.")
            .await;
        b.wait_count("#dead-letters tr[data-id]", 2).await;
        assert_eq!(world.dead_letters().len(), 4);
        assert!(world
            .dead_letters()
            .iter()
            .all(|dl| dl.get("key") != Some(&second_key)));
        assert_eq!(world.ms4.stats()["unique_records"], 37);

        // All matching another reason: the confirmation counts them; Cancel keeps them.
        let reason = b.find("#f-reason").await;
        reason.clear().await.unwrap();
        reason.send_keys("not a Graph message").await.unwrap();
        b.click("#f-apply").await;
        b.wait_count("#dead-letters tr[data-id]", 2).await;
        let purge_two = "Purge 2 dead letters matching the filter? They are deleted for good.";
        b.confirm("#purge-matching", purge_two, false).await;
        assert_eq!(world.dead_letters().len(), 4);
        b.confirm("#purge-matching", purge_two, true).await;
        b.wait_text("#result", "the purge", |t| t == "Purged 2 dead letters.")
            .await;
        b.wait_count("#dead-letters tr[data-id]", 0).await;
        let left = world.dead_letters();
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(left.iter().all(|dl| dl["stage"] == "deliver"));
        assert_eq!(world.ms4.stats()["unique_records"], 37);
        assert_eq!(world.ms4.stats()["duplicate_records"], 0);
        b.close().await;
    });
}

#[test]
fn requests_without_the_cookie_or_the_csrf_token_are_refused_and_logout_ends_the_session() {
    let Some(rt) = browser_runtime() else { return };
    let world = World::new(&["--rate-limit-per-min", "0"]);
    let d = world.daemon(&[("MS1__CONTROL__TOKEN", TOKEN)]);
    rt.block_on(async {
        let b = Browser::start(&d.control).await;
        sign_in(&b).await;
        b.wait_text("#session-state", "running", |t| t == "running")
            .await;

        // From inside the signed-in page: a POST without the CSRF header, or with a wrong one,
        // is refused even though the cookie goes along; with it, it is done.
        let post = |csrf: &str| {
            format!(
                r#"const done = arguments[arguments.length - 1];
                const headers = {{ "Content-Type": "application/json" }};
                {csrf}
                fetch("/session/stop", {{ method: "POST", credentials: "same-origin", headers,
                    body: JSON.stringify({{ reason: "browser test" }}) }})
                  .then(async (r) => done([r.status, await r.text()]), (e) => done([0, String(e)]));"#
            )
        };
        let without = b.run_async(&post("")).await;
        assert_eq!(without[0], 403, "{without}");
        assert!(without[1].as_str().unwrap().contains("CSRF"), "{without}");
        let wrong = b
            .run_async(&post(r#"headers["X-CSRF-Token"] = "forged";"#))
            .await;
        assert_eq!(wrong[0], 403, "{wrong}");
        assert_eq!(session_status(&d), "running");
        let with = b
            .run_async(&post(
                r#"headers["X-CSRF-Token"] = document.querySelector('meta[name="csrf-token"]').content;"#,
            ))
            .await;
        assert_eq!(with[0], 200, "{with}");
        assert!(
            common::wait_until(browser::PATIENCE, || session_status(&d) == "stopped"),
            "the session never stopped: {}",
            session_status(&d)
        );

        // From outside: no cookie is 401; the cookie alone reads but cannot change anything.
        let cookie = b.client.get_named_cookie("ms1_console").await.unwrap();
        assert_eq!(cookie.http_only(), Some(true));
        let cookie = format!("ms1_console={}", cookie.value());
        assert_eq!(call(&d, "GET", "/session/status", None, None).0, 401);
        assert_eq!(call(&d, "POST", "/session/start", None, None).0, 401);
        assert_eq!(
            call(&d, "GET", "/session/status", Some(&cookie), None).0,
            200
        );
        assert_eq!(
            call(&d, "POST", "/session/start", Some(&cookie), None).0,
            403
        );
        assert_eq!(session_status(&d), "stopped");

        // Logging out ends the session: the pages go back to the sign-in, the cookie is dead.
        b.click("#logout").await;
        b.wait_path("/console/login").await;
        for page in ["overview", "sources", "queues", "dead-letters"] {
            b.open(&format!("/console/{page}")).await;
            b.wait_path("/console/login").await;
        }
        assert_eq!(
            call(&d, "GET", "/session/status", Some(&cookie), None).0,
            401
        );
        b.close().await;
    });
}

#[test]
fn without_a_control_token_the_console_stays_shut() {
    let Some(rt) = browser_runtime() else { return };
    let world = World::new(&["--rate-limit-per-min", "0"]);
    let d = world.daemon(&[]);
    rt.block_on(async {
        let b = Browser::start(&d.control).await;
        for page in ["login", "overview", "dead-letters"] {
            b.open(&format!("/console/{page}")).await;
            b.wait_text("h1", "the console is off", |t| t == "The console is off")
                .await;
            assert!(b.all("#token").await.is_empty());
        }
        assert_eq!(call(&d, "GET", "/console/login", None, None).0, 403);
        b.close().await;
    });
}
