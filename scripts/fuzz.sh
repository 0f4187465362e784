#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets/) for SECONDS each (default 60), one after the
# other, one process at a time, and prints per target: executions, exec/s, corpus size, crashes.
#
#   scripts/fuzz.sh            60 s per target
#   scripts/fuzz.sh 600        10 minutes per target (the figures in docs/TESTING.md)
#   scripts/fuzz.sh 30 mime    only the named targets
#
# Needs a nightly toolchain (`cargo +nightly`); installs cargo-fuzz from crates.io when missing.
# Each target starts from its committed seeds (fuzz/seeds/TARGET: real Graph notifications,
# pages and messages, the synthetic invoices of sim/src/synthetic.rs, the malformed MIME samples of
# tests/imap.rs) plus what earlier runs found (fuzz/corpus/TARGET, not committed). A crash
# leaves its input in fuzz/artifacts/TARGET/ and makes the script exit 1; reproduce it with
# `cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/crash-…`.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

seconds="${1:-60}"
shift || true
targets=("$@")

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzz: no nightly toolchain (rustup toolchain install nightly); skipped" >&2
  exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz (cargo install cargo-fuzz --locked)"
  cargo install cargo-fuzz --locked --quiet
fi
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)

echo "==> building the fuzz targets (nightly, address sanitizer)"
started=$(date +%s)
build_log="$(mktemp /tmp/ms1-fuzz-build.XXXXXX.log)"
cargo +nightly fuzz build >"$build_log" 2>&1 || { cat "$build_log" >&2; echo "fuzz: build failed" >&2; exit 1; }
rm -f "$build_log"
echo "    built in $(( $(date +%s) - started )) s"

failed=0
summary=()
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  log="$(mktemp /tmp/ms1-fuzz-$t.XXXXXX.log)"
  before=$(find "fuzz/artifacts/$t" -type f | wc -l)
  echo "==> fuzz $t for ${seconds} s"
  rc=0
  cargo +nightly fuzz run "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
    -max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
    >"$log" 2>&1 || rc=$?
  crashes=$(( $(find "fuzz/artifacts/$t" -type f | wc -l) - before ))
  stat() { awk -v k="stat::$1:" '$1 == k {print $2}' "$log" | tail -1; }
  execs=$(stat number_of_executed_units)
  rate=$(stat average_exec_per_sec)
  # The last status line: `#N DONE cov: C ft: F corp: N/SIZE …` (libFuzzer's own corpus).
  last=$(grep -E '^#[0-9]+[[:space:]]+(DONE|pulse|NEW|REDUCE)' "$log" | tail -1)
  cov=$(sed -nE 's/.* cov: ([0-9]+).*/\1/p' <<<"$last")
  corpus=$(sed -nE 's/.* corp: ([0-9]+)\/([0-9a-zA-Z]+).*/\1 inputs, \2/p' <<<"$last")
  line="$t: ${seconds} s, ${execs:-?} execs, ${rate:-?} exec/s, corpus ${corpus:-?}, coverage ${cov:-?}, crashes ${crashes}"
  summary+=("$line")
  if [ "$rc" -ne 0 ] || [ "$crashes" -ne 0 ]; then
    failed=1
    echo "fuzz: $t failed (exit $rc); the input is in fuzz/artifacts/$t/, the log in $log:" >&2
    grep -A30 -m1 -E 'panicked|ERROR: (libFuzzer|AddressSanitizer)' "$log" >&2 || tail -40 "$log" >&2
  else
    rm -f "$log"
  fi
done

echo "==> fuzz summary"
printf '    %s\n' "${summary[@]}"
exit "$failed"
