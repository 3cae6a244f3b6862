"""Every usage error through the installed `diffbench` console script, in a subprocess.

Each bad invocation must exit non-zero with at most a few lines on stderr, no traceback, and name the
offending flag or value. The matrix runs on the typer installed here (a fresh install's newest) and, in
`test_lowest_typer`, on the lowest typer that pyproject.toml allows.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent / "diffbench"
LOWEST_TYPER = "0.19.2"  # keep equal to the lower bound in pyproject.toml

# (arguments, text the one-line error must contain, expected exit code or None for any non-zero)
BAD = [
    (["--bogus"], "--bogus", 2),
    (["nosuchcommand"], "nosuchcommand", 2),
    (["sample"], "MODEL", 2),
    (["sample", "gmm"], "--out", 2),
    (["sample", "gmm", "-o", "{tmp}/o", "--nfe", "0"], "--nfe", 2),
    (["sample", "gmm", "-o", "{tmp}/o", "--nfe", "-3"], "--nfe", 2),
    (["sample", "gmm", "-o", "{tmp}/o", "--nfe", "abc"], "--nfe", 2),
    (["sample", "gmm", "-o", "{tmp}/o", "--batch", "0"], "--batch", 2),
    (["sample", "gmm", "-o", "{tmp}/o", "--endpoint", "foo"], "--endpoint", 2),
    (["sample", "gmm", "-o", "{tmp}/o", "--noise", "pink"], "--noise", 2),
    (["sample", "gmm", "-o", "{tmp}/o", "--bogus"], "--bogus", 2),
    (["sample", "gmm", "-o", "{tmp}/o", "--solver", "hen"], "'hen'", 2),
    (["sample", "gmm", "-o", "{tmp}/o", "--schedule", "karras"], "'karras'", 2),
    (["sample", "gmm", "-o", "{tmp}/o", "--churn", "-1"], "--churn", 2),
    (["sample", "gmm", "-o", "{tmp}/o", "--rho", "nan"], "--rho", 2),
    (["sample", "gmm", "-o", "{tmp}/o", "--order", "2"], "--order", 2),
    (["sample", "gmm", "-o", "{tmp}/o", "--solver", "dpmpp-2m", "--churn", "5"], "--churn", 2),
    (["sample", "gmm", "-o", "{tmp}/o", "--seeds", "1-x"], "seed", 2),
    (["sample", "gmm", "-o", "{tmp}/o", "--device", "foo"], "--device", 2),
    (["fid", "x.npz"], "--ref", 2),
    (["fid", "--model", "gmm", "--order", "2", "--ref", "r.npz"], "--order", 2),
    (["fid", "x.npz", "--nfe", "3", "--ref", "r.npz"], "--nfe", 2),
    (["fid", "--extractor", "foo", "x.npz", "--ref", "r.npz"], "'foo'", 2),
    (["fid", "x.npz", "--ref", "r.npz", "--blocks", "0"], "--blocks", 2),
    (["fid", "x.npz", "--ref", "r.npz", "--show", "max"], "--show", 2),
    (["fid", "x.npz", "--ref", "r.npz", "--inception-weights", "{tmp}/none.pth"], "none.pth", 2),
    (["stats"], "SOURCE", 2),
    (["stats", "x.npz"], "--out", 2),
    (["stats", "{tmp}/missing_dir", "-o", "{tmp}/o.npz"], "missing_dir", 2),
    (["solvers", "--jsn"], "--jsn", 2),
    (["schedules", "extra"], "extra", 2),
    (["checkpoints", "bogus"], "bogus", 2),
    (["checkpoints", "info", "nosuch-model"], "nosuch-model", 2),
    (["checkpoints", "fetch"], "NAME", 2),
    # an unreachable budget is a usage error in every command (exit 2), as README says
    (["sample", "gmm", "-o", "{tmp}/o", "--nfe", "36"], "nearest reachable: 35 or 37", 2),
    (["sweep", "gmm", "--nfe", "4", "--seeds", "0-1", "--store", "{tmp}/s.db"], "nearest reachable: 3 or 5", 2),
    (["tune-schedule", "gmm", "--solver", "heun", "--nfe", "4", "-o", "{tmp}/g.json"], "nearest reachable", 2),
    (
        ["sample", "gmm", "--solver", "ipndm", "--schedule", "file:{tmp}/g5.txt", "--nfe", "9", "-o", "{tmp}/o"],
        "has 5 sigmas; ipndm at this budget needs 9",
        2,
    ),
    # score-error's --plot is checked before any work: folder, suffix, an existing file without --overwrite
    (["score-error", "gmm", "--data", "digits:heldout", "--plot", "/nonexistent/l.png"], "/nonexistent", 2),
    (["score-error", "gmm", "--data", "digits:heldout", "--plot", "{tmp}/g5.txt"], "PNG", 2),
    (["score-error", "gmm", "--data", "digits:heldout", "--plot", "{tmp}/old.png"], "--overwrite", 1),
]


def run(args: list[str], *, env: dict[str, str] | None = None, cmd: list[str] | None = None):
    full = (cmd or [str(BIN)]) + args
    p = subprocess.run(full, capture_output=True, text=True, timeout=300, env=env)
    return p.returncode, p.stdout, p.stderr


def _matrix(tmp: Path, *, cmd: list[str] | None = None, env: dict[str, str] | None = None, only=None):
    cases = [[a.replace("{tmp}", str(tmp)) for a in BAD[i][0]] for i in (only or range(len(BAD)))]
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda a: run(a, cmd=cmd, env=env), cases))


def _files(tmp: Path) -> Path:
    """The files some cases read: a file grid of 5 sigmas, an earlier plot."""
    (tmp / "g5.txt").write_text("80\n10\n1\n0.1\n0.002\n")
    (tmp / "old.png").write_bytes(b"an earlier plot")
    return tmp


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    assert BIN.exists(), f"the console script {BIN} is not installed (pip install -e .)"
    tmp = _files(tmp_path_factory.mktemp("cli"))
    home = tmp_path_factory.mktemp("home")
    env = dict(os.environ, DIFFBENCH_HOME=str(home), TORCH_HOME=str(home / "torch"))
    return _matrix(tmp, env=env)


def _check(case, result) -> None:
    args, needle, expected = case
    code, out, err = result
    assert code != 0, f"{args}: exit 0"
    if expected is not None:
        assert code == expected, f"{args}: exit {code}, stderr {err!r}"
    assert "Traceback" not in err + out, f"{args}: traceback\n{err}"
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert 1 <= len(lines) <= 3, f"{args}: {len(lines)} lines on stderr:\n{err}"
    assert needle.lower() in err.lower(), f"{args}: {needle!r} not named in {err!r}"


@pytest.mark.parametrize("i", range(len(BAD)), ids=[" ".join(a[:4]) for a, _, _ in BAD])
def test_bad_invocation_is_one_line(results, i):
    _check(BAD[i], results[i])


def test_matrix_covers_every_command():
    commands = {args[0] for args, _, _ in BAD}
    assert {"sample", "fid", "stats", "solvers", "schedules", "checkpoints"} <= commands
    assert len(BAD) >= 25


def test_bare_command_prints_help_and_exits_0():
    code, out, err = run([])
    assert code == 0 and "Usage" in out and "sample" in out and "Traceback" not in err


def test_version():
    from diffbench import __version__

    code, out, _ = run(["--version"])
    assert code == 0 and out.strip() == f"diffbench {__version__}"


def test_help_of_every_command_exits_0():
    for args in (["--help"], ["sample", "--help"], ["fid", "--help"], ["stats", "--help"], ["checkpoints", "--help"]):
        code, out, err = run(args)
        assert code == 0 and "Usage" in out and "Traceback" not in err, args


def test_sampler_options_are_the_same_in_sample_and_fid():
    from diffbench.cli.options import SAMPLER_OPTIONS

    _, sample_help, _ = run(["sample", "--help"], env=dict(os.environ, COLUMNS="200"))
    _, fid_help, _ = run(["fid", "--help"], env=dict(os.environ, COLUMNS="200"))
    for o in SAMPLER_OPTIONS:
        assert o.flag in sample_help and o.flag in fid_help, o.flag


def test_lowest_typer(tmp_path):
    """The lower bound of typer in pyproject.toml, with the click a fresh install resolves, passes the matrix."""
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert f'"typer>={LOWEST_TYPER}' in pyproject
    target = tmp_path / "typer_low"
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), f"typer=={LOWEST_TYPER}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if pip.returncode != 0:
        if shutil.which("pip") is None or "Could not" in pip.stderr or "connection" in pip.stderr.lower():
            pytest.skip(f"cannot install typer {LOWEST_TYPER} here: {pip.stderr.strip().splitlines()[-1:]}")
        raise AssertionError(pip.stderr)
    env = dict(os.environ, PYTHONPATH=str(target), DIFFBENCH_HOME=str(tmp_path / "home"))
    cmd = [sys.executable, "-c", "import sys; from diffbench.cli.app import main; main()"]
    code, out, _ = run(["--version"], cmd=cmd, env=env)
    assert code == 0 and out.startswith("diffbench")
    probe = subprocess.run(
        [sys.executable, "-c", "import typer; print(typer.__version__)"], capture_output=True, text=True, env=env
    )
    assert probe.stdout.strip() == LOWEST_TYPER
    fast = [i for i, (args, _, code) in enumerate(BAD) if code == 2]  # typer's own checks: the part that varies
    # typer's version is what varies here, not the process boundary (the matrix above checks that through the
    # installed script, case by case): one process runs every case through main(), each with its own captured
    # stdout/stderr and exit code, so torch is imported once rather than once per case
    cases = [[a.replace("{tmp}", str(_files(tmp_path))) for a in BAD[i][0]] for i in fast]
    p = subprocess.run(
        [sys.executable, "-c", _IN_ONE_PROCESS, json.dumps(cases)], capture_output=True, text=True, env=env, timeout=300
    )
    assert p.returncode == 0, p.stderr
    results = json.loads(p.stdout.splitlines()[-1])
    assert len(results) == len(fast)
    for i, result in zip(fast, results):
        _check(BAD[i], tuple(result))


# Runs each argument list of argv[1] (JSON) through main() in this one process, as the console script would: its
# stdout, its stderr and its exit code (SystemExit's, or 1 with the traceback printed for an uncaught exception).
_IN_ONE_PROCESS = """
import contextlib, io, json, sys, traceback
from diffbench.cli.app import main
results = []
for args in json.loads(sys.argv[1]):
    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(args)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
            if exc.code is not None and not isinstance(exc.code, int):
                print(exc.code, file=err)
        except BaseException:
            traceback.print_exc()
            code = 1
    results.append([code, out.getvalue(), err.getvalue()])
print(json.dumps(results))
"""
