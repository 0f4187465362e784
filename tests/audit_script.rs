//! `scripts/test.sh --audit` in a clone with no `../shared` beside it: it audits against
//! `../shared/advisory-db` when present, otherwise against cargo-audit's own database, and when
//! neither can be had (no network to fetch one) it says so loudly and exits by the other
//! checks — never failing a run because there was nothing to audit against, never passing one
//! that found an advisory.
//!
//! The script runs for real (bash, its lib.sh, audit-exceptions.txt) in a copy of the repo's
//! layout under a temporary directory; `cargo` on its PATH is a stand-in that answers like
//! cargo-audit does offline (so the test needs no network and takes milliseconds) and records
//! how it was called.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A stand-in `cargo`: `cargo audit --version` answers; `cargo audit …` with `--db DIR` loads
/// DIR when it exists, without `--db` loads `$HOME/.cargo/advisory-db` when it exists and
/// `--no-fetch` is given, and otherwise fails to fetch, as cargo-audit does without network.
/// `$STUB_FINDING` set: a loaded audit reports a vulnerability and exits 1. Every call is
/// appended to `$STUB_LOG`.
const CARGO_STUB: &str = r#"#!/usr/bin/env bash
echo "$*" >>"$STUB_LOG"
[ "$1" = audit ] || { echo "stub cargo: only audit" >&2; exit 2; }
shift
[ "${1:-}" = --version ] && { echo "cargo-audit-audit 0.22.2"; exit 0; }
db="" fetch=1
while [ $# -gt 0 ]; do
  case "$1" in
    --db) db="$2"; shift ;;
    --no-fetch) fetch=0 ;;
  esac
  shift
done
if [ -z "$db" ]; then
  db="$HOME/.cargo/advisory-db"
  if [ "$fetch" = 1 ]; then
    echo "    Fetching advisory database from \`https://github.com/RustSec/advisory-db.git\`" >&2
    echo "error: couldn't fetch advisory database: git operation failed: network unreachable" >&2
    exit 1
  fi
fi
[ -d "$db" ] || { echo "error: error loading advisory database: $db: not found" >&2; exit 1; }
echo "      Loaded 900 security advisories (from $db)" >&2
echo "    Scanning Cargo.lock for vulnerabilities (500 crate dependencies)" >&2
if [ -n "${STUB_FINDING:-}" ]; then
  echo "error: 1 vulnerability found!"
  exit 1
fi
exit 0
"#;

/// `base/ms1` holding scripts/test.sh, scripts/lib.sh and audit-exceptions.txt; a `bin/` with
/// the stand-in cargo; a `home/`.
struct Clone {
    base: tempfile::TempDir,
}

impl Clone {
    fn new() -> Self {
        let base = tempfile::tempdir().unwrap();
        let repo = base.path().join("ms1");
        std::fs::create_dir_all(repo.join("scripts")).unwrap();
        for file in ["scripts/test.sh", "scripts/lib.sh", "audit-exceptions.txt"] {
            std::fs::copy(Path::new(ROOT).join(file), repo.join(file)).unwrap();
        }
        let bin = base.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(bin.join("cargo"), CARGO_STUB).unwrap();
        std::fs::set_permissions(bin.join("cargo"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        std::fs::create_dir_all(base.path().join("home")).unwrap();
        Self { base }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.base.path().join(p)
    }

    /// Runs `bash scripts/test.sh --audit`; returns (exit code, stdout + stderr, cargo calls).
    fn audit(&self, finding: bool) -> (Option<i32>, String, String) {
        let log = self.path("cargo-calls.log");
        let _ = std::fs::remove_file(&log);
        let mut cmd = Command::new("bash");
        cmd.arg("scripts/test.sh")
            .arg("--audit")
            .current_dir(self.path("ms1"))
            .env_clear()
            .env(
                "PATH",
                format!("{}:/usr/bin:/bin", self.path("bin").display()),
            )
            .env("HOME", self.path("home"))
            .env("STUB_LOG", &log);
        if finding {
            cmd.env("STUB_FINDING", "1");
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            std::fs::read_to_string(&log).unwrap_or_default(),
        )
    }
}

#[test]
fn without_shared_or_network_the_audit_says_loudly_it_was_skipped_and_does_not_fail_the_run() {
    let clone = Clone::new();
    let (code, out, calls) = clone.audit(false);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("DEPENDENCY AUDIT SKIPPED"), "{out}");
    assert!(!calls.contains("--db"), "no ../shared, no --db: {calls}");
    assert!(
        calls.contains("--ignore RUSTSEC-"),
        "exceptions passed: {calls}"
    );
}

#[test]
fn without_shared_the_audit_uses_cargo_audits_own_database_and_its_findings_fail_the_run() {
    let clone = Clone::new();
    // A copy fetched earlier, which the offline fallback audits against.
    std::fs::create_dir_all(clone.path("home/.cargo/advisory-db")).unwrap();
    let (code, out, calls) = clone.audit(false);
    assert_eq!(code, Some(0), "{out}");
    assert!(!out.contains("SKIPPED"), "{out}");
    assert!(calls.contains("--no-fetch --stale"), "{calls}");
    let (code, out, _) = clone.audit(true);
    assert_eq!(code, Some(1), "a finding fails the run: {out}");
    assert!(out.contains("vulnerability found"), "{out}");
}

#[test]
fn with_shared_beside_the_clone_the_audit_runs_offline_against_it() {
    let clone = Clone::new();
    std::fs::create_dir_all(clone.path("shared/advisory-db")).unwrap();
    let (code, out, calls) = clone.audit(false);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        calls.contains("/../shared/advisory-db --no-fetch --stale"),
        "{calls}"
    );
    assert!(!out.contains("SKIPPED"), "{out}");
    let (code, out, _) = clone.audit(true);
    assert_eq!(code, Some(1), "a finding fails the run: {out}");
}
