//! The MS4 simulator over real HTTP: the binary (`ms1-sim ms4`) as a child process and a real
//! HTTP client. What the daemon's tests do not cover of it: `GET /_sim/wait`, the long poll the
//! benchmarks wait on.

use ms1_sim::process::SimulatorProcess;
use serde_json::{json, Value};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ms1-sim");

fn record(key: &str) -> Value {
    json!({"id": key, "subject": "s", "hasAttachments": false, "sender": "a@b.example",
           "receivedDateTime": "2026-11-21T10:00:00Z", "raw_message": null,
           "idempotency_key": key, "source": "graph", "mailbox": "m",
           "recipients": ["x@y.example"], "bodyPreview": "p", "attachments": []})
}

fn send(url: &str, keys: &[&str]) {
    let batch: Vec<Value> = keys.iter().map(|k| record(k)).collect();
    let status = ureq::post(&format!("{url}/batch-metadata"))
        .set("X-API-Key", "demo-key")
        .set("Idempotency-Key", &keys.join(","))
        .send_json(Value::Array(batch))
        .expect("batch accepted")
        .status();
    assert_eq!(status, 202);
}

fn wait(url: &str, records: u64, timeout_ms: u64) -> Value {
    ureq::get(&format!(
        "{url}/_sim/wait?unique_records={records}&timeout_ms={timeout_ms}"
    ))
    .call()
    .expect("wait answers")
    .into_json()
    .expect("json")
}

#[test]
fn a_wait_answers_once_the_records_are_stored_or_at_its_timeout() {
    let sim = SimulatorProcess::start(
        Path::new(BIN),
        "ms4",
        &["--rate-limit-per-min", "0"],
        Stdio::inherit(),
    )
    .expect("start the MS4 simulator");
    let url = sim.url.clone();

    // Nothing stored: the wait runs out and says so.
    let started = Instant::now();
    assert_eq!(
        wait(&url, 1, 200),
        json!({"unique_records": 0, "reached": false})
    );
    assert!(started.elapsed() >= Duration::from_millis(200));

    // A waiter for 3 records is still waiting after 2 (a duplicate does not count), and is
    // answered by the batch that stores the third.
    let waiter = std::thread::spawn({
        let url = url.clone();
        move || wait(&url, 3, 30_000)
    });
    send(&url, &["k1", "k2"]);
    send(&url, &["k2"]);
    std::thread::sleep(Duration::from_millis(300));
    assert!(!waiter.is_finished(), "answered before the third record");
    send(&url, &["k3"]);
    assert_eq!(
        waiter.join().unwrap(),
        json!({"unique_records": 3, "reached": true})
    );

    // Already there: answered at once.
    assert_eq!(
        wait(&url, 2, 30_000),
        json!({"unique_records": 3, "reached": true})
    );
}
