"""Image-text retrieval recall of a CLIP: how often the right caption (or image) ranks first,
or in the top five, among a set of pairs.

A retrieved item counts as right when its caption equals the query's: data sets such as the
built-in shapes repeat captions, so index equality would be too strict.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn


def recall_at_k(similarity: Tensor, captions: list[str], ks: tuple[int, ...] = (1, 5)) -> dict:
    """similarity (N, N): image i against caption j. Returns i2t_r<k> and t2i_r<k>."""
    ids = {c: k for k, c in enumerate(dict.fromkeys(captions))}
    label = torch.tensor([ids[c] for c in captions], device=similarity.device)  # (N,)
    out = {}
    for name, s in (("i2t", similarity), ("t2i", similarity.T)):
        top = s.topk(min(max(ks), s.shape[1]), dim=1).indices  # (N, max k)
        hit = label[top] == label[:, None]
        for k in ks:
            out[f"{name}_r{k}"] = hit[:, :k].any(dim=1).float().mean().item()
    return out


@torch.no_grad()
def retrieval_metrics(
    model: nn.Module, images: Tensor, tokens: Tensor, captions: list[str]
) -> dict[str, float]:
    """R@1 and R@5 both ways of an open_clip model over N pairs: images (N, 3, H, W) in the
    model's input range, tokens (N, L), captions the N strings."""
    image_f = model.encode_image(images, normalize=True)  # (N, E)
    text_f = model.encode_text(tokens, normalize=True)  # (N, E)
    return recall_at_k(image_f @ text_f.T, captions)


def recall_at_1(image_embeddings: np.ndarray, text_embeddings: np.ndarray, captions: list[str]):
    """R@1 both ways from unit-norm embeddings (N, E): {"i2t_r1", "t2i_r1"}."""
    similarity = torch.from_numpy(np.asarray(image_embeddings) @ np.asarray(text_embeddings).T)
    return recall_at_k(similarity, captions, ks=(1,))
