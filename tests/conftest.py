"""Shared fixtures and helpers: small analytic models, a CLI runner that returns (exit code, stdout, stderr), an
isolated DIFFBENCH_HOME, random uint8 images, and the check that an error is one line."""

from __future__ import annotations

import os

# Under pytest-xdist (`-n auto` in pyproject.toml's addopts) each worker is one of several processes sharing the
# machine's cores: each gets its share of intra-op threads (one on a 2-core machine), and so do the console-script
# subprocesses its tests start (OMP_NUM_THREADS, read when torch is imported), instead of every process waking a
# thread per core and all of them fighting for the same cores.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    _THREADS = max(1, _cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))
    os.environ.setdefault("MKL_NUM_THREADS", str(_THREADS))
else:
    _THREADS = 0

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

if _THREADS:
    torch.set_num_threads(_THREADS)

from diffbench.models.analytic import load_builtin


@pytest.fixture
def one_thread():
    """One intra-op torch thread for the test: the 8x8 digits networks gain nothing from more, and a busy machine
    punishes them (under xdist every worker already has its share; this also holds with -n 0)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def gmm():
    return load_builtin("gmm")


@pytest.fixture(scope="session")
def small_gmm():
    """A cheap 2-D mixture for tests that sweep many settings."""
    return load_builtin("gmm:components=3,shape=2,cov=full,seed=1")


@pytest.fixture(scope="session")
def tiny_net():
    """A factory of small random-weight DDPM++ networks (clean-room SongUNet, 8x8) in a preconditioning."""
    from diffbench.models.nets import build_network
    from diffbench.models.precond import EDMPrecond

    def make(precond=EDMPrecond, *, label_dim: int = 0, seed: int = 0, **precond_kwargs):
        torch.manual_seed(seed)
        net = build_network(
            "SongUNet",
            {
                "img_resolution": 8,
                "in_channels": 3,
                "out_channels": 3,
                "model_channels": 16,
                "channel_mult": [1, 2],
                "num_blocks": 1,
                "attn_resolutions": [4],
                "label_dim": label_dim,
            },
        )
        return precond(net, img_resolution=8, img_channels=3, label_dim=label_dim, **precond_kwargs)

    return make


@pytest.fixture()
def home(tmp_path, monkeypatch):
    """An empty DIFFBENCH_HOME of this test's own (caches, downloads, lock file)."""
    root = tmp_path / "home"
    monkeypatch.setenv("DIFFBENCH_HOME", str(root))
    return root


def images(n: int, seed: int = 0, *, size: int = 4, lo: int = 0, hi: int = 256) -> np.ndarray:
    """n random uint8 RGB images, NHWC, values in [lo, hi) (import it: `from conftest import images`)."""
    return np.random.default_rng(seed).integers(lo, hi, (n, size, size, 3), dtype=np.uint8)


def one_error_line(code: int, err: str, *, context: bool = False) -> str:
    """A refused command: non-zero exit, no traceback, stderr's one non-empty line is `error: ...` (with context:
    other lines, such as the plan or what was kept, may come before it, but one line says `error:`); returns it."""
    lines = [ln for ln in err.splitlines() if ln.strip() and (ln.startswith("error:") or not context)]
    assert code != 0 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture()
def cli(capsys):
    """Run `diffbench ...` in-process; returns (exit code, stdout, stderr)."""
    from diffbench.cli.app import main

    def run(*args: str) -> tuple[int, str, str]:
        code = 0
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = int(exc.code or 0)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
