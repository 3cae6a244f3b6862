"""Every example command in README.md runs (STYLE.md: documented commands run in a test)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def example_lines() -> list[str]:
    """The `diffbench ...` lines of the README's ```bash blocks, except the set-up lines (pip, venv)."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    return [ln.strip() for b in blocks for ln in b.splitlines() if ln.strip().startswith("diffbench ")]


def test_readme_has_the_two_setup_commands_and_ci_runs_them():
    lines = README.read_text().splitlines()
    assert lines.count("python3 -m venv .venv && . .venv/bin/activate && pip install -e . && diffbench sweep") == 1
    test_cmd = 'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[test]" && python -m pytest'
    assert lines.count(test_cmd) == 1
    ci = (README.parent / ".ci" / "run").read_text()  # CI reads both lines from README.md and runs them as written
    assert 'main_cmd=$(readme_command "diffbench sweep")' in ci and 'bash -c "$main_cmd"' in ci
    assert 'test_cmd=$(readme_command "python -m pytest")' in ci and 'bash -c "$test_cmd"' in ci


def test_readme_examples_run(tmp_path, monkeypatch, cli):
    from test_metrics_inception import write_random_inception_weights

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DIFFBENCH_HOME", str(tmp_path / "home"))
    write_random_inception_weights(tmp_path / "inception.pth")
    lines = example_lines()
    assert len(lines) >= 5
    for line in lines:
        code, _, err = cli(*shlex.split(line, comments=True)[1:])  # as a shell reads it: "# ..." is a comment
        assert code == 0, f"{line}: {err}"


@pytest.mark.slow  # ~60 s idle, 460 s on a shared machine; .ci/run runs the main command itself and checks its outputs
def test_main_command_runs_and_shows_what_the_readme_says(tmp_path):
    """`diffbench sweep` with no arguments, through the installed console script, as a new user runs it."""
    import json
    import subprocess
    import sys

    main_cmd = next(ln for ln in README.read_text().splitlines() if "pip install -e . && diffbench" in ln)
    args = shlex.split(main_cmd.split("&& diffbench ", 1)[1])
    exe = str(Path(sys.executable).parent / "diffbench")
    done = subprocess.run([exe, *args], cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "diffbench-sweep"
    assert (out / "fd.png").stat().st_size > 10_000 and (out / "fd.md").exists() and (out / "fd.tex").exists()
    cells = json.loads((out / "results.json").read_text())["cells"]
    fd = {(c["solver"], c["nfe"]): c["results"]["fd"]["value"] for c in cells}
    assert len(fd) == 15
    for nfe in (9, 15, 35):  # Heun beats Euler at equal NFE >= 10-ish (README; the literature)
        assert fd["heun", nfe] < fd["euler", nfe]
    for nfe in (3, 5, 9):  # the multistep solver beats both at low NFE
        assert fd["dpmpp-2m", nfe] < min(fd["heun", nfe], fd["euler", nfe])
    # the README's table shows these very numbers
    text = README.read_text()
    for key in (("heun", 35), ("dpmpp-2m", 9), ("euler", 3)):
        assert f"{fd[key]:.4f}" in text, key
