"""Image-text retrieval recall of a CLIP: how often the right caption (or image) ranks first,
or in the top five, among a set of pairs."""

from __future__ import annotations

import torch
from torch import Tensor, nn


@torch.no_grad()
def retrieval_metrics(
    model: nn.Module, images: Tensor, tokens: Tensor, captions: list[str]
) -> dict[str, float]:
    """R@1 and R@5, image->text and text->image, over N pairs.

    images (N, 3, H, W) float in the model's input range; tokens (N, L); captions: the N
    caption strings. A retrieved item counts as right when its caption equals the query's
    (data sets such as the built-in shapes repeat captions, so index equality would be too
    strict). Keys: i2t_r1, i2t_r5, t2i_r1, t2i_r5.
    """
    image_f = model.encode_image(images, normalize=True)  # (N, E)
    text_f = model.encode_text(tokens, normalize=True)  # (N, E)
    sim = image_f @ text_f.T  # (N, N)
    ids = {c: k for k, c in enumerate(dict.fromkeys(captions))}
    label = torch.tensor([ids[c] for c in captions], device=sim.device)  # caption class per row
    out = {}
    for name, s in (("i2t", sim), ("t2i", sim.T)):
        top = s.topk(min(5, s.shape[1]), dim=1).indices  # (N, 5)
        hit = label[top] == label[:, None]  # (N, 5)
        out[f"{name}_r1"] = hit[:, 0].float().mean().item()
        out[f"{name}_r5"] = hit.any(dim=1).float().mean().item()
    return out
