#!/usr/bin/env bash
# Soak trials of 003 under an application that never pauses, run by hand (minutes each; not part
# of the test command). Each trial loads USERS users, applies 001-002, starts writers at RATE
# writes a second (the production mix of scripts/soak/writer.py) before `migrate up` and stops
# them only after it exits, then checks every user with scripts/soak/check.py, which shares no
# code with the engine. Kill trials send SIGKILL to `up` after a random 2-8 s and `up --resume`.
#
#   scripts/soak.sh [USERS] [RATE] [TRIALS]      (defaults: 150000 300 8)
#
# Needs python3 with pymongo (installed with pip if missing). Uses SOAK_SERVER (a MongoDB URI
# without database) or starts its own secantusd-rs.
set -uo pipefail
cd "$(dirname "$0")/.."
USERS=${1:-150000}; RATE=${2:-300}; TRIALS=${3:-8}
python3 -c 'import pymongo' 2>/dev/null || pip install -q pymongo
cargo build --release -q
M=$PWD/target/release/migrate
WORK=$(mktemp -d)
if [ -z "${SOAK_SERVER:-}" ]; then
  export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
  bash scripts/install-test-server.sh >/dev/null
  PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  mkdir -p "$WORK/server"
  secantusd-rs --host 127.0.0.1 --port "$PORT" --storage-path "$WORK/server" --cache-size 2G --log-level WARNING >/dev/null 2>&1 &
  SERVER_PID=$!
  trap 'kill $SERVER_PID 2>/dev/null' EXIT
  sleep 2
  export SOAK_SERVER="mongodb://127.0.0.1:$PORT/?directConnection=true"
fi
uri() { echo "${SOAK_SERVER%%/\?*}/$1?${SOAK_SERVER#*\?}"; }
FLAGS=("" "--no-transactions" "--batch-size 500 --concurrency 2" "--batch-size 3000 --concurrency 4")
failed=0
for i in $(seq 1 "$TRIALS"); do
  DB=soak$i; DIR=$WORK/$DB; mkdir -p "$DIR"
  FLAG=${FLAGS[$(( (i - 1) % ${#FLAGS[@]} ))]}
  KILL=$(( i % 2 == 0 ? 2 + RANDOM % 7 : 0 ))
  export MONGODB_URI=$(uri $DB) MIGRATE_LOG_DIR=$DIR
  $M sample-data --users "$USERS" --drop >/dev/null 2>&1
  $M up --to 2 --no-progress --catch-up off >/dev/null 2>&1
  python3 scripts/soak/snapshot.py $DB "$DIR/before.json"
  for w in 1 2; do
    python3 scripts/soak/writer.py $DB "$(echo "$RATE / 2" | bc -l)" "$DIR/stop" "$DIR/writes.$w.log" $((i * 10 + w)) >/dev/null 2>&1 &
  done
  sleep 1
  start=$(date +%s)
  # shellcheck disable=SC2086
  if [ "$KILL" -gt 0 ]; then
    $M up --no-progress $FLAG >/dev/null 2>&1 & UP=$!
    sleep "$KILL"; kill -9 $UP 2>/dev/null; wait $UP 2>/dev/null
    $M up --resume --no-progress $FLAG > "$DIR/up.out" 2>&1; code=$?
  else
    $M up --no-progress $FLAG > "$DIR/up.out" 2>&1; code=$?
  fi
  took=$(( $(date +%s) - start ))
  sleep 1; touch "$DIR/stop"; wait
  cat "$DIR"/writes.*.log | python3 -c 'import sys,json; ls=[json.loads(l) for l in sys.stdin]; ls.sort(key=lambda e:e["t"]); [print(json.dumps(e)) for e in ls]' > "$DIR/writes.log"
  echo "trial $i: flags '${FLAG}' kill ${KILL}s: up exit $code in ${took}s"
  if ! python3 scripts/soak/check.py $DB "$DIR/before.json" "$DIR/writes.log" | sed 's/^/  /'; then failed=$((failed + 1)); fi
done
echo "$failed of $TRIALS trials wrong; logs in $WORK"
[ "$failed" -eq 0 ]
