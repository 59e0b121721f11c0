#!/usr/bin/env bash
# Mutation testing (not part of CI): cargo-mutants changes the code one small edit at a time
# (an operator, a returned value, a deleted match arm) and runs the tests against each change; a
# mutant the tests do not catch ("missed") points at code no test checks. Three parts, each
# mutated against its own crate's tests, built with the test profile (opt-level 1, incremental:
# a mutant rebuilds in seconds; MUTANTS_PROFILE=release to use the release profile instead):
#
#   checkpoint  the checkpoint crate (checkpoint/src)
#   budget      the DenseNet budget model (densenet/src/model/budget.rs)
#   backward    the ops' APIs and backward rules (tape/src/ops/*/mod.rs), each op's file against
#               its own test file
#
#   scripts/mutants.sh [-o OUT_DIR] [PART...] [-- CARGO_MUTANTS_ARGS...]
#
# With no PART, all three run. Reports go to OUT_DIR/<part>/mutants.out (default OUT_DIR:
# target/mutants): caught.txt, missed.txt, timeout.txt, unviable.txt, outcomes.json, a log per
# mutant. Arguments after `--` go to every part's cargo-mutants, e.g. to mutate two files only:
#
#   scripts/mutants.sh checkpoint -- --file checkpoint/src/sequential.rs --file checkpoint/src/segment.rs
#
# Needs cargo-mutants (`cargo install cargo-mutants --locked`). Slow: every mutant is a build and
# a test run of its crate (about 15 s each on 2 cores; all three parts take about four hours
# there). The tree is copied (with target/, to reuse its builds) before mutating, so
# the working tree is never edited. Exits non-zero if a part has missed mutants or fails.
set -euo pipefail
cd "$(dirname "$0")/.."

out=target/mutants
parts=()
while (($#)); do
  case "$1" in
    -o) out=$2; shift 2 ;;
    --) shift; break ;;
    checkpoint | budget | backward) parts+=("$1"); shift ;;
    *) echo "unknown argument '$1' (parts: checkpoint budget backward)" >&2; exit 2 ;;
  esac
done
((${#parts[@]})) || parts=(checkpoint budget backward)

if ! cargo mutants --version >/dev/null 2>&1; then
  echo "cargo-mutants is missing: cargo install cargo-mutants --locked" >&2
  exit 2
fi

status=0
for part in "${parts[@]}"; do
  case "$part" in
    checkpoint) scope=(-p checkpoint) ;;
    # The model against its own test file (one test binary to relink per mutant).
    budget) scope=(-p densenet --file densenet/src/model/budget.rs --cargo-arg=--test=budget_model) ;;
    backward)
      # Each op's mod.rs against its own test file (minutes instead of hours: one test binary
      # to relink per mutant); ops without a file of their own against the files that test them.
      for dir in tape/src/ops/*/; do
        op=$(basename "$dir")
        case "$op" in
          accuracy | finite) tests=(--test step_ops) ;;
          elementwise | reduce) tests=(--test tape_core) ;;
          relu) tests=(--test tape_core --test batch_norm_relu) ;;
          reshape) tests=(--test tape_core --test permute) ;;
          *) tests=(--test "$op") ;;
        esac
        mkdir -p "$out/backward/$op"
        echo "== backward/$op: cargo mutants -p tapegrad --file tape/src/ops/$op/mod.rs -- ${tests[*]}" >&2
        profile=()
        [[ -n ${MUTANTS_PROFILE:-} ]] && profile=(--profile "$MUTANTS_PROFILE")
        cargo mutants -p tapegrad --file "tape/src/ops/$op/mod.rs" "${profile[@]}" --copy-target=true \
          --timeout 300 -o "$out/backward/$op" "$@" -- "${tests[@]}" || status=$?
      done
      continue
      ;;
  esac
  mkdir -p "$out/$part"
  echo "== $part: cargo mutants ${scope[*]} $*" >&2
  profile=()
  [[ -n ${MUTANTS_PROFILE:-} ]] && profile=(--profile "$MUTANTS_PROFILE")
  cargo mutants "${scope[@]}" "${profile[@]}" --copy-target=true --timeout 300 \
    -o "$out/$part" "$@" || status=$?
  for kind in caught missed timeout unviable; do
    f="$out/$part/mutants.out/$kind.txt"
    [[ -f $f ]] && printf '%s %s: %d\n' "$part" "$kind" "$(wc -l <"$f")" >&2
  done
done
exit "$status"
