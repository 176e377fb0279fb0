#!/usr/bin/env bash
# Installs the MongoDB-wire-compatible test server (SecantusDB's secantusd-rs) from crates.io.
# The build takes several minutes, so it is skipped when the pinned version is already installed.
set -euo pipefail

CRATE=secantus-mdb
VERSION=0.5.3-beta.196

if cargo install --list 2>/dev/null | grep -q "^${CRATE} v${VERSION}:" && command -v secantusd-rs >/dev/null 2>&1; then
  echo "secantusd-rs ${VERSION} already installed"
  exit 0
fi

if ! command -v cmake >/dev/null 2>&1; then
  echo "installing cmake (the server's storage engine builds with it)"
  if [ "$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cmake
fi

echo "building ${CRATE} ${VERSION} (several minutes)"
cargo install "${CRATE}" --version "${VERSION}" --locked --ignore-rust-version
