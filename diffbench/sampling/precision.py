"""The network's precision and compilation: --net-dtype, --compile, channels_last and --tf32 (issue 24, "One GPU").

The sampler's state keeps its own dtype (--dtype, float64 by default); only the network call changes. A
`FastNetwork` wraps one Denoiser: it runs D(x; sigma, labels) under torch.autocast in the chosen dtype (the
heavy operations, convolutions and matmuls, run in fp16/bf16; the preconditioning arithmetic stays float32
and D comes back in float32, which the Evaluator casts to the state's dtype), optionally in channels_last
memory format (CUDA only, where it pays: tensor cores want NHWC), optionally compiled with torch.compile.

Why `--net-dtype` and not `--dtype`: `dtype` already names the sampler state's dtype (float64 | float32) in
SamplerSpec and in every stored cell identity; reusing it for the network would break those ids and mix two
different things. `net_dtype` is a new option, None by default (the network's own dtype, as before), so cells
that do not set it keep their ids, and a bf16 cell is a different cell from an fp32 one.

Autocast rather than casting the weights: it works for every Denoiser (EDM pickles rebuilt here, diffusers
UNets, analytic models without parameters), keeps reductions and normalisations in float32 as torch's
autocast policy does, and needs no second copy of the weights. With a net dtype given, networks that have
their own half-precision switch (EDM's `use_fp16`, honoured on CUDA) are called with `force_fp32=True`, so
fp32 means fp32 and bf16 means bf16, not EDM's fp16.
"""

from __future__ import annotations

import inspect
import sys
import weakref
from typing import Any

import torch

from diffbench.errors import ConfigError
from diffbench.sampling.vocabulary import NET_DTYPES

__all__ = ["NET_DTYPES", "FastNetwork", "check_net_dtype", "check_tf32", "set_tf32", "wrap_networks"]
TORCH_NET_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# compiled callables, one per (network, dtype, memory format): every cell of a sweep (a new Sampler each)
# reuses the same one, so torch.compile's per-shape graphs are built once per input shape
_COMPILED: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], Any]] = weakref.WeakKeyDictionary()


def check_net_dtype(net_dtype: str, device: torch.device) -> None:
    """Refuse a network dtype the device cannot run, in one line (a convolution and a matmul are tried)."""
    dtype = TORCH_NET_DTYPES[net_dtype]
    if dtype == torch.float32:
        return
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"--net-dtype bf16: {torch.cuda.get_device_name(device)} does not support bfloat16")
    try:
        with torch.no_grad(), torch.autocast(device.type, dtype=dtype):
            x = torch.ones(1, 2, 4, 4, device=device)
            y = torch.nn.functional.conv2d(x, torch.ones(2, 2, 3, 3, device=device), padding=1)
            z = y.flatten(1) @ torch.ones(32, 2, device=device)
        if z.dtype != dtype:
            raise RuntimeError(f"autocast gave {z.dtype}")
    except (RuntimeError, TypeError, ValueError) as exc:  # torch raises these for an unsupported dtype
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"--net-dtype {net_dtype} is not supported on {device}: {reason}") from None


def check_tf32(device: torch.device, allow: bool) -> None:
    """--tf32 off CUDA is refused in one line (NotApplicableError): TF32 exists only on CUDA."""
    if allow and device.type != "cuda":
        from diffbench.errors import NotApplicableError

        raise NotApplicableError(f"--tf32 applies on CUDA only (TF32 does not exist on {device.type})")


def set_tf32(device: torch.device, allow: bool) -> None:
    """TF32 for CUDA matmuls and cuDNN convolutions: off unless asked (reference numbers are full fp32).

    torch's own default leaves cuDNN TF32 on; a run here sets both switches every time, so a cell's numbers do
    not depend on what ran before it. No effect off CUDA (TF32 exists only there)."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = bool(allow)
        torch.backends.cudnn.allow_tf32 = bool(allow)


def _takes_force_fp32(net: Any) -> bool:
    fn = getattr(net, "forward", None) if isinstance(net, torch.nn.Module) else net
    try:
        params = inspect.signature(fn).parameters  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return "force_fp32" in params


class FastNetwork:
    """A Denoiser called in another precision, memory format and/or compiled; attributes pass through.

    Call: (x [B, C, H, W] any float dtype, sigma [B] float64, one-hot labels [B, label_dim] or None) -> D in the
    network's output dtype (float32 for the Precond wrappers). `record` says what ran (for the provenance).
    """

    def __init__(
        self,
        net: Any,
        *,
        device: torch.device,
        net_dtype: str | None,
        compile: bool = False,
        channels_last: bool | None = None,
        warn: Any = None,
    ):
        self.net, self.device = net, device
        self.net_dtype = net_dtype
        self.dtype = TORCH_NET_DTYPES[net_dtype] if net_dtype is not None else None
        self.autocast = self.dtype is not None and self.dtype != torch.float32
        self.force_fp32 = net_dtype is not None and _takes_force_fp32(net)
        if channels_last is None:  # where it pays: convolutions in half precision on CUDA tensor cores
            channels_last = device.type == "cuda" and self.autocast and isinstance(net, torch.nn.Module)
        self.channels_last = bool(channels_last)
        if self.channels_last and isinstance(net, torch.nn.Module):
            net.to(memory_format=torch.channels_last)
        self.compile_status = "off"
        self._warn = warn if warn is not None else _stderr_line
        self._compiled: Any = None
        self._key: tuple[Any, ...] = ()
        if compile:
            self._compiled = self._make_compiled()

    def __getattr__(self, name: str) -> Any:  # sigma_min, round_sigma, label_dim, ... of the wrapped network
        if name == "net":
            raise AttributeError(name)
        return getattr(self.net, name)

    def _eager(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
        return _call(
            self.net,
            x,
            sigma,
            class_labels,
            self.dtype if self.autocast else None,
            self.device.type,
            self.channels_last,
            self.force_fp32,
        )

    def _make_compiled(self) -> Any:
        key = (self.net_dtype, self.channels_last, str(self.device), self.force_fp32)
        try:
            per_net = _COMPILED.setdefault(self.net, {})
        except TypeError:  # not weak-referenceable: compile without sharing
            per_net = {}
        self._key = key
        if isinstance(per_net.get(key), str):  # it failed for an earlier cell: eager, without a second warning
            self.compile_status = per_net[key]
            return None
        if key not in per_net:
            net, dtype, kind = self.net, self.dtype if self.autocast else None, self.device.type
            last, force = self.channels_last, self.force_fp32

            def run(x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None) -> torch.Tensor:
                return _call(net, x, sigma, class_labels, dtype, kind, last, force)

            try:
                per_net[key] = torch.compile(run, dynamic=False)
            except Exception as exc:  # torch cannot compile here at all (platform, Python version)
                self._fallback(exc)
                return None
        self.compile_status = "compiled"
        return per_net[key]

    def _fallback(self, exc: BaseException) -> None:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        self.compile_status = f"fell back to eager: {type(exc).__name__}: {reason[:200]}"
        self._warn(f"warning: --compile: torch cannot compile this network ({reason[:200]}); running it eagerly")

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, class_labels: torch.Tensor | None = None) -> Any:
        if self._compiled is not None:
            try:
                return self._compiled(x, sigma, class_labels)
            except torch.cuda.OutOfMemoryError:
                raise  # not a compiler failure: --batch auto halves on it
            except Exception as exc:  # the compiler failed (it compiles lazily, at the first call per shape)
                self._compiled = None
                self._fallback(exc)
                try:  # later cells of the sweep run eagerly at once (one warning per run, not per cell)
                    _COMPILED.setdefault(self.net, {})[self._key] = self.compile_status
                except TypeError:
                    pass
        return self._eager(x, sigma, class_labels)

    @property
    def record(self) -> dict[str, Any]:
        """What ran, for the provenance: the net dtype, autocast, force_fp32, channels_last, compilation."""
        return {
            "net_dtype": self.net_dtype or "native",
            "autocast": str(self.dtype).replace("torch.", "") if self.autocast else None,
            "force_fp32": self.force_fp32,
            "channels_last": self.channels_last,
            "compile": self.compile_status,
        }


def _call(
    net: Any,
    x: torch.Tensor,
    sigma: torch.Tensor,
    class_labels: torch.Tensor | None,
    dtype: torch.dtype | None,
    device_type: str,
    channels_last: bool,
    force_fp32: bool,
) -> torch.Tensor:
    """One network call under autocast (dtype None: none), in channels_last where asked."""
    if channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    kwargs = {"force_fp32": True} if force_fp32 else {}
    if dtype is not None:
        with torch.autocast(device_type, dtype=dtype):
            return net(x, sigma, class_labels, **kwargs)
    return net(x, sigma, class_labels, **kwargs)


def _stderr_line(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def wrap_networks(
    nets: dict[str, Any], *, device: torch.device, net_dtype: str | None, compile: bool, warn: Any = None
) -> dict[str, Any]:
    """The evaluator's networks, each wrapped once (a network that appears under two names, the null-label
    alias of guidance, is wrapped once and shared)."""
    if device.type == "cuda":  # a channels_last network of an earlier bf16 cell goes back to NCHW first
        for net in nets.values():
            if isinstance(net, torch.nn.Module):
                net.to(memory_format=torch.contiguous_format)
    if net_dtype is None and not compile:
        return nets
    if net_dtype is not None:
        check_net_dtype(net_dtype, device)
    done: dict[int, FastNetwork] = {}
    out: dict[str, Any] = {}
    for name, net in nets.items():
        if id(net) not in done:
            done[id(net)] = FastNetwork(net, device=device, net_dtype=net_dtype, compile=compile, warn=warn)
        out[name] = done[id(net)]
    return out
