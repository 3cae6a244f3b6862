"""README.md's shown output against what the commands print now, and its Python block executed.

Generic over the README's text: every ```text block with `$ diffbench ...` lines is a transcript; each
command runs through the installed console script (after the ```bash example lines, which create the files
the transcript uses) and its output must match the shown lines: words exactly, numbers within REL_TOL.
Progress-bar lines (rich's bars, elapsed times) are not compared.
"""

from __future__ import annotations

import math
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
REL_TOL = 1e-3  # shown numbers are rounded for display; a different result moves them by far more
NUMBER = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


def blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", README.read_text(), flags=re.S)


def transcripts() -> list[tuple[str, list[str]]]:
    """(command, shown output lines) for each `$ diffbench ...` line of the ```text blocks."""
    out: list[tuple[str, list[str]]] = []
    for block in blocks("text"):
        for line in block.splitlines():
            if line.startswith("$ "):
                out.append((line[2:].strip(), []))
            elif out and line.strip():
                out[-1][1].append(line.rstrip())
    return out


TIMING = re.compile(r"\bin [\d.]+ s\b|\([\d.]+ img/s\)|\bin [\d.]+ min\b")  # wall-clock figures differ per machine


def comparable(lines: list[str]) -> list[str]:
    """Lines to compare: no progress bars or elapsed clocks, no elided lines ("..."), timings blanked."""
    kept = [ln.strip() for ln in lines if ln.strip() and "━" not in ln and not re.search(r"\d+:\d\d:\d\d", ln)]
    return [TIMING.sub("<time>", ln) for ln in kept if ln not in ("...", "…")]


def same_line(shown: str, got: str) -> bool:
    if NUMBER.sub("#", shown) != NUMBER.sub("#", got):
        return False
    a, b = [float(x) for x in NUMBER.findall(shown)], [float(x) for x in NUMBER.findall(got)]
    # a shown number with d decimals may be off by half a unit of its last digit from rounding
    return all(math.isclose(x, y, rel_tol=REL_TOL, abs_tol=1e-12) for x, y in zip(a, b))


def diffbench_command() -> str:
    exe = shutil.which("diffbench") or str(Path(sys.executable).parent / "diffbench")
    assert Path(exe).exists(), "the diffbench console script is not installed"
    return exe


def run(line: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    args = shlex.split(line)
    assert args[0] == "diffbench"
    return subprocess.run(
        [diffbench_command(), *args[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_transcript_parser_and_comparison():
    assert transcripts(), "README.md shows no `$ diffbench` transcript"
    assert same_line("FID 874.3839  (n=16, ref ref.npz)", "FID 874.3841  (n=16, ref ref.npz)")
    assert not same_line("FID 874.3839  (n=16)", "FID 880.1  (n=16)")
    assert not same_line("wrote 16 images to a.npz", "wrote 17 images to a.npz")
    assert not same_line("precision 0.9000, recall 0.2000", "recall 0.9000, precision 0.2000")
    # timings are blanked, results are not; an elided "..." line is not compared
    shown, got = (
        comparable(["done in 3.3 s (178.5 img/s): fd 381.7", "..."]),
        comparable(["done in 9.9 s (55.0 img/s): fd 381.7"]),
    )
    assert shown == got == ["done <time> <time>: fd 381.7"]
    assert not same_line(
        comparable(["done in 3.3 s (178.5 img/s): fd 381.7"])[0], comparable(["done in 3.3 s (1 img/s): fd 390.2"])[0]
    )


@pytest.mark.slow
def test_readme_transcripts_match_their_shown_output(tmp_path, monkeypatch):
    import os

    from test_metrics_inception import write_random_inception_weights

    env = {**os.environ, "DIFFBENCH_HOME": str(tmp_path / "home")}
    write_random_inception_weights(tmp_path / "inception.pth")
    setup = [ln.strip() for b in blocks("bash") for ln in b.splitlines() if ln.strip().startswith("diffbench ")]
    shown_cmds = {cmd for cmd, _ in transcripts()}
    for line in setup:  # the files the transcripts use (a command shown in a transcript runs there instead)
        if "checkpoints" not in line and line not in shown_cmds:
            assert run(line, tmp_path, env).returncode == 0, line
    for cmd, shown in transcripts():
        r = run(cmd, tmp_path, env)
        assert r.returncode == 0, f"{cmd}: {r.stderr}"
        got, want = comparable((r.stdout + r.stderr).splitlines()), comparable(shown)
        missing = [w for w in want if not any(same_line(w, g) for g in got)]
        assert not missing, f"$ {cmd}\nshown: {missing}\nprinted: {got}"


def test_readme_python_block_runs_and_its_stated_values_hold(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DIFFBENCH_HOME", str(tmp_path / "home"))
    code = blocks("python")
    assert code, "README.md has no ```python block"
    for block in code:
        namespace: dict = {}
        exec(compile(block, str(README), "exec"), namespace)
        # statements the block makes in its comments, like `out.nfe == 35`, must be true
        claims = re.findall(r"#.*?([A-Za-z_][\w.]*\s*==\s*[\w.]+)", block)
        for claim in claims:
            assert eval(claim, namespace), claim
