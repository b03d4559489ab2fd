"""Self- and cross-attention for the U-Net (Rombach et al. 2022, §3.3, "SpatialTransformer").

Shapes: B batch, C image channels, N = h*w image tokens, L text tokens, D text width.
Text padding is passed as a (B, L) bool mask, True = real token, and becomes the
`attn_mask` of F.scaled_dot_product_attention, so padded tokens get zero weight.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class Attention(nn.Module):
    """Multi-head attention from image tokens to `context` (cross) or to themselves (self)."""

    def __init__(self, query_dim: int, context_dim: int | None, heads: int, head_dim: int):
        super().__init__()
        inner = heads * head_dim
        context_dim = query_dim if context_dim is None else context_dim
        self.heads, self.head_dim = heads, head_dim
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)  # projects any text width D
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Linear(inner, query_dim)

    def _split_heads(self, x: Tensor) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, self.heads, self.head_dim).transpose(1, 2)  # (B, heads, n, d)

    def forward(
        self, x: Tensor, context: Tensor | None = None, context_mask: Tensor | None = None
    ) -> Tensor:
        """x: (B, N, C); context: (B, L, D) or None for self-attention;
        context_mask: (B, L) bool, True = attend -> (B, N, C)."""
        context = x if context is None else context
        q = self._split_heads(self.to_q(x))  # (B, heads, N, d)
        k = self._split_heads(self.to_k(context))  # (B, heads, L, d)
        v = self._split_heads(self.to_v(context))  # (B, heads, L, d)
        attn_mask = None if context_mask is None else context_mask[:, None, None, :]  # (B,1,1,L)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)  # (B, heads, N, d)
        b, _, n, _ = out.shape
        out = out.transpose(1, 2).reshape(b, n, self.heads * self.head_dim)  # (B, N, heads*d)
        return self.to_out(out)


class FeedForward(nn.Module):
    """Position-wise MLP, GELU, 4x wide (Vaswani et al. 2017, §3.3)."""

    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, dim * mult), nn.GELU(), nn.Linear(dim * mult, dim))

    def forward(self, x: Tensor) -> Tensor:
        """x: (B, N, C) -> (B, N, C)."""
        return self.net(x)


class TransformerBlock(nn.Module):
    """Pre-norm self-attention, cross-attention to the text, then the MLP; each residual."""

    def __init__(self, dim: int, context_dim: int, heads: int, head_dim: int):
        super().__init__()
        self.norm1, self.attn1 = nn.LayerNorm(dim), Attention(dim, None, heads, head_dim)
        self.norm2, self.attn2 = nn.LayerNorm(dim), Attention(dim, context_dim, heads, head_dim)
        self.norm3, self.ff = nn.LayerNorm(dim), FeedForward(dim)

    def forward(self, x: Tensor, context: Tensor, context_mask: Tensor | None) -> Tensor:
        """x: (B, N, C); context: (B, L, D); context_mask: (B, L) bool or None -> (B, N, C)."""
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context, context_mask)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """GroupNorm, 1x1 projection in, `depth` TransformerBlocks over the h*w tokens, projection
    out (zero-initialised, so a new block starts as the identity), plus the input."""

    def __init__(
        self, channels: int, context_dim: int, head_dim: int, depth: int = 1, norm_groups: int = 32
    ):
        super().__init__()
        heads = channels // head_dim
        self.norm = nn.GroupNorm(norm_groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, channels)
        self.blocks = nn.ModuleList(
            TransformerBlock(channels, context_dim, heads, head_dim) for _ in range(depth)
        )
        self.proj_out = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: Tensor, context: Tensor, context_mask: Tensor | None = None) -> Tensor:
        """x: (B, C, h, w); context: (B, L, D); context_mask: (B, L) bool -> (B, C, h, w)."""
        b, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # (B, N, C)
        tokens = self.proj_in(tokens)
        for block in self.blocks:
            tokens = block(tokens, context, context_mask)
        tokens = self.proj_out(tokens)
        return x + tokens.transpose(1, 2).reshape(b, c, h, w)  # (B, C, h, w)
