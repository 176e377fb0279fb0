# Shared by check-new-migration.sh and check-new-app.sh (sourced, not run). Both need SCRATCH
# set, a `fail` function, and `SERVER=""` with a cleanup trap that kills "$SERVER".

# Seeds the target directory $1 with hard links to what the repository $2's own debug build
# compiled, so only the scratch crates are compiled again (nothing is shared that a build
# rewrites: their artifacts have other names).
seed_target_dir() {
  local target="$1" repo="$2"
  if [ ! -d "$target/debug/deps" ] && [ -d "$repo/target/debug/deps" ]; then
    mkdir -p "$target/debug"
    for d in deps build .fingerprint; do
      [ -d "$repo/target/debug/$d" ] && cp -al "$repo/target/debug/$d" "$target/debug/"
    done
  fi
  return 0
}

# Without MONGODB_URI, starts a secantusd-rs in $SCRATCH/data and exports MONGODB_URI for it
# (its pid in SERVER). Then sets BASE (scheme://hosts) and QUERY (?options, or empty) of
# MONGODB_URI, to name a database of one's own: "$BASE/name$QUERY".
test_server() {
  if [ -z "${MONGODB_URI:-}" ]; then
    export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
    mkdir "$SCRATCH/data"
    secantusd-rs --host 127.0.0.1 --port 0 --storage-path "$SCRATCH/data" --cache-size 1G \
      > "$SCRATCH/server.log" 2>&1 &
    SERVER=$!
    local port=""
    for _ in $(seq 1 300); do
      port=$(sed -n 's/.*listening on .*:\([0-9]*\).*/\1/p' "$SCRATCH/server.log")
      [ -n "$port" ] && break
      sleep 0.1
    done
    [ -n "$port" ] || fail "the test server did not start: $(cat "$SCRATCH/server.log")"
    export MONGODB_URI="mongodb://127.0.0.1:$port/?directConnection=true"
  fi
  BASE="${MONGODB_URI%%\?*}"
  BASE="${BASE%/*}"
  [ "${BASE#*://}" = "$BASE" ] && BASE="$MONGODB_URI" # no path at all
  QUERY=""
  case "$MONGODB_URI" in *\?*) QUERY="?${MONGODB_URI#*\?}" ;; esac
  return 0
}
