"""The ADM U-Net (Dhariwal & Nichol 2021, 'Diffusion Models Beat GANs', Sec. 3 and App. A), with the
constructor arguments and parameter names recorded in EDM's pickles (Karras et al. 2022, App. F.3)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from diffbench.models.nets.layers import (
    Conv2d,
    GroupNorm,
    Linear,
    PositionalEmbedding,
    UNetBlock,
    add_middle_or_up,
)


class DhariwalUNet(nn.Module):
    """ADM: adaptive group norm blocks, 64-channel attention heads, class embedding added after the MLP."""

    ARG_ORDER = (
        "img_resolution",
        "in_channels",
        "out_channels",
        "label_dim",
        "augment_dim",
        "model_channels",
        "channel_mult",
        "channel_mult_emb",
        "num_blocks",
        "attn_resolutions",
        "dropout",
        "label_dropout",
    )

    def __init__(
        self,
        *,
        img_resolution: int,
        in_channels: int,
        out_channels: int,
        label_dim: int = 0,
        augment_dim: int = 0,
        model_channels: int = 192,
        channel_mult: Sequence[int] = (1, 2, 3, 4),
        channel_mult_emb: int = 4,
        num_blocks: int = 3,
        attn_resolutions: Sequence[int] = (32, 16, 8),
        dropout: float = 0.10,
        label_dropout: float = 0.0,
    ):
        super().__init__()
        self.init_kwargs = dict(
            img_resolution=img_resolution,
            in_channels=in_channels,
            out_channels=out_channels,
            label_dim=label_dim,
            augment_dim=augment_dim,
            model_channels=model_channels,
            channel_mult=list(channel_mult),
            channel_mult_emb=channel_mult_emb,
            num_blocks=num_blocks,
            attn_resolutions=list(attn_resolutions),
            dropout=dropout,
            label_dropout=label_dropout,
        )
        self.label_dropout = float(label_dropout)
        self.img_resolution, self.in_channels, self.out_channels = img_resolution, in_channels, out_channels
        emb_ch = model_channels * channel_mult_emb
        block = dict(emb_channels=emb_ch, channels_per_head=64, dropout=dropout)

        # timestep (+ augmentation) embedding through a 2-layer MLP; the class embedding is added after it
        self.map_noise = PositionalEmbedding(model_channels)
        self.map_augment = Linear(augment_dim, model_channels, bias=False) if augment_dim else None
        self.map_layer0 = Linear(model_channels, emb_ch)
        self.map_layer1 = Linear(emb_ch, emb_ch)
        self.map_label = Linear(label_dim, emb_ch, bias=False) if label_dim else None

        # encoder: input convolution, then per resolution a downsampling block and num_blocks blocks
        self.enc = nn.ModuleDict()
        c = in_channels
        skip_channels = []
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv2d(c, model_channels * mult, 3)
                c = model_channels * mult
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(c, c, down=True, **block)
            skip_channels.append(c)
            for i in range(num_blocks):
                c_in, c = c, model_channels * mult
                self.enc[f"{res}x{res}_block{i}"] = UNetBlock(c_in, c, attention=res in attn_resolutions, **block)
                skip_channels.append(c)

        # decoder: two middle blocks at the lowest resolution (the first with attention), else upsampling;
        # then num_blocks + 1 blocks, each taking one encoder skip
        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            add_middle_or_up(self.dec, res=res, channels=c, lowest=level == len(channel_mult) - 1, block=block)
            for i in range(num_blocks + 1):
                c_in, c = c + skip_channels.pop(), model_channels * mult
                self.dec[f"{res}x{res}_block{i}"] = UNetBlock(c_in, c, attention=res in attn_resolutions, **block)
        self.out_norm = GroupNorm(c)
        self.out_conv = Conv2d(c, out_channels, 3)

    def embed(
        self,
        noise_labels: torch.Tensor,
        class_labels: torch.Tensor | None,
        augment_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        """The conditioning vector of ADM: MLP(noise embedding + augmentation) + class embedding, SiLU."""
        e = self.map_noise(noise_labels)
        if self.map_augment is not None and augment_labels is not None:
            e = e + self.map_augment(augment_labels)
        e = self.map_layer1(F.silu(self.map_layer0(e)))
        if self.map_label is not None:
            y = class_labels
            if self.training and self.label_dropout:
                keep = torch.rand([y.shape[0], 1], device=y.device) >= self.label_dropout
                y = y * keep.to(y.dtype)
            e = e + self.map_label(y)
        return F.silu(e)

    def forward(
        self,
        x: torch.Tensor,
        noise_labels: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        augment_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        emb = self.embed(noise_labels, class_labels, augment_labels)
        skips: list[torch.Tensor] = []
        for layer in self.enc.values():
            x = layer(x, emb) if isinstance(layer, UNetBlock) else layer(x)
            skips.append(x)
        for name, layer in self.dec.items():
            if "_block" in name:
                x = torch.cat([x, skips.pop()], dim=1)
            x = layer(x, emb)
        return self.out_conv(F.silu(self.out_norm(x)))
