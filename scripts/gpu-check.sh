#!/usr/bin/env bash
# Everything the GPU machine has to run, in one call of at most 6 minutes. Run it from the
# repository root on a machine with an NVIDIA GPU, after scripts/build-gpu-bundle.sh built the
# bundle (.gpu-bin/) on a build machine and the repository was carried over:
#
#   scripts/gpu-check.sh
#
# Stages, each time-capped, none stopping the next (a failure is reported and the run goes on):
#   bundle   the bundle exists and was built from these sources (a stale one is refused)
#   env      scripts/cuda-env.sh finds the CUDA libraries; nvidia-smi
#   probe    can the engine open GPU 0? (if not, every later GPU stage says "no GPU" and why)
#   test:*   every test binary's GPU tests, with TAPE_EXPECT_GPU=1 (a missing GPU fails, never
#            skips); a failing binary is rerun with --test-threads 1 to attribute the first fault
#   bench:*  the benchmark on the GPU in three separately capped runs: main (DenseNet-BC-100,
#            batch 64, every mode), imagenet (DenseNet-121, 224px, batch 64), sweep (BC k=12 at
#            depths 40/100/190/250, batch 64), and find (the main table's naive and layer rows
#            with convolution algorithms measured by cuDNN's Find and one persistent workspace;
#            its rows stay in ours_find.jsonl)
#   torch    PyTorch on the same cases in the same run (naive and torch.utils.checkpoint, fp32,
#            TF32 off), if a python with CUDA-enabled torch is found (TORCH_PYTHON overrides)
#   compare  one table, ours vs PyTorch, and a one-line verdict per target
#
# Results go to "$OUT" if set, else ./gpu-results, rewritten after every stage (so a run killed
# part-way still returns what it did): stages.txt (one line per stage), summary.txt (the table
# and verdicts), tests.log, bench.log, ours.jsonl, torch.jsonl, and all.tar.gz (every log and
# the SVG chart). Exits non-zero if any stage failed.
set -uo pipefail
cd "$(dirname "$0")/.."
DEST=${OUT:-./gpu-results}
mkdir -p "$DEST"
WORK=$(mktemp -d)
BIN=.gpu-bin
BUDGET=${GPU_CHECK_BUDGET_S:-350}
start=$(date +%s)
failed=0
NO_GPU=""
: >"$WORK/stages.txt"
: >"$WORK/tests.log"
: >"$WORK/bench.log"
: >"$WORK/ours.jsonl"
: >"$WORK/torch.jsonl"
: >"$WORK/summary.txt"

elapsed() { echo $(( $(date +%s) - start )); }
publish() {
  for f in stages.txt summary.txt tests.log bench.log ours.jsonl torch.jsonl; do
    cp "$WORK/$f" "$DEST/$f" 2>/dev/null
  done
  tar czf "$DEST/all.tar.gz.tmp" -C "$WORK" . 2>/dev/null && mv "$DEST/all.tar.gz.tmp" "$DEST/all.tar.gz"
}
# stage NAME STATUS MESSAGE: records one stage's outcome and publishes everything so far.
stage() {
  printf '%-26s %-7s %4ss  %s\n' "$1" "$2" "$(elapsed)" "$3" | tee -a "$WORK/stages.txt"
  [ "$2" = FAIL ] && failed=1
  publish
}
# left CAP: the seconds a stage may take: CAP, or what is left of the budget if less.
left() { local l=$(( BUDGET - $(elapsed) )); [ "$l" -lt "$1" ] && echo "$l" || echo "$1"; }
trap publish EXIT

# --- bundle --------------------------------------------------------------------------------------
if [ -f "$BIN/bin.tar.xz" ] && [ ! -f "$BIN/benchmark" ]; then
  xz -dc "$BIN/bin.tar.xz" | tar -C "$BIN" -xf - ||
    { stage bundle FAIL "could not unpack $BIN/bin.tar.xz"; exit 1; }
fi
if [ ! -f "$BIN/STAMP" ] || [ ! -f "$BIN/benchmark" ]; then
  stage bundle FAIL "no bundle in $BIN: run scripts/build-gpu-bundle.sh on a build machine first"
  exit 1
fi
chmod +x "$BIN/benchmark" "$BIN"/tests/* "$BIN"/dist/nccl_world 2>/dev/null
want=$(grep '^sources ' "$BIN/STAMP" | cut -d' ' -f2)
have=$(xargs sha256sum <"$BIN/FILES" 2>/dev/null | sha256sum | cut -d' ' -f1)
if [ "$want" != "$have" ]; then
  stage bundle FAIL "stale bundle: built from other sources than these ($(head -n1 "$BIN/STAMP")); rebuild it"
  exit 1
fi
stage bundle ok "$(head -n1 "$BIN/STAMP")"

# --- environment ---------------------------------------------------------------------------------
# shellcheck disable=SC1091
source scripts/cuda-env.sh 2>"$WORK/cuda-env.log"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi >"$WORK/nvidia-smi.txt" 2>&1
  gpu_name=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n1)
  stage env ok "${gpu_name:-nvidia-smi gave no GPU}; $(grep -c . "$WORK/cuda-env.log") cuda-env lines (all.tar.gz)"
else
  stage env ok "no nvidia-smi; $(tail -n1 "$WORK/cuda-env.log")"
fi

# --- probe ---------------------------------------------------------------------------------------
export TAPE_EXPECT_GPU=1
timeout "$(left 60)" "$BIN/tests/tape_core" on_gpu::gpu_tensors_copy_and_refuse_host_access \
  --nocapture >"$WORK/probe.log" 2>&1
rc=$?
if grep -q 'no usable CUDA GPU' "$WORK/probe.log"; then
  NO_GPU=$(grep -o 'no usable CUDA GPU.*' "$WORK/probe.log" | head -n1)
  stage probe FAIL "no GPU: $NO_GPU"
elif [ $rc -ne 0 ]; then
  stage probe FAIL "exit $rc (124: timed out): $(grep -m1 -E 'panicked|error' "$WORK/probe.log")"
else
  stage probe ok "the engine opened GPU 0"
fi

# --- tests ---------------------------------------------------------------------------------------
for t in "$BIN"/tests/*; do
  name=$(basename "$t")
  if [ -n "$NO_GPU" ]; then stage "test:$name" FAIL "no GPU"; continue; fi
  cap=$(left 40)
  if [ "$cap" -le 5 ]; then stage "test:$name" FAIL "not run: the time budget is spent"; continue; fi
  filter=on_gpu
  [ "$name" = tape_lib ] && filter=scratch_path
  echo "===== $name ($filter)" >>"$WORK/tests.log"
  timeout "$cap" "$t" "$filter" >>"$WORK/tests.log" 2>&1
  rc=$?
  summary=$(grep -E '^test result' "$WORK/tests.log" | tail -n1)
  if [ $rc -eq 0 ]; then
    stage "test:$name" ok "$summary"
  else
    echo "===== $name rerun with --test-threads 1" >>"$WORK/tests.log"
    timeout "$(left 40)" "$t" "$filter" --test-threads 1 >>"$WORK/tests.log" 2>&1
    first=$(grep -m1 -E "panicked at|FAILED" "$WORK/tests.log" | tail -n1)
    stage "test:$name" FAIL "exit $rc (124: timed out); first fault on one thread: $first"
  fi
done

# --- NCCL, a world of one process (issue 18: the NCCL backend on a GPU) --------------------------
if [ -n "$NO_GPU" ]; then
  stage test:nccl_world FAIL "no GPU"
elif [ -x "$BIN/dist/nccl_world" ]; then
  echo "===== nccl_world" >>"$WORK/tests.log"
  LD_LIBRARY_PATH="$BIN/dist/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    timeout "$(left 60)" "$BIN/dist/nccl_world" >"$WORK/nccl.log" 2>&1
  rc=$?
  cat "$WORK/nccl.log" >>"$WORK/tests.log"
  if [ $rc -eq 0 ] && ! grep -q SKIPPED "$WORK/nccl.log"; then
    stage test:nccl_world ok "$(grep -c ' ok' "$WORK/nccl.log") checks (world of one)"
  else
    stage test:nccl_world FAIL "exit $rc: $(grep -m1 -iE 'error|panicked|skipped|nccl' "$WORK/nccl.log")"
  fi
else
  stage test:nccl_world FAIL "not in the bundle"
fi

# --- our benchmark -------------------------------------------------------------------------------
bench() { # NAME CAP ARGS...
  local name=$1 cap=$2; shift 2
  if [ -n "$NO_GPU" ]; then stage "bench:$name" FAIL "no GPU"; return; fi
  cap=$(left "$cap")
  if [ "$cap" -le 5 ]; then stage "bench:$name" FAIL "not run: the time budget is spent"; return; fi
  echo "===== bench $name: $*" >>"$WORK/bench.log"
  timeout "$cap" "$BIN/benchmark" --device cuda --json "$@" >"$WORK/ours_$name.jsonl" 2>>"$WORK/bench.log"
  local rc=$?
  # Variants of the main table (other CUDA options) stay in their own file.
  case "$name" in find*) ;; *) cat "$WORK/ours_$name.jsonl" >>"$WORK/ours.jsonl" ;; esac
  if [ $rc -eq 0 ]; then
    stage "bench:$name" ok "$(grep -c '"model"' "$WORK/ours_$name.jsonl") cases"
  else
    stage "bench:$name" FAIL "exit $rc (124: timed out after ${cap}s): $(tail -n1 "$WORK/bench.log")"
  fi
}
bench main 70 --batch 64 --iters 5 --no-sweep
bench imagenet 60 --batch 64 --iters 3 --no-main --no-sweep --imagenet --imagenet-batch 64
bench sweep 60 --no-main --depths 40,100,190,250 --sweep-batch 64 --iters 3 --svg "$WORK/memory_vs_depth.svg"
# Convolution algorithms measured by cuDNN's Find, one persistent workspace (issue: conv choice).
bench find 45 --batch 64 --iters 5 --no-sweep --recompute naive,layer --cudnn-find --persistent-workspace

# --- PyTorch reference ---------------------------------------------------------------------------
py=""
for cand in "${TORCH_PYTHON:-}" /opt/torch/.venv/bin/python python3; do
  [ -n "$cand" ] || continue
  if "$cand" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
    py=$cand
    break
  fi
done
if [ -z "$py" ]; then
  stage torch FAIL "no python with CUDA-enabled torch found (set TORCH_PYTHON)${NO_GPU:+; no GPU}"
else
  timeout "$(left 55)" "$py" scripts/torch_benchmark.py --device cuda --in-process --batch 64 --iters 5 \
    --warmup 1 --models bc100 bc-40-k12 bc-190-k12 bc-250-k12 >>"$WORK/torch.jsonl" 2>"$WORK/torch_cifar.err"
  rc1=$?
  timeout "$(left 35)" "$py" scripts/torch_benchmark.py --device cuda --in-process --batch 64 --iters 3 \
    --warmup 1 --image 224 --models densenet121 >>"$WORK/torch.jsonl" 2>"$WORK/torch_imagenet.err"
  rc2=$?
  msg="torch $("$py" -c 'import torch; print(torch.__version__)' 2>/dev/null): $(grep -c '"model"' "$WORK/torch.jsonl") cases"
  if [ $rc1 -eq 0 ] && [ $rc2 -eq 0 ]; then stage torch ok "$msg"; else stage torch FAIL "$msg; exits $rc1/$rc2 (124: timed out)"; fi
fi

# --- comparison ----------------------------------------------------------------------------------
cmp_py=${py:-python3}
if command -v "$cmp_py" >/dev/null 2>&1; then
  "$cmp_py" scripts/gpu_compare.py "$WORK/ours.jsonl" "$WORK/torch.jsonl" >"$WORK/summary.txt" 2>&1
  grep '"fit"' "$WORK/ours.jsonl" >>"$WORK/summary.txt"
  stage compare ok "$(grep -c '^verdict' "$WORK/summary.txt") verdicts in summary.txt"
else
  stage compare FAIL "no python to print the comparison table"
fi
cat "$WORK/summary.txt"
echo "gpu-check: $(elapsed)s; results in $DEST"
exit $failed
