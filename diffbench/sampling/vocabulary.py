"""The named choices of the sampler options (DESIGN.md, "One vocabulary"), importable without torch.

The modules that act on each choice import it from here, and SamplerSpec's declarations (spec.py) take
their choices from here, so `--help` lists them without loading the sampler.
"""

from __future__ import annotations

ENDPOINTS = ("edm", "sigma_min")  # grid to sigma_min then one step to 0, or stop at sigma_min (REFERENCE §4)
NFE_POLICIES = ("exact", "nearest", "floor")  # an unreachable budget: refuse, or take a reachable neighbour
NOISE_MODES = ("independent", "brownian")  # step noise: per-seed draws, or a per-seed Brownian path
SIGMA_T = ("linear", "vp", "ve")  # sigma(t) of EDM's ODE (Karras et al. 2022, Table 1)
SCALING = ("none", "vp")  # s(t) of EDM's ODE (Karras et al. 2022, Table 1)
PREDICTIONS = ("data", "noise")  # the forms of UniPC: data (x0) or noise (eps) prediction
DTYPES = ("float64", "float32")  # the sampler state's dtype
NET_DTYPES = ("fp32", "fp16", "bf16")  # the network's precision (--net-dtype; sampling/precision.py)
