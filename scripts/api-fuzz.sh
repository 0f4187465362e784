#!/usr/bin/env bash
# The control API checked against its own OpenAPI document with schemathesis (PyPI): every
# operation of GET /openapi.json called with generated valid and invalid input, each answer
# checked for a 5xx (never allowed), a status code the document does not list, a content type it
# does not list, and a body or headers that contradict its schema.
#
#   scripts/api-fuzz.sh [SECONDS]     (default 120: the time budget of the schemathesis run)
#
# Starts everything itself on loopback: the daemon (debug build) with its private redis-server
# (redis.url empty), the MS4 simulator (`ms1-sim ms4`), a control token; installs schemathesis
# with pip and redis-server with apt-get when missing. Called by `scripts/test.sh --api-fuzz`.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

budget="${1:-120}"
need_packages redis-server:redis-server curl:curl
if ! command -v schemathesis >/dev/null 2>&1; then
  echo "==> installing schemathesis (pip)"
  python3 -m pip install --quiet schemathesis
  hash -r
fi

echo "==> cargo build (the daemon and the MS4 simulator)"
cargo build --quiet -p ms1-ingestor -p ms1-sim --bins
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/ms1-ingestor"
SIM="${CARGO_TARGET_DIR:-$ROOT/target}/debug/ms1-sim"
work_dir ms1-api-fuzz


"$SIM" ms4 --port 0 --api-key api-fuzz-key >"$WORK/sim.out" 2>"$WORK/sim.err" &
PIDS+=($!)
for _ in $(seq 100); do grep -q listening "$WORK/sim.out" 2>/dev/null && break; sleep 0.05; done
SIM_URL=$(awk '{print $NF}' "$WORK/sim.out")

CONTROL="127.0.0.1:$(free_port)"
TOKEN="api-fuzz-$RANDOM$RANDOM"
mkdir -p "$WORK/redis"
MS1__REDIS__URL="" MS1__REDIS__DATA_DIR="$WORK/redis" MS1__REDIS__CONSUMER=api-fuzz \
  MS1__CONTROL__BIND="$CONTROL" MS1__CONTROL__TOKEN="$TOKEN" \
  MS1__MS4__BASE_URL="$SIM_URL" MS1__MS4__API_KEY=api-fuzz-key \
  MS1__LOG__FORMAT=json MS1__LOG__LEVEL=info \
  "$BIN" run >"$WORK/daemon.log" 2>&1 &
DAEMON_PID=$!
PIDS+=($DAEMON_PID)
for _ in $(seq 200); do curl -sf "http://$CONTROL/health" >/dev/null && break; sleep 0.05; done
curl -sf "http://$CONTROL/health" >/dev/null || { cat "$WORK/daemon.log" >&2; exit 1; }

# Dead letters for the /dlq routes to find (malformed entries, and records MS4 refuses), through
# the daemon's private redis-server, whose address (its unix socket, which this user may open)
# it logs.
REDIS_URL=$(grep -o '"url":"unix://[^"]*"' "$WORK/daemon.log" | head -1 | cut -d'"' -f4)
MS1__REDIS__URL="$REDIS_URL" "$SIM" load --count 20 --invalid 5 --malformed 5 >/dev/null
dead_letters() { curl -sf -H "Authorization: Bearer $TOKEN" "http://$CONTROL/dlq" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"])'; }
for _ in $(seq 100); do [ "$(dead_letters)" -ge 10 ] && break; sleep 0.1; done
echo "==> $(dead_letters) dead letters to work on"

echo "==> schemathesis against http://$CONTROL/openapi.json (${budget} s)"
rc=0
cd "$WORK"
schemathesis run "http://$CONTROL/openapi.json" \
  --url "http://$CONTROL" \
  --header "Authorization: Bearer $TOKEN" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance \
  --max-time "$budget" --workers 1 --request-timeout 10 \
  --suppress-health-check too_slow --generation-database none \
  --no-color || rc=$?
cd "$ROOT"

if ! kill -0 "$DAEMON_PID" 2>/dev/null; then
  echo "api-fuzz: the daemon died during the run:" >&2
  tail -40 "$WORK/daemon.log" >&2
  exit 1
fi
if grep -q '"level":"ERROR"' "$WORK/daemon.log"; then
  echo "==> errors the daemon logged meanwhile:"
  grep '"level":"ERROR"' "$WORK/daemon.log" | tail -20
fi
curl -sf "http://$CONTROL/health" >/dev/null || { echo "api-fuzz: /health fails after the run" >&2; exit 1; }
exit "$rc"
