"""CLIP score (Hessel et al. 2021, without their w = 2.5 rescaling, as torchmetrics and the
text-to-image papers report it): 100 × max(cos(image, caption), 0) per image, averaged.

It measures how well an image agrees with its caption in the judge CLIP's embedding space,
not how realistic it is. The judge must not be the text encoder the model under test was
conditioned on.
"""

from __future__ import annotations

import numpy as np


def clip_scores(image_embeddings: np.ndarray, text_embeddings: np.ndarray) -> np.ndarray:
    """Per-pair scores (N,) from image and caption embeddings (N, E) of matching rows; the
    embeddings are normalised here, so any scale works."""
    a = np.asarray(image_embeddings, dtype=np.float64)
    b = np.asarray(text_embeddings, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"image and text embeddings differ in shape: {a.shape} vs {b.shape}")
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return 100.0 * np.clip(cos, 0.0, None)
