#!/usr/bin/env bash
# Debian bookworm's nats-server (2.9.x), cached: only for the test proving certcheck refuses servers that
# predate message schedules. Prints the path of the binary.
set -euo pipefail
CACHE_ROOT="${CERTCHECK_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/certcheck}"
OUT="$CACHE_ROOT/nats-server-debian-bookworm/nats-server"
if [[ -x "$OUT" ]]; then echo "$OUT"; exit 0; fi
log() { echo "[old-nats-server] $*" >&2; }
WORK="$(mktemp -d "${TMPDIR:-/tmp}/certcheck-nats.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
APTDIR="$WORK/apt"
# shellcheck source=apt-private.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt-private.sh"
cd "$WORK"
apt-get download -qq nats-server >&2
dpkg-deb -x ./nats-server_*.deb root
mkdir -p "$(dirname "$OUT")"
cp root/usr/sbin/nats-server "$OUT"
echo "$OUT"
