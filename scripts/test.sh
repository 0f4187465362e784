#!/usr/bin/env bash
# Every check CI runs, in the order CI runs them:
#   formatting, clippy with warnings as errors, then all tests — unit tests and the end-to-end
#   tests, which start their own redis-server (installed here when missing), the MS4 simulator
#   and the daemon as real processes — then the dependency audit.
#
# Usage: scripts/test.sh [cargo test filter…]     the checks above (what CI runs)
#        scripts/test.sh --soak                   only the fault suite (tests/faults) at soak
#                                                 size: 5× the messages, longer faults
#                                                 (MS1_SOAK=1, release build; ~8 minutes)
#        scripts/test.sh --audit                  only the dependency audit: cargo-audit offline
#                                                 against ../shared/advisory-db, ignoring the
#                                                 reviewed exceptions of audit-exceptions.txt
#        scripts/test.sh --fuzz [SECONDS]         only the cargo-fuzz targets, SECONDS each
#                                                 (default 15; scripts/fuzz.sh runs them longer)
#        scripts/test.sh --api-fuzz [SECONDS]     only schemathesis against the control API and
#                                                 its /openapi.json (scripts/api-fuzz.sh)
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

audit=0 fuzz="" api_fuzz="" extras=0
while [ $# -gt 0 ]; do
  case "$1" in
    --audit) audit=1 extras=1 ;;
    --fuzz) fuzz=15 extras=1
      if [[ "${2:-}" =~ ^[0-9]+$ ]]; then fuzz="$2"; shift; fi ;;
    --api-fuzz) api_fuzz=120 extras=1
      if [[ "${2:-}" =~ ^[0-9]+$ ]]; then api_fuzz="$2"; shift; fi ;;
    --) shift; break ;;
    *) break ;;
  esac
  shift
done

run_audit() {
  if ! cargo audit --version >/dev/null 2>&1; then
    echo "==> installing cargo-audit (cargo install cargo-audit --locked)"
    cargo install cargo-audit --locked --quiet
  fi
  local ignores=()
  while read -r id _; do
    [[ "$id" =~ ^RUSTSEC- ]] && ignores+=(--ignore "$id")
  done <"$ROOT/audit-exceptions.txt"
  echo "==> cargo audit (offline, ../shared/advisory-db; reviewed exceptions: $(( ${#ignores[@]} / 2 )))"
  cargo audit --db "$ROOT/../shared/advisory-db" --no-fetch --stale --deny warnings "${ignores[@]}"
}

if [ "$extras" = 0 ]; then
  need_packages redis-server:redis-server redis-cli:redis-tools dovecot:dovecot-imapd
  echo "==> cargo fmt --check"
  cargo fmt --all -- --check
  echo "==> cargo clippy (warnings are errors)"
  cargo clippy --workspace --all-targets --quiet -- -D warnings
  echo "==> cargo test"
  cargo test --workspace --quiet -- "$@"
  run_audit
  echo "==> all checks passed"
  exit 0
fi

[ "$audit" = 0 ] || run_audit
[ -z "$fuzz" ] || "$ROOT/scripts/fuzz.sh" "$fuzz"
[ -z "$api_fuzz" ] || "$ROOT/scripts/api-fuzz.sh" "$api_fuzz"
echo "==> all checks passed"
