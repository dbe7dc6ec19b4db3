#!/usr/bin/env bash
# Obtain kube-apiserver (built from Debian bookworm's source package) and etcd (Debian's etcd-server),
# cached outside the repo, keyed by version. Prints the directory holding both binaries.
#
# Uses a private apt configuration so /etc/apt is never modified; the mirror URI is read from the
# system's own apt sources, never written here.
set -euo pipefail

K8S_VERSION=1.20.2
CACHE_ROOT="${CERTCHECK_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/certcheck}"
OUT="$CACHE_ROOT/control-plane-$K8S_VERSION"

if [[ -x "$OUT/kube-apiserver" && -x "$OUT/etcd" ]]; then
  echo "$OUT"
  exit 0
fi

log() { echo "[build-control-plane] $*" >&2; }

need_tools=()
for tool in rsync make; do command -v "$tool" >/dev/null || need_tools+=("$tool"); done
if ((${#need_tools[@]})); then
  log "installing ${need_tools[*]}"
  apt-get update -qq >&2 && apt-get install -y -qq "${need_tools[@]}" >&2
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/certcheck-build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

APTDIR="$WORK/apt"
# shellcheck source=apt-private.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt-private.sh"

cd "$WORK"
log "downloading go toolchain, vendored-lib fixes and etcd"
apt-get download -qq golang-1.19-go golang-1.19-src golang-github-modern-go-reflect2-dev \
  golang-github-json-iterator-go-dev etcd-server >&2
mkdir -p root
for deb in ./*.deb; do dpkg-deb -x "$deb" root; done

log "downloading kubernetes source package"
mkdir -p src && (cd src && apt-get source --download-only -qq kubernetes/bookworm >&2)
orig="$(ls src/kubernetes_*.orig.tar.* | head -n1)"
mkdir -p k8s && tar -xf "$orig" -C k8s --strip-components=1

# reflect2 1.0.1 (vendored by v1.20.2) crashes with Go >= 1.18: use Debian's fixed copies.
fix_vendor() {
  local vendor_dir="$1" debian_dir="$2"
  find "$vendor_dir" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) ! -name '*_test.go' -delete
  find "$debian_dir" -maxdepth 1 -type f \( -name '*.go' -o -name '*.s' \) ! -name '*_test.go' \
    -exec cp {} "$vendor_dir/" \;
}
fix_vendor k8s/vendor/github.com/modern-go/reflect2 root/usr/share/gocode/src/github.com/modern-go/reflect2
fix_vendor k8s/vendor/github.com/json-iterator/go root/usr/share/gocode/src/github.com/json-iterator/go

log "building kube-apiserver (a few minutes)"
export GOROOT="$WORK/root/usr/lib/go-1.19"
export PATH="$GOROOT/bin:$PATH"
export GO111MODULE=off GOPROXY=off CGO_ENABLED=0 GOFLAGS= GOCACHE="$WORK/gocache"
(cd k8s && make WHAT=cmd/kube-apiserver >&2)

mkdir -p "$OUT.tmp"
cp k8s/_output/bin/kube-apiserver "$OUT.tmp/"
cp root/usr/bin/etcd "$OUT.tmp/"
chmod +x "$OUT.tmp"/*
rm -rf "$OUT" && mv "$OUT.tmp" "$OUT"
log "done: $OUT"
echo "$OUT"
