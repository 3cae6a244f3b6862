"""Train diffbench's built-in digits models: EDM-preconditioned U-Nets and the `digits` feature classifier.

Data: scikit-learn's bundled 8x8 handwritten digits (load_digits: 1,797 images, values 0..16, UCI "Optical
Recognition of Handwritten Digits", CC BY 4.0), scaled to [-1, 1] as x = v / 8 - 1. A fixed permutation
(seed SPLIT_SEED) holds out the first 297 images for evaluation; the other 1,500 are the training split.

Products, written into diffbench/models/builtin/ (weights as plain state dicts, read by the same
state-dict loader as any other checkpoint):
  digits-edm.pt        unconditional, EMA weights after --steps steps
  digits-edm-early.pt  the same run's EMA weights at step --early-step (400 of 2000: under-trained)
  digits-edm-cond.pt   class-conditional (10 classes), label dropout 15% (null label = zero one-hot)
  digits-edm-cond-early.pt  the cond run's EMA weights at step --cond-early-step (400): the autoguidance model
  digits-noisy-classifier.pt  noise-conditional classifier p(c | x, sigma) for classifier guidance
  digits-classifier.pt the small CNN whose penultimate features are the `digits` feature space
  digits-data.npz      the images as uint8 (0..255) with labels and the fixed split (for the FD floor)
  digits-stats-*.npz   mu/sigma of the features (train split, held-out split, all images)
and a training record train_record.json (steps, wall time, machine, library versions, final losses).

Training: the EDM loss (Karras et al. 2022, Sec. 5 and Table 1): ln sigma ~ N(P_mean, P_std^2) with
P_mean = -1.2, P_std = 1.2, weight lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2,
sigma_data measured on the training split (pooled pixel std). Adam, constant learning rate after a linear
warm-up, and an exponential moving average of the weights whose half-life grows with the images seen
(EDM Appendix F.3/Table 7: half-life min(H, ratio x images seen)).

Run (needs the training extra: pip install -e '.[train]'):
  python benchmarks/train_digits.py --part uncond   # digits-edm and digits-edm-early
  python benchmarks/train_digits.py --part uncond --snapshots 250,500,1000,2000   # also digits-edm-step{N}.pt
  python benchmarks/train_digits.py --part cond     # digits-edm-cond and digits-edm-cond-early
  python benchmarks/train_digits.py --part classifier   # classifier, data and statistics
  python benchmarks/train_digits.py --part noisy-classifier   # digits-noisy-classifier (classifier guidance)
Each part is reproducible on the same machine and thread count (fixed seeds, --threads, default 1); pass
--out DIR to write elsewhere than the package (then compare sha256 with checkpoints.toml). Nothing before step
N depends on --steps (constant learning rate after warm-up), so a longer run's step-N EMA equals a --steps N run.
After retraining into the package, `python benchmarks/digits_hashes.py` updates the sha256 in checkpoints.toml.
The training-level family `digits-edm@STEP` (checkpoints.toml) is this run's EMA weights after 250, 400, 500,
1,000 and 2,000 steps: digits-edm-step{250,500,1000}.pt from --snapshots, and @400 / @2000 are digits-edm-early.pt
and digits-edm.pt themselves (the step-2000 snapshot holds the same tensors; only torch.save's archive name
differs, so its sha256 does). Measured 2026-12-02: `--out /tmp/... --threads 1` reproduced digits-edm.pt and
digits-edm-early.pt byte for byte (654 s on the shared 2-core machine).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffbench.models.nets import build_network  # noqa: E402
from diffbench.models.precond import EDMPrecond  # noqa: E402

OUT = ROOT / "diffbench" / "models" / "builtin"
SPLIT_SEED = 12
N_HELDOUT = 297
P_MEAN, P_STD = -1.2, 1.2  # EDM Table 1 / Sec. 5, training noise distribution

NETWORK_KWARGS = dict(
    img_resolution=8,
    in_channels=1,
    out_channels=1,
    model_channels=16,
    channel_mult=[1, 2],
    channel_mult_emb=4,
    num_blocks=2,
    attn_resolutions=[],
    dropout=0.05,
)


def load_split() -> dict[str, np.ndarray]:
    """Digits as uint8 images [N, 1, 8, 8] in 0..255 (v * 255 / 16 rounded), labels, and the fixed split."""
    from sklearn.datasets import load_digits

    d = load_digits()
    from diffbench.io import quantize

    values = d.images.astype(np.float64)  # 0..16
    # the same quantization as generated samples get: uint8 = clip(x * 127.5 + 128) of x = v / 8 - 1
    images = quantize(torch.from_numpy(values[:, None] / 8.0 - 1.0)).numpy()
    perm = np.random.default_rng(SPLIT_SEED).permutation(len(images))
    return {
        "images": images,
        "values": values[:, None].astype(np.float32),
        "labels": d.target.astype(np.int64),
        "heldout": np.sort(perm[:N_HELDOUT]),
        "train": np.sort(perm[N_HELDOUT:]),
    }


def machine() -> dict[str, str | int]:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count() or 0,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
    }


def record(key: str, value: dict) -> None:
    """Merge one part's record into train_record.json."""
    path = OUT / "train_record.json"
    data = json.loads(path.read_text()) if path.exists() else {}
    data[key] = value
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def save_weights(module: torch.nn.Module, name: str) -> None:
    state = {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}
    torch.save(state, OUT / name)


def snapshot_steps(args: argparse.Namespace) -> set[int]:
    """The steps of the uncond run whose EMA weights are kept as the `digits-edm@STEP` family (--snapshots)."""
    return {int(s) for s in (args.snapshots or "").split(",") if s.strip()}


def save_snapshot(ema: torch.nn.Module, step: int, log) -> None:
    """The uncond run's EMA weights at `step` as digits-edm-step{step}.pt (the training-level family
    `digits-edm@STEP`; benchmarks/training_level_study.py). Same network spec as digits-edm.json."""
    save_weights(ema, f"digits-edm-step{step}.pt")
    print(f"saved digits-edm-step{step}.pt at step {step}", file=log, flush=True)


def train_diffusion(args: argparse.Namespace, *, conditional: bool) -> None:
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    data = load_split()
    x_all = torch.from_numpy(data["values"][data["train"]] / 8.0 - 1.0)  # [-1, 1]
    y_all = torch.from_numpy(data["labels"][data["train"]])
    sigma_data = round(float(x_all.std()), 3)  # pooled pixel std of the training split
    kwargs = dict(NETWORK_KWARGS, label_dim=10 if conditional else 0)
    if conditional:
        kwargs["label_dropout"] = args.label_dropout
    net = build_network("SongUNet", kwargs)
    model = EDMPrecond(net, img_resolution=8, img_channels=1, label_dim=kwargs["label_dim"], sigma_data=sigma_data)
    ema = copy.deepcopy(net).eval().requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8)
    n_params = sum(p.numel() for p in net.parameters())
    name = "digits-edm-cond" if conditional else "digits-edm"
    early_step = args.early_step or max(1, args.steps // 10)
    log = open(OUT / f"train_{name}.log", "w")
    print(f"{name}: {n_params} parameters, sigma_data {sigma_data}, {args.steps} steps", file=log, flush=True)
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(args.seed + 1)
    n = len(x_all)
    running = 0.0
    losses = []
    model.train()
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, n, (args.batch,), generator=gen)
        x = x_all[idx]
        labels = torch.nn.functional.one_hot(y_all[idx], 10).float() if conditional else None
        # EDM Sec. 5: ln sigma ~ N(P_mean, P_std^2); loss weight lambda = (sigma^2 + sd^2) / (sigma sd)^2
        sigma = (torch.randn(args.batch, 1, 1, 1, generator=gen) * P_STD + P_MEAN).exp()
        weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2
        noisy = x + torch.randn(x.shape, generator=gen) * sigma
        denoised = model(noisy, sigma, labels)
        loss = (weight * (denoised - x) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for g in opt.param_groups:  # linear warm-up, then constant (EDM Table 7: lr ramp-up)
            g["lr"] = args.lr * min(1.0, step / args.warmup)
        opt.step()
        # EMA with half-life min(H, ratio * images seen), in images (EDM Appendix F.3)
        seen = step * args.batch
        halflife = min(args.ema_halflife, args.ema_ratio * seen)
        beta = 0.5 ** (args.batch / max(halflife, 1e-8))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), net.parameters(), strict=True):
                pe.lerp_(p, 1 - beta)
        running += float(loss.detach())
        if step % 100 == 0:
            losses.append(running / 100)
            print(
                f"step {step} loss {running / 100:.4f} lr {opt.param_groups[0]['lr']:.2e} "
                f"ema_halflife {halflife:.0f} time {time.perf_counter() - t0:.0f}s",
                file=log,
                flush=True,
            )
            running = 0.0
        if not conditional and step == early_step:
            save_weights(ema, "digits-edm-early.pt")
            print(f"saved digits-edm-early.pt at step {step}", file=log, flush=True)
        if conditional and step == args.cond_early_step:
            save_cond_early(ema, step, time.perf_counter() - t0, log)
        if step % 1000 == 0 or step == args.steps:
            save_weights(ema, f"{name}.pt")
        if not conditional and step in snapshot_steps(args):
            save_snapshot(ema, step, log)
    wall = time.perf_counter() - t0
    print(f"done in {wall:.0f}s", file=log, flush=True)
    spec = {
        "network": "SongUNet",
        "network_kwargs": kwargs,
        "precond": "EDMPrecond",
        "precond_kwargs": {"sigma_data": sigma_data},
    }
    (OUT / f"{name}.json").write_text(json.dumps(spec, indent=2) + "\n")
    if not conditional:
        (OUT / "digits-edm-early.json").write_text(json.dumps(spec, indent=2) + "\n")
    if conditional and args.cond_early_step <= args.steps:
        record_cond_early(args, spec, n_params, sigma_data)
    record(
        name,
        {
            "steps": args.steps,
            "early_step": None if conditional else early_step,
            "batch": args.batch,
            "lr": args.lr,
            "warmup_steps": args.warmup,
            "ema_halflife_images": args.ema_halflife,
            "ema_rampup_ratio": args.ema_ratio,
            "label_dropout": args.label_dropout if conditional else None,
            "seed": args.seed,
            "parameters": n_params,
            "sigma_data": sigma_data,
            "loss_per_100_steps_last": losses[-5:],
            "wall_seconds": round(wall, 1),
            "machine": machine(),
        },
    )


_COND_EARLY: dict[str, float | int] = {}


def save_cond_early(ema: torch.nn.Module, step: int, wall: float, log) -> None:  # type: ignore[no-untyped-def]
    """digits-edm-cond-early.pt: the conditional run's EMA weights at --cond-early-step (the autoguidance
    model: the same network, less trained; Karras et al. 2024, "Guiding a Diffusion Model with a Bad Version
    of Itself", Sec. 3)."""
    save_weights(ema, "digits-edm-cond-early.pt")
    _COND_EARLY.update(step=step, wall_seconds=round(wall, 1))
    print(f"saved digits-edm-cond-early.pt at step {step}", file=log, flush=True)


def record_cond_early(args: argparse.Namespace, spec: dict, n_params: int, sigma_data: float) -> None:
    """The sidecar JSON and the train_record.json entry of digits-edm-cond-early."""
    (OUT / "digits-edm-cond-early.json").write_text(json.dumps(spec, indent=2) + "\n")
    record(
        "digits-edm-cond-early",
        {
            "snapshot_of": "digits-edm-cond",
            "steps": _COND_EARLY["step"],
            "batch": args.batch,
            "lr": args.lr,
            "warmup_steps": args.warmup,
            "ema_halflife_images": args.ema_halflife,
            "ema_rampup_ratio": args.ema_ratio,
            "label_dropout": args.label_dropout,
            "seed": args.seed,
            "parameters": n_params,
            "sigma_data": sigma_data,
            "wall_seconds": _COND_EARLY["wall_seconds"],
            "machine": machine(),
        },
    )


def main() -> None:
    global OUT
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["uncond", "cond", "classifier", "noisy-classifier"], required=True)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--early-step", type=int, default=400, help="step of the digits-edm-early snapshot")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema-halflife", type=float, default=50_000, help="EMA half-life in images")
    p.add_argument("--ema-ratio", type=float, default=0.05, help="EMA half-life ramp-up ratio")
    p.add_argument(
        "--cond-early-step", type=int, default=400, help="step of the digits-edm-cond-early snapshot (cond part)"
    )
    p.add_argument("--label-dropout", type=float, default=0.15)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=OUT, help="output folder (default: the package's builtin folder)")
    p.add_argument("--classifier-epochs", type=int, default=60)
    p.add_argument(
        "--snapshots",
        default="",
        help="uncond part: comma-separated steps whose EMA weights are also saved as digits-edm-step{STEP}.pt "
        "(the digits-edm@STEP family, e.g. 250,500,1000,2000)",
    )
    p.add_argument("--noisy-classifier-steps", type=int, default=3000, help="steps of the noisy-classifier part")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    OUT = args.out
    OUT.mkdir(parents=True, exist_ok=True)
    if args.part == "classifier":
        train_classifier(args)
    elif args.part == "noisy-classifier":
        train_noisy_classifier(args)
    else:
        train_diffusion(args, conditional=args.part == "cond")


def train_classifier(args: argparse.Namespace) -> None:
    """The digits CNN (diffbench.metrics.classifier.DigitsNet) on the training split, then the data file and
    the feature statistics of the training split, the held-out split and all images."""
    from diffbench.metrics.classifier import DigitsNet, images_to_input
    from diffbench.metrics.moments import moments_of
    from diffbench.metrics.stats import Statistics, save_statistics

    torch.manual_seed(args.seed)
    data = load_split()
    np.savez_compressed(
        OUT / "digits-data.npz",
        images=data["images"],
        labels=data["labels"],
        train=data["train"],
        heldout=data["heldout"],
    )
    x_all = images_to_input(torch.from_numpy(data["images"]))
    y_all = torch.from_numpy(data["labels"])
    tr, ho = torch.from_numpy(data["train"]), torch.from_numpy(data["heldout"])
    net = DigitsNet()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(args.seed + 1)
    t0 = time.perf_counter()
    log = open(OUT / "train_digits-classifier.log", "w")
    epochs, batch = args.classifier_epochs, 64
    for epoch in range(epochs):
        net.train()
        order = tr[torch.randperm(len(tr), generator=gen)]
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            x = x_all[idx]
            # augmentation: a random shift of up to one pixel (background -1 fills the border)
            dx, dy = (int(v) for v in torch.randint(-1, 2, (2,), generator=gen))
            x = torch.nn.functional.pad(x, (1, 1, 1, 1), value=-1.0)[:, :, 1 + dy : 9 + dy, 1 + dx : 9 + dx]
            loss = torch.nn.functional.cross_entropy(net(x)[1], y_all[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        net.eval()
        with torch.no_grad():
            acc = float((net(x_all[ho])[1].argmax(1) == y_all[ho]).float().mean())
        print(f"epoch {epoch + 1} loss {float(loss):.4f} held-out accuracy {acc:.4f}", file=log, flush=True)
    wall = time.perf_counter() - t0
    save_weights(net, "digits-classifier.pt")
    net.eval()
    with torch.no_grad():
        feats, logits = net(x_all)
    accuracy = {
        name: float((logits[idx].argmax(1) == y_all[idx]).float().mean())
        for name, idx in (("train", tr), ("heldout", ho))
    }
    from diffbench.models.fetch import sha256_file

    ex_id = f"digits-cnn@{sha256_file(OUT / 'digits-classifier.pt')[:12]}"
    dead = int((feats.max(dim=0).values <= 0).sum())
    for name, idx in (("train", tr), ("heldout", ho), ("all", torch.arange(len(x_all)))):
        mu, sigma = moments_of(feats[idx].double()).numpy()
        stats = Statistics(mu=mu, sigma=sigma, n=len(idx), extractor_id=ex_id, resolution=(8, 8))
        save_statistics(stats, OUT / f"digits-stats-{name}.npz")
    record(
        "digits-classifier",
        {
            "epochs": epochs,
            "batch": batch,
            "seed": args.seed,
            "parameters": sum(p.numel() for p in net.parameters()),
            "accuracy": accuracy,
            "extractor_id": ex_id,
            "dead_feature_units": dead,
            "wall_seconds": round(wall, 1),
            "machine": machine(),
        },
    )
    print(f"accuracy {accuracy}, {dead} dead feature units, {wall:.0f}s", file=log, flush=True)


def train_noisy_classifier(args: argparse.Namespace) -> None:
    """digits-noisy-classifier.pt: the noise-conditional classifier p(c | x, sigma) of classifier guidance
    (Dhariwal & Nichol 2021, Sec. 4: a classifier trained on noisy images), diffbench.models.noisy_classifier.

    Each step: images of the training split (random shift of up to one pixel), sigma drawn as in EDM training
    (ln sigma ~ N(P_mean, P_std^2), Karras et al. 2022 Sec. 5), x = y + sigma n; cross-entropy of the class.
    Adam, constant learning rate after a linear warm-up; the final weights (no EMA)."""
    from diffbench.models.noisy_classifier import NoisyDigitsNet

    torch.manual_seed(args.seed)
    data = load_split()
    x_all = torch.from_numpy(data["values"] / 8.0 - 1.0)  # [-1, 1], all images; training rows below
    y_all = torch.from_numpy(data["labels"])
    tr, ho = torch.from_numpy(data["train"]), torch.from_numpy(data["heldout"])
    sigma_data = round(float(x_all[tr].std()), 3)
    kwargs = {"num_classes": 10, "channels": 32, "emb": 64, "sigma_data": sigma_data}
    net = NoisyDigitsNet(**kwargs)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(args.seed + 2)
    log = open(OUT / "train_digits-noisy-classifier.log", "w")
    t0 = time.perf_counter()
    warmup, batch = 200, 128
    for step in range(1, args.noisy_classifier_steps + 1):
        net.train()
        idx = tr[torch.randint(0, len(tr), (batch,), generator=gen)]
        x = x_all[idx]
        dx, dy = (int(v) for v in torch.randint(-1, 2, (2,), generator=gen))
        x = torch.nn.functional.pad(x, (1, 1, 1, 1), value=-1.0)[:, :, 1 + dy : 9 + dy, 1 + dx : 9 + dx]
        sigma = (torch.randn(batch, generator=gen) * P_STD + P_MEAN).exp()  # EDM Sec. 5
        noisy = x + torch.randn(x.shape, generator=gen) * sigma[:, None, None, None]
        loss = torch.nn.functional.cross_entropy(net(noisy, sigma), y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for g in opt.param_groups:
            g["lr"] = 1e-3 * min(1.0, step / warmup)
        opt.step()
        if step % 500 == 0:
            print(f"step {step} loss {float(loss):.4f} time {time.perf_counter() - t0:.0f}s", file=log, flush=True)
    wall = time.perf_counter() - t0
    save_weights(net, "digits-noisy-classifier.pt")
    net.eval()
    accuracy = {}
    eval_gen = torch.Generator().manual_seed(args.seed + 3)
    with torch.no_grad():
        for s in (0.05, 0.2, 0.5, 1.0, 2.0, 5.0):
            x = x_all[ho] + torch.randn(x_all[ho].shape, generator=eval_gen) * s
            pred = net(x, torch.full((len(ho),), s)).argmax(1)
            accuracy[f"heldout_sigma_{s:g}"] = float((pred == y_all[ho]).float().mean())
    print(f"held-out accuracy by sigma {accuracy}, {wall:.0f}s", file=log, flush=True)
    (OUT / "digits-noisy-classifier.json").write_text(json.dumps({"network_kwargs": kwargs}, indent=2) + "\n")
    record(
        "digits-noisy-classifier",
        {
            "steps": args.noisy_classifier_steps,
            "batch": batch,
            "lr": 1e-3,
            "warmup_steps": warmup,
            "sigma_distribution": f"ln sigma ~ N({P_MEAN}, {P_STD}^2) (EDM Sec. 5)",
            "seed": args.seed,
            "parameters": sum(p.numel() for p in net.parameters()),
            "network_kwargs": kwargs,
            "accuracy": accuracy,
            "wall_seconds": round(wall, 1),
            "machine": machine(),
        },
    )


if __name__ == "__main__":
    main()
