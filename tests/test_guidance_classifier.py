"""Classifier guidance (issue 21): D + s sigma^2 grad_x log p(c | x, sigma) from a noise-conditional classifier,
its forward + backward counted as one classifier evaluation on its own line and spent from the --nfe budget,
its identity in the cell id, the built-in digits-noisy-classifier, and bad classifiers refused with one line."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

import diffbench
from diffbench.denoiser import Evaluator
from diffbench.models.analytic import load_builtin
from diffbench.models.noisy_classifier import ClassifierGradient, load_classifier
from diffbench.sampling.guidance import Guidance
from diffbench.sampling.run import Sampler
from diffbench.sampling.spec import SamplerSpec

COND = "gmm:components=3,shape=1x4x4,seed=2,cond=1"

USER_MODULE = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Noisy(nn.Module):
        num_classes = 3

        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.lin = nn.Linear(17, 3)

        def forward(self, x, sigma):
            return self.lin(torch.cat([x.flatten(1), sigma.reshape(-1, 1).log()], dim=1))


    class Clean(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(16, 3)

        def forward(self, x):
            return self.lin(x.flatten(1))


    def noisy():
        return Noisy()


    def clean():
        return Clean()


    def wide():
        m = Noisy()
        m.num_classes = 5
        return m
    """
)


@pytest.fixture()
def user(tmp_path, monkeypatch):
    (tmp_path / "g21_user_classifiers.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    load_classifier.cache_clear()
    yield "g21_user_classifiers"
    load_classifier.cache_clear()
    sys.modules.pop("g21_user_classifiers", None)


@pytest.fixture(scope="module")
def cond():
    return load_builtin(COND)


def test_the_guided_denoiser_adds_s_sigma_squared_times_the_classifier_gradient(cond, user):
    loaded = load_classifier(f"{user}:noisy")
    g = Guidance(weight=1.0, classifier_weight=1.5, classifier=f"{user}:noisy")
    labels = torch.tensor([0, 2, 1])
    nets = {"main": cond, "classifier": ClassifierGradient(loaded, 3)}
    ev = Evaluator(nets, 3, class_labels=labels, combine=g.combine)
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    sigma = 0.8
    xin = x.float().requires_grad_(True)
    logp = torch.log_softmax(loaded.module(xin, torch.full((3,), sigma)).double(), 1)[torch.arange(3), labels]
    (grad,) = torch.autograd.grad(logp.sum(), xin)
    d = cond(x, torch.full((3,), sigma, dtype=torch.float64), torch.eye(3, dtype=torch.float64)[labels]).double()
    with torch.no_grad():
        out = ev(x, sigma)
    torch.testing.assert_close(out, d + 1.5 * sigma**2 * grad.double(), rtol=1e-12, atol=1e-12)
    assert ev.counts == {"main": 1.0, "classifier": 1.0}


@pytest.mark.parametrize(("guidance", "nfe"), [(None, 12), (2.0, 18)])
def test_the_budget_counts_the_classifier_and_is_met_exactly(cond, user, guidance, nfe):
    spec = SamplerSpec.make(
        solver="euler", nfe=nfe, guidance=guidance, classifier_guidance=2.0, classifier=f"{user}:noisy"
    )
    sampler = Sampler(cond, spec, device="cpu")
    batch = sampler.run([0, 1, 2], class_labels=torch.tensor([0, 1, 2]))
    per_eval = 2 if guidance is None else 3
    assert sampler.plan.nfe == nfe and sampler.plan.steps == nfe // per_eval
    assert batch.counts == sampler.counts and sum(batch.counts.values()) == nfe
    assert batch.counts["classifier"] == batch.counts["main"] == nfe // per_eval
    record = sampler.provenance([0, 1, 2])
    assert record["nfe_per_network"]["classifier"] == nfe // per_eval
    assert record["guidance"]["classifier"]["spec"] == f"{user}:noisy"


def test_weight_zero_is_plain_sampling_bit_for_bit(cond, user):
    kw = dict(seeds=range(4), class_labels=[0, 1, 2, 0], solver="heun", nfe=9, device="cpu")
    a = diffbench.sample(cond, **kw)
    b = diffbench.sample(cond, classifier_guidance=0.0, classifier=f"{user}:noisy", **kw)
    assert torch.equal(a.images, b.images) and b.provenance["nfe_per_network"] == {"main": 9.0}


def test_the_classifier_identity_enters_the_cell_id(user):
    from diffbench.sweep.bench import prepare
    from diffbench.sweep.identity import cell_identity

    bench = prepare(COND, seeds=range(4), metrics=["sw"], device="cpu")
    spec = SamplerSpec.make(solver="euler", nfe=8, classifier_guidance=1.0, classifier=f"{user}:noisy")
    _, ident = cell_identity(bench, spec, None)
    assert ident["files_read"]["classifier"] == load_classifier(f"{user}:noisy").sha256
    other = SamplerSpec.make(solver="euler", nfe=8, classifier_guidance=2.0, classifier=f"{user}:noisy")
    assert cell_identity(bench, spec, None)[0] != cell_identity(bench, other, None)[0]


def test_the_builtin_noisy_classifier_is_pinned_and_reads_noisy_digits():
    from diffbench.models.registry import get_entry

    loaded = load_classifier("digits-noisy-classifier")
    assert loaded.sha256 == get_entry("digits-noisy-classifier").sha256["digits-noisy-classifier.pt"]
    data = __import__("numpy").load(
        __import__("diffbench.models.builtin", fromlist=["x"]).__path__[0] + "/digits-data.npz"
    )
    idx = data["heldout"][:100]
    x = torch.as_tensor(data["images"][idx]).float() / 127.5 - 1
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        logits = loaded.module(x + 0.2 * torch.randn(x.shape, generator=gen), torch.full((100,), 0.2))
    assert float((logits.argmax(1) == torch.as_tensor(data["labels"][idx])).float().mean()) > 0.9


def test_classifier_guidance_on_the_digits_model_through_the_command(cli, tmp_path):
    code, _, err = cli(
        "sample", "digits-edm-cond", "--solver", "euler", "--nfe", "8", "--classifier-guidance", "2",
        "--classifier", "digits-noisy-classifier", "--seeds", "0-1", "--out", tmp_path / "o", "--device", "cpu",
    )  # fmt: skip
    assert code == 0, err
    assert "NFE 8 per sample, classifier guidance 2 (digits-noisy-classifier), sigma 80" in err  # the header says so
    prov = json.loads(next((tmp_path / "o").rglob("*.json")).read_text())
    text = json.dumps(prov)
    assert '"classifier": 4.0' in text and "digits-noisy-classifier" in text


def _one_line_error(code: int, err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert code != 0 and len(lines) == 1, (code, err)
    return lines[0]


BAD = [
    (["--classifier-guidance", "2", "--classifier", "{user}:clean"], "does not take sigma"),
    (["--classifier-guidance", "2", "--classifier", "{user}:wide"], "has 5 classes, the model 3"),
    (["--classifier-guidance", "2"], "needs --classifier"),
    (["--classifier", "{user}:noisy"], "--classifier applies only with classifier guidance"),
    (["--classifier-guidance", "2", "--classifier", "no-such-thing"], "neither a classifier name"),
    (["--classifier-guidance", "2", "--classifier", "digits-noisy-classifier"], "has 10 classes, the model 3"),
    (["MODEL=gmm:shape=1x8x8,cond=1", "--classifier-guidance", "2", "--classifier", "{user}:noisy"], "fails on"),
    (["MODEL=digits-edm", "--classifier-guidance", "2", "--classifier", "digits-noisy-classifier"], "give --class C"),
    (["--classifier-guidance", "2", "--classifier", "{user}:noisy", "--nfe", "7"], "nearest reachable"),
]


def test_bad_classifier_input_through_the_real_command_is_one_line_each(tmp_path):
    """One subprocess runs the real command line (diffbench.cli.app.main) on every bad input and reports
    (exit code, stderr) of each: one line, a non-zero exit, no output folder."""
    (tmp_path / "g21_user_classifiers.py").write_text(USER_MODULE)
    cases = [[a.format(user="g21_user_classifiers") for a in args] for args, _ in BAD]
    script = textwrap.dedent(
        f"""
        import contextlib, io, json, sys
        from diffbench.cli.app import main
        out = []
        for i, args in enumerate({cases!r}):
            nfe = [] if "--nfe" in args else ["--nfe", "8"]
            model = args.pop(0)[6:] if args[0].startswith("MODEL=") else {COND!r}
            err = io.StringIO()
            code = 0
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                try:
                    main(["sample", model, "--solver", "euler", *args, *nfe, "--seeds", "0-1",
                          "--out", f"o{{i}}", "--device", "cpu"])
                except SystemExit as exc:
                    code = int(exc.code or 0)
            out.append([code, err.getvalue()])
        print(json.dumps(out))
        """
    )
    env = {"PYTHONPATH": f"{tmp_path}:{':'.join(sys.path)}", "PATH": "/usr/bin:/bin"}
    res = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    for (code, err), (_, expected), i in zip(json.loads(res.stdout), BAD, range(len(BAD)), strict=True):
        assert expected in _one_line_error(code, err)
        assert not (tmp_path / f"o{i}").exists()
