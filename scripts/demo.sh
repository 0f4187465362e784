#!/usr/bin/env bash
# Sets up and runs the main job on this machine: installs redis-server and dovecot-imapd when
# missing, builds the daemon (`ms1-ingestor`) and the dev tools (`ms1-sim`), and runs
# `ms1-sim demo` — a private redis-server, the MS4 and Graph simulators, a real Dovecot IMAP
# mailbox, the daemon, and a few thousand synthetic invoice e-mails flowing through to MS4.
# Ends with "N delivered, 0 lost" and exit 0.
# Usage: scripts/demo.sh [--count N] [--rate-limit-per-min N] …   (see: ms1-sim demo --help)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

need_packages redis-server:redis-server dovecot:dovecot-imapd
echo "==> building (release)"
cargo build --release --quiet -p ms1-ingestor -p ms1-sim --bins
# The demo runs the daemon beside it: target/release/ms1-ingestor (--daemon PATH says otherwise).
exec "${CARGO_TARGET_DIR:-$ROOT/target}/release/ms1-sim" demo --dir "$ROOT/.demo" "$@"
