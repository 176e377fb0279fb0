#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs the test server if needed, then runs every
# test (unit, integration, per-migration, doc tests, and a smoke run of the benchmarks).
# Set MONGODB_URI to run against an existing MongoDB 6+ instead of a local secantusd-rs.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${MONGODB_URI:-}" ]; then
  bash scripts/install-test-server.sh
  export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
fi

cargo test --all-targets
cargo test --doc
