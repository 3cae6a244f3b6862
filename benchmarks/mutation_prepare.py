"""Prepare a scratch copy for mutmut: move `@solver(...)` registrations below their functions.

mutmut (3.x) does not mutate decorated functions, and every solver is registered with `@solver(...)`. In
the scratch copy only (never in the repository), `@solver(ARGS)\ndef f(...): ...` becomes
`def f(...): ...\nsolver(ARGS)(f)`: the same registration, in the same order, of the same function (the
decorator returns the function unchanged), so the solver bodies are mutated too.

usage: python benchmarks/mutation_prepare.py FILE.py ...
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def undecorate(text: str) -> str:
    lines = text.splitlines(keepends=True)
    tree = ast.parse(text)
    edits = []
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef):
            continue
        for dec in node.decorator_list:
            if isinstance(dec, ast.Call) and isinstance(dec.func, ast.Name) and dec.func.id == "solver":
                edits.append((dec, node))
    for dec, fn in sorted(edits, key=lambda e: -e[1].lineno):
        call = ast.get_source_segment(text, dec)
        # insert after the function, then drop the decorator's lines (bottom-up keeps line numbers valid)
        lines.insert(fn.end_lineno, f"\n\n{call}({fn.name})\n")
        del lines[dec.lineno - 1 : dec.end_lineno]
    return "".join(lines)


if __name__ == "__main__":
    for name in sys.argv[1:]:
        path = Path(name)
        path.write_text(undecorate(path.read_text()))
