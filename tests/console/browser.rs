//! A headless Chromium driven over WebDriver: `chromedriver` on a free loopback port, started
//! per test in its own process group and killed with everything it started (Chromium and its
//! helpers) when the [`Browser`] is dropped, and a `fantoccini` client talking plain HTTP to it.
//!
//! Chromium comes from Debian (`chromium`, `chromium-driver`), which `scripts/test.sh` installs
//! when missing. Without it the tests fail, saying what to install; `MS1_NO_BROWSER=1` skips them
//! on a machine that cannot have a browser, but never under CI (`CI` set).

use fantoccini::{elements::Element, Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const CHROMIUM: &str = "/usr/bin/chromium";
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How long a condition in the page may take (a refresh is every 3 s).
pub const PATIENCE: Duration = Duration::from_secs(30);
/// How often a condition is looked at again.
const POLL: Duration = Duration::from_millis(200);

/// Whether this machine can run the browser tests. Panics (under CI, or unless opted out)
/// when Chromium or chromedriver is missing.
pub fn available() -> bool {
    let missing: Vec<&str> = [CHROMIUM, CHROMEDRIVER]
        .into_iter()
        .filter(|p| !Path::new(p).exists())
        .collect();
    if missing.is_empty() {
        return true;
    }
    let opted_out = std::env::var("MS1_NO_BROWSER").is_ok_and(|v| v == "1");
    if opted_out && std::env::var_os("CI").is_none() {
        eprintln!(
            "!!! browser test SKIPPED (MS1_NO_BROWSER=1): {} missing",
            missing.join(", ")
        );
        return false;
    }
    panic!(
        "{} missing: `apt-get install chromium chromium-driver` (scripts/test.sh does), or set \
         MS1_NO_BROWSER=1 to skip the browser tests on this machine (not honoured under CI)",
        missing.join(", ")
    );
}

/// Where the screenshots land: `target/console-screenshots/` beside the binaries under test.
pub fn screenshot_dir() -> PathBuf {
    let bin = Path::new(super::common::BIN);
    let target = bin
        .parent()
        .and_then(Path::parent)
        .expect("the daemon binary is in target/<profile>/");
    target.join("console-screenshots")
}

/// One headless Chromium and the chromedriver that runs it.
pub struct Browser {
    /// The WebDriver session (closed by [`Browser::close`]).
    pub client: Client,
    /// `chromedriver` and everything it started.
    _driver: ProcessGroup,
    /// Chromium's profile, private to this browser.
    _profile: tempfile::TempDir,
    /// The daemon's control address (`http://127.0.0.1:port`).
    pub base: String,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium on a fresh profile, for the console at `base`.
    pub async fn start(base: &str) -> Self {
        let profile = tempfile::tempdir().expect("tempdir");
        let port = ms1_sim::redis_launcher::free_port().expect("a free port");
        let driver = ProcessGroup(
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .process_group(0)
                .spawn()
                .unwrap_or_else(|e| panic!("start {CHROMEDRIVER}: {e}")),
        );
        let url = format!("http://127.0.0.1:{port}");
        let mut caps = serde_json::Map::new();
        caps.insert("browserName".into(), json!("chrome"));
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000",
                    "--disable-dev-shm-usage", "--no-first-run", "--disable-extensions",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let deadline = Instant::now() + PATIENCE;
        let client = loop {
            match ClientBuilder::new(HttpConnector::new())
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(c) => break c,
                // chromedriver is not listening yet, or Chromium is slow to come up.
                Err(_) if Instant::now() < deadline => tokio::time::sleep(POLL).await,
                Err(e) => panic!("no WebDriver session from {CHROMEDRIVER} at {url}: {e}"),
            }
        };
        Self {
            client,
            _driver: driver,
            _profile: profile,
            base: base.to_string(),
        }
    }

    /// Opens a console path (`/console/…`).
    pub async fn open(&self, path: &str) {
        self.client
            .goto(&format!("{}{path}", self.base))
            .await
            .unwrap_or_else(|e| panic!("open {path}: {e}"));
    }

    /// The path of the page shown.
    pub async fn path(&self) -> String {
        self.client.current_url().await.unwrap().path().to_string()
    }

    pub async fn find(&self, css: &str) -> Element {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no element {css}: {e}"))
    }

    pub async fn all(&self, css: &str) -> Vec<Element> {
        self.client.find_all(Locator::Css(css)).await.unwrap()
    }

    /// Clicks `css`, finding it again when a refresh of the page replaced it in between.
    pub async fn click(&self, css: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let clicked = match self.client.find(Locator::Css(css)).await {
                Ok(el) => el.click().await,
                Err(e) => Err(e),
            };
            match clicked {
                Ok(()) => return,
                Err(_) if Instant::now() < deadline => tokio::time::sleep(POLL).await,
                Err(e) => panic!("click {css}: {e}"),
            }
        }
    }

    /// Runs `script` (which `return`s) in the page, at once: what it reads cannot go stale.
    pub async fn run(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// The rendered text of an element (empty when it is missing or hidden).
    pub async fn text(&self, css: &str) -> String {
        match self.client.find(Locator::Css(css)).await {
            Ok(el) => el.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Waits until `css`'s text satisfies `ok`; returns it, or panics naming what was seen.
    pub async fn wait_text(&self, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let seen = self.text(css).await;
            if ok(&seen) {
                return seen;
            }
            assert!(
                Instant::now() < deadline,
                "{css} never showed {what}; last seen: {seen:?}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until the page at `path` is shown.
    pub async fn wait_path(&self, path: &str) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let seen = self.path().await;
            if seen == path {
                return;
            }
            if Instant::now() >= deadline {
                let body = self.client.source().await.unwrap_or_default();
                panic!("never reached {path}; at {seen}, which shows:\n{body}");
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until `count` elements match `css`.
    pub async fn wait_count(&self, css: &str, count: usize) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let seen = self.all(css).await.len();
            if seen == count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{css}: {seen} elements, never {count}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Clicks `button`, checks the confirmation dialog's question, then answers it.
    pub async fn confirm(&self, button: &str, question: &str, ok: bool) {
        self.click(button).await;
        // The question stays in the closed dialog from the last time: wait for it to open.
        let deadline = Instant::now() + PATIENCE;
        while self
            .find("#confirm")
            .await
            .attr("open")
            .await
            .unwrap()
            .is_none()
        {
            assert!(Instant::now() < deadline, "{button} opened no confirmation");
            tokio::time::sleep(POLL).await;
        }
        assert_eq!(self.text("#confirm-text").await, question);
        let answer = if ok { "#confirm-ok" } else { "#confirm-cancel" };
        self.click(answer).await;
        let deadline = Instant::now() + PATIENCE;
        while self
            .find("#confirm")
            .await
            .attr("open")
            .await
            .unwrap()
            .is_some()
        {
            assert!(
                Instant::now() < deadline,
                "the confirmation stayed open after {answer}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Runs `script` in the page with a callback as its last argument; returns what it passed.
    pub async fn run_async(&self, script: &str) -> Value {
        self.client
            .execute_async(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Saves a screenshot of the whole window as `<name>.png` in [`screenshot_dir`].
    pub async fn screenshot(&self, name: &str) {
        let png = self.client.screenshot().await.expect("a screenshot");
        let dir = screenshot_dir();
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!("{name}.png"));
        std::fs::write(&file, png).unwrap();
        println!("screenshot: {}", file.display());
    }

    /// Ends the WebDriver session (Chromium quits); dropping kills whatever is left.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

/// A child process that leads its own process group (chromedriver, and Chromium with its
/// zygotes, renderers and helpers, which stay in the group): all killed on drop, so a failing
/// test leaves no browser behind.
struct ProcessGroup(Child);

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.0.id())])
            .status();
        let _ = self.0.wait();
    }
}
