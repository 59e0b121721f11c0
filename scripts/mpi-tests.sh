#!/usr/bin/env bash
# The multi-process tests: builds each test binary that needs the cargo feature `mpi` and runs
# it under `mpirun -np 2` (real processes on this machine). Needs Open MPI:
#   apt-get install -y libopenmpi-dev openmpi-bin libclang-dev
# Usage: scripts/mpi-tests.sh [NP]   (default 2)
set -euo pipefail
cd "$(dirname "$0")/.."
NP=${1:-2}
# root in containers and CI: Open MPI refuses to start as root without these flags.
MPIRUN=(mpirun --allow-run-as-root --oversubscribe -np "$NP")

run() { # package, test name
  local bin
  bin=$(cargo test --release -p "$1" --features mpi --test "$2" --no-run 2>&1 \
    | grep -o "target/release/deps/$2-[0-9a-f]*" | tail -1)
  if [ -z "$bin" ]; then
    echo "cannot find the test binary $2 of $1" >&2
    exit 1
  fi
  echo "== mpirun -np $NP $2"
  timeout 600 "${MPIRUN[@]}" "$bin"
}

run tapegrad-dist mpi_world
run densenet-suite dist_densenet
run densenet-suite dist_sync_bn
