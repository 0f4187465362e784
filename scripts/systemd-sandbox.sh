#!/usr/bin/env bash
# Runs the repository's unit (config/ms1-ingestor.service) under a real systemd: a
# systemd-nspawn container booting this machine's /usr read-only on a tmpfs root
# (--volatile=yes: no /etc of the host, so none of its services), sharing the host's network
# so the daemon reaches the test's redis-server and simulators on loopback. tests/service.rs
# runs it as
#
#   unshare --mount --propagation private -- scripts/systemd-sandbox.sh DIR BIN
#
# DIR holds the inputs: secrets.env (the daemon's MS1__… settings, EnvironmentFile=) and
# ms1.toml; the outputs land in DIR/out: start.rc (of `systemctl start`, which waits for
# READY=1 as Type=notify), show.started and show.later (`systemctl show` of the running unit:
# StatusText= from STATUS=, WatchdogTimestampMonotonic= from WATCHDOG=1), then, once DIR/out/stop
# exists, stop.rc, show.stopped and journal.json (`journalctl -u ms1-ingestor -o json`).
# The unit is used as written, with BIN bind-mounted as /usr/local/bin/ms1-ingestor and one
# drop-in: WatchdogSec=4s instead of 60 s, so that the watchdog is fed within the test.
#
# Nothing of the host is touched: /run/systemd is a tmpfs of this mount namespace (nspawn keeps
# state there), the container's journal is its own (--link-journal=no, /var a tmpfs), and the
# cgroups nspawn makes are under ms1-systemd-test-PID, removed at exit. systemd-nspawn comes
# with the systemd-container package.
set -euo pipefail

dir="$1" bin="$2"
if [ "$(readlink /proc/self/ns/mnt)" = "$(readlink /proc/1/ns/mnt)" ]; then
  echo "$0: run me under 'unshare --mount --propagation private': I mount over /run/systemd" >&2
  exit 2
fi
root="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$dir/out" "$dir/unit.d"
rm -f "$dir/out/"*

mount -n -t tmpfs -o mode=0755 tmpfs /run/systemd
# The container's /usr is the host's, read-only: BIN appears as /usr/local/bin/ms1-ingestor by
# a directory of our own over /usr/local/bin.
mkdir -p "$dir/bin"
touch "$dir/bin/ms1-ingestor"
mount -n --bind "$bin" "$dir/bin/ms1-ingestor"

# The group of SupplementaryGroups=ms1-ingestor, and ms1.toml readable through it.
printf 'root:x:0:\nms1-ingestor:x:990:\n' >"$dir/group"
chown root:990 "$dir/ms1.toml"
chmod 0640 "$dir/ms1.toml"
chmod 0600 "$dir/secrets.env"
printf '[Service]\nWatchdogSec=4s\n' >"$dir/unit.d/watchdog.conf"

cat >"$dir/out/probe.sh" <<'PROBE'
#!/bin/sh
props="-p ActiveState -p SubState -p Result -p StatusText -p WatchdogUSec -p WatchdogTimestampMonotonic -p NotifyAccess -p Type -p MainPID -p ExecMainStatus"
systemctl start ms1-ingestor.service
echo $? >/out/start.rc
systemctl show $props ms1-ingestor.service >/out/show.started
# Until WATCHDOG=1 came again (at most 30 s).
first="$(systemctl show -p WatchdogTimestampMonotonic --value ms1-ingestor.service)"
i=0
while [ "$(systemctl show -p WatchdogTimestampMonotonic --value ms1-ingestor.service)" = "$first" ] && [ $i -lt 300 ]; do
  sleep 0.1
  i=$((i + 1))
done
systemctl show $props ms1-ingestor.service >/out/show.later
touch /out/started
i=0
while [ ! -e /out/stop ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i + 1)); done
systemctl stop ms1-ingestor.service
echo $? >/out/stop.rc
systemctl show $props ms1-ingestor.service >/out/show.stopped
journalctl -u ms1-ingestor --no-pager -o json >/out/journal.json
systemctl status --no-pager ms1-ingestor.service >/out/status.txt 2>&1
systemctl --no-block poweroff
PROBE
chmod 0755 "$dir/out/probe.sh"
cat >"$dir/probe.service" <<'UNIT'
[Unit]
Description=ms1-ingestor under a real systemd: the test's probe
After=basic.target
[Service]
Type=oneshot
ExecStart=/out/probe.sh
UNIT

# nspawn puts the container's cgroups (payload, supervisor) beside itself: under a cgroup of our
# own in every hierarchy, removed at exit.
cgroups=()
for h in /sys/fs/cgroup/unified /sys/fs/cgroup/systemd /sys/fs/cgroup; do
  [ -f "$h/cgroup.procs" ] || continue
  if mkdir "$h/ms1-systemd-test-$$" 2>/dev/null; then
    cgroups+=("$h/ms1-systemd-test-$$")
    echo $$ >"$h/ms1-systemd-test-$$/cgroup.procs"
  fi
done
cleanup() {
  for c in "${cgroups[@]}"; do
    echo $$ >"$(dirname "$c")/cgroup.procs" 2>/dev/null || true
    find "$c" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
}
trap cleanup EXIT

status=0
SYSTEMD_NSPAWN_TMPFS_TMP=1 systemd-nspawn --quiet -D / --volatile=yes --register=no --keep-unit \
  --link-journal=no --console=pipe \
  --bind="$dir/out:/out" \
  --bind-ro="$dir/bin:/usr/local/bin" \
  --bind-ro="$root/config/ms1-ingestor.service:/etc/systemd/system/ms1-ingestor.service" \
  --bind-ro="$dir/unit.d:/etc/systemd/system/ms1-ingestor.service.d" \
  --bind-ro="$dir/probe.service:/etc/systemd/system/probe.service" \
  --bind-ro="$dir/ms1.toml:/etc/ms1-ingestor/ms1.toml" \
  --bind-ro="$dir/secrets.env:/etc/ms1-ingestor/secrets.env" \
  --bind-ro="$dir/group:/etc/group" \
  -b -- systemd.firstboot=off systemd.wants=probe.service \
  >"$dir/console.log" 2>&1 </dev/null || status=$?
exit "$status"
