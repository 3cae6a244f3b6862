"""Summarise a mutmut run (benchmarks/mutation.sh): kill rate per file and the surviving mutants.

usage: python benchmarks/mutation_report.py MUTATION_DIR [GLOB ...] [--diffs]
Reads mutmut's per-file results (mutants/<file>.meta, JSON) in MUTATION_DIR; GLOBs restrict to mutant names.
"""

from __future__ import annotations

import fnmatch
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

from mutmut.__main__ import status_by_exit_code


def main(argv: list[str]) -> None:
    diffs = "--diffs" in argv
    args = [a for a in argv if a != "--diffs"]
    work, globs = Path(args[0]), args[1:]
    rows, survivors = [], []
    for meta in sorted((work / "mutants").rglob("*.py.meta")):
        data = json.loads(meta.read_text())
        codes = {
            k: v
            for k, v in data.get("exit_code_by_key", {}).items()
            if not globs or any(fnmatch.fnmatch(k, g) for g in globs)
        }
        if not codes:
            continue
        status = Counter(
            status_by_exit_code.get(v, "not checked") if v is not None else "not checked" for v in codes.values()
        )
        rel = str(meta.relative_to(work / "mutants"))[: -len(".meta")]
        tried = sum(n for s, n in status.items() if s not in ("not checked", "skipped"))
        rows.append((rel, status, tried))
        survivors += [
            (rel, k, status_by_exit_code.get(v, "not checked"))
            for k, v in sorted(codes.items())
            if status_by_exit_code.get(v) not in ("killed", "caught by type check")
        ]
    total: Counter = Counter()
    cols = ("mutants", "killed", "survived", "no tests", "timeout", "kill rate")
    print(f"{'file':46s}" + "".join(f"{c:>10s}" for c in cols))

    def line(name: str, st: Counter, tried: int) -> None:
        killed = st["killed"] + st["caught by type check"] + st["timeout"]
        nums = (tried, st["killed"], st["survived"], st["no tests"], st["timeout"])
        rate = f"{killed / tried:.1%}" if tried else "-"
        print(f"{name:46s}" + "".join(f"{n:10d}" for n in nums) + f"{rate:>10s}")

    for rel, st, tried in rows:
        total.update(st)
        line(rel, st, tried)
    line("total", total, sum(n for s, n in total.items() if s not in ("not checked", "skipped")))
    print("\nnot killed:")
    for _rel, name, st in survivors:
        print(f"  {st:12s} {name}")
        if diffs:
            show = [sys.executable, "-m", "mutmut", "show", name]
            out = subprocess.run(show, cwd=work, capture_output=True, text=True).stdout
            for ln in out.splitlines():
                if ln.startswith(("+", "-")) and not ln.startswith(("+++", "---")):
                    print("      " + ln)


if __name__ == "__main__":
    main(sys.argv[1:])
