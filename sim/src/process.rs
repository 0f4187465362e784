//! A simulator of this crate running as a child process (`ms1-sim ms4|graph …`), as the demo
//! and the tests start them: on a free port, its address read from the first line it prints,
//! and killed when its handle is dropped.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A running `ms1-sim ms4` or `ms1-sim graph`; killed when dropped.
pub struct SimulatorProcess {
    child: Child,
    /// Where it listens: `http://127.0.0.1:PORT`.
    pub url: String,
}

impl SimulatorProcess {
    /// Starts `exe KIND --port 0 ARGS…` (`exe`: an `ms1-sim` binary) and reads its address from
    /// the first line it prints (`… listening on http://127.0.0.1:PORT`). `stderr`: where the
    /// simulator's own messages go.
    pub fn start(exe: &Path, kind: &str, args: &[&str], stderr: Stdio) -> anyhow::Result<Self> {
        let mut child = Command::new(exe)
            .args([kind, "--port", "0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot run {} {kind}: {e}", exe.display()))?;
        let mut line = String::new();
        let read = BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line);
        // From here on the handle kills it, whatever the outcome.
        let mut process = Self {
            child,
            url: String::new(),
        };
        read?;
        process.url = line
            .trim()
            .rsplit(' ')
            .next()
            .unwrap_or_default()
            .to_string();
        anyhow::ensure!(
            process.url.starts_with("http://"),
            "the {kind} simulator did not start: {line:?}"
        );
        Ok(process)
    }
}

impl Drop for SimulatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
