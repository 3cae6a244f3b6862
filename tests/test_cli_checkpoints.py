"""`diffbench checkpoints list | info | fetch | verify` through main(), against a local server."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_fetch import server  # noqa: F401 (a fixture: the local HTTP server; `home` is in conftest.py)

import diffbench.cli.app as cli_app
from diffbench.models import fetch, registry
from diffbench.models.registry import CheckpointEntry


@pytest.fixture(autouse=True)
def only_this_group(monkeypatch):
    """Register just the checkpoints group, and give each test its own registry copy."""
    monkeypatch.setattr(cli_app, "_register", lambda: __import__("diffbench.cli.checkpoints"))
    monkeypatch.setattr(registry, "_ENTRIES", registry.entries())


def run(capsys, *args: str) -> tuple[int, str, str]:
    """Call diffbench's main() as the console script does; return (exit code, stdout, stderr)."""
    try:
        cli_app.main(["checkpoints", *args])
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def test_list_shows_every_entry(capsys):
    code, out, _ = run(capsys, "list")
    assert code == 0
    for name in registry.entries():
        assert name in out
    code, out, _ = run(capsys, "list", "--kind", "fid-stats")
    assert code == 0 and "fid-ffhq-64x64" in out and "edm-ffhq-64x64-uncond-vp" not in out


def test_info_shows_the_entry(capsys, home):  # noqa: F811
    code, out, _ = run(capsys, "info", "edm-imagenet-64x64-cond-adm")
    assert code == 0
    assert "https://nvlabs-fi-cdn.nvidia.com/edm/pretrained/edm-imagenet-64x64-cond-adm.pkl" in out
    assert "DhariwalUNet" in out and "churn=40.0" in out and "fid-imagenet-64x64" in out
    assert "unknown (recorded by the first download)" in out
    assert str(home / "checkpoints" / "edm-imagenet-64x64-cond-adm") in out


@pytest.mark.parametrize(
    "args,match,exit_code",
    [  # an unknown name is a usage error (2); a download refused offline is not (1)
        (("info", "edm-cifar10-32x32-cond-pv"), "Did you mean 'edm-cifar10-32x32-cond-vp'", 2),
        (("fetch", "edm-cifar10-32x32-cond-vp", "--offline"), "offline mode forbids", 1),
        (("list", "--kind", "modle"), "Did you mean 'model'", 2),
    ],
)
def test_user_errors_are_one_line(capsys, home, args, match, exit_code):  # noqa: F811
    code, out, err = run(capsys, *args)
    assert code == exit_code and err.startswith("error: ") and match in err
    assert err.count("\n") == 1 and "Traceback" not in err


def _npz(tmp_path, d: int = 32) -> bytes:
    import numpy as np

    np.savez(tmp_path / "ref.npz", mu=np.arange(d, dtype=np.float64), sigma=np.eye(d))
    return (tmp_path / "ref.npz").read_bytes()


def test_fetch_then_verify_then_tamper(capsys, server, home, tmp_path):  # noqa: F811
    body = _npz(tmp_path)
    server.files["/m.npz"] = body
    registry.register_checkpoint(
        CheckpointEntry(name="tiny", kind="fid-stats", url=server.url + "/m.npz", format="fid-stats-npz")
    )
    code, out, err = run(capsys, "fetch", "tiny")
    digest = hashlib.sha256(body).hexdigest()
    assert code == 0 and f"sha256 {digest}" in out and "recorded this download's hash" in out
    assert (home / "checkpoints" / "tiny" / "m.npz").read_bytes() == body
    code, out, _ = run(capsys, "verify")
    assert code == 0 and f"ok        tiny/m.npz  sha256 {digest} (lock file)" in out
    code, out, _ = run(capsys, "info", "tiny")
    assert f"{digest} (lock file)" in out and re.search(r"^cached +yes$", out, re.M)
    (home / "checkpoints" / "tiny" / "m.npz").write_bytes(body[::-1])
    code, out, err = run(capsys, "verify", "tiny")
    assert code == 1 and "mismatch" in out and "1 file(s) failed verification" in err
    assert not (home / "checkpoints" / "tiny" / "m.npz").exists()
    # a fresh fetch downloads it again and matches the locked hash
    code, out, _ = run(capsys, "fetch", "tiny")
    assert code == 0 and f"sha256 {digest}" in out and "recorded" not in out


def test_fetch_url_and_404(capsys, server, home):  # noqa: F811
    server.files["/x/file.dat"] = b"abc" * 1000
    code, out, _ = run(capsys, "fetch", server.url + "/x/file.dat")
    assert code == 0 and str(fetch.url_dest(server.url + "/x/file.dat")) in out
    code, _, err = run(capsys, "fetch", server.url + "/x/missing.dat")
    assert code == 1 and "HTTP 404" in err and err.count("\n") == 1


def test_verify_named_but_missing_fails(capsys, home):  # noqa: F811
    code, out, err = run(capsys, "verify", "fid-cifar10-32x32")
    assert code == 1 and out.startswith("missing") and "failed verification" in err


def test_progress_bar_renders_bytes():
    from rich.console import Console

    from diffbench.cli.checkpoints import download_progress

    buf = io.StringIO()
    with download_progress("demo", console=Console(file=buf, width=120, force_terminal=False)) as cb:
        cb(0, 2_000_000)
        cb(2_000_000, 2_000_000)
    assert "demo" in buf.getvalue() and "2.0/2.0 MB" in buf.getvalue()


# ---------------------------------------------------------------- through the installed console script


def script(*args: str, cache, stdin: str | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the installed `diffbench` console script with DIFFBENCH_HOME=cache."""
    exe = shutil.which("diffbench") or str(Path(sys.executable).with_name("diffbench"))
    full_env = {**os.environ, "DIFFBENCH_HOME": str(cache), **(env or {})}
    return subprocess.run([exe, *args], input=stdin, capture_output=True, text=True, timeout=120, env=full_env)


def test_verify_on_an_empty_cache_says_so(tmp_path):
    done = script("checkpoints", "verify", cache=tmp_path / "cache")
    # the shipped built-in files are verified too; nothing downloaded is cached, and the command says so
    assert done.returncode == 0 and "no downloaded file to verify: no registry file is cached in" in done.stdout
    assert "digits-edm" in done.stdout
    assert str(tmp_path / "cache" / "checkpoints") in done.stdout


def test_forget_asks_then_forgets_the_pin_and_quarantines_the_copy(tmp_path):
    """A pinned file that is damaged (cut short): forget drops the pin and moves the copy out, after a yes."""
    cache = tmp_path / "cache"
    url = "https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/cifar10-32x32.npz"
    cached = cache / "checkpoints" / "fid-cifar10-32x32" / "cifar10-32x32.npz"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(_npz(tmp_path)[:-50])
    digest = hashlib.sha256(cached.read_bytes()).hexdigest()
    fetch.record_hash(url, sha256=digest, size=cached.stat().st_size, root=cache)
    refused = script("checkpoints", "forget", "fid-cifar10-32x32", cache=cache, stdin="n\n")
    assert refused.returncode == 1 and f"pinned sha256 {digest}" in refused.stdout
    assert "nothing forgotten" in refused.stderr and refused.stderr.count("\n") == 1
    assert cached.exists() and url in fetch.read_lock(root=cache)
    done = script("checkpoints", "forget", "fid-cifar10-32x32", cache=cache, stdin="y\n")
    assert done.returncode == 0, done.stderr
    assert "forgot cifar10-32x32.npz; cached copy moved to" in done.stdout
    assert not cached.exists() and fetch.read_lock(root=cache) == {}
    (q,) = (cache / "quarantine").iterdir()
    assert hashlib.sha256(q.read_bytes()).hexdigest() == digest
    again = script("checkpoints", "forget", "fid-cifar10-32x32", "--yes", cache=cache)
    assert again.returncode == 1 and again.stderr.startswith("error: nothing to forget")


def test_malformed_lock_record_is_one_line_and_forget_by_url_repairs_it(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    url = "https://nvlabs-fi-cdn.nvidia.com/edm/fid-refs/cifar10-32x32.npz"
    (cache / "lock.json").write_text(json.dumps({"files": {url: {"size": 12}}}))
    bad = script("checkpoints", "info", "fid-cifar10-32x32", cache=cache)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "no valid sha256" in bad.stderr
    assert "Traceback" not in bad.stderr
    done = script("checkpoints", "forget", url, "--yes", cache=cache)
    assert done.returncode == 0 and "a malformed pin" in done.stdout and fetch.read_lock(root=cache) == {}


def test_fetch_from_an_unreachable_host_says_how_to_place_the_file(capsys, tmp_path, monkeypatch):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there
    cache = tmp_path / "cache"
    registry.register_checkpoint(
        CheckpointEntry(
            name="far",
            kind="model",
            url=f"http://127.0.0.1:{port}/far.pkl",
            format="edm-pickle",
            resolution=8,
            channels=3,
            label_dim=0,
        )
    )
    monkeypatch.setenv("DIFFBENCH_HOME", str(cache))
    code, _, err = run(capsys, "fetch", "far", "--retries", "0")
    assert code == 1 and err.count("\n") == 1 and "cannot reach" in err
    assert f"save it as {cache / 'checkpoints' / 'far' / 'far.pkl'}" in err and "local path as MODEL" in err


def test_home_that_is_a_file_is_one_line(tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    done = script("checkpoints", "fetch", "fid-cifar10-32x32", cache=afile)
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert f"DIFFBENCH_HOME={afile} is a file, not a directory" in done.stderr
