#!/usr/bin/env bash
# Mutation testing of diffbench/sampling/ and diffbench/metrics/ with mutmut (pip install -e ".[mutation]").
# Not part of CI (slow); re-run when the sampler or the metrics change. Results: benchmarks/README.md.
#
#   benchmarks/mutation.sh                       # every mutant of sampling/ and metrics/ ([tool.mutmut])
#   benchmarks/mutation.sh 'diffbench.sampling.schedules*' 'diffbench.sampling.solvers*'   # a subset
#
# It runs in a scratch copy of the working tree (MUTATION_DIR, default a temp dir), so the repository never
# holds mutmut's mutants/ folder; the fast test files it runs are listed in pyproject.toml [tool.mutmut].
# MUTATION_JOBS (default 2) parallel workers; torch is kept to one thread per worker. MUTATION_TESTS="tests/a.py
# tests/b.py" replaces the test list (e.g. only the sampler's tests when only sampler mutants are run);
# MUTATION_DESELECT="tests/x.py::test_y[id] ..." leaves out tests that fail on the unmutated code.
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
# mutmut skips decorated functions: register the solvers after their definitions instead (scratch copy only)
"$python" "$here/benchmarks/mutation_prepare.py" diffbench/sampling/solvers/*.py
if [ -n "${MUTATION_TESTS:-}" ]; then  # a narrower test list than [tool.mutmut]'s, e.g. for the sampler only
  "$python" - "$MUTATION_TESTS" <<'PY'
import re, sys
tests = ", ".join(f'"{t}"' for t in sys.argv[1].split())
text = open("pyproject.toml").read()
text = re.sub(r"pytest_add_cli_args_test_selection = \[.*?\]", f"pytest_add_cli_args_test_selection = [{tests}]", text, flags=re.S)
open("pyproject.toml", "w").write(text)
PY
fi
if [ -n "${MUTATION_DESELECT:-}" ]; then  # test ids to leave out (mutmut needs every selected test to pass)
  "$python" - "$MUTATION_DESELECT" <<'PY'
import sys
ids = "".join(f', "--deselect", "{t}"' for t in sys.argv[1].split())
text = open("pyproject.toml").read()
key = 'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x"'
open("pyproject.toml", "w").write(text.replace(key, key + ids))
PY
fi
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 DIFFBENCH_HOME="$work/.home" PYTHONDONTWRITEBYTECODE=1
"$python" -m mutmut run --max-children "$jobs" "$@" || true
"$python" -m mutmut export-cicd-stats >/dev/null 2>&1 || true
"$python" "$here/benchmarks/mutation_report.py" "$work" "$@"
echo "mutmut state kept in $work (mutmut results / mutmut show NAME there)"
