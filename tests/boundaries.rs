//! Where a real deployment breaks (issue 10): redirects in front of MS4, one mailbox Graph
//! refuses, follow-ups a dead daemon left, forged Message-IDs, settings that cannot work,
//! replays that keep their after-delivery action, counters that exist from the start.
//! Every test runs the real daemon against a real redis-server and the simulators over HTTP.

mod common;

use common::{Sim, World};
use serde_json::json;
use std::time::Duration;

const MINUTE: Duration = Duration::from_secs(60);

/// A load balancer in front of MS4 that redirects (a 307 to another host that would accept
/// the re-POSTed batch and its API key, or a 302 to a maintenance page that answers 200) never
/// makes a batch count as delivered: the records stay queued, `/ready` names the redirect, and
/// they reach MS4 once the redirect is gone.
#[test]
fn a_redirect_in_front_of_ms4_is_never_followed_and_the_records_stay_queued() {
    let world = World::new(&["--rate-limit-per-min", "0"]);
    // The wrong host: it would take the batch (same API key) if a client followed the 307.
    let elsewhere = Sim::start(&["--rate-limit-per-min", "0"]);
    let daemon = world.daemon(&[
        ("MS1__BREAKER__FAILURE_THRESHOLD", "2"),
        ("MS1__BREAKER__OPEN_MS", "300"),
    ]);
    for (status, target) in [
        (307, format!("{}/batch-metadata", elsewhere.url)),
        (302, format!("{}/batch-metadata", elsewhere.url)),
    ] {
        world
            .ms4
            .configure(json!({"redirect_to": target, "redirect_status": status}));
        let before = world.ms4.stats()["redirected"].as_u64().unwrap_or(0);
        let n = if status == 307 { 0..100 } else { 100..200 };
        world.load(n, |_| false);
        assert!(
            common::wait_until(MINUTE, || {
                let redirected = world.ms4.stats()["redirected"].as_u64().unwrap_or(0);
                redirected >= before + 3 || elsewhere.stats()["requests_total"] != 0
            }),
            "MS4 was never asked: {}",
            daemon.log_tail(20)
        );
        let wrong = elsewhere.stats();
        assert_eq!(wrong["requests_total"], 0, "{status}: {wrong}");
        assert_eq!(wrong["unique_records"], 0, "{status}: {wrong}");
        assert_eq!(wrong["maintenance_page_hits"], 0, "{status}: {wrong}");
        let (code, ready) = daemon.ready();
        assert_eq!(code, 503, "{ready}");
        assert!(
            ready.to_string().contains("never followed"),
            "/ready must say why: {ready}"
        );
        assert_eq!(world.ms4.stats()["unique_records"], 0);
        assert!(world.xlen("outbound") > 0, "the records must stay queued");
    }
    world.ms4.configure(json!({"redirect_to": ""}));
    world.wait_delivered(200, MINUTE, &daemon);
    world.assert_drained();
    assert!(world.dead_letters().is_empty());
    assert_eq!(elsewhere.stats()["requests_total"], 0);
}
