#!/usr/bin/env bash
# Runs a command beside a private systemd-journald (Debian's), so that its journald logging can
# be tested for real without touching the host's logging. tests/journald.rs runs it as
#
#   unshare --mount --propagation private -- scripts/journald-sandbox.sh DIR -- CMD [ARGS…]
#
# Inside the private mount namespace (it refuses to run in the host's):
#   /run/systemd     a tmpfs: journald's sockets (/run/systemd/journal/socket, the one
#                    tracing-journald writes to) exist only here
#   /run/log         DIR/log bind-mounted: journald writes DIR/log/journal/<machine-id>/*.journal,
#                    which `journalctl --directory DIR/log/journal` reads from outside afterwards
#   /var/log/journal a tmpfs (Storage=volatile anyway)
#   /etc/systemd/journald.conf   DIR/journald.conf: volatile, nothing forwarded to syslog, kmsg,
#                    console or wall, the kernel log not read; /dev/kmsg is /dev/null here
# CMD runs in a cgroup named like a unit, <base>/ms1-journald-test-PID.slice/ms1-ingestor.service,
# so that journald derives _SYSTEMD_UNIT=ms1-ingestor.service from it as it does under systemd
# (`journalctl -u` matches on that field). DIR/unit holds that unit name when the cgroup could
# be made, and is absent when not (no writable cgroup2 hierarchy). The cgroup is removed at exit.
# SIGTERM is passed on to CMD; the exit status is CMD's. journald's own messages go to
# DIR/journald.log.
set -euo pipefail

dir="$1"
shift
[ "${1:-}" = "--" ] && shift
[ $# -gt 0 ] || { echo "usage: $0 DIR -- CMD [ARGS…]" >&2; exit 2; }
if [ "$(readlink /proc/self/ns/mnt)" = "$(readlink /proc/1/ns/mnt)" ]; then
  echo "$0: run me under 'unshare --mount --propagation private': I mount over /run/systemd" >&2
  exit 2
fi
journald=/lib/systemd/systemd-journald
[ -x "$journald" ] || journald=/usr/lib/systemd/systemd-journald

mkdir -p "$dir/log"
cat >"$dir/journald.conf" <<'CONF'
[Journal]
Storage=volatile
ReadKMsg=no
ForwardToSyslog=no
ForwardToKMsg=no
ForwardToConsole=no
ForwardToWall=no
CONF
# -n: no entry in /run/mount/utab (that directory is the host's).
mount -n -t tmpfs -o mode=0755 tmpfs /run/systemd
mount -n --bind "$dir/log" /run/log
[ ! -d /var/log/journal ] || mount -n -t tmpfs tmpfs /var/log/journal
mount -n --bind "$dir/journald.conf" /etc/systemd/journald.conf
[ ! -d /etc/systemd/journald.conf.d ] || mount -n -t tmpfs tmpfs /etc/systemd/journald.conf.d
[ ! -e /dev/kmsg ] || mount -n --bind /dev/null /dev/kmsg

cgroup="" base="" cmd_pid="" journald_pid=""
cleanup() {
  [ -z "$cmd_pid" ] || kill -KILL "$cmd_pid" 2>/dev/null || true
  [ -z "$journald_pid" ] || { kill -TERM "$journald_pid" 2>/dev/null || true; wait "$journald_pid" 2>/dev/null || true; }
  if [ -n "$cgroup" ]; then
    rmdir "$cgroup" "$(dirname "$cgroup")" 2>/dev/null || true
  fi
}
trap cleanup EXIT

SYSTEMD_LOG_TARGET=console SYSTEMD_LOG_LEVEL=info "$journald" >"$dir/journald.log" 2>&1 &
journald_pid=$!
for _ in $(seq 100); do
  [ -S /run/systemd/journal/socket ] && break
  kill -0 "$journald_pid" 2>/dev/null || { echo "systemd-journald exited:" >&2; cat "$dir/journald.log" >&2; exit 1; }
  sleep 0.1
done
[ -S /run/systemd/journal/socket ] || { echo "systemd-journald made no socket" >&2; exit 1; }

# The cgroup2 hierarchy journald reads units from: /sys/fs/cgroup (unified) or
# /sys/fs/cgroup/unified (hybrid).
if [ "$(stat -f -c %T /sys/fs/cgroup 2>/dev/null)" = cgroup2fs ]; then
  base=/sys/fs/cgroup
elif [ "$(stat -f -c %T /sys/fs/cgroup/unified 2>/dev/null)" = cgroup2fs ]; then
  base=/sys/fs/cgroup/unified
fi
if [ -n "$base" ] && mkdir -p "$base/ms1-journald-test-$$.slice/ms1-ingestor.service" 2>/dev/null; then
  cgroup="$base/ms1-journald-test-$$.slice/ms1-ingestor.service"
  echo ms1-ingestor.service >"$dir/unit"
else
  echo "$0: no writable cgroup2 hierarchy: CMD runs without a unit cgroup" >&2
  rm -f "$dir/unit"
fi

(
  if [ -n "$cgroup" ]; then echo "$BASHPID" >"$cgroup/cgroup.procs"; fi
  exec "$@"
) &
cmd_pid=$!
trap 'kill -TERM "$cmd_pid" 2>/dev/null || true' TERM INT
status=0
while :; do
  wait "$cmd_pid" && status=0 || status=$?
  kill -0 "$cmd_pid" 2>/dev/null || break
done
cmd_pid=""
exit "$status"
