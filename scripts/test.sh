#!/usr/bin/env bash
# Every check CI runs, in the order CI runs them:
#   formatting, clippy with warnings as errors, then all tests — unit tests and the end-to-end
#   tests, which start their own redis-server (installed here when missing), the MS4 simulator
#   and the daemon as real processes, and the console's browser tests (tests/console: headless
#   Chromium through chromedriver; Debian's chromium and chromium-driver are installed here when
#   missing; screenshots in target/console-screenshots/) — then the dependency audit.
#
# Usage: scripts/test.sh [cargo test filter…]     the checks above (what CI runs)
#        scripts/test.sh --soak                   only the fault suite (tests/faults) at soak
#                                                 size: 5× the messages, longer faults
#                                                 (MS1_SOAK=1, release build; ~8 minutes)
#        scripts/test.sh --audit                  only the dependency audit: cargo-audit offline
#                                                 against ../shared/advisory-db when it exists,
#                                                 else cargo-audit's own database (fetched when
#                                                 the network allows; without either the audit
#                                                 is skipped with a loud warning and does not
#                                                 fail the run), ignoring the reviewed
#                                                 exceptions of audit-exceptions.txt
#        scripts/test.sh --fuzz [SECONDS]         only the cargo-fuzz targets, SECONDS each
#                                                 (default 15; scripts/fuzz.sh runs them longer)
#        scripts/test.sh --api-fuzz [SECONDS]     only schemathesis against the control API and
#                                                 its /openapi.json (scripts/api-fuzz.sh)
#        scripts/test.sh --package                only the Debian package: scripts/package.sh
#                                                 (release build, layout check, lintian; a few
#                                                 minutes, so not in the default run)
# The options combine (`--audit --fuzz`); each installs what it needs when missing (cargo-audit,
# cargo-fuzz, schemathesis).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

export PATH="$PATH:/usr/sbin:/sbin"

if [ "${1:-}" = "--soak" ]; then
  shift
  need_packages redis-server:redis-server redis-cli:redis-tools
  echo "==> fault suite, soak size (MS1_SOAK=1)"
  MS1_SOAK=1 cargo test --release --test faults -- --nocapture "$@" 2>&1 | grep -E "FAULT-REPORT|^test |test result|panicked"
  exit "${PIPESTATUS[0]}"
fi

audit=0 fuzz="" api_fuzz="" package=0 extras=0 AUDIT_SKIPPED=0
while [ $# -gt 0 ]; do
  case "$1" in
    --audit) audit=1 extras=1 ;;
    --fuzz) fuzz=15 extras=1
      if [[ "${2:-}" =~ ^[0-9]+$ ]]; then fuzz="$2"; shift; fi ;;
    --api-fuzz) api_fuzz=120 extras=1
      if [[ "${2:-}" =~ ^[0-9]+$ ]]; then api_fuzz="$2"; shift; fi ;;
    --package) package=1 extras=1 ;;
    --) shift; break ;;
    *) break ;;
  esac
  shift
done

# The dependency audit. The advisory database is ../shared/advisory-db when that exists (an
# offline copy beside the clone), otherwise cargo-audit's own (~/.cargo/advisory-db, fetched by
# cargo-audit when the network allows). With neither, the audit cannot run: it says so loudly
# and does not decide the exit code — the other checks still do.
run_audit() {
  if ! cargo audit --version >/dev/null 2>&1; then
    echo "==> installing cargo-audit (cargo install cargo-audit --locked)"
    cargo install cargo-audit --locked --quiet || {
      audit_unavailable "cargo-audit is not installed and cannot be installed (no network?)"
      return 0
    }
  fi
  local ignores=()
  while read -r id _; do
    [[ "$id" =~ ^RUSTSEC- ]] && ignores+=(--ignore "$id")
  done <"$ROOT/audit-exceptions.txt"
  local shared="$ROOT/../shared/advisory-db" own="${CARGO_HOME:-$HOME/.cargo}/advisory-db"
  local out status=0
  if [ -d "$shared" ]; then
    echo "==> cargo audit (offline, ../shared/advisory-db; reviewed exceptions: $(( ${#ignores[@]} / 2 )))"
    cargo audit --db "$shared" --no-fetch --stale --deny warnings "${ignores[@]}"
    return
  fi
  echo "==> cargo audit (no ../shared/advisory-db: cargo-audit's own database, fetched; reviewed exceptions: $(( ${#ignores[@]} / 2 )))"
  out="$(cargo audit --deny warnings "${ignores[@]}" 2>&1)" || status=$?
  if ! grep -q "Loaded" <<<"$out" && [ -d "$own" ]; then
    # The fetch failed (no network) but an earlier fetch left a copy: audit against it.
    echo "==> cargo audit: fetching failed; auditing against the last fetched copy in $own"
    status=0
    out="$(cargo audit --no-fetch --stale --deny warnings "${ignores[@]}" 2>&1)" || status=$?
  fi
  printf '%s\n' "$out"
  if ! grep -q "Loaded" <<<"$out"; then
    # No database was loaded, so nothing was scanned: that is not a finding.
    audit_unavailable "no advisory database: no ../shared/advisory-db beside this clone, none in $own, and cargo-audit could not fetch one"
    return 0
  fi
  return "$status"
}

# Says loudly that the audit did not run; the exit code stays the other checks'.
audit_unavailable() {
  AUDIT_SKIPPED=1
  echo "!!! ============================================================================ !!!" >&2
  echo "!!! DEPENDENCY AUDIT SKIPPED: $1" >&2
  echo "!!! Put a copy of https://github.com/rustsec/advisory-db in ../shared/advisory-db" >&2
  echo "!!! (or run with network access) and run scripts/test.sh --audit again." >&2
  echo "!!! ============================================================================ !!!" >&2
}

all_passed() {
  if [ "$AUDIT_SKIPPED" = 1 ]; then
    echo "==> all checks passed, but the dependency audit was SKIPPED (no advisory database)"
  else
    echo "==> all checks passed"
  fi
}

if [ "$extras" = 0 ]; then
  need_packages redis-server:redis-server redis-cli:redis-tools dovecot:dovecot-imapd
  # tests/journald.rs (systemd-journald, journalctl) and tests/service.rs (systemd-nspawn).
  need_packages journalctl:systemd systemd-nspawn:systemd-container
  # The console's browser tests. Without a browser they fail (they do not skip) unless
  # MS1_NO_BROWSER=1, which is for a machine that cannot have one and is ignored under CI.
  if [ "${MS1_NO_BROWSER:-}" != 1 ] || [ -n "${CI:-}" ]; then
    need_packages chromium:chromium chromedriver:chromium-driver
  else
    echo "!!! MS1_NO_BROWSER=1: the console's browser tests (tests/console) are SKIPPED when no browser is installed" >&2
  fi
  echo "==> cargo fmt --check"
  cargo fmt --all -- --check
  echo "==> cargo clippy (warnings are errors)"
  cargo clippy --workspace --all-targets --quiet -- -D warnings
  echo "==> cargo test"
  cargo test --workspace --quiet -- "$@"
  run_audit
  all_passed
  exit 0
fi

[ "$audit" = 0 ] || run_audit
[ -z "$fuzz" ] || "$ROOT/scripts/fuzz.sh" "$fuzz"
[ -z "$api_fuzz" ] || "$ROOT/scripts/api-fuzz.sh" "$api_fuzz"
[ "$package" = 0 ] || { need_packages lintian:lintian; "$ROOT/scripts/package.sh"; }
all_passed
