#!/usr/bin/env bash
# The main job on a local default: starts a local MongoDB-wire server (unless MONGODB_URI is
# set), loads sample LMS data, runs `migrate up`, and shows `migrate status`.
#   scripts/demo.sh [USERS]      (default 20000 users)
set -euo pipefail
cd "$(dirname "$0")/.."
USERS="${1:-20000}"

cargo build --release --quiet
MIGRATE=target/release/migrate

if [ -z "${MONGODB_URI:-}" ]; then
  bash scripts/install-test-server.sh
  export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
  DATA=target/demo-data
  rm -rf "$DATA" && mkdir -p "$DATA"
  secantusd-rs --host 127.0.0.1 --port 0 --storage-path "$DATA" --cache-size 1G > target/demo-server.log 2>&1 &
  SERVER=$!
  trap 'kill $SERVER 2>/dev/null || true' EXIT
  for _ in $(seq 1 100); do
    PORT=$(sed -n 's/.*listening on .*:\([0-9]*\).*/\1/p' target/demo-server.log)
    [ -n "$PORT" ] && break
    sleep 0.1
  done
  [ -n "${PORT:-}" ] || { echo "the local server did not start; see target/demo-server.log" >&2; exit 1; }
  export MONGODB_URI="mongodb://127.0.0.1:$PORT/lms_demo?directConnection=true"
  echo "local server on port $PORT (stopped when this script ends)"
fi

echo "== loading $USERS sample users"
"$MIGRATE" sample-data --users "$USERS" --invalid 12 --drop
echo "== migrate status (before)"
"$MIGRATE" status
echo "== migrate up"
"$MIGRATE" up
echo "== migrate status (after)"
"$MIGRATE" status
echo "== last lines of logs/migration.log"
tail -n 5 logs/migration.log
