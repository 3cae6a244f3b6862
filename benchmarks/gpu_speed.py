"""GPU speed of the one-GPU fast paths (issue 24): images/s at NFE 35 on EDM's CIFAR-10 DDPM++ network shape.

What it measures, on one device, with random weights (speed does not depend on them):

- sampling throughput through diffbench's own Sampler (float64 state, Heun, 18 steps = NFE 35) for the network
  in fp32 eager with TF32 off, bf16 (autocast) eager, and bf16 + torch.compile, at batch 256 and 1024;
- the network's FLOPs per image (torch.utils.flop_counter on one forward pass) and, from them, the share of
  the device's measured bf16 matmul rate (an 8192^3 matmul loop run in this script) that each mode reaches:
  FLOPs/image x NFE x images/s / matmul rate;
- Inception-v3 feature throughput (images/s, uint8 32x32 in, 2048-d out; random weights unless given);
- optionally (--fid-cell), one full 50,000-image FID cell's wall time on the real edm-cifar10-32x32-uncond-vp
  checkpoint through `diffbench sweep` (needs the downloads).

    python benchmarks/gpu_speed.py --json benchmarks/gpu_speed.json            # on a GPU machine
    python benchmarks/gpu_speed.py --smoke                                     # tiny, any CPU: proves it runs

Targets (issue 24): bf16 + compile at least 4x fp32 eager, and at least 60% of the measured bf16 matmul rate
at batch 1024. Never a timed assertion in the tests: the numbers go to benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from diffbench.models.nets import build_network
from diffbench.models.precond import EDMPrecond
from diffbench.sampling.run import Sampler
from diffbench.sampling.spec import SamplerSpec

# EDM's CIFAR-10 DDPM++ network (Karras et al. 2022, Table 7 / the released cifar10 config): 55.7 M parameters
CIFAR_DDPMPP = dict(
    img_resolution=32,
    in_channels=3,
    out_channels=3,
    label_dim=0,
    augment_dim=9,
    model_channels=128,
    channel_mult=[2, 2, 2],
    num_blocks=4,
    attn_resolutions=[16],
    dropout=0.13,
)
SMOKE = dict(CIFAR_DDPMPP, img_resolution=8, model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[4])
MODES = {
    "fp32": dict(net_dtype="fp32"),
    "bf16": dict(net_dtype="bf16"),
    "bf16+compile": dict(net_dtype="bf16", compile=True),
}


def network(kwargs: dict[str, Any], device: torch.device) -> EDMPrecond:
    torch.manual_seed(0)
    net = build_network("SongUNet", kwargs)
    return EDMPrecond(net, img_resolution=kwargs["img_resolution"], img_channels=3).to(device).eval()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def flops_per_image(model: EDMPrecond, device: torch.device, res: int) -> float:
    """FLOPs of one network evaluation of one image (multiply-add = 2 FLOPs; torch's flop counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(2, 3, res, res, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x, torch.full((2,), 1.0, device=device))
    return counter.get_total_flops() / 2


def matmul_rate(device: torch.device, n: int, repeats: int) -> float:
    """Measured bf16 matmul FLOP/s: n x n x n products in a loop (2 n^3 FLOPs each)."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - t)


def sampling_rate(model: EDMPrecond, device: torch.device, batch: int, steps: int, repeats: int, **opts: Any) -> dict:
    """Images/s of Heun with `steps` steps (NFE 2 steps - 1) through diffbench's Sampler; the first batch warms
    up (and compiles), the next `repeats` are timed."""
    sampler = Sampler(model, SamplerSpec(steps=steps, **opts), device=device)
    seeds = list(range(batch))
    t0 = time.perf_counter()
    sampler.run(seeds)
    sync(device)
    warm = time.perf_counter() - t0
    t = time.perf_counter()
    for r in range(repeats):
        sampler.run([s + (r + 1) * batch for s in seeds])
    sync(device)
    dt = (time.perf_counter() - t) / repeats
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
    else:
        peak = None
    return {
        "images_per_s": batch / dt,
        "s_per_batch": dt,
        "warmup_s": warm,
        "nfe": sampler.plan.nfe,
        "peak_gib": peak,
        "network": sampler.network_record(),
    }


def inception_rate(device: torch.device, batch: int, repeats: int, weights: str | None, res: int) -> dict:
    """Inception-v3 pool3 features per second on uint8 images (the FID extractor; random weights unless given)."""
    from diffbench.metrics.extractors import load_extractor

    if weights is None:
        weights = str(_random_inception_weights())
    ex = load_extractor("inception-v3-compat", device=device, weights_path=weights)
    x = torch.randint(0, 256, (batch, 3, res, res), dtype=torch.uint8, device=device)
    ex.features(x)
    sync(device)
    t = time.perf_counter()
    for _ in range(repeats):
        ex.features(x)
    sync(device)
    return {"images_per_s": batch * repeats / (time.perf_counter() - t), "batch": batch, "weights": weights}


def _random_inception_weights() -> Path:
    """A state dict of torch-fidelity's Inception with random weights (speed does not depend on them)."""
    import tempfile
    from unittest import mock

    import torch_fidelity.feature_extractor_inceptionv3 as fe

    path = Path(tempfile.gettempdir()) / "diffbench-gpu-speed-inception-random.pth"
    if not path.exists():
        cls = fe.FeatureExtractorInceptionV3
        with (
            mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: {}),
            mock.patch.object(cls, "load_state_dict", lambda self, sd, *a, **k: None),
        ):
            net = cls("inception-v3-compat", ["2048"])
        torch.save(net.state_dict(), path)
    return path


def fid_cell(device: str) -> dict:
    """One full 50k-image FID cell (edm-cifar10-32x32-uncond-vp, Heun NFE 35, bf16 + compile, --batch auto)."""
    cmd = [
        sys.executable, "-c", "from diffbench.cli.app import main; main()", "sweep", "edm-cifar10-32x32-uncond-vp",
        "--seeds", "0-49999", "--blocks", "1", "--metric", "fid", "--steps", "18", "--net-dtype", "bf16",
        "--compile", "--batch", "auto", "--device", device, "--store", "gpu_speed_fid.db",
    ]  # fmt: skip
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    return {
        "wall_s": time.perf_counter() - t,
        "rc": p.returncode,
        "command": " ".join(cmd[3:]),
        "tail": p.stdout[-400:],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batches", default="256,1024", help="comma list of batch sizes")
    ap.add_argument("--repeats", type=int, default=3, help="timed batches per mode and size")
    ap.add_argument("--modes", default=",".join(MODES), help="comma list of: " + ", ".join(MODES))
    ap.add_argument("--inception-weights", default=None, help="real FID Inception weights (else random)")
    ap.add_argument("--fid-cell", action="store_true", help="also time one full 50k FID cell (downloads)")
    ap.add_argument("--smoke", action="store_true", help="tiny network, batch 4, NFE 3, any CPU: proves it runs")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    device = torch.device(args.device)
    kwargs, steps, batches = CIFAR_DDPMPP, 18, [int(b) for b in args.batches.split(",")]
    mm_n, mm_rep, inc_batch, inc_rep = 8192, 50, 500, 5
    if args.smoke:
        torch.set_num_threads(min(2, torch.get_num_threads()))
        kwargs, steps, batches, args.repeats = SMOKE, 2, [4], 1
        mm_n, mm_rep, inc_batch, inc_rep = 256, 3, 2, 1
    res = kwargs["img_resolution"]
    model = network(kwargs, device)
    params = sum(p.numel() for p in model.parameters())
    out: dict[str, Any] = {
        "machine": {
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "python": platform.python_version(),
            "smoke": args.smoke,
        },
        "network": {"params_M": params / 1e6, "flops_per_image_G": flops_per_image(model, device, res) / 1e9},
    }
    gflops = out["network"]["flops_per_image_G"]
    print(f"{out['machine']}\nnetwork: {params / 1e6:.1f} M parameters, {gflops:.2f} GFLOPs/image")
    rate = matmul_rate(device, mm_n, mm_rep)
    out["bf16_matmul_tflops"] = rate / 1e12
    print(f"bf16 matmul ({mm_n}^3): {rate / 1e12:.1f} TFLOP/s")
    out["sampling"] = []
    for mode in args.modes.split(","):
        for batch in batches:
            r = sampling_rate(model, device, batch, steps, args.repeats, **MODES[mode])
            share = out["network"]["flops_per_image_G"] * 1e9 * r["nfe"] * r["images_per_s"] / rate
            r.update(mode=mode, batch=batch, share_of_bf16_matmul=share)
            out["sampling"].append(r)
            print(
                f"{mode:>13} batch {batch:>5}: {r['images_per_s']:10.1f} images/s at NFE {r['nfe']} "
                f"({share:6.1%} of the bf16 matmul rate; warm-up {r['warmup_s']:.1f} s; {r['network']['compile']})"
            )
    base = {r["batch"]: r["images_per_s"] for r in out["sampling"] if r["mode"] == "fp32"}
    for r in out["sampling"]:
        if r["batch"] in base:
            r["speedup_vs_fp32"] = r["images_per_s"] / base[r["batch"]]
    out["inception"] = inception_rate(device, inc_batch, inc_rep, args.inception_weights, res)
    print(f"Inception features: {out['inception']['images_per_s']:.1f} images/s (batch {inc_batch})")
    if args.fid_cell:
        out["fid_cell"] = fid_cell(str(device))
        print(f"one 50k FID cell: {out['fid_cell']['wall_s']:.0f} s (exit {out['fid_cell']['rc']})")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
