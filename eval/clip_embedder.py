"""A CLIP as a judge: image and caption embeddings, and their cosine similarity.

Images come in marble's range, (B, 3, H, W) float in [-1, 1]. A pretrained open_clip model
expects its own input size and per-channel normalisation; a marble CLIP takes the images as
they are. Embeddings are L2-normalised (open_clip's `normalize=True`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ClipEmbedder:
    def __init__(
        self,
        model: nn.Module,
        tokenizer: Callable[[list[str]], Tensor],
        image_size: int | None = None,  # resize to this side (pretrained models)
        mean: tuple[float, float, float] | None = None,  # their normalisation, on [0, 1] input
        std: tuple[float, float, float] | None = None,
    ):
        self.model, self.tokenizer, self.image_size = model, tokenizer, image_size
        self.mean = None if mean is None else torch.tensor(mean).view(1, 3, 1, 1)
        self.std = None if std is None else torch.tensor(std).view(1, 3, 1, 1)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def images(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) in [-1, 1] -> (B, E) unit-norm embeddings."""
        x = images.to(self.device)
        if self.image_size and x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bicubic", antialias=True)
        if self.mean is not None:
            x = ((x + 1) / 2 - self.mean.to(x.device)) / self.std.to(x.device)
        return self.model.encode_image(x, normalize=True).float()

    @torch.no_grad()
    def texts(self, captions: list[str]) -> Tensor:
        """B captions -> (B, E) unit-norm embeddings."""
        tokens = self.tokenizer(list(captions)).to(self.device)
        return self.model.encode_text(tokens, normalize=True).float()

    def __call__(self, images: Tensor, captions: list[str]) -> Tensor:
        """Cosine similarity of each image with its caption, (B,) on the CPU."""
        return (self.images(images) * self.texts(captions)).sum(-1).cpu()
