#!/usr/bin/env bash
# Proves that `migrate new` gives a working migration, in a scratch copy of the repository (the
# repository itself gets no 004): `migrate new backfill_display_names`, then the generated files
# are rustfmt-clean, the copy builds, `migrate status` lists 004 pending, `migrate up` applies
# it, `migrate rollback` reverts it, and `cargo test backfill_display_names` runs its generated
# tests, which pass.
#
# CHECK_NEW_CLIPPY=1 also runs clippy over the copy.
#
# The copy builds in target/scratch (CHECK_NEW_TARGET_DIR overrides it), seeded with hard links
# to the dependencies the repository's own build compiled, so only the crate itself is built
# again (the copy's crate has another path, hence other artifact names: nothing is shared that a
# build rewrites). Uses MONGODB_URI when set, else starts a secantusd-rs of its own.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
NAME=backfill_display_names
SCRATCH="$(mktemp -d)"
SERVER=""
cleanup() {
  if [ -n "$SERVER" ]; then kill "$SERVER" 2>/dev/null || true; fi
  rm -rf "$SCRATCH"
}
trap cleanup EXIT
source "$REPO/scripts/scratch-lib.sh"
fail() { echo "check-new-migration: $*" >&2; exit 1; }

echo "== copying the repository to $SCRATCH/repo"
mkdir "$SCRATCH/repo"
# Tracked and new files, as they are in the working tree (deleted ones skipped).
(cd "$REPO" && git ls-files -z --cached --others --exclude-standard |
  while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done |
  tar --null -T - -cf -) | tar -xf - -C "$SCRATCH/repo"
cd "$SCRATCH/repo"

echo "== migrate new $NAME"
# The repository's own migrate writes into the copy (--dir): no extra build of the copy.
(cd "$REPO" && cargo run --quiet --bin migrate -- new "$NAME" --dir "$SCRATCH/repo") | tee "$SCRATCH/new.out"
MIGRATION=$(ls migrations/*_"$NAME".rs)
NUMBERED=$(basename "$MIGRATION" .rs)
[ -f "tests/migrations/$NUMBERED.rs" ] || fail "no tests/migrations/$NUMBERED.rs"
grep -q "cargo test $NAME" "$SCRATCH/new.out" || fail "migrate new did not say how to run the tests"
rustfmt --edition 2021 --check "$MIGRATION" "tests/migrations/$NUMBERED.rs" ||
  fail "the generated files are not rustfmt-clean"

echo "== building the copy with $NUMBERED"
export CARGO_TARGET_DIR="${CHECK_NEW_TARGET_DIR:-$REPO/target/scratch}"
seed_target_dir "$CARGO_TARGET_DIR" "$REPO"
cargo build --quiet --bin migrate
MIGRATE="$CARGO_TARGET_DIR/debug/migrate"

# The tests take the server from MONGODB_URI; the CLI gets a database of its own.
test_server
DB="check_new_$$"
migrate() {
  MONGODB_URI="$BASE/$DB$QUERY" MIGRATE_LOG_DIR="$SCRATCH/logs" MIGRATE_ENV_FILE="$SCRATCH/none.env" \
    "$MIGRATE" "$@"
}

echo "== migrate status lists $NUMBERED pending"
migrate sample-data --users 300 --drop >/dev/null
migrate status | tee "$SCRATCH/status.out"
grep -E "$NUMBERED +pending" "$SCRATCH/status.out" >/dev/null || fail "status does not list $NUMBERED pending"

echo "== migrate up applies it"
migrate up --no-progress
migrate status | tee "$SCRATCH/status.out"
grep -E "$NUMBERED +completed" "$SCRATCH/status.out" >/dev/null || fail "$NUMBERED is not completed after up"

echo "== migrate rollback reverts it (its down exists, so it is reversible)"
migrate rollback --yes

if [ -n "${CHECK_NEW_CLIPPY:-}" ]; then
  echo "== clippy over the generated files"
  cargo clippy --quiet --all-targets -- -D warnings
fi

echo "== cargo test $NAME runs the generated tests"
cargo test --quiet --test migrations "$NAME" 2>&1 | tee "$SCRATCH/test.out"
grep -q "test result: ok. 3 passed" "$SCRATCH/test.out" || fail "the generated tests did not run and pass"
echo "check-new-migration: ok ($NUMBERED: new, build, status, up, rollback, its tests)"
