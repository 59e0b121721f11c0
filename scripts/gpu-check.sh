#!/usr/bin/env bash
# Everything the GPU machine has to run, in one go and in under 5 minutes. Run it from the
# repository root on a machine with an NVIDIA GPU, after scripts/build-gpu-bundle.sh built the
# bundle (.gpu-bin/) on a build machine and the repository was carried over:
#
#   scripts/gpu-check.sh
#
# 1. sources scripts/cuda-env.sh (finds cuDNN, cuBLAS, NVRTC and the driver; sets LD_LIBRARY_PATH);
# 2. runs the GPU test binaries: cuda_ops (every op, GPU vs CPU) and cuda_modes (every efficiency
#    mode vs Naive on the GPU, GPU vs CPU);
# 3. runs the benchmark on the GPU (--device cuda --json): DenseNet-BC-100 batch 64, the depth
#    sweep (BC k=12, depths 40/100/190/250, batch 64) and DenseNet-121 224px batch 64;
# 4. runs the PyTorch reference on the same cases in the same run (naive and torch.utils.checkpoint,
#    fp32, TF32 off), if a python with CUDA-enabled torch is found (TORCH_PYTHON overrides);
# 5. prints one comparison table (ours vs PyTorch: peak GB and ms per step, per case).
#
# Results go to "$OUT" if set, else ./gpu-results: at most seven files (summary.txt,
# gpu-check.log, the two test logs, ours.jsonl, torch.jsonl, and all.tar.gz with every log and
# the SVG chart). Exits non-zero if a test failed or a benchmark could not run.
set -uo pipefail
cd "$(dirname "$0")/.."
DEST=${OUT:-./gpu-results}
mkdir -p "$DEST"
RESULTS=$(mktemp -d)
publish() {
  cat "$RESULTS/torch_cifar.jsonl" "$RESULTS/torch_imagenet.jsonl" >"$RESULTS/torch.jsonl" 2>/dev/null
  tar czf "$DEST/all.tar.gz" -C "$RESULTS" . 2>/dev/null
  for f in summary.txt gpu-check.log cuda_ops.log cuda_modes.log ours.jsonl torch.jsonl; do
    [ -f "$RESULTS/$f" ] && cp "$RESULTS/$f" "$DEST/"
  done
}
trap publish EXIT
BIN=.gpu-bin
SCRIPTS=scripts
[ -f "$SCRIPTS/cuda-env.sh" ] || SCRIPTS=$BIN/scripts
start=$(date +%s)
failures=()
note() { echo "gpu-check [$(( $(date +%s) - start ))s]: $*" | tee -a "$RESULTS/gpu-check.log"; }

for f in cuda_ops cuda_modes benchmark; do
  if [ ! -x "$BIN/$f" ]; then
    echo "gpu-check: $BIN/$f is missing: run scripts/build-gpu-bundle.sh on a build machine first" >&2
    exit 2
  fi
done

# shellcheck disable=SC1091
source "$SCRIPTS/cuda-env.sh" 2>"$RESULTS/cuda-env.log"
note "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi >"$RESULTS/nvidia-smi.txt" 2>&1
  note "GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n1)"
fi

# --- tests ---------------------------------------------------------------------------------------
for t in cuda_ops cuda_modes; do
  note "running $t"
  timeout 40 "$BIN/$t" --nocapture >"$RESULTS/$t.log" 2>&1
  rc=$?
  grep -E "^test result|FAILED|panicked|skipping" "$RESULTS/$t.log" | sort | uniq -c | head -n 20
  if grep -q "skipping: no usable CUDA GPU" "$RESULTS/$t.log"; then
    note "$t: the GPU could not be used (see $RESULTS/$t.log)"
    failures+=("$t: no usable GPU")
  elif [ $rc -ne 0 ]; then
    note "$t FAILED (exit $rc; 124 = timed out): see $RESULTS/$t.log"
    failures+=("$t")
  else
    note "$t passed"
  fi
done

# --- our benchmark -------------------------------------------------------------------------------
note "benchmark (ours): BC-100 b64, DenseNet-121 224px b64, depth sweep b64"
timeout 80 "$BIN/benchmark" --device cuda --json --batch 64 --iters 5 \
  --imagenet --imagenet-batch 64 --depths 40,100,190,250 --sweep-batch 64 \
  --svg "$RESULTS/memory_vs_depth.svg" >"$RESULTS/ours.jsonl" 2>"$RESULTS/ours.err"
rc=$?
if [ $rc -ne 0 ]; then
  note "benchmark (ours) FAILED (exit $rc; 124 = timed out): $(tail -n 3 "$RESULTS/ours.err")"
  failures+=("benchmark")
fi

# --- PyTorch reference ---------------------------------------------------------------------------
py=""
for cand in "${TORCH_PYTHON:-}" /opt/torch/.venv/bin/python python3; do
  [ -n "$cand" ] || continue
  if "$cand" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
    py=$cand
    break
  fi
done
: >"$RESULTS/torch_cifar.jsonl"
: >"$RESULTS/torch_imagenet.jsonl"
if [ -z "$py" ]; then
  note "no python with CUDA-enabled torch found (set TORCH_PYTHON): PyTorch reference skipped"
else
  note "PyTorch reference with $py ($("$py" -c 'import torch; print(torch.__version__)' 2>/dev/null))"
  timeout 55 "$py" "$SCRIPTS/torch_benchmark.py" --device cuda --in-process --batch 64 --iters 5 --warmup 1 \
    --models bc100 bc-40-k12 bc-190-k12 bc-250-k12 >"$RESULTS/torch_cifar.jsonl" 2>"$RESULTS/torch_cifar.err" \
    || note "PyTorch CIFAR cases incomplete (exit $?): $(tail -n 2 "$RESULTS/torch_cifar.err")"
  timeout 35 "$py" "$SCRIPTS/torch_benchmark.py" --device cuda --in-process --batch 64 --iters 3 --warmup 1 \
    --image 224 --models densenet121 >"$RESULTS/torch_imagenet.jsonl" 2>"$RESULTS/torch_imagenet.err" \
    || note "PyTorch ImageNet case incomplete (exit $?): $(tail -n 2 "$RESULTS/torch_imagenet.err")"
fi

# --- comparison ----------------------------------------------------------------------------------
cmp_py=${py:-python3}
if command -v "$cmp_py" >/dev/null 2>&1; then
  "$cmp_py" "$SCRIPTS/gpu_compare.py" "$RESULTS/ours.jsonl" "$RESULTS/torch_cifar.jsonl" \
    "$RESULTS/torch_imagenet.jsonl" | tee "$RESULTS/summary.txt"
else
  note "no python to print the comparison table: raw results in $RESULTS/*.jsonl"
fi
grep '"fit"' "$RESULTS/ours.jsonl" | tee -a "$RESULTS/summary.txt"

note "done; results in $DEST"
if [ ${#failures[@]} -gt 0 ]; then
  note "FAILED: ${failures[*]}"
  exit 1
fi
