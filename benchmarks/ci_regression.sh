#!/usr/bin/env bash
# CI regression benchmark (run by .ci/run after the tests): the README's main sweep at CI size on the
# built-in digits-edm model, compared cell by cell with the committed baseline made by this same script.
#   benchmarks/ci_regression.sh            # compare with benchmarks/baseline/ci-sweep.json (exit 1 on a regression)
#   benchmarks/ci_regression.sh --rebase   # rewrite the baseline (after an intended change; say why in the commit)
# The tolerance (TOL) and how it was chosen: benchmarks/README.md, "CI regression benchmark".
set -euo pipefail
cd "$(dirname "$0")/.."
TOL=${TOL:-5%}  # re-derived for the jackknife intervals (issue 20): benchmarks/README.md
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
diffbench sweep digits-edm --solver euler,heun,dpmpp-2m --nfe 5,9,15 --seeds 0-399 --blocks 20 \
  --store "$work/ci.db" --out "$work/ci" --no-plot
if [ "${1:-}" = "--rebase" ]; then
  cp "$work/ci/results.json" benchmarks/baseline/ci-sweep.json
  echo "baseline rewritten: benchmarks/baseline/ci-sweep.json"
else
  diffbench compare "$work/ci/results.json" benchmarks/baseline/ci-sweep.json --tolerance "$TOL"
fi
