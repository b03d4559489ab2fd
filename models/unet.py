"""Noise predictor: a U-Net with ResNet blocks, a sinusoidal timestep embedding and, at chosen
levels, self- and cross-attention to the text tokens (Rombach et al. 2022, Fig. 3; the block
layout of Dhariwal & Nichol 2021's `UNetModel`).

    unet(x_t, t, context, context_mask=None) -> (B, out_channels, h, w)

Argument order as diffusers' `UNet2DConditionModel(sample, timestep, encoder_hidden_states)`.
x_t: (B, C, h, w) with h, w divisible by 2**(len(channel_mult) - 1); t: (B,) int64 or float;
context: (B, L, D) text hidden states, D = `context_dim`; context_mask: (B, L) bool, True =
real token.  The output convolution starts at zero, so an untrained U-Net predicts 0.

Presets (`UNET_PRESETS`, the U-Net-size sweep axis; parameter counts in `PARAM_COUNTS`, at
the default context_dim = 128, clip-tiny's text width; `dataclasses.replace(cfg,
context_dim=...)` for another tower changes only the cross-attention key/value projections):

| preset  | base | mult    | res blocks | attention levels |
| ------- | ---- | ------- | ---------- | ---------------- |
| unet-xs | 32   | 1, 2, 2 | 1          | 1, 2             |
| unet-s  | 48   | 1, 2, 2 | 1          | 1, 2             |
| unet-m  | 64   | 1, 2, 2 | 2          | 1, 2             |
| unet-l  | 96   | 1, 2, 2 | 2          | 1, 2             |

Levels are indexed from the input resolution: on 8x8 latents level 0 is 8x8, level 1 is
4x4 and level 2 is 2x2; on 16x16 latents 16, 8 and 4.  The middle block always has one
attention block.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.attention import SpatialTransformer


@dataclass(frozen=True)
class UNetConfig:
    in_channels: int = 4  # latent channels (3 for pixel space through the identity autoencoder)
    out_channels: int = 4  # channels of the prediction (ε, v or x_0): same as the input
    base_channels: int = 48  # width of level 0; level i has base_channels * channel_mult[i]
    channel_mult: tuple[int, ...] = (1, 2, 2)  # one entry per resolution level
    num_res_blocks: int = 1  # ResNet blocks per level on the way down (one more on the way up)
    attn_levels: tuple[int, ...] = (1, 2)  # levels whose blocks get self- and cross-attention
    context_dim: int = 128  # width D of the text hidden states (clip-tiny's text tower)
    head_dim: int = 32  # channels per attention head; heads = level width // head_dim
    transformer_depth: int = 1  # TransformerBlocks per attention site
    norm_groups: int = 16  # GroupNorm groups; must divide every level's width

    def __post_init__(self):
        for level in self.attn_levels:
            if not 0 <= level < len(self.channel_mult):
                raise ValueError(f"attention level {level} outside {len(self.channel_mult)} levels")
        for width in self.widths:
            if width % self.norm_groups:
                raise ValueError(f"width {width} not divisible by norm_groups={self.norm_groups}")
        for width in {self.widths[level] for level in self.attn_levels} | {self.widths[-1]}:
            if width % self.head_dim:
                raise ValueError(f"attention width {width} not divisible by head_dim")

    @property
    def widths(self) -> tuple[int, ...]:
        return tuple(self.base_channels * m for m in self.channel_mult)

    @property
    def downsample_factor(self) -> int:
        """h and w must be divisible by this."""
        return 2 ** (len(self.channel_mult) - 1)


UNET_PRESETS: dict[str, UNetConfig] = {
    "unet-xs": UNetConfig(base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1),
    "unet-s": UNetConfig(base_channels=48, channel_mult=(1, 2, 2), num_res_blocks=1),
    "unet-m": UNetConfig(base_channels=64, channel_mult=(1, 2, 2), num_res_blocks=2),
    "unet-l": UNetConfig(base_channels=96, channel_mult=(1, 2, 2), num_res_blocks=2),
}

PARAM_COUNTS: dict[str, int] = {
    "unet-xs": 1_628_516,
    "unet-s": 3_566_356,
    "unet-m": 9_343_492,
    "unet-l": 20_718_340,
}

# ----------------------------------------------------------------------------
# Building blocks


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal embedding (Vaswani et al. 2017, §3.5; DDPM Appendix B), [cos | sin] order
    as in ADM.  t: (B,) int or float -> (B, dim) float32."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )  # (half,)
    args = t.float()[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)  # (B, 2*half)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class ResBlock(nn.Module):
    """GroupNorm-SiLU-Conv, plus the projected timestep embedding, GroupNorm-SiLU-Conv (the
    last conv zero-initialised), added to the input (1x1 conv if the width changes)."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, norm_groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(norm_groups, in_ch, eps=1e-6)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, out_ch)
        self.norm2 = nn.GroupNorm(norm_groups, out_ch, eps=1e-6)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """x: (B, in_ch, h, w); emb: (B, emb_dim) -> (B, out_ch, h, w)."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb_proj(F.silu(emb))[:, :, None, None]  # (B, out_ch, 1, 1)
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Downsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, h, w) -> (B, C, h/2, w/2)."""
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, h, w) -> (B, C, 2h, 2w), nearest then conv."""
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNetStage(nn.Module):
    """One ResBlock, optionally followed by a SpatialTransformer, optionally by a resample."""

    def __init__(self, res: ResBlock, attn: SpatialTransformer | None, resample: nn.Module | None):
        super().__init__()
        self.res, self.attn, self.resample = res, attn, resample

    def forward(self, x: Tensor, emb: Tensor, context: Tensor, mask: Tensor | None) -> Tensor:
        x = self.res(x, emb)
        if self.attn is not None:
            x = self.attn(x, context, mask)
        if self.resample is not None:
            x = self.resample(x)
        return x


# ----------------------------------------------------------------------------
# The U-Net


class UNet(nn.Module):
    def __init__(self, cfg: UNetConfig):
        super().__init__()
        self.cfg = cfg
        base, groups, emb_dim = cfg.base_channels, cfg.norm_groups, 4 * cfg.base_channels
        self.time_embed = nn.Sequential(
            nn.Linear(base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        self.conv_in = nn.Conv2d(cfg.in_channels, base, 3, padding=1)

        def attention(ch: int, level: int) -> SpatialTransformer | None:
            if level not in cfg.attn_levels:
                return None
            return SpatialTransformer(
                ch, cfg.context_dim, cfg.head_dim, cfg.transformer_depth, groups
            )

        # Down path: every block's output is kept as a skip connection, as is conv_in's.
        self.down = nn.ModuleList()
        skip_widths, ch = [base], base
        last = len(cfg.widths) - 1
        for level, width in enumerate(cfg.widths):
            for _ in range(cfg.num_res_blocks):
                res = ResBlock(ch, width, emb_dim, groups)
                self.down.append(UNetStage(res, attention(width, level), None))
                ch = width
                skip_widths.append(ch)
            if level != last:
                self.down.append(Downsample(ch))
                skip_widths.append(ch)

        self.mid_res1 = ResBlock(ch, ch, emb_dim, groups)
        self.mid_attn = SpatialTransformer(
            ch, cfg.context_dim, cfg.head_dim, cfg.transformer_depth, groups
        )
        self.mid_res2 = ResBlock(ch, ch, emb_dim, groups)

        # Up path: num_res_blocks + 1 blocks per level, each eating one skip connection.
        self.up = nn.ModuleList()
        for level in reversed(range(len(cfg.widths))):
            width = cfg.widths[level]
            for i in range(cfg.num_res_blocks + 1):
                res = ResBlock(ch + skip_widths.pop(), width, emb_dim, groups)
                ch = width
                upsample = Upsample(ch) if level != 0 and i == cfg.num_res_blocks else None
                self.up.append(UNetStage(res, attention(width, level), upsample))
        assert not skip_widths

        self.norm_out = nn.GroupNorm(groups, ch, eps=1e-6)
        self.conv_out = nn.Conv2d(ch, cfg.out_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(
        self, x_t: Tensor, t: Tensor, context: Tensor, context_mask: Tensor | None = None
    ) -> Tensor:
        """x_t: (B, C_in, h, w); t: (B,) int64 or float; context: (B, L, D);
        context_mask: (B, L) bool, True = real token -> (B, C_out, h, w)."""
        f = self.cfg.downsample_factor
        if x_t.shape[-2] % f or x_t.shape[-1] % f:
            raise ValueError(f"latent side {tuple(x_t.shape[-2:])} not divisible by {f}")
        if t.ndim == 0:
            t = t.expand(len(x_t))
        emb = timestep_embedding(t, self.cfg.base_channels).to(x_t.dtype)  # (B, base)
        emb = self.time_embed(emb)  # (B, 4 * base)
        context = context.to(x_t.dtype)

        h = self.conv_in(x_t)  # (B, base, h, w)
        skips = [h]
        for block in self.down:
            if isinstance(block, UNetStage):
                h = block(h, emb, context, context_mask)
            else:
                h = block(h)  # Downsample: (B, C, h/2, w/2)
            skips.append(h)

        h = self.mid_res1(h, emb)
        h = self.mid_attn(h, context, context_mask)
        h = self.mid_res2(h, emb)

        for block in self.up:
            h = torch.cat([h, skips.pop()], dim=1)  # (B, C + C_skip, h, w)
            h = block(h, emb, context, context_mask)
        return self.conv_out(F.silu(self.norm_out(h)))
