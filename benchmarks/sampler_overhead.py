"""Time diffbench's sampling loop against the bare network calls it makes (same batch, same NFE).

    python benchmarks/sampler_overhead.py [--batch 64] [--nfe 35] [--device cpu|cuda] [--channels 32]

The network is diffbench's clean-room DDPM++ (SongUNet) with random weights in EDM preconditioning at 32x32;
`--channels 128 --mult 2,2,2 --blocks 4` is EDM's CIFAR-10 configuration (too slow for a CPU).
Overhead = (time of diffbench.sample) / (time of the same NFE forward calls) - 1, with the calls made as the
loop makes them (float64 state in, the network casts to its own float32), and also against float32 inputs.
"""

from __future__ import annotations

import argparse
import time

import torch

import diffbench
from diffbench.models.nets import build_network
from diffbench.models.precond import EDMPrecond


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--nfe", type=int, default=35)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--channels", type=int, default=32)
    ap.add_argument("--mult", default="1,2,2")
    ap.add_argument("--blocks", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    torch.manual_seed(0)
    net = build_network(
        "SongUNet",
        {
            "img_resolution": 32,
            "in_channels": 3,
            "out_channels": 3,
            "model_channels": args.channels,
            "channel_mult": [int(m) for m in args.mult.split(",")],
            "num_blocks": args.blocks,
            "attn_resolutions": [16],
            "dropout": 0.0,
        },
    )
    model = EDMPrecond(net, img_resolution=32, img_channels=3).to(device).eval().requires_grad_(False)
    params = sum(p.numel() for p in model.parameters())
    seeds = list(range(args.batch))
    x32 = torch.randn(args.batch, 3, 32, 32, device=device)
    x64 = x32.double()
    sigma = torch.full((args.batch,), 1.0, device=device)

    diffbench.sample(model, seeds=seeds, nfe=args.nfe, batch=args.batch, device=device)  # warm-up
    bare, bare32, loop = [], [], []

    def calls(x: torch.Tensor) -> float:
        sync(device)
        t = time.perf_counter()
        with torch.no_grad():
            for _ in range(args.nfe):
                model(x, sigma).to(x.dtype)
        sync(device)
        return time.perf_counter() - t

    for _ in range(args.repeats):
        bare.append(calls(x64))
        bare32.append(calls(x32))
        t = time.perf_counter()
        out = diffbench.sample(model, seeds=seeds, nfe=args.nfe, batch=args.batch, device=device)
        sync(device)
        loop.append(time.perf_counter() - t)
        assert out.nfe == args.nfe
    b, b32, lp = min(bare), min(bare32), min(loop)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(
        f"device: {name}; torch {torch.__version__}; SongUNet {params / 1e6:.2f} M params; batch {args.batch}; "
        f"NFE {args.nfe} (heun, 18 steps, float64 state)"
    )
    print(f"bare network calls: {b:.3f} s (float32 inputs: {b32:.3f} s)   diffbench.sample: {lp:.3f} s")
    print(
        f"loop overhead: {100 * (lp / b - 1):+.2f}% ({1000 * (lp - b) / args.nfe:.2f} ms per evaluation); "
        f"against float32 inputs {100 * (lp / b32 - 1):+.2f}%; {args.batch / lp:.1f} img/s"
    )


if __name__ == "__main__":
    main()
