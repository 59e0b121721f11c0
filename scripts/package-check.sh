#!/usr/bin/env bash
# The packaging check of the library crates: `cargo package` builds each one's archive as the
# package registry would receive it (manifest, metadata, files), in dependency order, the
# workspace's crates resolving among themselves. Without --verify it checks the archives only;
# with it, each archive is also built on its own (slow: every crate and dependency again).
# Usage: scripts/package-check.sh [--verify]
set -euo pipefail
cd "$(dirname "$0")/.."
verify=(--no-verify)
[ "${1:-}" = --verify ] && verify=()
if ! out=$(cargo package --workspace --exclude densenet-suite --allow-dirty "${verify[@]}" 2>&1); then
  echo "$out"
  echo "package check: FAILED" >&2
  exit 1
fi
echo "$out" | grep -E "^ *(Packaged|Verifying)|^(warning|error)" \
  | grep -v "manifest has no documentation, homepage or repository" || true
echo "package check: ok"
