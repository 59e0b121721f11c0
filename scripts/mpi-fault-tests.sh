#!/usr/bin/env bash
# Faults and resume across real processes (train_cifar on synthetic data under mpirun -np 2):
#   fail     rank 1 fails mid-epoch (an injected bad batch): the job ends non-zero within 60 s and
#            the message names rank 1
#   kill     rank 1 is killed with SIGKILL during a run: the job ends non-zero within 60 s; then
#            --resume from the run directory gives the uninterrupted run's weights, byte for byte
#   reshard  the 2-process run directory resumed by 1 process for one more epoch
# Needs Open MPI and a build with --features mpi (this script builds train_cifar).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --features mpi --example train_cifar 2>&1 | tail -1
BIN=target/release/examples/train_cifar
MPIRUN=(mpirun --allow-run-as-root --oversubscribe -np 2)
ARGS=(--dist mpi --batch 16 --limit-train 256 --limit-test 32 --threads 1 --epochs 4)
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
fail() { echo "FAILED: $*" >&2; exit 1; }

echo "== fail: rank 1 fails at step 5"
start=$(date +%s)
set +e
timeout 120 "${MPIRUN[@]}" "$BIN" "${ARGS[@]}" --fail-at 1:5 >"$WORK/fail.log" 2>&1
rc=$?
set -e
took=$(($(date +%s) - start))
[ "$rc" -ne 0 ] || fail "the job exited 0"
[ "$rc" -ne 124 ] || fail "the job hung (killed by timeout)"
[ "$took" -le 60 ] || fail "the job took ${took} s to end"
grep -q "rank 1 of 2: error: .*injected fault" "$WORK/fail.log" || fail "no message naming rank 1"
echo "ok: exit $rc after ${took} s: $(grep -m1 'rank 1 of 2' "$WORK/fail.log")"

echo "== kill: uninterrupted run"
"${MPIRUN[@]}" "$BIN" "${ARGS[@]}" --out "$WORK/straight" >"$WORK/straight.log" 2>&1 \
  || { cat "$WORK/straight.log"; fail "the uninterrupted run failed"; }
echo "== kill: SIGKILL of rank 1 after the first epoch is saved"
"${MPIRUN[@]}" "$BIN" "${ARGS[@]}" --out "$WORK/killed" >"$WORK/killed.log" 2>&1 &
job=$!
for _ in $(seq 1 600); do
  [ -f "$WORK/killed/state.json" ] && break
  sleep 0.05
done
[ -f "$WORK/killed/state.json" ] || fail "no epoch was saved"
victim=""
for pid in $(pgrep -P "$job" -f train_cifar || true) $(pgrep -f "$BIN" || true); do
  if tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=1"; then
    victim=$pid
    break
  fi
done
[ -n "$victim" ] || fail "rank 1's process not found"
start=$(date +%s)
kill -9 "$victim"
set +e
timeout 120 tail --pid="$job" -f /dev/null
wait "$job"
rc=$?
set -e
took=$(($(date +%s) - start))
[ "$rc" -ne 0 ] || fail "the job exited 0 after rank 1 was killed"
[ "$took" -le 60 ] || fail "the job took ${took} s to end after the kill"
echo "ok: exit $rc ${took} s after the kill (saved: $(grep -o '"epoch": [0-9]*' "$WORK/killed/state.json"))"
"${MPIRUN[@]}" "$BIN" "${ARGS[@]}" --out "$WORK/killed" --resume >"$WORK/resumed.log" 2>&1 \
  || { cat "$WORK/resumed.log"; fail "the resumed run failed"; }
cmp "$WORK/straight/model.safetensors" "$WORK/killed/model.safetensors" \
  || fail "the resumed weights differ from the uninterrupted run's"
cmp "$WORK/straight/optimizer.safetensors" "$WORK/killed/optimizer.safetensors" \
  || fail "the resumed optimizer state differs from the uninterrupted run's"
echo "ok: resumed weights and optimizer state byte-identical to the uninterrupted run"

echo "== reshard: the 2-process run directory resumed by 1 process"
"$BIN" --dist mpi --batch 32 --limit-train 256 --limit-test 32 --threads 1 --epochs 5 \
  --out "$WORK/killed" --resume >"$WORK/reshard.log" 2>&1 \
  || { cat "$WORK/reshard.log"; fail "resuming with another world size failed"; }
grep -q "epoch   5/5" "$WORK/reshard.log" || fail "no fifth epoch"
echo "ok: $(grep 'epoch   5/5' "$WORK/reshard.log")"
