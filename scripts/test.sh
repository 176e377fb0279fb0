#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs the test server if needed, then runs every
# test (unit, integration, per-migration, doc tests, and a smoke run of the benchmarks), then
# checks `migrate new` end to end in a scratch copy (scripts/check-new-migration.sh) and in a
# scratch application outside the repository (scripts/check-new-app.sh).
# Set MONGODB_URI to run against an existing MongoDB 6+ instead of a local secantusd-rs.
set -euo pipefail
cd "$(dirname "$0")/.."

# The lock's clock tests run clients with a skewed clock through faketime.
if ! command -v faketime >/dev/null 2>&1; then
  echo "installing faketime (clock-skew tests of the lock)"
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq faketime
fi

if [ -z "${MONGODB_URI:-}" ]; then
  bash scripts/install-test-server.sh
  export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi

cargo test --all-targets
cargo test --doc
bash scripts/check-new-migration.sh
bash scripts/check-new-app.sh
