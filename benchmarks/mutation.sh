#!/usr/bin/env bash
# Mutation testing of diffbench/sampling/ and diffbench/metrics/ with mutmut (pip install -e ".[mutation]").
# Not part of CI (slow); re-run when the sampler or the metrics change. Results: benchmarks/README.md.
#
#   benchmarks/mutation.sh                       # every mutant of sampling/ and metrics/ ([tool.mutmut])
#   benchmarks/mutation.sh 'diffbench.sampling.schedules*' 'diffbench.sampling.solvers*'   # a subset
#
# It runs in a scratch copy of the working tree (MUTATION_DIR, default a temp dir), so the repository never
# holds mutmut's mutants/ folder; the fast test files it runs are listed in pyproject.toml [tool.mutmut].
# MUTATION_JOBS (default 2) parallel workers; torch is kept to one thread per worker.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
work="${MUTATION_DIR:-$(mktemp -d -t diffbench-mutation.XXXXXX)}"
jobs="${MUTATION_JOBS:-2}"
python="${PYTHON:-python}"
"$python" -c "import mutmut" 2>/dev/null || { echo "mutmut is not installed: pip install -e '.[mutation]'" >&2; exit 1; }
mkdir -p "$work"
# the tracked and untracked-but-not-ignored files, as the tests see them
(cd "$here" && git ls-files -co --exclude-standard -z) | (cd "$here" && xargs -0 tar -cf - --) | (cd "$work" && tar -xf -)
cd "$work"
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 DIFFBENCH_HOME="$work/.home" PYTHONDONTWRITEBYTECODE=1
"$python" -m mutmut run --max-children "$jobs" "$@" || true
"$python" -m mutmut export-cicd-stats >/dev/null 2>&1 || true
"$python" "$here/benchmarks/mutation_report.py" "$work" "$@"
echo "mutmut state kept in $work (mutmut results / mutmut show NAME there)"
