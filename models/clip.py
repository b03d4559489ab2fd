"""Contrastive image-text encoders built from scratch with open_clip (Radford et al. 2021),
and the text tower as a frozen conditioning encoder for the U-Net.

Shapes: B batch, L = context_length tokens, D = text width, E = embed_dim.

The tokenizer is open_clip's own `SimpleTokenizer` (the CLIP BPE vocabulary, shipped in the
package): [SOT] tokens [EOT] then zero padding, truncated to `context_length` with the EOT
kept.  EOT has the largest id in the vocabulary, so a row's EOT position is `argmax`, the
same rule open_clip uses to pool the text features; the padding mask is every position up to
and including it.

Presets (`CLIP_PRESETS`; parameter counts in `PARAM_COUNTS`).  The text tower is the sweep
axis, so the vision tower is the same in all three: ViT, 2 layers, width 128, 4 heads, patch
8 (16 patches of a 32 px image); image_size 32 by default, change it with
`dataclasses.replace`, which changes only the vision position table.  Most of each text tower's parameters are its 49,408-row token table.

| preset     | E   | text D | layers | heads |
| ---------- | --- | ------ | ------ | ----- |
| clip-tiny  | 128 | 128    | 2      | 2     |
| clip-small | 192 | 192    | 4      | 3     |
| clip-base  | 256 | 256    | 6      | 4     |
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    import open_clip
    from open_clip.tokenizer import SimpleTokenizer

# open_clip is imported where a model, tokenizer or loss is built, not with this module: it
# brings torchvision and timm (about 2 s), which the presets and the commands that only read
# them (`marble --help`, `up`, `down`, `query`) do not need.


@dataclass(frozen=True)
class ClipConfig:
    embed_dim: int  # E: width of the shared image-text embedding
    text_width: int  # D: width of the text tower (the U-Net's context_dim)
    text_layers: int  # text transformer depth
    text_heads: int  # text attention heads
    image_size: int = 32  # square input side, pixels
    patch_size: int = 8  # ViT patch side, pixels
    vision_width: int = 128  # ViT width
    vision_layers: int = 2  # ViT depth
    vision_heads: int = 4  # ViT attention heads
    context_length: int = 32  # L: tokens per caption, SOT and EOT included
    vocab_size: int = 49408  # open_clip's BPE vocabulary, SOT/EOT included

    def __post_init__(self):
        if self.vision_width % self.vision_heads or self.text_width % self.text_heads:
            raise ValueError("widths must be divisible by their head counts")
        if self.image_size % self.patch_size:
            raise ValueError("image_size must be a multiple of patch_size")


CLIP_PRESETS: dict[str, ClipConfig] = {
    "clip-tiny": ClipConfig(embed_dim=128, text_width=128, text_layers=2, text_heads=2),
    "clip-small": ClipConfig(embed_dim=192, text_width=192, text_layers=4, text_heads=3),
    "clip-base": ClipConfig(embed_dim=256, text_width=256, text_layers=6, text_heads=4),
}

PARAM_COUNTS: dict[str, int] = {
    "clip-tiny": 7_181_825,
    "clip-small": 11_757_697,
    "clip-base": 17_917_953,
}

# On the CPU, `encode_text` runs a batch's captions in at most this many groups of like
# length; more groups cut padding further but each runs the whole tower on fewer rows.
TEXT_GROUPS = 4

# ----------------------------------------------------------------------------
# Building and tokenizing


def build_clip(cfg: ClipConfig) -> open_clip.CLIP:
    """A randomly initialised open_clip CLIP (no download) whose text encoding skips the
    padding after each caption's EOT (`_trimming_clip_class`); deterministic under
    torch.manual_seed."""
    import open_clip

    vision_cfg = open_clip.CLIPVisionCfg(
        layers=cfg.vision_layers,
        width=cfg.vision_width,
        head_width=cfg.vision_width // cfg.vision_heads,
        patch_size=cfg.patch_size,
        image_size=cfg.image_size,
    )
    text_cfg = open_clip.CLIPTextCfg(
        context_length=cfg.context_length,
        vocab_size=cfg.vocab_size,
        width=cfg.text_width,
        heads=cfg.text_heads,
        layers=cfg.text_layers,
    )
    return _trimming_clip_class()(cfg.embed_dim, vision_cfg=vision_cfg, text_cfg=text_cfg)


@functools.cache
def _trimming_clip_class() -> type[open_clip.CLIP]:
    """open_clip's CLIP whose `encode_text` runs each caption only up to its own EOT.

    The text tower is causal and pools the EOT state, so positions after a row's EOT change
    nothing it returns; open_clip's own `encode_text` still runs all `context_length` of
    them. On the CPU the batch's rows are grouped by length (`length_groups`) and each group
    runs to its longest caption: the built-in captions hold 11 to 24 tokens (15 on average)
    of 32, so this runs 15 to 16 positions a caption where open_clip runs 32. On a GPU the
    batch runs as one group, to its longest caption: small kernels cost their launch there,
    not their padding. Same modules, same state dict, the same features up to float
    rounding."""
    import open_clip
    from open_clip.transformer import text_global_pool

    class TrimmingCLIP(open_clip.CLIP):
        def encode_text(self, text: Tensor, normalize: bool = False) -> Tensor:
            if self.attn_mask is None or self.text_pool_type != "argmax" or not len(text):
                return super().encode_text(text, normalize)  # not causal, not EOT-pooled, or empty
            on_cpu = text.device.type == "cpu"
            groups = length_groups(text.argmax(dim=-1) + 1, TEXT_GROUPS if on_cpu else 1)
            # embedded once: each lookup's backward fills a dense gradient of the whole table
            embedded = _text_embedded(self, text[:, : groups[-1][1]])  # (B, L', D)
            pooled = []  # per group: (b, D), its rows run to the group's longest caption
            for rows, length in groups:
                hidden = _text_transformed(self, embedded[rows, :length])  # (b, length, D)
                pooled.append(text_global_pool(hidden, text[rows, :length], "argmax"))
            order = torch.cat([rows for rows, _ in groups])  # the rows in group order
            x = torch.cat(pooled)[torch.argsort(order)]  # (B, D), back in the batch's order
            proj = self.text_projection
            x = proj(x) if isinstance(proj, nn.Module) else x @ proj  # (B, E)
            return nn.functional.normalize(x, dim=-1) if normalize else x

    return TrimmingCLIP


@functools.lru_cache(maxsize=4)
def _simple_tokenizer(context_length: int) -> SimpleTokenizer:
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=context_length)  # reads the packaged BPE table once


def make_tokenizer(cfg: ClipConfig) -> Callable[[list[str]], Tensor]:
    """list[str] -> (B, context_length) int64, open_clip's CLIP tokenizer."""
    return _simple_tokenizer(cfg.context_length)


def length_groups(lengths: Tensor, max_groups: int) -> list[tuple[Tensor, int]]:
    """Rows of a batch grouped by caption length (tokens up to and including EOT).

    lengths (B,) -> at most `max_groups` (row indices (b,), the group's longest length):
    each distinct length starts as its own group, then, while there are too many, the two
    neighbouring groups whose merge adds the fewest padded positions merge (the shorter
    group's rows then run to the longer one's length). Groups are in increasing length and
    together hold every row once. One group: every row, to the longest length."""
    if max_groups < 1:
        raise ValueError(f"max_groups must be at least 1, got {max_groups}")
    values, counts = torch.unique(lengths, return_counts=True)  # sorted ascending
    # [shortest, longest length, rows] of each group
    groups = [[v, v, c] for v, c in zip(values.tolist(), counts.tolist(), strict=True)]
    while len(groups) > max_groups:
        # merging group i into i + 1 pads group i's rows from its length to the next one's
        cost = [(groups[i + 1][1] - groups[i][1]) * groups[i][2] for i in range(len(groups) - 1)]
        i = cost.index(min(cost))
        groups[i : i + 2] = [[groups[i][0], groups[i + 1][1], groups[i][2] + groups[i + 1][2]]]
    return [
        (torch.nonzero((lengths >= lo) & (lengths <= hi)).squeeze(1), hi) for lo, hi, _ in groups
    ]


def token_mask(tokens: Tensor) -> Tensor:
    """(B, L) token ids -> (B, L) bool, True up to and including each row's EOT."""
    eot_index = tokens.argmax(dim=-1)  # (B,): EOT is the largest id
    positions = torch.arange(tokens.shape[1], device=tokens.device)  # (L,)
    return positions[None, :] <= eot_index[:, None]


# ----------------------------------------------------------------------------
# Text tower as a conditioning encoder


def _text_hidden_states(tower: nn.Module, tokens: Tensor) -> Tensor:
    """Token embedding + positions, causal transformer, ln_final: the steps of open_clip's
    `CLIP.encode_text` before pooling.  tokens (B, L), L <= context_length -> (B, L, D)."""
    return _text_transformed(tower, _text_embedded(tower, tokens))


def _text_embedded(tower: nn.Module, tokens: Tensor) -> Tensor:
    """tokens (B, L) -> token embedding + positions (B, L, D), in the tower's dtype."""
    cast_dtype = tower.transformer.get_cast_dtype()
    x = tower.token_embedding(tokens).to(cast_dtype)  # (B, L, D)
    return x + tower.positional_embedding[: tokens.shape[1]].to(cast_dtype)


def _text_transformed(tower: nn.Module, x: Tensor) -> Tensor:
    """(B, L, D) embedded tokens -> causal transformer, ln_final -> (B, L, D)."""
    length = x.shape[1]
    attn_mask = tower.attn_mask
    if attn_mask is not None:
        attn_mask = attn_mask[:length, :length]  # (L, L) causal, -inf above the diagonal
    x = tower.transformer(x, attn_mask=attn_mask)  # (B, L, D)
    return tower.ln_final(x)


def _text_tower(clip_model: nn.Module) -> nn.Module:
    """open_clip.CLIP keeps the text modules on itself; CustomTextCLIP keeps them in `.text`."""
    return getattr(clip_model, "text", clip_model)


def encode_text_tokens(clip_model: nn.Module, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """tokens (B, L) -> hidden states after ln_final (B, L, D) and the mask (B, L) bool,
    True = real token (SOT, words and EOT).  Padded positions hold values; mask them."""
    return _text_hidden_states(_text_tower(clip_model), tokens), token_mask(tokens)


class TextConditioner(nn.Module):
    """A frozen copy of a CLIP's text tower: forward(tokens (B, L)) -> (context (B, L, D),
    mask (B, L) bool).  Always in eval mode, no gradients; the CLIP passed in is untouched."""

    def __init__(self, clip_model: nn.Module):
        super().__init__()
        tower = _text_tower(clip_model)
        self.token_embedding = copy.deepcopy(tower.token_embedding)
        self.positional_embedding = copy.deepcopy(tower.positional_embedding)
        self.transformer = copy.deepcopy(tower.transformer)
        self.ln_final = copy.deepcopy(tower.ln_final)
        self.register_buffer("attn_mask", tower.attn_mask, persistent=False)
        self.width: int = self.token_embedding.embedding_dim  # D
        self.context_length: int = self.positional_embedding.shape[0]
        self.requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> TextConditioner:
        return super().train(False)  # frozen: dropout and the like stay off

    @torch.no_grad()
    def forward(self, tokens: Tensor) -> tuple[Tensor, Tensor]:
        """tokens (B, L) -> (context (B, L, D), mask (B, L) bool)."""
        return _text_hidden_states(self, tokens), token_mask(tokens)


# ----------------------------------------------------------------------------
# Contrastive loss


def clip_loss(
    image_features: Tensor,
    text_features: Tensor,
    logit_scale: Tensor,
    rank: int = 0,
    world_size: int = 1,
) -> Tensor:
    """Symmetric InfoNCE (Radford et al. 2021, Fig. 3): cross-entropy of image->text and
    text->image logits, averaged.  Features (B, E), L2-normalised by the caller
    (`encode_image(..., normalize=True)`); logit_scale is the multiplier, i.e. already
    exponentiated, as open_clip's forward returns it.

    Under DDP (world_size > 1) each rank passes its own slice of the batch; open_clip's
    `ClipLoss` gathers every rank's features with their gradients, so every image is
    contrasted with the captions of the whole global batch and each rank returns the
    loss one process would compute on that batch (the logits are B x B on every rank).
    """
    from open_clip.loss import ClipLoss

    loss = ClipLoss(local_loss=False, gather_with_grad=True, rank=rank, world_size=world_size)
    return loss(image_features, text_features, logit_scale)
