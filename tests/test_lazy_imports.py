"""`--help` of every command and `checkpoints list|info` never import torch (issue 9 §5): ~2-3 s saved each."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import typer

from diffbench.cli.app import _register, app

HEAVY = ("torch", "torch_fidelity", "torchvision")

# One child process runs every invocation through the CLI's main() in turn and reports, after each,
# the heavy modules loaded so far: the first invocation to load one is named.
CHILD = r"""
import contextlib, io, json, sys
from diffbench.cli.app import main
heavy, report = json.loads(sys.argv[1]), []
for args in json.loads(sys.argv[2]):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        try:
            main(args)
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
    report.append([args, code, out.getvalue(), [m for m in heavy if m in sys.modules]])
print(json.dumps(report))
"""


def _script() -> str:
    found = Path(sys.executable).parent / "diffbench"
    return str(found) if found.exists() else shutil.which("diffbench")


def _help_invocations() -> list[list[str]]:
    """`--help` of the app, of every command and of every command of every group (new ones included)."""
    _register()
    root = typer.main.get_command(app)
    out = [["--help"]]
    for name, cmd in sorted(root.commands.items()):
        out.append([name, "--help"])
        out.extend([name, sub, "--help"] for sub in sorted(getattr(cmd, "commands", None) or {}))
    return out


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return dict(os.environ, DIFFBENCH_HOME=str(tmp_path / "home"), COLUMNS="200", **extra)


def test_help_and_checkpoints_list_info_do_not_import_torch(tmp_path):
    from diffbench.models.registry import entries

    name = sorted(entries())[0]
    runs = [*_help_invocations(), ["checkpoints", "list"], ["checkpoints", "info", name]]
    assert len(runs) >= 10  # every command's help is there
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(HEAVY), json.dumps(runs)],
        capture_output=True,
        text=True,
        env=_env(tmp_path),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for args, code, stdout, heavy in json.loads(proc.stdout):
        assert code == 0, f"diffbench {' '.join(args)} exited {code}"
        assert stdout.strip(), f"diffbench {' '.join(args)} printed nothing"
        assert not heavy, f"`diffbench {' '.join(args)}` imported {heavy}"
        if args in runs[-2:]:
            assert name in stdout


def test_console_script_help_does_not_import_torch(tmp_path):
    # the installed script, with Python's own import report (-X importtime) on stderr
    for args in (["--help"], ["checkpoints", "list"]):
        proc = subprocess.run(
            [_script(), *args], capture_output=True, text=True, env=_env(tmp_path, PYTHONPROFILEIMPORTTIME="1")
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        modules = {ln.rsplit("|", 1)[1].strip() for ln in proc.stderr.splitlines() if ln.startswith("import time:")}
        assert "typer" in modules  # the report is there and read
        assert not modules & set(HEAVY), f"`diffbench {' '.join(args)}` imported {sorted(modules & set(HEAVY))}"
