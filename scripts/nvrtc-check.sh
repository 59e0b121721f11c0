#!/usr/bin/env bash
# Compiles every op's NVRTC program (tape/src/ops/*/kernels.cu and the others, after the prelude)
# to PTX and to a CUBIN for sm_90 on a machine without a GPU: NVRTC is a compiler library, taken
# here from NVIDIA's Python wheel of it. Skips (exit 0, saying so) where pip cannot fetch it.
# (The test runs from the workspace's `--features cuda` build, which CI has made already.)
# Usage: scripts/nvrtc-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
if ! python3 -m pip download -q --no-deps -d "$dir" "nvidia-cuda-nvrtc>=13,<14" >/dev/null 2>&1; then
  echo "nvrtc check: SKIPPED (pip could not fetch nvidia-cuda-nvrtc)"
  exit 0
fi
python3 - "$dir" <<'PY'
import glob, sys, zipfile
for wheel in glob.glob(sys.argv[1] + "/*.whl"):
    zipfile.ZipFile(wheel).extractall(sys.argv[1])
PY
so=$(find "$dir" -name 'libnvrtc.so.[0-9]*' | head -n1)
[ -n "$so" ] || { echo "nvrtc check: no libnvrtc in the wheel" >&2; exit 1; }
ln -sf "$(basename "$so")" "$(dirname "$so")/libnvrtc.so"
LD_LIBRARY_PATH="$(dirname "$so")" TAPE_EXPECT_NVRTC=1 \
  cargo test --workspace --features cuda --lib every_program_compiles_and_exports_its_kernels
