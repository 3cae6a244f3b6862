"""Every example command in README.md runs (STYLE.md: documented commands run in a test)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def example_lines() -> list[str]:
    """The `diffbench ...` lines of the README's ```bash blocks, except the set-up lines (pip, venv)."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    return [ln.strip() for b in blocks for ln in b.splitlines() if ln.strip().startswith("diffbench ")]


def test_readme_has_the_two_setup_commands():
    text = README.read_text()
    assert 'pip install -e ".[test]" && python -m pytest' in text
    ci = (README.parent / ".ci" / "run").read_text()
    assert 'python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[test]" && python -m pytest' in ci
    assert "diffbench sample gmm --solver heun --schedule edm --nfe 35 --seeds 0-63 --out samples/" in text


def test_readme_examples_run(tmp_path, monkeypatch, cli):
    from test_metrics_inception import write_random_inception_weights

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DIFFBENCH_HOME", str(tmp_path / "home"))
    write_random_inception_weights(tmp_path / "inception.pth")
    lines = example_lines()
    assert len(lines) >= 5
    main_cmd = next(ln for ln in README.read_text().splitlines() if "&& diffbench sample" in ln)
    lines.insert(0, "diffbench " + main_cmd.split("&& diffbench ", 1)[1])
    for line in lines:
        code, _, err = cli(*shlex.split(line)[1:])
        assert code == 0, f"{line}: {err}"
    assert len(list((tmp_path / "samples").glob("*.png"))) == 64 and (tmp_path / "grid.png").exists()
