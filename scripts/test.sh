#!/usr/bin/env bash
# Every check CI runs, in the order CI runs them:
#   formatting, clippy with warnings as errors, then all tests — unit tests and the end-to-end
#   tests, which start their own redis-server (installed here when missing), the MS4 simulator
#   and the daemon as real processes.
# Usage: scripts/test.sh [cargo test filter…]
#        scripts/test.sh --soak    only the fault suite (tests/faults), 5× the messages and
#                                  longer faults (MS1_SOAK=1); ~10 minutes
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

export PATH="$PATH:/usr/sbin:/sbin"
need_packages redis-server:redis-server redis-cli:redis-tools dovecot:dovecot-imapd

if [ "${1:-}" = "--soak" ]; then
  shift
  echo "==> fault suite, soak size (MS1_SOAK=1)"
  MS1_SOAK=1 cargo test --release --test faults -- --nocapture "$@" 2>&1 | grep -E "FAULT-REPORT|^test |test result|panicked"
  exit "${PIPESTATUS[0]}"
fi

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "==> cargo test"
cargo test --workspace --quiet -- "$@"
echo "==> all checks passed"
