"""Building blocks of the DDPM++/NCSN++ and ADM U-Nets, with the parameter names of EDM's pickles.

Every layer keeps float32 master weights and casts them to the input's dtype, so a network can run
in half precision on CUDA without converting its parameters (EDM, Karras et al. 2022, Sec. 5).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _uniform(shape: Sequence[int], fan_in: int, gain: float) -> torch.Tensor:
    """Kaiming-uniform values, U(-a, a) with a = gain * sqrt(3 / fan_in) (He et al. 2015, Eq. 16)."""
    bound = gain * math.sqrt(3.0 / max(fan_in, 1))
    return (torch.rand(*shape) * 2 - 1) * bound


def _cast(t: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    return None if t is None else t.to(like.dtype)


class Linear(nn.Module):
    """Fully connected layer y = x W^T + b."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True, gain: float = 1.0):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.weight = nn.Parameter(_uniform([self.out_features, self.in_features], self.in_features, gain))
        self.bias = nn.Parameter(torch.zeros(self.out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x @ _cast(self.weight, x).t()
        return y if self.bias is None else y + _cast(self.bias, y)


def resample_kernel(taps: Sequence[float]) -> torch.Tensor:
    """Separable 2-D FIR filter f f^T / (sum f)^2 of shape [1, 1, k, k] (Zhang 2019, anti-aliasing)."""
    f = torch.as_tensor(list(taps), dtype=torch.float32)
    return (torch.outer(f, f) / f.sum().square())[None, None]


class Conv2d(nn.Module):
    """2-D convolution (kernel 0 = none) with optional FIR up/downsampling by 2 before it, or fused around it.

    Upsampling is a depthwise transposed convolution with 4x the filter at stride 2; downsampling a depthwise
    convolution with the filter at stride 2 (the resampling of DDPM++/NCSN++, Song et al. 2021, App. H).
    With `fused`, the downsampling filter runs after the convolution and the upsampling filter before a
    convolution whose padding absorbs the filter's (NCSN++'s progressive residual input path).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        *,
        bias: bool = True,
        up: bool = False,
        down: bool = False,
        resample_filter: Sequence[float] = (1, 1),
        fused: bool = False,
        gain: float = 1.0,
    ):
        super().__init__()
        if up and down:
            raise ValueError("a convolution cannot both upsample and downsample")
        self.in_channels, self.out_channels, self.kernel = int(in_channels), int(out_channels), int(kernel)
        self.up, self.down, self.fused = bool(up), bool(down), bool(fused)
        fan_in = self.in_channels * self.kernel * self.kernel
        shape = [self.out_channels, self.in_channels, self.kernel, self.kernel]
        self.weight = nn.Parameter(_uniform(shape, fan_in, gain)) if self.kernel else None
        self.bias = nn.Parameter(torch.zeros(self.out_channels)) if self.kernel and bias else None
        if self.up or self.down:
            self.register_buffer("resample_filter", resample_kernel(resample_filter))
        else:
            self.resample_filter = None

    def _filter_up(self, x: torch.Tensor, f: torch.Tensor, pad: int) -> torch.Tensor:
        c = x.shape[1]
        return F.conv_transpose2d(x, (f * 4).expand(c, 1, -1, -1), groups=c, stride=2, padding=pad)

    def _filter_down(self, x: torch.Tensor, f: torch.Tensor, pad: int) -> torch.Tensor:
        c = x.shape[1]
        return F.conv2d(x, f.expand(c, 1, -1, -1), groups=c, stride=2, padding=pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = _cast(self.weight, x)
        f = _cast(self.resample_filter, x)
        w_pad = w.shape[-1] // 2 if w is not None else 0
        f_pad = (f.shape[-1] - 1) // 2 if f is not None else 0
        if self.fused and w is not None and self.up:
            x = self._filter_up(x, f, max(f_pad - w_pad, 0))
            x = F.conv2d(x, w, padding=max(w_pad - f_pad, 0))
        elif self.fused and w is not None and self.down:
            x = F.conv2d(x, w, padding=w_pad + f_pad)
            x = self._filter_down(x, f, 0)
        else:
            if self.up:
                x = self._filter_up(x, f, f_pad)
            if self.down:
                x = self._filter_down(x, f, f_pad)
            if w is not None:
                x = F.conv2d(x, w, padding=w_pad)
        if self.bias is not None:
            x = x + _cast(self.bias, x).reshape(1, -1, 1, 1)
        return x


class GroupNorm(nn.Module):
    """Group normalisation (Wu & He 2018) with min(32, C/4) groups, as DDPM++ and ADM use."""

    def __init__(self, num_channels: int, *, num_groups: int = 32, min_channels_per_group: int = 4, eps: float = 1e-5):
        super().__init__()
        self.num_groups = max(1, min(num_groups, num_channels // min_channels_per_group))
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.group_norm(x, self.num_groups, _cast(self.weight, x), _cast(self.bias, x), self.eps)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q^T k / sqrt(c)) applied to v, weights in float32 (Vaswani et al. 2017, Eq. 1), [N, c, L]."""
    scores = torch.einsum("ncq,nck->nqk", q.float(), k.float()) / math.sqrt(k.shape[1])
    weights = scores.softmax(dim=2).to(q.dtype)
    return torch.einsum("nqk,nck->ncq", weights, v)


class UNetBlock(nn.Module):
    """Residual block with embedding conditioning, optional resampling and self-attention.

    The union of the DDPM++/NCSN++ block (Song et al. 2021: additive embedding, skip scale 1/sqrt 2) and the
    ADM block (Dhariwal & Nichol 2021: adaptive group norm, scale and shift from the embedding).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        emb_channels: int,
        *,
        up: bool = False,
        down: bool = False,
        attention: bool = False,
        num_heads: int | None = None,
        channels_per_head: int = 64,
        dropout: float = 0.0,
        skip_scale: float = 1.0,
        eps: float = 1e-5,
        resample_filter: Sequence[float] = (1, 1),
        resample_proj: bool = False,
        adaptive_scale: bool = True,
    ):
        super().__init__()
        self.in_channels, self.out_channels, self.emb_channels = in_channels, out_channels, emb_channels
        if not attention:
            self.num_heads = 0
        else:
            self.num_heads = num_heads if num_heads is not None else out_channels // channels_per_head
        self.dropout = float(dropout)
        self.skip_scale = float(skip_scale)
        self.adaptive_scale = bool(adaptive_scale)
        rs = dict(up=up, down=down, resample_filter=resample_filter)

        self.norm0 = GroupNorm(in_channels, eps=eps)
        self.conv0 = Conv2d(in_channels, out_channels, 3, **rs)
        self.affine = Linear(emb_channels, out_channels * (2 if adaptive_scale else 1))
        self.norm1 = GroupNorm(out_channels, eps=eps)
        self.conv1 = Conv2d(out_channels, out_channels, 3)
        self.skip = None
        if out_channels != in_channels or up or down:
            # a 1x1 projection where channels change (or always, with resample_proj); else resampling only
            kernel = 1 if (resample_proj or out_channels != in_channels) else 0
            self.skip = Conv2d(in_channels, out_channels, kernel, **rs)
        if self.num_heads:
            self.norm2 = GroupNorm(out_channels, eps=eps)
            self.qkv = Conv2d(out_channels, out_channels * 3, 1)
            self.proj = Conv2d(out_channels, out_channels, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv0(F.silu(self.norm0(x)))
        p = self.affine(emb)[:, :, None, None].to(h.dtype)
        if self.adaptive_scale:
            # AdaGN: norm(h) * (1 + scale) + shift (Dhariwal & Nichol 2021, Sec. 3.2)
            scale, shift = p.chunk(2, dim=1)
            h = F.silu(torch.addcmul(shift, self.norm1(h), scale + 1))
        else:
            h = F.silu(self.norm1(h + p))
        h = self.conv1(F.dropout(h, p=self.dropout, training=self.training))
        h = (h + (x if self.skip is None else self.skip(x))) * self.skip_scale
        if self.num_heads:
            n, c, hh, ww = h.shape
            # qkv channels are laid out as (head, channel, q/k/v)
            qkv = self.qkv(self.norm2(h)).reshape(n * self.num_heads, c // self.num_heads, 3, hh * ww)
            q, k, v = qkv.unbind(2)
            a = attention(q, k, v).reshape(n, c, hh, ww)
            h = (self.proj(a) + h) * self.skip_scale
        return h


class PositionalEmbedding(nn.Module):
    """Sinusoids [cos(x w_i), sin(x w_i)], w_i = max_positions^(-i/(n/2 - endpoint)) (Vaswani et al. 2017)."""

    def __init__(self, num_channels: int, *, max_positions: int = 10000, endpoint: bool = False):
        super().__init__()
        self.num_channels, self.max_positions, self.endpoint = (
            int(num_channels),
            int(max_positions),
            bool(endpoint),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        exponent = torch.arange(half, dtype=torch.float32, device=x.device) / (half - int(self.endpoint))
        freqs = (1.0 / self.max_positions) ** exponent
        angles = torch.outer(x, freqs.to(x.dtype))
        return torch.cat([angles.cos(), angles.sin()], dim=1)


class FourierEmbedding(nn.Module):
    """Random Fourier features [cos(2 pi x w), sin(2 pi x w)], w ~ N(0, scale^2) (Tancik et al. 2020)."""

    def __init__(self, num_channels: int, *, scale: float = 16.0):
        super().__init__()
        self.register_buffer("freqs", torch.randn(num_channels // 2) * scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angles = torch.outer(x, (2 * math.pi * self.freqs).to(x.dtype))
        return torch.cat([angles.cos(), angles.sin()], dim=1)


def add_middle_or_up(dec: nn.ModuleDict, *, res: int, channels: int, lowest: bool, block: dict) -> None:
    """Decoder entry per resolution: middle blocks (in0 with attention, in1) at the lowest, else `up`."""
    c = channels
    if lowest:
        dec[f"{res}x{res}_in0"] = UNetBlock(c, c, attention=True, **block)
        dec[f"{res}x{res}_in1"] = UNetBlock(c, c, **block)
    else:
        dec[f"{res}x{res}_up"] = UNetBlock(c, c, up=True, **block)
