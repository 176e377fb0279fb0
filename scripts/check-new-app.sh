#!/usr/bin/env bash
# A newcomer's first application, outside this repository, with only docs/library.md to go by:
# `cargo new`, the dependencies, two migrations from `migrate new` (which sees an application),
# `migrate build-script`, a binary calling `mongo_migrate::cli::run`, then `status`, `up`,
# `status`, `rollback` and `status` through that binary, and the generated tests with
# `cargo test`.
#
# The application builds in target/scratch-app (CHECK_APP_TARGET_DIR overrides it), seeded with
# hard links to what the repository's own build compiled and locked to the repository's
# Cargo.lock, so only mongo-migrate and the application are compiled again. Uses MONGODB_URI when
# set, else starts a secantusd-rs of its own.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
SCRATCH="$(mktemp -d)"
SERVER=""
cleanup() {
  if [ -n "$SERVER" ]; then kill "$SERVER" 2>/dev/null || true; fi
  rm -rf "$SCRATCH"
}
trap cleanup EXIT
source "$REPO/scripts/scratch-lib.sh"
fail() { echo "check-new-app: $*" >&2; exit 1; }

MIGRATE="$REPO/target/debug/migrate"
(cd "$REPO" && cargo build --quiet --bin migrate)

echo "== cargo new shop (in $SCRATCH)"
cd "$SCRATCH"
cargo new --quiet --vcs none shop
cd shop
cp "$REPO/Cargo.lock" .
MONGODB_VERSION=$(sed -n 's/^mongodb = { *version = "\([^"]*\)".*/\1/p; s/^mongodb = "\([^"]*\)"/\1/p' "$REPO/Cargo.toml" | head -1)
[ -n "$MONGODB_VERSION" ] || fail "cannot read the mongodb version from Cargo.toml"
cat >> Cargo.toml <<TOML
mongo-migrate = { path = "$REPO" }
mongodb = "$MONGODB_VERSION"
tokio = { version = "1", features = ["macros", "rt-multi-thread"] }
TOML

echo "== migrate new, twice, and migrate build-script"
"$MIGRATE" new add_display_names | tee "$SCRATCH/new.out"
"$MIGRATE" new add_nicknames >/dev/null
"$MIGRATE" build-script
[ -f migrations/001_add_display_names.rs ] || fail "no migrations/001_add_display_names.rs"
[ -f migrations/002_add_nicknames.rs ] || fail "no migrations/002_add_nicknames.rs"
[ -f tests/migration_001_add_display_names.rs ] || fail "no tests/migration_001_add_display_names.rs"
grep -q "rerun-if-changed=migrations" build.rs || fail "build.rs does not watch migrations/"
grep -q "crate::" migrations/*.rs tests/*.rs && fail "the generated code uses this repository's paths"
# The second migration gets a field of its own, so the two differ.
sed -i 's/"\$name", ""/"$name", "anonymous"/' migrations/002_add_nicknames.rs
sed -i 's/unwrap_or(Bson::from(""))/unwrap_or(Bson::from("anonymous"))/' tests/migration_002_add_nicknames.rs
cat > src/main.rs <<'RS'
fn main() {
    let migrations = mongo_migrate::embed_migrations!("migrations");
    std::process::exit(mongo_migrate::cli::run(migrations));
}
RS

echo "== cargo build"
export CARGO_TARGET_DIR="${CHECK_APP_TARGET_DIR:-$REPO/target/scratch-app}"
seed_target_dir "$CARGO_TARGET_DIR" "$REPO"
cargo build --quiet
SHOP="$CARGO_TARGET_DIR/debug/shop"

test_server
shop() {
  "$SHOP" --uri "$BASE/check_app_$$$QUERY" --log-dir "$SCRATCH/logs" --env-file /dev/null "$@"
}

echo "== shop status, up, status, rollback, status"
"$MIGRATE" --uri "$BASE/check_app_$$$QUERY" --log-dir "$SCRATCH/logs" sample-data --users 200 --drop >/dev/null
shop status | tee "$SCRATCH/status.out"
grep -E "001_add_display_names +pending" "$SCRATCH/status.out" >/dev/null || fail "status does not list 001 pending"
grep -E "002_add_nicknames +pending" "$SCRATCH/status.out" >/dev/null || fail "status does not list 002 pending"
grep -q "withdrawal" "$SCRATCH/status.out" && fail "status lists this repository's migrations"
shop up --no-progress
shop status | tee "$SCRATCH/status.out"
grep -E "002_add_nicknames +completed" "$SCRATCH/status.out" >/dev/null || fail "002 is not completed after up"
shop rollback --yes
shop status | tee "$SCRATCH/status.out"
grep -E "002_add_nicknames +rolled back" "$SCRATCH/status.out" >/dev/null || fail "002 is not rolled back"
grep -E "001_add_display_names +completed" "$SCRATCH/status.out" >/dev/null || fail "001 did not stay applied"

echo "== cargo test runs the generated tests"
cargo test --quiet 2>&1 | tee "$SCRATCH/test.out"
[ "$(grep -c "test result: ok. 3 passed" "$SCRATCH/test.out")" = 2 ] || fail "the generated tests did not run and pass"
echo "check-new-app: ok (cargo new, two migrations, build-script, status, up, rollback, their tests)"
