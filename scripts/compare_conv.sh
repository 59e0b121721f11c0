#!/usr/bin/env bash
# Per-op convolution times at ResNet-18 and DenseNet-BC-100 shapes, this project's
# (examples/conv_benchmark.rs) beside PyTorch's (scripts/torch_conv_benchmark.py) in the same
# run, each with a large sgemm of its own as the reference speed; one table, then each network's
# convolution time per step (every shape times the number of its convolutions in the network).
# Needs python3 with torch (PYTHON=... picks another interpreter); without it, only ours runs.
# ROUNDS=N (default 1) runs both sides N times, alternating, and keeps each row's fastest median:
# on a shared machine the other loads then weigh on both sides alike.
#
#   scripts/compare_conv.sh [BATCH] [ITERS] [THREADS] [extra conv_benchmark flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
batch=${1:-64}
iters=${2:-5}
threads=${3:-$(nproc)}
shift $(($# < 3 ? $# : 3))
python=${PYTHON:-python3}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

cargo build -q --release --example conv_benchmark
has_torch=1
"$python" -c 'import torch' 2>/dev/null || {
  echo "$python has no torch: showing this project's numbers only" >&2
  has_torch=0
}
: >"$out/ours.jsonl"
: >"$out/torch.jsonl"
for _ in $(seq "${ROUNDS:-1}"); do
  RAYON_NUM_THREADS=$threads ./target/release/examples/conv_benchmark --json --batch "$batch" \
    --iters "$iters" "$@" >"$out/round.jsonl"
  cat "$out/round.jsonl" >>"$out/ours.jsonl"
  if [ "$has_torch" = 1 ]; then
    "$python" scripts/torch_conv_benchmark.py --shapes "$out/round.jsonl" --threads "$threads" \
      --iters "$iters" >>"$out/torch.jsonl"
  fi
done

python3 - "$out/ours.jsonl" "$out/torch.jsonl" <<'PY'
import json, sys

def fastest(path):
    """Each (name, pass)'s row with the smallest median over the rounds, in first-seen order."""
    rows = {}
    for r in map(json.loads, open(path)):
        key = (r["name"], r.get("pass"))
        if key not in rows or r["median_s"] < rows[key]["median_s"]:
            rows[key] = r
    sgemm = rows.get(("sgemm", None))
    for r in rows.values():
        if sgemm and "pass" in r:
            r["frac_sgemm"] = r["gflops"] / sgemm["gflops"]
    return rows

ours = list(fastest(sys.argv[1]).values())
theirs = fastest(sys.argv[2])
sg = ours[0]
tsg = theirs.get(("sgemm", None))
line = f"sgemm {sg['m']}^3: ours {sg['gflops']:.1f} GFLOP/s"
if tsg:
    line += f", torch {tsg['gflops']:.1f} GFLOP/s (torch {tsg['torch']}, {tsg['threads']} threads)"
print(line)
print(f"{'shape':<10} {'conv':<22} {'pass':<11} {'ours ms':>8} {'torch ms':>8} {'ratio':>6} "
      f"{'GFLOP/s':>7} {'%sgemm':>6} {'torch GF/s':>10} {'%sgemm':>6}")
totals = {}
for r in ours[1:]:
    t = theirs.get((r["name"], r["pass"]))
    conv = f"{r['cin']}->{r['cout']} {r['h']}x{r['h']} k{r['k']} s{r['stride']}"
    tm = t["median_s"] * 1e3 if t else float("nan")
    print(f"{r['name']:<10} {conv:<22} {r['pass']:<11} {r['median_s']*1e3:8.2f} {tm:8.2f} "
          f"{r['median_s']*1e3/tm:6.2f} {r['gflops']:7.1f} {100*r['frac_sgemm']:5.1f}% "
          f"{t['gflops'] if t else float('nan'):10.1f} {100*t['frac_sgemm'] if t else float('nan'):5.1f}%")
    net = "ResNet-18" if r["name"].startswith("r") else "DenseNet-BC-100 (approx.)"
    acc = totals.setdefault(net, [0.0, 0.0])
    acc[0] += r["count"] * r["median_s"]
    acc[1] += r["count"] * (t["median_s"] if t else float("nan"))
for net, (o, t) in totals.items():
    print(f"{net} convolutions per step (counts x times, all passes): ours {o:.3f} s, "
          f"torch {t:.3f} s, ratio {o/t:.2f}")
PY
