#!/usr/bin/env bash
# Benchmarks, printed as figures (never asserted in tests).
#
#   scripts/bench.sh pipeline   inbound stream → MS4 simulator:
#     - 100,000 entries, unlimited simulator, batch 50 and batch 500: e-mails/s draining a
#       preloaded backlog, peak RSS of the daemon, and p50/p99 inbound-to-MS4 latency with the
#       same 100,000 offered at half that throughput (so latency is the system's, not a queue's);
#     - beside them, the limit in the same run: redis-benchmark XADDing 100,000 entries of ~1 KB
#       pipelined into the same kind of Redis, and the CPU the daemon and redis-server spent per
#       e-mail (µs, and CPU-seconds per 100,000); the clock starts once the daemon answers
#       /health, not when its process starts;
#     - the contract case (also alone: scripts/bench.sh contract): MS4 limit 600/min, 12,000 records in batches of 50: achieved request
#       rate as a percent of the limit, 429s, most requests seen in any 60-second window.
#
#   scripts/bench.sh graph      Graph simulator → inbound stream:
#     - 100,000 messages polled in delta mode at page 1,000 (one mailbox, then four in
#       parallel): e-mails/s into the inbound stream, from the session's start (its
#       `started_ms`) to the last message in the stream (its last id); the CPU the daemon,
#       redis-server and the Graph simulator spent per e-mail meanwhile (the daemon's delivery pipeline runs at the same time: its MS4 deliveries
#       count in the daemon's figure), and again until all were at MS4 (the same work for any
#       build, so before/after comparisons of the daemon's cost hold); beside it, in the same run against the same simulator,
#       a plain delta reader (`ms1-sim graph-fetch`: the pages fetched and discarded) and our
#       rate as a percent of it;
#     - webhooks: new mail at 2,000 messages/s for 10 s, the Graph simulator POSTing change
#       notifications (up to 100 per POST, as Graph batches them) to the daemon: ack latency
#       p50/p99/max as the simulator measured it.
#
#     (scripts/bench.sh graph-poll [mailboxes] runs the polling case alone, for one mailbox
#     unless told.)
#
#   scripts/bench.sh imap       Dovecot → inbound stream:
#     - 5,000 messages of ~4 KB in one folder (then 50,000), a real Dovecot on loopback:
#       e-mails/s from the session's start (its `started_ms`, stamped by the daemon) to the
#       last message in the inbound stream (the milliseconds of the stream's last id): lease,
#       connect, login, SELECT, UID FETCH in chunks, atomic writes; the time until all were at
#       MS4, peak RSS; beside it, in the same run against the same Dovecot, a plain fetch loop
#       (`ms1-sim imap-fetch`: UID FETCH 500 at a time, discarding, clocked from its TCP
#       connect, so that both log in and select) and our rate as a percent of it.
#       BENCH_CPU=1 also prints the CPU seconds the daemon (its pipeline included),
#       redis-server, Dovecot and the MS4 simulator spent until the last message was queued.
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
#   scripts/bench.sh fleet      a fleet at rest: 2,000 mailboxes, three daemons on one Redis,
#     the Graph simulator adding a trickle of mail over every mailbox for several minutes, MS4
#     at its contract limit (120 requests/min). Prints, each beside its target: the lease spread
#     per daemon (lease keys per holder), Redis commands/s (overall, per mailbox, the busiest
#     commands), CPU seconds and steady/peak RSS per daemon, Graph requests/s; with webhooks,
#     subscriptions per daemon and the renewal spread. Then SIGKILLs the daemon holding most
#     mailboxes and measures the time until every one of them is held by another (Redis polled
#     every 100 ms), stops the trickle, drains, and prints arrival → MS4 p50/p99/max (from
#     each record's receivedDateTime, stamped on whole seconds by the trickle), duplicates,
#     lost mail and Graph limit violations. Knobs (environment):
#       FLEET_MAILBOXES=2000  FLEET_DAEMONS=3  FLEET_MINUTES=5 (the steady run)
#       FLEET_TRICKLE=4 (new messages/s over all mailboxes)
#       FLEET_POLL_S=30 (graph.poll_interval_s)  FLEET_LEASE_TTL_S=30 (graph.lease_ttl_s)
#       FLEET_WEBHOOK=1: webhooks on, subscriptions of FLEET_SUB_MINUTES=3 renewed
#         FLEET_RENEW_BEFORE_S=90 before they expire, so renewals happen within the run.
#     The defaults take about 8 minutes.
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

# One long poll (the simulator answers once n records are stored), not a curl | jq every 0.1 s:
# probes started as processes take CPU from the processes measured (docs/TESTING.md).
wait_for_records() { # n timeout_s
  local got
  got=$(curl -s --max-time $(( $2 + 5 )) "$SIM_URL/_sim/wait?unique_records=$1&timeout_ms=$(( $2 * 1000 ))")
  [[ $got == *'"reached":true'* ]] || { echo "timed out waiting for $1 records: $got" >&2; tail -5 "$WORK/daemon.log" >&2; return 1; }
}

quantile() { # q → seconds, from the daemon's summary
  curl -s "http://$CONTROL/metrics/prometheus" \
    | awk -v q="$1" '$1 == "ms1_delivery_latency_seconds{quantile=\"" q "\"}" {print $2}'
}

now() { date +%s.%N; }

# CPU seconds used by each process (utime + stime), to show where the cores went.
cpu_of() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat" 2>/dev/null || echo "?"; }
cpu_report() {
  [ -n "${BENCH_CPU:-}" ] || return 0
  echo "   cpu s: daemon $(cpu_of "$DAEMON_PID"), redis $(cpu_of "$REDIS_PID"), simulator $(cpu_of "$SIM_PID")" >&2
}

# "cmd calls usec" per command from INFO commandstats (cumulative since Redis started).
command_usec() {
  redis-cli -p "$REDIS_PORT" info commandstats | tr -d '\r' \
    | sed -n 's/^cmdstat_\([^:]*\):calls=\([0-9]*\),usec=\([0-9]*\),.*/\1 \2 \3/p'
}
# What Redis executed between two command_usec snapshots, per 100,000 e-mails: calls and CPU
# seconds inside each command (INFO commandstats; excludes reading, parsing and replying).
command_report() { # before after emails
  awk -v n="$3" 'NR == FNR {c[$1] = $2; u[$1] = $3; next}
    {dc = $2 - c[$1]; du = $3 - u[$1]; if (dc > 0) printf "%s %d %.3f\n", $1, dc * 100000 / n, du / 1e6 * 100000 / n}' "$1" "$2" \
    | sort -k3 -nr | head -8 \
    | awk '{printf "%s%s %s calls %.2f s", (NR > 1 ? ", " : ""), $1, $2, $3} END {print ""}' \
    | sed 's/^/                             per 100,000 e-mails: /'
}

bench_unlimited() { # batch
  local batch=$1 n=100000
  # ms4.max_batch: the simulator here takes batches of up to 1,000 (--max-batch 1000).
  export MS1__MS4__BATCH_SIZE=$batch MS1__MS4__MAX_BATCH=1000 MS1__MS4__RATE_LIMIT_PER_MIN=0 MS1__MS4__MAX_IN_FLIGHT=4 MS1__PIPELINE__READ_CHUNK=1000
  # Throughput: drain a preloaded backlog. The clock starts once the daemon answers /health
  # (the work starts then, not when the process does), and the CPU counted is what the daemon
  # and redis-server spend from there on.
  start_redis; start_sim --rate-limit-per-min 0 --max-batch 1000
  "$SIM" load --count $n 2>/dev/null
  local redis_cpu0; redis_cpu0=$(cpu_of "$REDIS_PID")
  command_usec >"$WORK/commands-0"
  start_daemon
  local t0 daemon_cpu0; t0=$(now); daemon_cpu0=$(cpu_of "$DAEMON_PID")
  wait_for_records $n 300
  local t1; t1=$(now)
  local rss; rss=$(awk '/VmHWM/ {print $2}' "/proc/$DAEMON_PID/status")
  local rate; rate=$(echo "$n / ($t1 - $t0)" | bc)
  # µs of CPU per e-mail: CPU seconds × 10^6 / n.
  local daemon_us redis_us
  daemon_us=$(echo "($(cpu_of "$DAEMON_PID") - $daemon_cpu0) * 1000000 / $n" | bc -l)
  redis_us=$(echo "($(cpu_of "$REDIS_PID") - $redis_cpu0) * 1000000 / $n" | bc -l)
  command_usec >"$WORK/commands-1"
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
  printf '%-28s daemon %5.1f µs, redis-server %5.1f µs of CPU per e-mail (%.2f + %.2f CPU-s per 100,000)\n' \
    "" "$daemon_us" "$redis_us" "$(echo "$daemon_us / 10" | bc -l)" "$(echo "$redis_us / 10" | bc -l)"
  command_report "$WORK/commands-0" "$WORK/commands-1" "$n"
}

# The limit beside the figures: redis-benchmark XADDing 100,000 entries of ~1 KB, pipelined
# 500 deep, into the same kind of Redis (AOF on): what "queue → Redis" alone moves on this
# machine, without transform, idempotency or delivery.
bench_redis_limit() {
  start_redis
  local value; value=$(head -c 1000 /dev/zero | tr '\0' x)
  local rate
  rate=$(redis-benchmark -p "$REDIS_PORT" -n 100000 -P 500 -c 1 --csv \
    XADD ms1-bench:stream '*' record "$value" | awk -F'"' 'NR == 2 {printf "%d", $4}')
  kill "$REDIS_PID" 2>/dev/null || true; wait "$REDIS_PID" 2>/dev/null || true
  printf '%-28s %10s XADDs/s (redis-benchmark, pipeline 500, 1 KB entries, AOF on): the ceiling of queue → Redis alone\n' \
    "limit, Redis alone:" "$rate"
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

# Messages the pollers have written into the inbound stream, waited for in one redis-cli
# that asks every 10 ms (the daily intake counts the pollers add to in the same step as their
# XADDs: poll_page.lua, the IMAP chunk; today's and tomorrow's, for a run across midnight): no
# process started per probe, and nothing asked of the daemon.
INTAKE_LUA='local s = 0
for _, k in ipairs(KEYS) do
  for _, v in ipairs(redis.call("HVALS", k)) do s = s + tonumber(v) end
end
return s'
wait_for_intake() { # n timeout_s
  local day=$(( $(date +%s) / 86400 )) fd pid sum
  exec {fd}< <(exec timeout "$2" stdbuf -oL redis-cli -p "$REDIS_PORT" -r -1 -i 0.01 eval "$INTAKE_LUA" 2 \
    "ms1:history:intake:$day" "ms1:history:intake:$((day + 1))")
  pid=$!
  while read -r -u "$fd" sum && [ "$sum" -lt "$1" ]; do :; done
  # redis-cli does not stop when its reader does: stop it.
  kill "$pid" 2>/dev/null || true
  exec {fd}<&-
}

# Starts a session; prints when the daemon started it (epoch seconds: the session's `started_ms`,
# which it stamps as it handles the request), so the clock starts with the work, not with curl.
start_session() {
  curl -sf -X POST "http://$CONTROL/session/start" -H 'Content-Type: application/json' -d '{}' >/dev/null
  echo "scale=3; $(redis-cli -p "$REDIS_PORT" hget ms1:session:current started_ms) / 1000" | bc
}
# When the last entry went into the inbound stream (epoch seconds: the milliseconds of the
# stream's last generated id, Redis's clock): the end of an intake, however late a wait saw it.
inbound_last_added() {
  local id; id=$(redis-cli -p "$REDIS_PORT" xinfo stream ms1:stream:inbound \
    | awk 'found {print; exit} /^last-generated-id$/ {found = 1}')
  echo "scale=3; ${id%-*} / 1000" | bc
}

bench_poll() { # mailboxes
  local n=100000 boxes=$1 list=""
  for i in $(seq 0 $((boxes - 1))); do list="${list:+$list,}invoices-$i@contoso.example"; done
  export MS1__MS4__RATE_LIMIT_PER_MIN=0 MS1__GRAPH__MAILBOXES="$list" MS1__GRAPH__PAGE_SIZE=1000 \
    MS1__GRAPH__POLL_INTERVAL_S=3600 MS1__SESSION__AUTOSTART=false
  start_redis; start_sim --rate-limit-per-min 0 --max-batch 1000
  start_graph --mailboxes "$list" --messages-per-mailbox $((n / boxes)) --max-page-size 1000
  # The limit, in the same run against the same simulator: a plain delta reader (one per
  # mailbox, side by side), and what the simulator spent serving it.
  local plain gcpu0; gcpu0=$(cpu_of "$GRAPH_PID")
  plain=$("$SIM" graph-fetch --url "$GRAPH_URL" --mailboxes "$list" --page-size 1000 | awk '{print $1}')
  local plain_sim_us; plain_sim_us=$(echo "($(cpu_of "$GRAPH_PID") - $gcpu0) * 1000000 / $n" | bc -l)
  # The daemon waits for a session; the clock runs from the session's start (the work starts
  # then, not when the process does) to the last message in the inbound stream, and the CPU
  # counted is what each process spends from there on.
  start_daemon
  local c0; c0=$(cpu_all)
  local t0; t0=$(start_session)
  wait_for_intake "$n" 300
  local c1; c1=$(cpu_all)
  local t1; t1=$(inbound_last_added)
  local polled; polled=$(metric ms1_emails_polled_total)
  [ "$polled" -ge "$n" ] || { echo "timed out: $polled of $n polled" >&2; tail -5 "$WORK/daemon.log" >&2; }
  local delivered; delivered=$(sim_stat unique_records)
  # Then until all are at MS4: the same work for any build of the daemon (the share of the
  # delivery done while polling varies with how fast the polling was).
  wait_for_records "$n" 300
  local t2 c2; t2=$(now); c2=$(cpu_all)
  local rss; rss=$(awk '/VmHWM/ {print $2}' "/proc/$DAEMON_PID/status")
  stop_all; kill "$GRAPH_PID" 2>/dev/null || true; wait "$GRAPH_PID" 2>/dev/null || true
  unset MS1__GRAPH__MAILBOXES MS1__SESSION__AUTOSTART
  local ours; ours=$(echo "$n / ($t1 - $t0)" | bc -l)
  # µs of CPU per e-mail, per process: (CPU seconds at t1 - at t0) × 10^6 / n.
  local us; us=$(paste <(tr ' ' '\n' <<<"$c0") <(tr ' ' '\n' <<<"$c1") | awk -v n="$n" '{printf "%.1f ", ($2 - $1) * 1000000 / n}')
  read -r d_us r_us g_us m_us <<<"$us"
  local us2; us2=$(paste <(tr ' ' '\n' <<<"$c0") <(tr ' ' '\n' <<<"$c2") | awk -v n="$n" '{printf "%.1f ", ($2 - $1) * 1000000 / n}')
  read -r d2_us r2_us _ m2_us <<<"$us2"
  printf '%-34s %8.0f e-mails/s into the inbound stream (%d messages, page 1000, %.2f s), peak RSS %.1f MB\n' \
    "poll, $boxes mailbox(es), delta:" "$ours" "$n" "$(echo "$t1 - $t0" | bc -l)" "$(echo "$rss / 1024" | bc -l)"
  printf '%-34s daemon %5.1f, redis-server %5.1f, Graph simulator %5.1f µs of CPU per e-mail (MS4 simulator %.1f: %d delivered meanwhile, in the daemon'"'"'s figure too)\n' \
    "" "$d_us" "$r_us" "$g_us" "$m_us" "$delivered"
  printf '%-34s daemon %5.1f, redis-server %5.1f, MS4 simulator %.1f µs of CPU per e-mail until all were at MS4 (%.2f s after the start)\n' \
    "" "$d2_us" "$r2_us" "$m2_us" "$(echo "$t2 - $t0" | bc -l)"
  printf '%-34s %8.0f messages/s (ms1-sim graph-fetch: the delta pages read and discarded; simulator %.1f µs of CPU per e-mail); ms1-ingestor reaches %.0f %% of it\n' \
    "  limit, the same simulator, plain:" "$plain" "$plain_sim_us" "$(echo "100 * $ours / $plain" | bc -l)"
}

# CPU seconds of the daemon, redis-server, the Graph simulator and the MS4 simulator.
cpu_all() { echo "$(cpu_of "$DAEMON_PID") $(cpu_of "$REDIS_PID") $(cpu_of "$GRAPH_PID") $(cpu_of "$SIM_PID")"; }

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

# CPU seconds of a process and its live descendants (Dovecot's master and its imap processes).
cpu_tree() {
  local total; total=$(cpu_of "$1")
  local child
  for child in $(cat /proc/"$1"/task/*/children 2>/dev/null); do
    total=$(echo "$total + $(cpu_tree "$child")" | bc -l)
  done
  echo "$total"
}
# With BENCH_CPU=1: where the cores went from POST /session/start until the last message was in
# the inbound stream (the daemon's includes its pipeline, which delivers meanwhile).
# Dovecot daemonizes: its master is found by the configuration file of this run.
imap_cpu() {
  local master; master=$(pgrep -of "$WORK/dovecot-$1/dovecot.conf")
  echo "$(cpu_of "$DAEMON_PID") $(cpu_of "$REDIS_PID") $(cpu_tree "$master") $(cpu_of "$SIM_PID")"
}
imap_cpu_report() { # messages, the imap_cpu figures at the start
  [ -n "${BENCH_CPU:-}" ] || return 0
  local -a a b; read -ra a <<<"$2"; read -ra b <<<"$(imap_cpu "$1")"
  printf '   cpu s: daemon %.2f, redis-server %.2f, dovecot %.2f, ms4 simulator %.2f\n' \
    "$(echo "${b[0]} - ${a[0]}" | bc -l)" "$(echo "${b[1]} - ${a[1]}" | bc -l)" \
    "$(echo "${b[2]} - ${a[2]}" | bc -l)" "$(echo "${b[3]} - ${a[3]}" | bc -l)" >&2
}

bench_imap() { # messages
  local n=$1 user=invoices@contoso.example
  export MS1__MS4__RATE_LIMIT_PER_MIN=0 MS1__SESSION__AUTOSTART=false
  start_redis; start_sim --rate-limit-per-min 0 --max-batch 1000
  rm -rf "$WORK/dovecot-$n"  # a fresh folder of n messages each run
  start_imap --dir "$WORK/dovecot-$n" --user "$user:bench-secret" --messages "$n" --size 4096
  write_imap_source "$user"
  # The yardstick, in the same run against the same Dovecot: a plain fetch loop.
  local plain_out plain
  plain_out=$("$SIM" imap-fetch --addr "$IMAP_ADDR" --user "$user" --password bench-secret --chunk 500)
  plain=$(awk '{print $1}' <<<"$plain_out")
  MS1_CONFIG="$WORK/imap.toml" start_daemon
  local cpu0; cpu0=$(imap_cpu "$n")
  local t0; t0=$(start_session)
  wait_for_intake "$n" 300
  local t1; t1=$(inbound_last_added)
  imap_cpu_report "$n" "$cpu0"
  local polled; polled=$(metric 'ms1_emails_polled_total{mode="imap"}')
  [ "$polled" -ge "$n" ] || { echo "timed out: $polled of $n polled" >&2; tail -5 "$WORK/daemon.log" >&2; return 1; }
  wait_for_records "$n" 300
  local t2; t2=$(now)
  local rss; rss=$(awk '/VmHWM/ {print $2}' "/proc/$DAEMON_PID/status")
  stop_all; kill -TERM "$IMAP_PID" 2>/dev/null || true; wait "$IMAP_PID" 2>/dev/null || true
  unset MS1__SESSION__AUTOSTART
  local ours; ours=$(echo "$n / ($t1 - $t0)" | bc -l)
  printf '%-34s %8.0f e-mails/s into the inbound stream (%d messages of ~4 KB in %.3f s from the session start); all at MS4 after %.2f s; peak RSS %.1f MB\n' \
    "imap, 1 folder, UID FETCH:" "$ours" "$n" "$(echo "$t1 - $t0" | bc -l)" "$(echo "$t2 - $t0" | bc -l)" "$(echo "$rss / 1024" | bc -l)"
  printf '%-34s %8.0f messages/s (ms1-sim imap-fetch: UID FETCH 500 at a time, discarding; %s); ms1-ingestor reaches %.0f %% of it\n' \
    "  limit, the same Dovecot, plain:" "$plain" "$(sed 's/^[0-9]* messages\/s (//; s/)$//' <<<"$plain_out")" \
    "$(echo "100 * $ours / $plain" | bc -l)"
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

# The fleet benchmark's pieces: one daemon of the fleet, Redis figures, lease holders.

# "invoices-0@contoso.example,…" for n mailboxes (as `ms1-sim graph --mailbox-count n`).
mailbox_list() { seq 0 $(($1 - 1)) | sed 's/.*/invoices-&@contoso.example/' | paste -sd,; }

start_fleet_daemon() { # i control_address
  MS1__CONTROL__BIND="$2" MS1__LOG__FORMAT=json MS1__LOG__LEVEL=warn MS1__REDIS__CONSUMER="fleet-$1" \
    "$DAEMON_BIN" run >>"$WORK/daemon-$1.log" 2>&1 &
  FLEET_PIDS[$1]=$!
  PIDS+=($!)
}

redis_info() { redis-cli -p "$REDIS_PORT" info "$1" | tr -d '\r'; }
redis_field() { redis_info "$1" | awk -F: -v k="$2" '$1 == k {print $2}'; } # section field

# Every lease key with its holder (the consumer its token "{consumer}:{uuid}" starts with),
# "key holder" a line, read in one script so the snapshot is consistent.
LEASES_LUA='local out = {}
for _, k in ipairs(redis.call("KEYS", ARGV[1])) do
  if redis.call("TYPE", k).ok == "string" then
    table.insert(out, k); table.insert(out, redis.call("GET", k))
  end
end
return out'
lease_holders() {
  redis-cli -p "$REDIS_PORT" eval "$LEASES_LUA" 0 "ms1:lease:*" \
    | awk 'NR % 2 == 1 {key = $0; next} {sub(/:[^:]*$/, ""); print key, $0}'
}

# How many of the lease keys given are not held by a daemon other than ARGV[1].
ORPHANS_LUA='local left = 0
for _, k in ipairs(KEYS) do
  local v = redis.call("GET", k)
  if not v or string.match(v, "^(.*):") == ARGV[1] then left = left + 1 end
end
return left'

# "cmd calls" per command from INFO commandstats.
command_calls() { redis_info commandstats | sed -n 's/^cmdstat_\([^:]*\):calls=\([0-9]*\),.*/\1 \2/p'; }

rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
hwm_kb() { awk '/^VmHWM/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
median() { sort -n | awk '{v[NR] = $1} END {print (NR ? v[int((NR + 1) / 2)] : 0)}'; }
graph_stats() { curl -s "$GRAPH_URL/_sim/stats"; }
ms4_stats() { curl -s "$SIM_URL/_sim/stats"; }

bench_fleet() {
  local boxes=${FLEET_MAILBOXES:-2000} k=${FLEET_DAEMONS:-3} minutes=${FLEET_MINUTES:-5}
  local trickle=${FLEET_TRICKLE:-4} poll=${FLEET_POLL_S:-30} ttl=${FLEET_LEASE_TTL_S:-30}
  local webhook=${FLEET_WEBHOOK:-0} sub_minutes=${FLEET_SUB_MINUTES:-3} renew_before=${FLEET_RENEW_BEFORE_S:-90}
  echo "settings: $boxes mailboxes, $k daemons, trickle $trickle messages/s for $minutes min, graph.poll_interval_s $poll, graph.lease_ttl_s $ttl, MS4 120 requests/min, webhooks $([ "$webhook" = 1 ] && echo "on (subscriptions of $sub_minutes min, renewed ${renew_before} s before expiry)" || echo off)"
  export MS1__GRAPH__MAILBOXES; MS1__GRAPH__MAILBOXES=$(mailbox_list "$boxes")
  export MS1__GRAPH__POLL_INTERVAL_S=$poll MS1__GRAPH__LEASE_TTL_S=$ttl
  if [ "$webhook" = 1 ]; then
    export MS1__WEBHOOK__ENABLED=true MS1__WEBHOOK__CLIENT_STATE=bench-client-state \
      MS1__WEBHOOK__LIFETIME_MINUTES=$sub_minutes MS1__WEBHOOK__RENEW_BEFORE_S=$renew_before
  fi
  start_redis
  start_sim
  start_graph --mailbox-count "$boxes" --workers 2
  FLEET_PIDS=()
  local controls=() i
  for i in $(seq 1 "$k"); do
    controls[i]="127.0.0.1:$(free_port)"
    MS1__WEBHOOK__PUBLIC_URL="http://${controls[i]}" start_fleet_daemon "$i" "${controls[i]}"
    echo "${controls[i]##*:} fleet-$i" >>"$WORK/ports"
  done
  fleet_settle "$boxes" "${controls[@]}"
  fleet_steady "$boxes" "$k" "$minutes" "$trickle"
  [ "$webhook" = 1 ] && fleet_renewals "$((sub_minutes * 60 - renew_before))"
  fleet_takeover "$boxes" "$k" "$poll" "$ttl"
  fleet_drain "$poll" "$ttl"
  for i in $(seq 1 "$k"); do kill -TERM "${FLEET_PIDS[i]}" 2>/dev/null || true; done
  for i in $(seq 1 "$k"); do wait "${FLEET_PIDS[i]}" 2>/dev/null || true; done
}

# Waits for every daemon to answer and every mailbox to be leased.
fleet_settle() { # mailboxes control…
  local boxes=$1 t0 held=0 c; t0=$(now); shift
  for c in "$@"; do
    for _ in $(seq 600); do curl -sf "http://$c/health" >/dev/null && break; sleep 0.1; done
  done
  for _ in $(seq 1200); do
    held=$(lease_holders | wc -l)
    [ "$held" -ge "$boxes" ] && break
    sleep 0.1
  done
  printf '%-40s %d of %d mailboxes leased %.1f s after the daemons started\n' "start:" "$held" "$boxes" "$(echo "$(now) - $t0" | bc -l)"
}

# The steady run with the trickle: leases, Redis, CPU, RSS, Graph requests.
fleet_steady() { # mailboxes daemons minutes trickle
  local boxes=$1 k=$2 minutes=$3 trickle=$4 i
  curl -s -X POST "$GRAPH_URL/_sim/config" -H 'Content-Type: application/json' -d "{\"trickle_per_s\": $trickle}" >/dev/null
  local cmds0 t0 graph0 rcpu0; cmds0=$(redis_field stats total_commands_processed); t0=$(now)
  command_calls >"$WORK/calls-0"
  graph0=$(graph_stats | jq '.totals.requests'); rcpu0=$(cpu_of "$REDIS_PID")
  local cpu0=()
  for i in $(seq 1 "$k"); do cpu0[i]=$(cpu_of "${FLEET_PIDS[i]}"); : >"$WORK/rss-$i"; done
  local end=$(( $(date +%s) + minutes * 60 )) half=$(( $(date +%s) + minutes * 30 ))
  while [ "$(date +%s)" -lt "$end" ]; do
    sleep 5
    # Steady RSS: the samples of the second half of the run.
    if [ "$(date +%s)" -ge "$half" ]; then
      for i in $(seq 1 "$k"); do rss_kb "${FLEET_PIDS[i]}" >>"$WORK/rss-$i"; done
    fi
  done
  local secs cmds1 graph1; secs=$(echo "$(now) - $t0" | bc -l)
  cmds1=$(redis_field stats total_commands_processed); command_calls >"$WORK/calls-1"
  graph1=$(graph_stats | jq '.totals.requests')
  lease_holders >"$WORK/holders"
  echo "lease spread (lease keys per holder; target: about $boxes / $k each):"
  for i in $(seq 1 "$k"); do
    printf '    fleet-%d %6d\n' "$i" "$(awk -v h="fleet-$i" '$2 == h' "$WORK/holders" | wc -l)"
  done
  printf '    none    %6d\n' "$(( boxes - $(wc -l <"$WORK/holders") ))"
  local rate; rate=$(echo "($cmds1 - $cmds0) / $secs" | bc -l)
  printf '%-40s %.0f/s overall, %.3f/s per mailbox over %.0f s (no target: for sizing); redis-server %.1f CPU-s (%.0f%% of a core)\n' \
    "Redis commands:" "$rate" "$(echo "$rate / $boxes" | bc -l)" "$secs" \
    "$(echo "$(cpu_of "$REDIS_PID") - $rcpu0" | bc -l)" "$(echo "($(cpu_of "$REDIS_PID") - $rcpu0) / $secs * 100" | bc -l)"
  echo "    busiest: $(LC_ALL=C join -a 2 -e 0 -o 0,1.2,2.2 <(LC_ALL=C sort "$WORK/calls-0") <(LC_ALL=C sort "$WORK/calls-1") \
    | awk -v s="$secs" '{printf "%s %.0f/s\n", $1, ($3 - $2) / s}' | sort -k2 -n -r | head -5 | paste -sd, | sed 's/,/, /g')"
  printf '%-40s %.1f/s (%.3f per mailbox per poll interval)\n' "Graph requests:" \
    "$(echo "($graph1 - $graph0) / $secs" | bc -l)" "$(echo "($graph1 - $graph0) / $secs * ${MS1__GRAPH__POLL_INTERVAL_S} / $boxes" | bc -l)"
  echo "per daemon (target: RSS ≤ 128 MB):"
  for i in $(seq 1 "$k"); do
    local cpu; cpu=$(echo "$(cpu_of "${FLEET_PIDS[i]}") - ${cpu0[i]}" | bc -l)
    printf '    fleet-%d  CPU %6.1f s over the run (%4.1f%% of a core)   RSS steady %6.1f MB, peak %6.1f MB\n' "$i" \
      "$cpu" "$(echo "$cpu / $secs * 100" | bc -l)" "$(echo "$(median <"$WORK/rss-$i") / 1024" | bc -l)" \
      "$(echo "$(hwm_kb "${FLEET_PIDS[i]}") / 1024" | bc -l)"
  done
  local latency; latency=$(ms4_stats | jq -c .arrival_to_accept_ms)
  printf '%-40s p50 %.1f s, p99 %.1f s, max %.1f s over %d records (target: p99 ≤ %d s, 2 poll intervals)\n' \
    "arrival to MS4, steady:" "$(jq '.p50 / 1000' <<<"$latency")" "$(jq '.p99 / 1000' <<<"$latency")" \
    "$(jq '.max / 1000' <<<"$latency")" "$(jq .count <<<"$latency")" "$((2 * MS1__GRAPH__POLL_INTERVAL_S))"
}

# Webhooks: subscriptions per daemon, renewals per minute, how the expirations spread.
fleet_renewals() { # seconds between a subscription's renewals
  local period=$1 stats live; stats=$(graph_stats)
  live=$(jq '.subscription_activity.expiration_spread.live' <<<"$stats")
  # Each daemon's notification URL names its control port.
  echo "subscriptions per daemon (by notification URL): $(jq -r '.subscriptions[].notificationUrl | capture(":(?<p>[0-9]+)/").p' <<<"$stats" \
    | sort | uniq -c | while read -r n port; do echo "$(awk -v p="$port" '$1 == p {print $2}' "$WORK/ports") $n"; done | paste -sd, | sed 's/,/, /g')"
  printf '%-40s %s created, %s renewed; most renewed in one minute %s (spread evenly: %d)\n' "subscriptions:" \
    "$(jq .subscriptions_created <<<"$stats")" "$(jq .renewals <<<"$stats")" \
    "$(jq .subscription_activity.most_renewed_in_a_minute <<<"$stats")" "$(( live * 60 / (period > 0 ? period : 1) ))"
  echo "    renewals per minute: $(jq -r '.subscription_activity.renewed_per_minute | to_entries | map("\(.key[11:16]) \(.value)") | join(", ")' <<<"$stats")"
  echo "    expirations of the $live live: $(jq -r '.subscription_activity.expiration_spread | "min \(.min[11:19]), p50 \(.p50[11:19]), max \(.max[11:19]); most within 1 min \(.max_within_1_min), within 5 min \(.max_within_5_min)"' <<<"$stats")"
}

# SIGKILLs the daemon holding most mailboxes; times until all of them are held by others.
fleet_takeover() { # mailboxes daemons poll ttl
  local boxes=$1 k=$2 poll=$3 ttl=$4 victim
  victim=$(awk '{print $2}' "$WORK/holders" | sort | uniq -c | sort -nr | awk 'NR == 1 {print $2}')
  victim=${victim:-fleet-1}
  local i=${victim#fleet-}
  lease_holders >"$WORK/holders"
  local keys; mapfile -t keys < <(awk -v v="$victim" '$2 == v {print $1}' "$WORK/holders")
  disown "${FLEET_PIDS[i]}" # no "Killed" line from bash
  kill -KILL "${FLEET_PIDS[i]}"
  local t0 left=${#keys[@]} bound=$((2 * ttl + poll)); t0=$(now)
  while [ "$left" -gt 0 ] && [ "$(echo "$(now) - $t0 < 2 * $bound" | bc)" = 1 ]; do
    sleep 0.1
    left=$(redis-cli -p "$REDIS_PORT" eval "$ORPHANS_LUA" "${#keys[@]}" "${keys[@]}" "$victim")
  done
  if [ "$left" -eq 0 ]; then
    printf '%-40s all %d of %s'"'"'s mailboxes held by others %.1f s after its SIGKILL (target ≤ %d s: 2 × lease TTL + poll interval)\n' \
      "takeover:" "${#keys[@]}" "$victim" "$(echo "$(now) - $t0" | bc -l)" "$bound"
  else
    printf '%-40s %d of %d of %s'"'"'s mailboxes still not held by another after %d s (target ≤ %d s)\n' \
      "takeover:" "$left" "${#keys[@]}" "$victim" "$((2 * bound))" "$bound"
  fi
}

# Stops the trickle, waits for MS4 to have everything, prints latency, losses and violations.
fleet_drain() { # poll ttl
  local poll=$1 ttl=$2 sent accepted t0
  curl -s -X POST "$GRAPH_URL/_sim/config" -H 'Content-Type: application/json' -d '{"trickle_per_s": 0}' >/dev/null
  sent=$(graph_stats | jq .trickle.sent); t0=$(now)
  # The killed daemon's pending entries are claimed by another after redis.claim_idle_ms.
  local claim=$(( ${MS1__REDIS__CLAIM_IDLE_MS:-60000} / 1000 ))
  local deadline=$(( $(date +%s) + 2 * poll + 2 * ttl + claim + 30 ))
  while accepted=$(ms4_stats | jq .unique_records); [ "$accepted" -lt "$sent" ] && [ "$(date +%s)" -lt "$deadline" ]; do
    sleep 1
  done
  printf '%-40s %s %.0f s after the trickle stopped\n' "drain:" \
    "$([ "$accepted" -ge "$sent" ] && echo "all at MS4" || echo "gave up waiting")" "$(echo "$(now) - $t0" | bc -l)"
  local ms4 graph; ms4=$(ms4_stats); graph=$(graph_stats)
  printf '%-40s p50 %.1f s, p99 %.1f s, max %.1f s over %d records (target: p99 ≤ %d s); stamps up to %s ms late\n' \
    "arrival to MS4, whole run with takeover:" "$(jq '.arrival_to_accept_ms.p50 / 1000' <<<"$ms4")" \
    "$(jq '.arrival_to_accept_ms.p99 / 1000' <<<"$ms4")" "$(jq '.arrival_to_accept_ms.max / 1000' <<<"$ms4")" \
    "$(jq .arrival_to_accept_ms.count <<<"$ms4")" "$((2 * poll))" "$(jq .trickle.max_stamp_lag_ms <<<"$graph")"
  printf '%-40s %d sent by the simulator, %d at MS4, %d lost, %d duplicates (target: 0 lost; duplicates allowed after a kill, none otherwise); MS4 429s %d\n' \
    "mail:" "$sent" "$accepted" "$((sent - accepted))" "$(jq .duplicate_records <<<"$ms4")" "$(jq .rate_limited <<<"$ms4")"
  printf '%-40s %d (in flight %d, window %d, app %d; target 0); contract mistakes %d, two pollers on a mailbox at once %d (target 0)\n' \
    "Graph limit violations:" "$(jq .limit_violations.total <<<"$graph")" "$(jq .limit_violations.concurrency <<<"$graph")" \
    "$(jq .limit_violations.window <<<"$graph")" "$(jq .limit_violations.app <<<"$graph")" \
    "$(jq .violations <<<"$graph")" "$(jq .totals.poller_interleavings <<<"$graph")"
}

need_packages bc:bc
case "$what" in
  pipeline)
    echo "ms1-ingestor pipeline benchmark ($(nproc) cores, $(redis-server --version | awk '{print $3}'))"
    bench_redis_limit
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
  graph-poll)
    # The polling case alone: scripts/bench.sh graph-poll [mailboxes (1)].
    echo "ms1-ingestor Graph polling benchmark ($(nproc) cores)"
    bench_poll "${2:-1}"
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
  fleet)
    echo "ms1-ingestor fleet benchmark ($(nproc) cores, one redis-server $(redis-server --version | awk '{print $3}'))"
    bench_fleet
    ;;
  *)
    echo "usage: scripts/bench.sh pipeline|contract|graph|graph-poll [mailboxes]|imap|imap-burst|scale|fleet (fleet knobs: FLEET_MAILBOXES FLEET_DAEMONS FLEET_MINUTES FLEET_TRICKLE FLEET_POLL_S FLEET_LEASE_TTL_S FLEET_WEBHOOK FLEET_SUB_MINUTES FLEET_RENEW_BEFORE_S; see the top of this script)" >&2
    exit 2
    ;;
esac
