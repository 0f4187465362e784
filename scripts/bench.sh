#!/usr/bin/env bash
# Benchmarks, printed as figures (never asserted in tests).
#
#   scripts/bench.sh pipeline   inbound stream → MS4 simulator:
#     - 100,000 entries, unlimited simulator, batch 50 and batch 500: e-mails/s draining a
#       preloaded backlog, peak RSS of the daemon, and p50/p99 inbound-to-MS4 latency with the
#       same 100,000 offered at half that throughput (so latency is the system's, not a queue's);
#     - the contract case (also alone: scripts/bench.sh contract): MS4 limit 600/min, 12,000 records in batches of 50: achieved request
#       rate as a percent of the limit, 429s, most requests seen in any 60-second window.
#
#   scripts/bench.sh graph      Graph simulator → inbound stream:
#     - 100,000 messages polled in delta mode at page 1,000 (one mailbox, then four in
#       parallel): e-mails/s into the inbound stream;
#     - webhooks: new mail at 2,000 messages/s for 10 s, the Graph simulator POSTing change
#       notifications (up to 100 per POST, as Graph batches them) to the daemon: ack latency
#       p50/p99/max as the simulator measured it.
#
#   scripts/bench.sh imap       Dovecot → inbound stream:
#     - 5,000 messages of ~4 KB in one folder (then 50,000), a real Dovecot on loopback:
#       e-mails/s from POST /session/start to the last message in the inbound stream (connect,
#       login, UID FETCH in chunks, atomic writes), the time until all were at MS4, peak RSS.
#
#   scripts/bench.sh imap-burst  memory under a burst of large mail: 200 messages of 25 MB
#     (every third with a 25 MB PDF attachment, the others 25 MB of text) appended to one folder
#     of a real Dovecot (generated once, in the work dir: ~5 GB of disk, removed at exit), drained
#     to MS4 with the default byte settings, then again with ms4.include_raw = true: e-mails/s, the
#     time until all were at MS4, and the daemon's peak RSS beside the bound that follows from
#     the settings (`check-config` prints it; docs/OPERATIONS.md, "Memory"). Redis runs without AOF here (the
#     burst is ~7 GB of stream data), and imap.fetch_chunk = 8 with pipeline.max_backlog = 16
#     keep what waits in Redis to ~1 GB; neither changes the daemon's own bound.
#     BURST_MESSAGES, BURST_SIZE (bytes) and BURST_INCLUDE_RAW ("false true") change the burst.
#
#   scripts/bench.sh scale      1, 2 and 3 daemons on one Redis draining the same preloaded
#     100,000 entries (batch 50, unlimited MS4): e-mails/s, and the CPU seconds of the daemons,
#     redis-server and the simulator, which show what the ceiling is on this machine.
#
# Everything runs on loopback: a private redis-server (AOF on, as in production), the MS4
# simulator (`ms1-sim`) and the daemon (`ms1-ingestor`), release builds.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

what="${1:-pipeline}"
need_packages redis-server:redis-server curl:curl jq:jq
cargo build --release --quiet -p ms1-ingestor -p ms1-sim --bins
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/ms1-ingestor"
# The simulators and the `load` verb: the dev tools' binary of this tree, whatever daemon runs.
SIM="${CARGO_TARGET_DIR:-$ROOT/target}/release/ms1-sim"
# The daemon under test; MS1_BENCH_DAEMON_BIN=path runs another build of it (a before/after
# comparison, an older ms1-ingestor among them) against the same simulators.
DAEMON_BIN="${MS1_BENCH_DAEMON_BIN:-$BIN}"
work_dir ms1-bench


start_redis() { # args: extra redis-server options (they override the defaults)
  REDIS_PORT=$(free_port)
  mkdir -p "$WORK/redis-$REDIS_PORT"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$WORK/redis-$REDIS_PORT" \
    --appendonly yes --appendfsync everysec --save "" --daemonize no --logfile redis.log "$@" &
  PIDS+=($!)
  REDIS_PID=$!
  for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.05; done
  export MS1__REDIS__URL="redis://127.0.0.1:$REDIS_PORT"
}

start_sim() { # args: sim options
  "$SIM" ms4 --port 0 --api-key bench-key "$@" >"$WORK/sim.out" 2>"$WORK/sim.err" &
  PIDS+=($!)
  SIM_PID=$!
  for _ in $(seq 100); do grep -q listening "$WORK/sim.out" 2>/dev/null && break; sleep 0.05; done
  SIM_URL=$(awk '{print $NF}' "$WORK/sim.out")
  export MS1__MS4__BASE_URL="$SIM_URL" MS1__MS4__API_KEY=bench-key
}

start_daemon() { start_daemon_at "127.0.0.1:$(free_port)"; }
start_daemon_at() {
  CONTROL="$1"
  MS1__CONTROL__BIND="$CONTROL" MS1__LOG__FORMAT=json MS1__LOG__LEVEL=warn \
    MS1__REDIS__CONSUMER=bench "$DAEMON_BIN" run >>"$WORK/daemon.log" 2>&1 &
  DAEMON_PID=$!
  PIDS+=($DAEMON_PID)
  for _ in $(seq 200); do curl -sf "http://$CONTROL/health" >/dev/null && break; sleep 0.05; done
}

stop_daemon() { kill -TERM "$DAEMON_PID" 2>/dev/null || true; wait "$DAEMON_PID" 2>/dev/null || true; }
stop_all() { stop_daemon; kill "$SIM_PID" "$REDIS_PID" 2>/dev/null || true; wait "$SIM_PID" "$REDIS_PID" 2>/dev/null || true; }

sim_stat() { curl -s "$SIM_URL/_sim/stats" | jq -r ".$1"; }

wait_for_records() { # n timeout_s
  local deadline=$(( $(date +%s) + $2 ))
  while [ "$(sim_stat unique_records)" -lt "$1" ]; do
    [ "$(date +%s)" -gt "$deadline" ] && { echo "timed out waiting for $1 records" >&2; tail -5 "$WORK/daemon.log" >&2; return 1; }
    sleep 0.1
  done
}

quantile() { # q → seconds, from the daemon's summary
  curl -s "http://$CONTROL/metrics/prometheus" \
    | awk -v q="$1" '$1 == "ms1_delivery_latency_seconds{quantile=\"" q "\"}" {print $2}'
}

now() { date +%s.%N; }

# CPU seconds used by each process (utime + stime), to show where the cores went.
cpu_of() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.1f", ($14 + $15) / hz}' "/proc/$1/stat" 2>/dev/null || echo "?"; }
cpu_report() {
  [ -n "${BENCH_CPU:-}" ] || return 0
  echo "   cpu s: daemon $(cpu_of "$DAEMON_PID"), redis $(cpu_of "$REDIS_PID"), simulator $(cpu_of "$SIM_PID")" >&2
}

bench_unlimited() { # batch
  local batch=$1 n=100000
  # ms4.max_batch: the simulator here takes batches of up to 1,000 (--max-batch 1000).
  export MS1__MS4__BATCH_SIZE=$batch MS1__MS4__MAX_BATCH=1000 MS1__MS4__RATE_LIMIT_PER_MIN=0 MS1__MS4__MAX_IN_FLIGHT=4 MS1__PIPELINE__READ_CHUNK=1000
  # Throughput: drain a preloaded backlog.
  start_redis; start_sim --rate-limit-per-min 0 --max-batch 1000
  "$SIM" load --count $n 2>/dev/null
  local t0; t0=$(now)
  start_daemon
  wait_for_records $n 300
  local t1; t1=$(now)
  local rss; rss=$(awk '/VmHWM/ {print $2}' "/proc/$DAEMON_PID/status")
  local rate; rate=$(echo "$n / ($t1 - $t0)" | bc)
  cpu_report
  stop_all
  # Latency: the same volume offered at half the measured throughput.
  local offered=$(( rate / 2 ))
  start_redis; start_sim --rate-limit-per-min 0 --max-batch 1000
  start_daemon
  "$SIM" load --count $n --rate $offered 2>/dev/null
  wait_for_records $n 300
  sleep 0.3
  local p50 p99
  p50=$(quantile 0.5); p99=$(quantile 0.99)
  stop_all
  printf '%-28s %10s e-mails/s   p50 %7.1f ms   p99 %7.1f ms (offered %s/s)   peak RSS %5.1f MB\n' \
    "batch $batch, unlimited MS4:" "$rate" "$(echo "$p50 * 1000" | bc -l)" "$(echo "$p99 * 1000" | bc -l)" "$offered" "$(echo "$rss / 1024" | bc -l)"
}

bench_contract() {
  local n=12000 limit=600
  export MS1__MS4__BATCH_SIZE=50 MS1__MS4__RATE_LIMIT_PER_MIN=$limit MS1__MS4__MAX_IN_FLIGHT=4 MS1__PIPELINE__READ_CHUNK=500
  start_redis; start_sim --rate-limit-per-min $limit
  "$SIM" load --count $n 2>/dev/null
  local t0; t0=$(now)
  start_daemon
  wait_for_records $n 600
  local t1; t1=$(now)
  local requests throttled maxwin first last
  requests=$(sim_stat requests_total); throttled=$(sim_stat rate_limited); maxwin=$(sim_stat max_requests_in_window)
  first=$(sim_stat first_request_ms); last=$(sim_stat last_request_ms)
  local rss; rss=$(awk '/VmHWM/ {print $2}' "/proc/$DAEMON_PID/status")
  stop_all
  # Achieved rate between the first and the last request MS4 saw: (requests - 1) intervals.
  local pct; pct=$(echo "($requests - 1) / (($last - $first) / 1000) * 60 / $limit * 100" | bc -l)
  printf '%-28s %d records in %.1f s, %d requests at %.1f%% of %d/min, %d answered 429, max %d in any 60 s, peak RSS %.1f MB\n' \
    "contract (600/min, batch 50):" "$n" "$(echo "$t1 - $t0" | bc -l)" "$requests" "$pct" "$limit" "$throttled" "$maxwin" "$(echo "$rss / 1024" | bc -l)"
}

start_graph() { # args: sim options
  "$SIM" graph --port 0 "$@" >"$WORK/graph.out" 2>"$WORK/graph.err" &
  PIDS+=($!)
  GRAPH_PID=$!
  for _ in $(seq 600); do grep -q listening "$WORK/graph.out" 2>/dev/null && break; sleep 0.05; done
  GRAPH_URL=$(awk '{print $NF}' "$WORK/graph.out")
  export MS1__GRAPH__BASE_URL="$GRAPH_URL/v1.0" MS1__GRAPH__AUTHORITY="$GRAPH_URL/{tenant}" \
    MS1__GRAPH__TENANT_ID=contoso MS1__GRAPH__CLIENT_ID=ms1-app MS1__GRAPH__CLIENT_SECRET=sim-secret
}

metric() { # name → summed value from the daemon's exposition
  curl -s "http://$CONTROL/metrics/prometheus" | awk -v n="$1" 'index($1, n) == 1 && $1 !~ /^#/ {s += $2} END {printf "%d", s}'
}

bench_poll() { # mailboxes
  local n=100000 boxes=$1 list=""
  for i in $(seq 0 $((boxes - 1))); do list="${list:+$list,}invoices-$i@contoso.example"; done
  export MS1__MS4__RATE_LIMIT_PER_MIN=0 MS1__GRAPH__MAILBOXES="$list" MS1__GRAPH__PAGE_SIZE=1000 MS1__GRAPH__POLL_INTERVAL_S=3600
  start_redis; start_sim --rate-limit-per-min 0 --max-batch 1000
  start_graph --mailboxes "$list" --messages-per-mailbox $((n / boxes)) --max-page-size 1000
  local t0; t0=$(now)
  start_daemon
  local deadline=$(( $(date +%s) + 300 ))
  while [ "$(metric ms1_emails_polled_total)" -lt "$n" ]; do
    [ "$(date +%s)" -gt "$deadline" ] && { echo "timed out" >&2; tail -5 "$WORK/daemon.log" >&2; return 1; }
    sleep 0.05
  done
  local t1; t1=$(now)
  local rss; rss=$(awk '/VmHWM/ {print $2}' "/proc/$DAEMON_PID/status")
  stop_all; kill "$GRAPH_PID" 2>/dev/null || true
  unset MS1__GRAPH__MAILBOXES
  printf '%-34s %8.0f e-mails/s into the inbound stream (%d messages, page 1000), peak RSS %.1f MB\n' \
    "poll, $boxes mailbox(es), delta:" "$(echo "$n / ($t1 - $t0)" | bc -l)" "$n" "$(echo "$rss / 1024" | bc -l)"
}

bench_webhook() {
  # 2,000 new messages/s for 10 s, spread over 10 mailboxes: every notification's message is
  # then fetched within Graph's budget (10,000 requests per mailbox per 10 minutes).
  local rate=2000 seconds=10 boxes=10 list=""
  for i in $(seq 0 $((boxes - 1))); do list="${list:+$list,}invoices-$i@contoso.example"; done
  CONTROL_PORT=$(free_port)
  export MS1__MS4__RATE_LIMIT_PER_MIN=0 MS1__GRAPH__MAILBOXES="$list" MS1__GRAPH__POLL_INTERVAL_S=3600 \
    MS1__WEBHOOK__ENABLED=true MS1__WEBHOOK__PUBLIC_URL="http://127.0.0.1:$CONTROL_PORT" \
    MS1__WEBHOOK__CLIENT_STATE=bench-client-state
  start_redis; start_sim --rate-limit-per-min 0 --max-batch 1000
  start_graph --mailboxes "$list"
  start_daemon_at "127.0.0.1:$CONTROL_PORT"
  for _ in $(seq 100); do
    [ "$(curl -s "$GRAPH_URL/_sim/stats" | jq '.subscriptions | length')" = "$boxes" ] && break; sleep 0.1
  done
  # 100 new messages every 50 ms (one mailbox after the other) = 2,000 notifications/s.
  local t0; t0=$(now)
  for i in $(seq 0 $((seconds * 20 - 1))); do
    curl -s -X POST "$GRAPH_URL/_sim/mail" -H 'Content-Type: application/json' \
      -d "{\"mailbox\":\"invoices-$((i % boxes))@contoso.example\",\"count\":$((rate / 20))}" >/dev/null &
    sleep 0.046  # 50 ms a step, less the cost of starting curl
  done
  local t_sent; t_sent=$(now)
  wait_for_records $((rate * seconds)) 300
  local t1; t1=$(now)
  local stats; stats=$(curl -s "$GRAPH_URL/_sim/stats")
  stop_all; kill "$GRAPH_PID" 2>/dev/null || true
  unset MS1__WEBHOOK__ENABLED MS1__GRAPH__MAILBOXES
  printf '%-34s %d notifications in %d POSTs over %.1f s (%.0f/s): ack p50 %s ms, p99 %s ms, max %s ms, %s answered slower than 3 s; all %d at MS4 %.1f s after the first\n' \
    "webhook notifications:" "$(echo "$stats" | jq .notifications_sent)" "$(echo "$stats" | jq .notification_posts)" \
    "$(echo "$t_sent - $t0" | bc -l)" "$(echo "$(echo "$stats" | jq .notifications_sent) / ($t_sent - $t0)" | bc -l)" \
    "$(echo "$stats" | jq .notification_latency_ms.p50)" "$(echo "$stats" | jq .notification_latency_ms.p99)" \
    "$(echo "$stats" | jq .notification_latency_ms.max)" "$(echo "$stats" | jq .notifications_slow)" \
    "$((rate * seconds))" "$(echo "$t1 - $t0" | bc -l)"
}

start_imap() { # args: sim imap options
  "$SIM" imap "$@" >"$WORK/imap.out" 2>"$WORK/imap.err" &
  PIDS+=($!)
  IMAP_PID=$!
  for _ in $(seq 12000); do grep -q listening "$WORK/imap.out" 2>/dev/null && break; sleep 0.05; done
  IMAP_ADDR=$(awk '{print $NF}' "$WORK/imap.out")
  [ -n "$IMAP_ADDR" ] || { echo "dovecot did not start:" >&2; cat "$WORK/imap.err" >&2; return 1; }
}

# $WORK/imap.toml: one plain-text source on the started Dovecot ($IMAP_ADDR) for user $1.
write_imap_source() { # user
  cat >"$WORK/imap.toml" <<TOML
[[imap.sources]]
name = "bench"
host = "127.0.0.1"
port = ${IMAP_ADDR##*:}
tls = "none"
username = "$1"
password = "bench-secret"
poll_interval_s = 3600
TOML
}

bench_imap() { # messages
  local n=$1 user=invoices@contoso.example
  export MS1__MS4__RATE_LIMIT_PER_MIN=0 MS1__SESSION__AUTOSTART=false
  start_redis; start_sim --rate-limit-per-min 0 --max-batch 1000
  start_imap --dir "$WORK/dovecot-$n" --user "$user:bench-secret" --messages "$n" --size 4096
  write_imap_source "$user"
  MS1_CONFIG="$WORK/imap.toml" start_daemon
  local t0; t0=$(now)
  curl -sf -X POST "http://$CONTROL/session/start" -H 'Content-Type: application/json' -d '{}' >/dev/null
  local deadline=$(( $(date +%s) + 300 ))
  while [ "$(metric 'ms1_emails_polled_total{mode="imap"}')" -lt "$n" ]; do
    [ "$(date +%s)" -gt "$deadline" ] && { echo "timed out" >&2; tail -5 "$WORK/daemon.log" >&2; return 1; }
    sleep 0.02
  done
  local t1; t1=$(now)
  wait_for_records "$n" 300
  local t2; t2=$(now)
  local rss; rss=$(awk '/VmHWM/ {print $2}' "/proc/$DAEMON_PID/status")
  stop_all; kill -TERM "$IMAP_PID" 2>/dev/null || true; wait "$IMAP_PID" 2>/dev/null || true
  unset MS1__SESSION__AUTOSTART
  printf '%-34s %8.0f e-mails/s into the inbound stream (%d messages of ~4 KB); all at MS4 after %.2f s; peak RSS %.1f MB\n' \
    "imap, 1 folder, UID FETCH:" "$(echo "$n / ($t1 - $t0)" | bc -l)" "$n" "$(echo "$t2 - $t0" | bc -l)" "$(echo "$rss / 1024" | bc -l)"
}

bench_imap_burst() { # messages size_bytes include_raw — against the Dovecot of start_imap
  local n=$1 size=$2 raw=$3
  export MS1__MS4__RATE_LIMIT_PER_MIN=0 MS1__SESSION__AUTOSTART=false MS1__MS4__INCLUDE_RAW=$raw \
    MS1__IMAP__FETCH_CHUNK=8 MS1__PIPELINE__MAX_BACKLOG=16
  start_redis --appendonly no; start_sim --rate-limit-per-min 0 --max-batch 1000
  local bound; bound=$(MS1_CONFIG="$WORK/imap.toml" "$BIN" check-config 2>&1 >/dev/null \
    | sed -n 's/^memory bound: \([0-9]*\) MiB.*/\1/p')
  MS1_CONFIG="$WORK/imap.toml" start_daemon
  local t0; t0=$(now)
  curl -sf -X POST "http://$CONTROL/session/start" -H 'Content-Type: application/json' -d '{}' >/dev/null
  wait_for_records "$n" 1800
  local t1; t1=$(now)
  local rss; rss=$(awk '/VmHWM/ {print $2}' "/proc/$DAEMON_PID/status")
  local omitted; omitted=$(curl -s "$SIM_URL/_sim/stats" | jq '.body_omitted_records | length')
  stop_all
  unset MS1__SESSION__AUTOSTART MS1__MS4__INCLUDE_RAW MS1__IMAP__FETCH_CHUNK MS1__PIPELINE__MAX_BACKLOG
  printf '%-34s %6.2f e-mails/s (%d × %d MB, %d without body), all at MS4 after %.1f s; peak RSS %.1f MiB, bound %s MiB\n' \
    "imap burst, include_raw=$raw:" "$(echo "$n / ($t1 - $t0)" | bc -l)" "$n" "$((size / 1000000))" "$omitted" \
    "$(echo "$t1 - $t0" | bc -l)" "$(echo "$rss / 1024" | bc -l)" "$bound"
}

bench_scale() { # daemons
  local k=$1 n=100000
  export MS1__MS4__BATCH_SIZE=50 MS1__MS4__RATE_LIMIT_PER_MIN=0 MS1__MS4__MAX_IN_FLIGHT=4 MS1__PIPELINE__READ_CHUNK=1000
  start_redis; start_sim --rate-limit-per-min 0 --max-batch 1000
  "$SIM" load --count $n 2>/dev/null
  local t0; t0=$(now)
  local pids=()
  for i in $(seq 1 "$k"); do
    local control="127.0.0.1:$(free_port)"
    MS1__CONTROL__BIND="$control" MS1__LOG__FORMAT=json MS1__LOG__LEVEL=warn \
      MS1__REDIS__CONSUMER="bench-$i" "$BIN" run >>"$WORK/daemon-$i.log" 2>&1 &
    pids+=($!); PIDS+=($!)
  done
  wait_for_records $n 300
  local t1; t1=$(now)
  local cpu_d=0
  for p in "${pids[@]}"; do cpu_d=$(echo "$cpu_d + $(cpu_of "$p")" | bc -l); done
  local cpu_r cpu_s; cpu_r=$(cpu_of "$REDIS_PID"); cpu_s=$(cpu_of "$SIM_PID")
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  kill "$SIM_PID" "$REDIS_PID" 2>/dev/null || true; wait "$SIM_PID" "$REDIS_PID" 2>/dev/null || true
  local secs; secs=$(echo "$t1 - $t0" | bc -l)
  printf '%-22s %8.0f e-mails/s   cpu s over %.1f s: daemons %5.1f, redis %5.1f, MS4 simulator %5.1f (%d cores)\n' \
    "$k daemon(s), 1 Redis:" "$(echo "$n / $secs" | bc -l)" "$secs" "$cpu_d" "$cpu_r" "$cpu_s" "$(nproc)"
}

need_packages bc:bc
case "$what" in
  pipeline)
    echo "ms1-ingestor pipeline benchmark ($(nproc) cores, $(redis-server --version | awk '{print $3}'))"
    bench_unlimited 50
    bench_unlimited 500
    bench_contract
    ;;
  contract)
    bench_contract
    ;;
  graph)
    echo "ms1-ingestor Graph benchmark ($(nproc) cores)"
    bench_poll 1
    bench_poll 4
    bench_webhook
    ;;
  imap)
    need_packages dovecot:dovecot-imapd
    echo "ms1-ingestor IMAP benchmark ($(nproc) cores, $(dovecot --version | awk '{print "dovecot", $1}'))"
    bench_imap 5000
    bench_imap 5000
    bench_imap 50000
    ;;
  imap-burst)
    need_packages dovecot:dovecot-imapd
    n=${BURST_MESSAGES:-200} size=${BURST_SIZE:-25000000}
    echo "ms1-ingestor IMAP burst benchmark ($(nproc) cores, $(dovecot --version | awk '{print "dovecot", $1}'))"
    echo "generating $n messages of $((size / 1000000)) MB into Dovecot (once)…"
    start_imap --dir "$WORK/dovecot-burst" --user "invoices@contoso.example:bench-secret" --messages "$n" --size "$size"
    write_imap_source invoices@contoso.example
    for raw in ${BURST_INCLUDE_RAW:-false true}; do bench_imap_burst "$n" "$size" "$raw"; done
    kill -TERM "$IMAP_PID" 2>/dev/null || true; wait "$IMAP_PID" 2>/dev/null || true
    ;;
  scale)
    echo "ms1-ingestor scale-out benchmark ($(nproc) cores, one redis-server $(redis-server --version | awk '{print $3}'))"
    bench_scale 1
    bench_scale 2
    bench_scale 3
    ;;
  *)
    echo "usage: scripts/bench.sh pipeline|contract|graph|imap|imap-burst|scale" >&2
    exit 2
    ;;
esac
