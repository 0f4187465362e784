#!/usr/bin/env bash
# Builds the Debian package ms1-ingestor_VERSION_ARCH.deb with dpkg-deb (no cargo-deb: nothing
# to install, and every path and mode is visible here):
#   /usr/bin/ms1-ingestor                          release build, stripped
#   /lib/systemd/system/ms1-ingestor.service       config/ms1-ingestor.service, the one unit
#                                                  install-service.sh installs too, with the
#                                                  binary's path made /usr/bin
#   /etc/ms1-ingestor/ms1.toml                     conffile: config/default.toml, every setting
#                                                  documented; 0640 root:ms1-ingestor (set by
#                                                  postinst with dpkg-statoverride)
#   /etc/ms1-ingestor/secrets.env                  conffile: config/secrets.env, 0600 root (read
#                                                  by systemd, EnvironmentFile=)
#   /etc/ms1-ingestor/credentials/                 0700, for LoadCredential= files
#   /usr/share/ms1-ingestor/                       grafana-dashboard.json, prometheus-alerts.yml
#   /usr/share/man/man1/ms1-ingestor.1.gz          from the --help of every verb
#   /usr/share/doc/ms1-ingestor/                   copyright, changelog.gz
# postinst adds the system group ms1-ingestor (the unit runs DynamicUser= with
# SupplementaryGroups=ms1-ingestor; systemd makes the state directory /var/lib/ms1-ingestor,
# StateDirectory=) and enables the unit without starting it: ms1.toml and secrets.env must be
# filled in first. Purging removes the state directory and the statoverride; the group stays
# (Debian's practice for system groups).
#
# Usage: scripts/package.sh [--no-build] [--out DIR]   build (release), package, check, and
#                                                       run lintian when it is installed
#        scripts/package.sh --check DEB                only check a built package's layout
# The package lands in DIR (default: $CARGO_TARGET_DIR/debian or target/debian).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

target="$(realpath -m "${CARGO_TARGET_DIR:-$ROOT/target}")"
out="$target/debian" build=1 check_only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --no-build) build=0 ;;
    --out) out="$(realpath -m "$2")"; shift ;;
    --check) check_only="$(realpath "$2")"; shift ;;
    *) echo "usage: $0 [--no-build] [--out DIR] | --check DEB" >&2; exit 2 ;;
  esac
  shift
done
cd "$ROOT"

# check_package DEB: the paths, modes and maintainer scripts a package must have. Fails with
# what is wrong.
check_package() {
  local deb="$1" listing bad=0
  listing="$(dpkg-deb --contents "$deb")"
  expect() { # MODE OWNER PATH
    if ! awk -v m="$1" -v o="$2" -v p="./$3" '$1==m && $2==o && $NF==p {f=1} END {exit !f}' <<<"$listing"; then
      echo "package.sh --check: $deb lacks $1 $2 $3" >&2
      bad=1
    fi
  }
  expect -rwxr-xr-x root/root usr/bin/ms1-ingestor
  expect -rw-r--r-- root/root lib/systemd/system/ms1-ingestor.service
  expect -rw-r----- root/root etc/ms1-ingestor/ms1.toml
  expect -rw------- root/root etc/ms1-ingestor/secrets.env
  expect drwx------ root/root etc/ms1-ingestor/credentials/
  expect -rw-r--r-- root/root usr/share/ms1-ingestor/grafana-dashboard.json
  expect -rw-r--r-- root/root usr/share/ms1-ingestor/prometheus-alerts.yml
  expect -rw-r--r-- root/root usr/share/man/man1/ms1-ingestor.1.gz
  expect -rw-r--r-- root/root usr/share/doc/ms1-ingestor/copyright
  expect -rw-r--r-- root/root usr/share/doc/ms1-ingestor/changelog.gz
  local ctl
  ctl="$(mktemp -d)"
  dpkg-deb --control "$deb" "$ctl"
  for f in control conffiles md5sums postinst prerm postrm; do
    [ -f "$ctl/$f" ] || { echo "package.sh --check: $deb has no DEBIAN/$f" >&2; bad=1; }
  done
  if ! diff <(printf '/etc/ms1-ingestor/ms1.toml\n/etc/ms1-ingestor/secrets.env\n') "$ctl/conffiles" >&2; then
    echo "package.sh --check: conffiles differ (above)" >&2
    bad=1
  fi
  rm -rf "$ctl"
  # The packaged unit is the repository's with the binary's path changed, nothing else.
  local x
  x="$(mktemp -d)"
  dpkg-deb --extract "$deb" "$x"
  if ! diff <(sed 's#/usr/local/bin/ms1-ingestor#/usr/bin/ms1-ingestor#g' config/ms1-ingestor.service) \
    "$x/lib/systemd/system/ms1-ingestor.service" >&2; then
    echo "package.sh --check: the packaged unit is not config/ms1-ingestor.service (above)" >&2
    bad=1
  fi
  if grep -q /usr/local "$x/lib/systemd/system/ms1-ingestor.service"; then
    echo "package.sh --check: the packaged unit names /usr/local" >&2
    bad=1
  fi
  if file -b "$x/usr/bin/ms1-ingestor" | grep -q "not stripped"; then
    echo "package.sh --check: /usr/bin/ms1-ingestor is not stripped" >&2
    bad=1
  fi
  rm -rf "$x"
  [ "$bad" = 0 ] && echo "==> package layout checked: $deb"
  return "$bad"
}

if [ -n "$check_only" ]; then
  need_packages file:file
  check_package "$check_only"
  exit
fi

need_packages dpkg-deb:dpkg strip:binutils file:file
if [ "$build" = 1 ]; then
  echo "==> cargo build --release --bin ms1-ingestor"
  cargo build --release --bin ms1-ingestor --quiet
fi
bin="$target/release/ms1-ingestor"
[ -x "$bin" ] || { echo "no $bin: build it (drop --no-build)" >&2; exit 1; }

version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
arch="$(dpkg --print-architecture)"
# Reproducible dates: the last commit's.
export SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}"
# The maintainer: $DEBFULLNAME <$DEBEMAIL> as for dch, else the last commit's author.
maintainer="${DEBFULLNAME:-$(git log -1 --format=%an 2>/dev/null || echo ms1-ingestor maintainers)} <${DEBEMAIL:-$(git log -1 --format=%ae 2>/dev/null || echo ms1-ingestor@example.com)}>"
stage="$(mktemp -d "${TMPDIR:-/tmp}/ms1-package.XXXXXX")"
trap 'rm -rf "$stage"' EXIT
pkg="$stage/root"
doc="$pkg/usr/share/doc/ms1-ingestor"

install -d -m 0755 "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/lib/systemd/system" "$pkg/etc/ms1-ingestor" \
  "$pkg/usr/share/ms1-ingestor" "$pkg/usr/share/man/man1" "$doc"
install -d -m 0700 "$pkg/etc/ms1-ingestor/credentials"
install -m 0755 "$bin" "$pkg/usr/bin/ms1-ingestor"
strip --strip-unneeded --remove-section=.comment --remove-section=.note "$pkg/usr/bin/ms1-ingestor"
sed 's#/usr/local/bin/ms1-ingestor#/usr/bin/ms1-ingestor#g' config/ms1-ingestor.service \
  >"$pkg/lib/systemd/system/ms1-ingestor.service"
chmod 0644 "$pkg/lib/systemd/system/ms1-ingestor.service"
install -m 0640 config/default.toml "$pkg/etc/ms1-ingestor/ms1.toml"
install -m 0600 config/secrets.env "$pkg/etc/ms1-ingestor/secrets.env"
# Secrets, so not the 0644/0755 of Debian Policy 10.9 (which allows that when needed): lintian
# is told so.
install -d -m 0755 "$pkg/usr/share/lintian/overrides"
cat >"$pkg/usr/share/lintian/overrides/ms1-ingestor" <<'OVERRIDES'
# ms1.toml may hold a Redis password: readable by root and the service's group only.
ms1-ingestor: non-standard-file-perm 0640 != 0644 [etc/ms1-ingestor/ms1.toml]
# The secrets template, filled in by the operator: read by systemd (root) only.
ms1-ingestor: non-standard-file-perm 0600 != 0644 [etc/ms1-ingestor/secrets.env]
# Files for systemd's LoadCredential=, one secret each: root only.
ms1-ingestor: non-standard-dir-perm 0700 != 0755 [etc/ms1-ingestor/credentials/]
OVERRIDES
chmod 0644 "$pkg/usr/share/lintian/overrides/ms1-ingestor"
install -m 0644 config/grafana-dashboard.json config/prometheus-alerts.yml "$pkg/usr/share/ms1-ingestor/"

# The man page: the --help of the binary and of every verb, preformatted.
man_help() { # ARGS…: one --help, escaped for roff
  "$bin" "$@" --help | sed -e 's/\\/\\e/g' -e "s/^\([.']\)/\\\\\&\1/"
}
verbs() { # ARGS…: the subcommands listed under "Commands:" in ARGS' --help
  "$bin" "$@" --help | awk '/^Commands:/ {c=1; next} /^[^ ]/ {c=0} c && /^  [^ ]/ && $1 != "help" {print $1}'
}
{
  printf '.TH MS1-INGESTOR 1 "%s" "ms1-ingestor %s" "User Commands"\n' \
    "$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%d)" "$version"
  printf '.SH NAME\nms1-ingestor \\- ingest invoice e-mails through Redis Streams into the MS4 Persistence API\n'
  printf '.SH SYNOPSIS\n.B ms1-ingestor\n.I COMMAND\n.RI [ OPTIONS ]\n'
  printf '.SH DESCRIPTION\n.nf\n'
  man_help
  printf '.fi\n.SH COMMANDS\n'
  for v in $(verbs); do
    printf '.SS "ms1-ingestor %s"\n.nf\n' "$v"
    man_help "$v"
    printf '.fi\n'
    for s in $(verbs "$v"); do
      printf '.SS "ms1-ingestor %s %s"\n.nf\n' "$v" "$s"
      man_help "$v" "$s"
      printf '.fi\n'
    done
  done
  cat <<'MAN'
.SH FILES
.TP
.I /etc/ms1-ingestor/ms1.toml
The settings (every key documented; 0640 root:ms1-ingestor).
.TP
.I /etc/ms1-ingestor/secrets.env
The secrets, as MS1__SECTION__KEY=value lines read by systemd (0600 root).
.TP
.I /etc/ms1-ingestor/credentials/
Files for LoadCredential= (systemd credentials, credential:NAME in ms1.toml).
.TP
.I /usr/share/ms1-ingestor/
The Grafana dashboard and the Prometheus alert rules.
.SH EXAMPLES
.nf
ms1-ingestor check-config --config /etc/ms1-ingestor/ms1.toml
systemctl start ms1-ingestor
journalctl -u ms1-ingestor -f
journalctl -t ms1-ingestor MAILBOX=invoices@contoso.example
.fi
.SH SEE ALSO
.BR systemctl (1),
.BR journalctl (1),
.BR systemd.exec (5)
MAN
} >"$stage/ms1-ingestor.1"
gzip -9n <"$stage/ms1-ingestor.1" >"$pkg/usr/share/man/man1/ms1-ingestor.1.gz"
chmod 0644 "$pkg/usr/share/man/man1/ms1-ingestor.1.gz"

cat >"$doc/copyright" <<COPYRIGHT
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: ms1-ingestor
Source: https://github.com/ms1/ms1-ingestor

Files: *
Copyright: $(date -u -d "@$SOURCE_DATE_EPOCH" +%Y) the ms1-ingestor authors
License: Apache-2.0
 The statically linked Rust crates are under their own licenses (MIT, Apache-2.0 and
 compatible ones); cargo metadata in the source tree lists each.
 .
 On Debian systems, the full text of the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
COPYRIGHT
{
  printf 'ms1-ingestor (%s) unstable; urgency=medium\n\n' "$version"
  printf '  * Package built from commit %s.\n\n' "$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  printf ' -- %s  %s\n' "$maintainer" "$(date -u -R -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n >"$doc/changelog.gz"
chmod 0644 "$doc/copyright" "$doc/changelog.gz"

# Depends: the shared libraries the binary links (dpkg-shlibdeps), adduser for postinst.
shlibs="$(cd "$stage" && mkdir -p debian && printf 'Source: ms1-ingestor\n\nPackage: ms1-ingestor\nArchitecture: any\n' >debian/control \
  && dpkg-shlibdeps -O "$pkg/usr/bin/ms1-ingestor" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')"
[ -n "$shlibs" ] || shlibs="libc6, libgcc-s1"

cat >"$pkg/DEBIAN/control" <<CONTROL
Package: ms1-ingestor
Version: $version
Architecture: $arch
Maintainer: $maintainer
Installed-Size: $(du -sk --exclude=DEBIAN "$pkg" | cut -f1)
Depends: $shlibs, adduser
Recommends: redis-server
Suggests: prometheus, grafana
Section: mail
Priority: optional
Homepage: https://github.com/ms1/ms1-ingestor
Description: ingest invoice e-mails through Redis Streams into the MS4 API
 ms1-ingestor reads invoice mail from Microsoft Graph mailboxes and IMAP
 servers, queues it durably in Redis Streams and delivers it in batches to the
 MS4 Persistence API, with retries, a dead-letter queue and an operator API.
 .
 This package holds the daemon as a systemd service (Type=notify, watchdog,
 journald logging), a documented example configuration, a secrets template,
 a Grafana dashboard and Prometheus alert rules.
CONTROL
printf '/etc/ms1-ingestor/ms1.toml\n/etc/ms1-ingestor/secrets.env\n' >"$pkg/DEBIAN/conffiles"

# The systemd parts follow what dh_installsystemd --no-start writes.
cat >"$pkg/DEBIAN/postinst" <<'POSTINST'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    if ! getent group ms1-ingestor >/dev/null; then
        addgroup --system --quiet ms1-ingestor
    fi
    # The settings may hold a Redis password: readable by the service's group only.
    if ! dpkg-statoverride --list /etc/ms1-ingestor/ms1.toml >/dev/null; then
        dpkg-statoverride --update --add root ms1-ingestor 0640 /etc/ms1-ingestor/ms1.toml
    fi
fi
if [ "$1" = configure ] || [ "$1" = abort-upgrade ] || [ "$1" = abort-deconfigure ] || [ "$1" = abort-remove ]; then
    # Enabled, not started: ms1.toml and secrets.env need the MS4 and mailbox settings first.
    deb-systemd-helper unmask 'ms1-ingestor.service' >/dev/null || true
    if deb-systemd-helper --quiet was-enabled 'ms1-ingestor.service'; then
        deb-systemd-helper enable 'ms1-ingestor.service' >/dev/null || true
    else
        deb-systemd-helper update-state 'ms1-ingestor.service' >/dev/null || true
    fi
    if [ -d /run/systemd/system ]; then
        systemctl --system daemon-reload >/dev/null || true
        if [ -n "$2" ]; then
            # An upgrade: a running service gets the new binary.
            deb-systemd-invoke try-restart 'ms1-ingestor.service' >/dev/null || true
        fi
    fi
fi
if [ "$1" = configure ] && [ -z "$2" ]; then
    echo "ms1-ingestor: edit /etc/ms1-ingestor/ms1.toml and secrets.env, check them with"
    echo "  ms1-ingestor check-config --config /etc/ms1-ingestor/ms1.toml"
    echo "then: systemctl start ms1-ingestor (the unit is enabled)"
fi
exit 0
POSTINST
cat >"$pkg/DEBIAN/prerm" <<'PRERM'
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
    deb-systemd-invoke stop 'ms1-ingestor.service' >/dev/null || true
fi
exit 0
PRERM
cat >"$pkg/DEBIAN/postrm" <<'POSTRM'
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
if [ "$1" = remove ] && command -v deb-systemd-helper >/dev/null; then
    deb-systemd-helper mask 'ms1-ingestor.service' >/dev/null || true
fi
if [ "$1" = purge ]; then
    if command -v deb-systemd-helper >/dev/null; then
        deb-systemd-helper purge 'ms1-ingestor.service' >/dev/null || true
        deb-systemd-helper unmask 'ms1-ingestor.service' >/dev/null || true
    fi
    if dpkg-statoverride --list /etc/ms1-ingestor/ms1.toml >/dev/null; then
        dpkg-statoverride --remove /etc/ms1-ingestor/ms1.toml
    fi
    # StateDirectory= of a DynamicUser= service lives in /var/lib/private.
    rm -rf /var/lib/private/ms1-ingestor /var/lib/ms1-ingestor
    rmdir /etc/ms1-ingestor/credentials /etc/ms1-ingestor 2>/dev/null || true
fi
exit 0
POSTRM
chmod 0755 "$pkg/DEBIAN/postinst" "$pkg/DEBIAN/prerm" "$pkg/DEBIAN/postrm"
(cd "$pkg" && find . -path ./DEBIAN -prune -o -path ./etc -prune -o -type f -printf '%P\0' \
  | LC_ALL=C sort -z | xargs -0 md5sum >DEBIAN/md5sums)
chmod 0644 "$pkg/DEBIAN/control" "$pkg/DEBIAN/conffiles" "$pkg/DEBIAN/md5sums"

# Every file dated at the last commit: the same tree gives the same package.
find "$pkg" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +

mkdir -p "$out"
deb="$out/ms1-ingestor_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$pkg" "$deb" >/dev/null
echo "==> built $deb ($(du -h "$deb" | cut -f1))"
check_package "$deb"
if command -v lintian >/dev/null 2>&1; then
  echo "==> lintian"
  lintian --display-info --show-overrides "$deb" || { echo "lintian reports errors (above)" >&2; exit 1; }
else
  echo "==> lintian is not installed (apt-get install lintian): not run"
fi
