#!/usr/bin/env bash
# Installs ms1-ingestor as a systemd service on this machine:
#   /usr/local/bin/ms1-ingestor             the release binary (built here)
#   /etc/ms1-ingestor/ms1.toml              settings, mode 0640 root:ms1-ingestor (kept if present,
#                                           its mode tightened; starts as config/default.toml)
#   /etc/ms1-ingestor/secrets.env           secrets, mode 0600 (kept if present; starts as
#                                           config/secrets.env, a template)
#   /etc/ms1-ingestor/credentials/          mode 0700, for LoadCredential= files (one per secret)
# and the system group ms1-ingestor, through which the service (DynamicUser, with
# SupplementaryGroups=ms1-ingestor) reads ms1.toml.
#   /etc/systemd/system/ms1-ingestor.service
# then reloads systemd and enables the service (start it with: systemctl start ms1-ingestor).
# scripts/package.sh builds a Debian package of the same files instead (/usr/bin, /lib/systemd).
# Usage: sudo scripts/install-service.sh [--no-build]
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

[ "$(id -u)" = 0 ] || { echo "run as root (sudo scripts/install-service.sh)" >&2; exit 1; }
if [ "${1:-}" != "--no-build" ]; then
  cargo build --release --quiet
fi
install -D -m 0755 "${CARGO_TARGET_DIR:-$ROOT/target}/release/ms1-ingestor" /usr/local/bin/ms1-ingestor
install -d -m 0755 /etc/ms1-ingestor
install -d -m 0700 /etc/ms1-ingestor/credentials
getent group ms1-ingestor >/dev/null || groupadd --system ms1-ingestor
if [ ! -f /etc/ms1-ingestor/ms1.toml ]; then
  install -m 0640 -o root -g ms1-ingestor config/default.toml /etc/ms1-ingestor/ms1.toml
  echo "installed /etc/ms1-ingestor/ms1.toml (edit it: redis.url, ms4.base_url, graph.*)"
fi
# The settings may hold a redis.url with a password or a secret written in place: not for
# every local user to read.
chown root:ms1-ingestor /etc/ms1-ingestor/ms1.toml
chmod 0640 /etc/ms1-ingestor/ms1.toml
if [ ! -f /etc/ms1-ingestor/secrets.env ]; then
  install -m 0600 -o root -g root config/secrets.env /etc/ms1-ingestor/secrets.env
  echo "installed /etc/ms1-ingestor/secrets.env (fill in the secrets)"
fi
install -m 0644 config/ms1-ingestor.service /etc/systemd/system/ms1-ingestor.service
if command -v systemd-analyze >/dev/null 2>&1; then
  systemd-analyze verify /etc/systemd/system/ms1-ingestor.service
fi
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  systemctl enable ms1-ingestor.service
  echo "enabled; start with: systemctl start ms1-ingestor && journalctl -u ms1-ingestor -f"
else
  echo "systemd is not running here (PID 1 is not systemd): files installed, nothing enabled"
fi
