"""The DDPM++ / NCSN++ U-Net family (Song et al. 2021, 'Score-Based Generative Modeling through SDEs'),
with the constructor arguments and parameter names recorded in EDM's pickles (Karras et al. 2022)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from diffbench.errors import ConfigError
from diffbench.models.nets.layers import (
    Conv2d,
    FourierEmbedding,
    GroupNorm,
    Linear,
    PositionalEmbedding,
    UNetBlock,
    add_middle_or_up,
)

EMBEDDINGS = ("positional", "fourier")
ENCODERS = ("standard", "skip", "residual")
DECODERS = ("standard", "skip")


def _check_choice(option: str, value: str, valid: Sequence[str]) -> None:
    if value not in valid:
        raise ConfigError(f"SongUNet {option} '{value}' is not one of {', '.join(valid)}")


class SongUNet(nn.Module):
    """DDPM++ (positional embedding, standard encoder) and NCSN++ (Fourier, residual encoder) U-Nets."""

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
        "embedding_type",
        "channel_mult_noise",
        "encoder_type",
        "decoder_type",
        "resample_filter",
    )

    def __init__(
        self,
        *,
        img_resolution: int,
        in_channels: int,
        out_channels: int,
        label_dim: int = 0,
        augment_dim: int = 0,
        model_channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        channel_mult_emb: int = 4,
        num_blocks: int = 4,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.10,
        label_dropout: float = 0.0,
        embedding_type: str = "positional",
        channel_mult_noise: int = 1,
        encoder_type: str = "standard",
        decoder_type: str = "standard",
        resample_filter: Sequence[float] = (1, 1),
    ):
        super().__init__()
        _check_choice("embedding_type", embedding_type, EMBEDDINGS)
        _check_choice("encoder_type", encoder_type, ENCODERS)
        _check_choice("decoder_type", decoder_type, DECODERS)
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
            embedding_type=embedding_type,
            channel_mult_noise=channel_mult_noise,
            encoder_type=encoder_type,
            decoder_type=decoder_type,
            resample_filter=list(resample_filter),
        )
        self.label_dropout = float(label_dropout)
        self.img_resolution, self.in_channels, self.out_channels = img_resolution, in_channels, out_channels
        emb_ch = model_channels * channel_mult_emb
        noise_ch = model_channels * channel_mult_noise
        # DDPM++/NCSN++ blocks: additive embedding, 1x1 resampling skips, outputs scaled by 1/sqrt 2
        block = dict(
            emb_channels=emb_ch,
            num_heads=1,
            dropout=dropout,
            skip_scale=math.sqrt(0.5),
            eps=1e-6,
            resample_filter=resample_filter,
            resample_proj=True,
            adaptive_scale=False,
        )

        # noise, class and augmentation embedding
        if embedding_type == "positional":
            self.map_noise = PositionalEmbedding(noise_ch, endpoint=True)
        else:
            self.map_noise = FourierEmbedding(noise_ch)
        self.map_label = Linear(label_dim, noise_ch) if label_dim else None
        self.map_augment = Linear(augment_dim, noise_ch, bias=False) if augment_dim else None
        self.map_layer0 = Linear(noise_ch, emb_ch)
        self.map_layer1 = Linear(emb_ch, emb_ch)

        # encoder: a 3x3 input convolution, then per resolution a downsampling block and num_blocks blocks;
        # the 'skip' encoder adds the downsampled image, the 'residual' one a progressive residual path
        self.enc = nn.ModuleDict()
        c = aux_c = in_channels
        skip_channels = []
        for level, mult in enumerate(channel_mult):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv2d(c, model_channels, 3)
                c = model_channels
                skip_channels.append(c)
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(c, c, down=True, **block)
                skip_channels.append(c)
                if encoder_type == "skip":
                    self.enc[f"{res}x{res}_aux_down"] = Conv2d(
                        aux_c, aux_c, 0, down=True, resample_filter=resample_filter
                    )
                    self.enc[f"{res}x{res}_aux_skip"] = Conv2d(aux_c, c, 1)
                elif encoder_type == "residual":
                    self.enc[f"{res}x{res}_aux_residual"] = Conv2d(
                        aux_c, c, 3, down=True, fused=True, resample_filter=resample_filter
                    )
                    aux_c = c
            for i in range(num_blocks):
                c_in, c = c, model_channels * mult
                self.enc[f"{res}x{res}_block{i}"] = UNetBlock(c_in, c, attention=res in attn_resolutions, **block)
                skip_channels.append(c)

        # decoder: two middle blocks (the first with attention) at the lowest resolution, else an upsampling
        # block; num_blocks + 1 blocks that take an encoder skip each; an output head at the top (and, for
        # the 'skip' decoder, at every resolution, summed through upsampling)
        self.dec = nn.ModuleDict()
        for level, mult in reversed(list(enumerate(channel_mult))):
            res = img_resolution >> level
            add_middle_or_up(self.dec, res=res, channels=c, lowest=level == len(channel_mult) - 1, block=block)
            for i in range(num_blocks + 1):
                c_in, c = c + skip_channels.pop(), model_channels * mult
                attn = i == num_blocks and res in attn_resolutions
                self.dec[f"{res}x{res}_block{i}"] = UNetBlock(c_in, c, attention=attn, **block)
            if decoder_type == "skip" or level == 0:
                if decoder_type == "skip" and level < len(channel_mult) - 1:
                    self.dec[f"{res}x{res}_aux_up"] = Conv2d(
                        out_channels, out_channels, 0, up=True, resample_filter=resample_filter
                    )
                self.dec[f"{res}x{res}_aux_norm"] = GroupNorm(c, eps=1e-6)
                self.dec[f"{res}x{res}_aux_conv"] = Conv2d(c, out_channels, 3)

    def embed(
        self,
        noise_labels: torch.Tensor,
        class_labels: torch.Tensor | None,
        augment_labels: torch.Tensor | None,
    ) -> torch.Tensor:
        """The conditioning vector: noise embedding (sin first) + label + augmentation, then a 2-layer MLP."""
        e = self.map_noise(noise_labels)
        e = torch.cat(e.chunk(2, dim=1)[::-1], dim=1)  # [sin, cos] order of the original DDPM++/NCSN++
        if self.map_label is not None:
            y = class_labels
            if self.training and self.label_dropout:
                keep = torch.rand([y.shape[0], 1], device=y.device) >= self.label_dropout
                y = y * keep.to(y.dtype)
            e = e + self.map_label(y * math.sqrt(self.map_label.in_features))
        if self.map_augment is not None and augment_labels is not None:
            e = e + self.map_augment(augment_labels)
        e = F.silu(self.map_layer0(e))
        return F.silu(self.map_layer1(e))

    def forward(
        self,
        x: torch.Tensor,
        noise_labels: torch.Tensor,
        class_labels: torch.Tensor | None = None,
        augment_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        emb = self.embed(noise_labels, class_labels, augment_labels)
        skips: list[torch.Tensor] = []
        aux = x
        for name, layer in self.enc.items():
            if "aux_down" in name:
                aux = layer(aux)
            elif "aux_skip" in name:
                x = skips[-1] = x + layer(aux)
            elif "aux_residual" in name:
                x = skips[-1] = aux = (x + layer(aux)) / math.sqrt(2)
            else:
                x = layer(x, emb) if isinstance(layer, UNetBlock) else layer(x)
                skips.append(x)
        out = None
        head = None
        for name, layer in self.dec.items():
            if "aux_up" in name:
                out = layer(out)
            elif "aux_norm" in name:
                head = layer(x)
            elif "aux_conv" in name:
                head = layer(F.silu(head))
                out = head if out is None else head + out
            else:
                if "_block" in name:
                    x = torch.cat([x, skips.pop()], dim=1)
                x = layer(x, emb)
        return out
