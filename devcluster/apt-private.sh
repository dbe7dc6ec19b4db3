# Sourced by the devcluster scripts: a private apt configuration (its own sources, lists and cache under
# $APTDIR) so /etc/apt is never modified. The mirror is read from the system's own apt sources.
# Needs: log() defined, APTDIR set.

mirror_uri() {
  local uri=""
  if compgen -G "/etc/apt/sources.list.d/*.sources" >/dev/null; then
    uri="$(awk '/^URIs:/ {print $2}' /etc/apt/sources.list.d/*.sources | grep -v -- '-security' | head -n1)"
  fi
  if [[ -z "$uri" && -f /etc/apt/sources.list ]]; then
    uri="$(awk '$1=="deb" && $0 !~ /security/ {for (i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit}}' /etc/apt/sources.list)"
  fi
  [[ -n "$uri" ]] || { log "no Debian mirror found in the system's apt sources"; exit 1; }
  echo "$uri"
}
MIRROR="$(mirror_uri)"
mkdir -p "$APTDIR"/{lists/partial,cache/archives/partial,sources.list.d}
cat >"$APTDIR/sources.list" <<SRC
deb $MIRROR bookworm main
deb-src $MIRROR bookworm main
SRC
cat >"$APTDIR/apt.conf" <<CONF
Dir::Etc::SourceList "$APTDIR/sources.list";
Dir::Etc::SourceParts "$APTDIR/sources.list.d";
Dir::State::Lists "$APTDIR/lists";
Dir::Cache "$APTDIR/cache";
Dir::Cache::Archives "$APTDIR/cache/archives";
APT::Sandbox::User "root";
CONF
export APT_CONFIG="$APTDIR/apt.conf"
log "apt update (private config)"
apt-get update -qq >&2

