"""`diffbench checkpoints list | info | fetch | verify` through main(), against a local server."""

from __future__ import annotations

import hashlib
import io
import re

import pytest
from test_fetch import home, server  # noqa: F401 (fixtures: local HTTP server, DIFFBENCH_HOME)

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
    "args,match",
    [
        (("info", "edm-cifar10-32x32-cond-pv"), "Did you mean 'edm-cifar10-32x32-cond-vp'"),
        (("fetch", "edm-cifar10-32x32-cond-vp", "--offline"), "offline mode forbids"),
        (("list", "--kind", "modle"), "Did you mean 'model'"),
    ],
)
def test_user_errors_are_one_line(capsys, home, args, match):  # noqa: F811
    code, out, err = run(capsys, *args)
    assert code == 1 and err.startswith("error: ") and match in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_fetch_then_verify_then_tamper(capsys, server, home):  # noqa: F811
    body = bytes(range(256)) * 4000
    server.files["/m.pkl"] = body
    registry.register_checkpoint(
        CheckpointEntry(name="tiny", kind="fid-stats", url=server.url + "/m.pkl", format="fid-stats-npz")
    )
    code, out, err = run(capsys, "fetch", "tiny")
    digest = hashlib.sha256(body).hexdigest()
    assert code == 0 and f"sha256 {digest}" in out and "recorded this download's hash" in out
    assert (home / "checkpoints" / "tiny" / "m.pkl").read_bytes() == body
    code, out, _ = run(capsys, "verify")
    assert code == 0 and f"ok        tiny/m.pkl  sha256 {digest} (lock file)" in out
    code, out, _ = run(capsys, "info", "tiny")
    assert f"{digest} (lock file)" in out and re.search(r"^cached +yes$", out, re.M)
    (home / "checkpoints" / "tiny" / "m.pkl").write_bytes(body[::-1])
    code, out, err = run(capsys, "verify", "tiny")
    assert code == 1 and "mismatch" in out and "1 file(s) failed verification" in err
    assert not (home / "checkpoints" / "tiny" / "m.pkl").exists()
    # a fresh fetch downloads it again and matches the locked hash
    code, out, _ = run(capsys, "fetch", "tiny")
    assert code == 0 and f"sha256 {digest}" in out and "recorded" not in out


def test_fetch_url_and_404(capsys, server, home):  # noqa: F811
    server.files["/x/file.bin"] = b"abc" * 1000
    code, out, _ = run(capsys, "fetch", server.url + "/x/file.bin")
    assert code == 0 and str(fetch.url_dest(server.url + "/x/file.bin")) in out
    code, _, err = run(capsys, "fetch", server.url + "/x/missing.bin")
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
