"""Classifier-free guidance (Ho & Salimans 2022, Eq. 6, s = 1 + w), a closure over the U-Net.

    ε̃ = ε_u + s (ε_c - ε_u)        s = guidance_scale, ε_u unconditional, ε_c conditional

The null condition is the empty caption's hidden states and mask (the caller encodes "" with
the same text tower and tokenizer).  Both passes run in ONE batched forward.

Guidance combines the raw network outputs, in whatever the network predicts.  Every
conversion between ε, v and x̂_0 at a fixed (x_t, t) is affine in the output with the same
x_t term, and the guidance weights (1 - s) and s sum to one, so combining outputs and then
converting gives exactly the guided ε (and x̂_0) of Eq. 6, for every prediction type.  The
sampler converts once, in the numerically stable direction (models/sampling.py).  At s = 1
the unconditional pass is skipped, so the result is bit-identical to the conditional output.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn


def _expand_rows(x: Tensor, batch_size: int) -> Tensor:
    """(1, ...) or (B, ...) -> (B, ...)."""
    return x.expand(batch_size, *x.shape[1:]) if len(x) == 1 else x


def guided_model_fn(
    unet: nn.Module,
    context: Tensor,
    context_mask: Tensor | None,
    null_context: Tensor,
    null_mask: Tensor | None,
    guidance_scale: float,
) -> Callable[[Tensor, Tensor], Tensor]:
    """model_fn(x_t, t) -> guided network output, for the samplers.

    context: (B, L, D) caption hidden states; context_mask: (B, L) bool, True = real token.
    null_context: (1, L, D) or (B, L, D) empty-caption states; null_mask: (1, L) or (B, L).
    Masks may be None (every token attends); if only one is None it becomes all True.
    """
    batch_size = len(context)
    null_context = _expand_rows(null_context, batch_size)  # (B, L, D)
    if null_context.shape != context.shape:
        raise ValueError(f"null context {tuple(null_context.shape)} vs {tuple(context.shape)}")
    if (context_mask is None) != (null_mask is None):
        all_real = torch.ones(context.shape[:2], dtype=torch.bool, device=context.device)
        context_mask = all_real if context_mask is None else context_mask
        null_mask = all_real if null_mask is None else null_mask

    if guidance_scale == 1.0:

        def conditional(x_t: Tensor, t: Tensor) -> Tensor:  # x_t: (B, C, h, w); t: (B,)
            return unet(x_t, t, context, context_mask)

        return conditional

    both_context = torch.cat([null_context, context])  # (2B, L, D)
    both_mask = None
    if context_mask is not None:
        both_mask = torch.cat([_expand_rows(null_mask, batch_size), context_mask])  # (2B, L)

    def guided(x_t: Tensor, t: Tensor) -> Tensor:  # x_t: (B, C, h, w); t: (B,)
        x_both, t_both = torch.cat([x_t, x_t]), torch.cat([t, t])  # (2B, C, h, w), (2B,)
        out_u, out_c = unet(x_both, t_both, both_context, both_mask).chunk(2)
        return out_u + guidance_scale * (out_c - out_u)

    return guided
