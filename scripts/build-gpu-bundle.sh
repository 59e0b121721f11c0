#!/usr/bin/env bash
# Builds everything the GPU check needs, on a build machine (Rust toolchain; no GPU or CUDA
# needed: the CUDA libraries load at run time), into the git-ignored folder .gpu-bin/:
#   .gpu-bin/bin.tar.xz     packed: tests/<name>, every test binary with GPU tests (stripped:
#                           the tape library's unit tests, each op's test file, DenseNet's
#                           equivalence suite, the ResNet's and the GPT's GPU-vs-CPU step),
#                           and benchmark, the CUDA-enabled benchmark
#   .gpu-bin/STAMP          the commit and a hash of the sources it was built from
#   .gpu-bin/FILES          the files that hash covers (gpu-check.sh refuses a stale bundle)
# Then carry the repository (with .gpu-bin/) to a machine with an NVIDIA GPU and run
# scripts/gpu-check.sh from its root.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v python3 >/dev/null || { echo "build-gpu-bundle: python3 is needed to read cargo's JSON" >&2; exit 1; }
cargo build --release --workspace --features cuda --tests --examples
rm -rf .gpu-bin
mkdir -p .gpu-bin/tests
# The test executables, as cargo reports them (their file names carry a hash).
cargo test --release --workspace --features cuda --no-run --message-format=json 2>/dev/null | python3 -c '
import json, shutil, sys
# (package, target) -> bundle name
want = {("tape", "tape"): "tape_lib"}
for t in ["batch_norm", "batch_norm_relu", "block_storage", "concat", "conv2d", "counters", "cuda_half",
          "cross_entropy", "dropout", "embedding", "gelu", "layer_norm", "linear", "matmul",
          "narrow", "optim", "optim_fused", "permute", "pool", "softmax", "step_ops",
          "tape_core"]:
    want[("tape", t)] = t
want[("densenet", "equivalence")] = "densenet_equivalence"
want[("resnet", "gpu")] = "resnet_gpu"
want[("gpt", "gpu")] = "gpt_gpu"
found = {}
for line in sys.stdin:
    line = line.strip()
    if not line.startswith("{"):
        continue
    msg = json.loads(line)
    target = msg.get("target") or {}
    pkg = msg.get("package_id", "")
    name = target.get("name")
    if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
        continue
    for (p, t), out in want.items():
        if name == t and ("/%s#" % p in pkg or "/%s)" % p in pkg or pkg.startswith(p + " ") or ("#" + p + "@") in pkg):
            found[out] = msg["executable"]
missing = sorted(set(want.values()) - set(found))
if missing:
    sys.exit("build-gpu-bundle: test binaries not found: %s" % ", ".join(missing))
for name, path in sorted(found.items()):
    shutil.copy2(path, ".gpu-bin/tests/" + name)
'
cp target/release/examples/benchmark .gpu-bin/benchmark
# The NCCL test (a world of one process): built with the feature `nccl`, which links Open MPI, so
# the MPI libraries it loads travel beside it (the GPU machine may have none).
nccl=$(cargo test --release -p tapegrad-dist --features nccl --test nccl_world --no-run 2>&1 \
  | grep -o 'target/release/deps/nccl_world-[0-9a-f]*' | tail -n1)
[ -n "$nccl" ] || { echo "build-gpu-bundle: the nccl_world test binary was not built" >&2; exit 1; }
mkdir -p .gpu-bin/dist/lib
cp "$nccl" .gpu-bin/dist/nccl_world
ldd "$nccl" | awk '/=> \// {print $3}' | grep -E 'libmpi|libopen-|libhwloc|libevent|libpmix|libltdl|libz\.|libudev' \
  | xargs -r -I{} cp -L {} .gpu-bin/dist/lib/
strip .gpu-bin/benchmark .gpu-bin/tests/* .gpu-bin/dist/nccl_world 2>/dev/null || true
chmod +x .gpu-bin/benchmark .gpu-bin/tests/* .gpu-bin/dist/nccl_world
# The stamp: what the bundle was built from.
git ls-files -- '*.rs' '*.toml' '*.cu' Cargo.lock >.gpu-bin/FILES
{
  echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD -- . ':!.gpu-bin' || echo ' (with uncommitted changes)')"
  echo "sources $(xargs sha256sum <.gpu-bin/FILES | sha256sum | cut -d' ' -f1)"
} >.gpu-bin/STAMP
cat .gpu-bin/STAMP
# Packed (xz shares the code the test binaries have in common: 86 MB -> 6 MB), so the bundle
# travels light; gpu-check.sh unpacks it.
tar -C .gpu-bin -cf - tests dist benchmark | xz -9 -T0 >.gpu-bin/bin.tar.xz
rm -rf .gpu-bin/tests .gpu-bin/dist .gpu-bin/benchmark
du -sh .gpu-bin
echo "build-gpu-bundle: done; on the GPU machine run scripts/gpu-check.sh from the repository root"
