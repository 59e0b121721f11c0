#!/usr/bin/env bash
# Runs the DenseNet-BC-100 training-step benchmark on the CPU for this project and, in the same
# run, for PyTorch (naive and torch.utils.checkpoint), then prints one comparison table.
# Needs python3 with torch for the PyTorch half (pip install torch); without it, only ours runs.
#
#   scripts/compare_cpu.sh [BATCH] [ITERS] [THREADS]
set -euo pipefail
cd "$(dirname "$0")/.."
batch=${1:-64}
iters=${2:-3}
threads=${3:-$(nproc)}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

cargo build -q --release --example benchmark
# Each of our modes in a fresh process, as PyTorch's cases are, so that no case's peak RSS
# carries an earlier case's heap; the budget is the one `budget:auto` would pick (halfway
# between the layer and bottleneck peaks just measured).
bench() {
  RAYON_NUM_THREADS=$threads ./target/release/examples/benchmark --json --no-sweep \
    --batch "$batch" --iters "$iters" --recompute "$1" >>"$out/ours.jsonl"
}
for mode in naive bottleneck layer; do bench "$mode"; done
budget=$(python3 - "$out/ours.jsonl" <<'PY'
import json, sys
rows = {r["mode"]: r["peak_bytes"] for r in map(json.loads, open(sys.argv[1])) if "mode" in r}
print((rows["layer"] + rows["bottleneck"]) // 2)
PY
)
bench "budget:$budget"
if python3 -c 'import torch' 2>/dev/null; then
  python3 scripts/torch_benchmark.py --models bc100 --batch "$batch" --iters "$iters" \
    --warmup 1 --threads "$threads" >"$out/torch.jsonl"
else
  echo "python3 has no torch: showing this project's numbers only" >&2
  : >"$out/torch.jsonl"
fi

python3 - "$out/ours.jsonl" "$out/torch.jsonl" "$threads" <<'PY'
import json, sys
ours = [json.loads(l) for l in open(sys.argv[1]) if l.strip().startswith("{")]
torch = [json.loads(l) for l in open(sys.argv[2]) if l.strip().startswith("{")]
print(f"DenseNet-BC-100 k=12, batch {ours[0]['batch']}, 32x32, fp32, one SGD step, {sys.argv[3]} CPU threads")
print(f"{'implementation':<28} {'peak (engine)':>14} {'peak RSS':>10} {'s/step':>8} {'x torch naive':>14}")
base = next((t["median_s"] for t in torch if t["mode"] == "naive"), None)
def row(name, eng, rss, s):
    ratio = f"{s / base:.2f}" if base else "-"
    eng = f"{eng / 1e9:.3f} GB" if eng is not None else "-"
    rss = f"{rss / 1e9:.3f} GB" if rss is not None else "-"
    print(f"{name:<28} {eng:>14} {rss:>10} {s:>8.3f} {ratio:>14}")
for t in torch:
    row(f"pytorch {t['mode']}", None, t.get("peak_rss_bytes"), t["median_s"])
for o in ours:
    row(f"ours {o['mode']}", o["peak_bytes"], o.get("rss_peak_bytes"), o["median_s"])
print("peak RSS: PyTorch's is the growth of the process's peak RSS over its model set-up; ours is")
print("the process peak RSS over the measured steps, beside the engine's exact accounting")
print("(parameters, optimizer state, activations, gradients, workspaces); a fresh process per case.")
PY
