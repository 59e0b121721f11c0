#!/usr/bin/env bash
# Builds everything the GPU check needs, on a build machine (Rust toolchain; no GPU or CUDA
# needed: the CUDA libraries load at run time), into the git-ignored folder .gpu-bin/:
#   .gpu-bin/cuda_ops, .gpu-bin/cuda_modes   the GPU test binaries
#   .gpu-bin/benchmark                       the benchmark example (CUDA-enabled)
#   .gpu-bin/scripts/                        cuda-env.sh, gpu-check.sh, torch_benchmark.py, gpu_compare.py
# Then carry the repository (with .gpu-bin/) to a machine with an NVIDIA GPU and run
# scripts/gpu-check.sh from its root.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v python3 >/dev/null || { echo "build-gpu-bundle: python3 is needed to read cargo's JSON" >&2; exit 1; }
cargo build --release --workspace --features cuda --tests --examples
rm -rf .gpu-bin
mkdir -p .gpu-bin/scripts
# The test executables, as cargo reports them (their file names carry a hash).
cargo test --release --workspace --features cuda --no-run --message-format=json 2>/dev/null | python3 -c '
import json, shutil, sys
want = {"cuda_ops", "cuda_modes"}
found = {}
for line in sys.stdin:
    line = line.strip()
    if not line.startswith("{"):
        continue
    msg = json.loads(line)
    target = msg.get("target") or {}
    if msg.get("reason") == "compiler-artifact" and msg.get("executable") and target.get("name") in want \
            and "test" in target.get("kind", []):
        found[target["name"]] = msg["executable"]
missing = sorted(want - set(found))
if missing:
    sys.exit("build-gpu-bundle: test binaries not found: %s" % ", ".join(missing))
for name, path in sorted(found.items()):
    shutil.copy2(path, ".gpu-bin/" + name)
    print("build-gpu-bundle: .gpu-bin/%s <- %s" % (name, path))
'
cp target/release/examples/benchmark .gpu-bin/benchmark
cp scripts/cuda-env.sh scripts/gpu-check.sh scripts/torch_benchmark.py scripts/gpu_compare.py .gpu-bin/scripts/
chmod +x .gpu-bin/cuda_ops .gpu-bin/cuda_modes .gpu-bin/benchmark .gpu-bin/scripts/*.sh
du -sh .gpu-bin
echo "build-gpu-bundle: done; on the GPU machine run scripts/gpu-check.sh from the repository root"
