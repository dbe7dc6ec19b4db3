#!/usr/bin/env bash
# Extract binaries from a Debian bookworm package into the cache (no install, /etc/apt untouched).
#   deb-binary.sh PACKAGE PATH_IN_PACKAGE [PATH_IN_PACKAGE ...]
# Prints the cached path of each binary, one per line. Used for test tools only (an old nats-server to
# prove certcheck refuses it, promtool and prometheus for the metrics tests).
set -euo pipefail
PACKAGE="$1"; shift
CACHE_ROOT="${CERTCHECK_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/certcheck}"
OUT="$CACHE_ROOT/deb-$PACKAGE"
missing=0
for path in "$@"; do [[ -x "$OUT/$(basename "$path")" ]] || missing=1; done
if ((missing)); then
  log() { echo "[deb-binary $PACKAGE] $*" >&2; }
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/certcheck-deb.XXXXXX")"
  trap 'rm -rf "$WORK"' EXIT
  APTDIR="$WORK/apt"
  # shellcheck source=apt-private.sh
  source "$(dirname "${BASH_SOURCE[0]}")/apt-private.sh"
  (cd "$WORK" && apt-get download -qq "$PACKAGE" >&2 && dpkg-deb -x ./"${PACKAGE}"_*.deb root)
  mkdir -p "$OUT"
  for path in "$@"; do cp "$WORK/root/${path#/}" "$OUT/"; done
fi
for path in "$@"; do echo "$OUT/$(basename "$path")"; done
