"""Images between their two forms (uint8 (N, H, W, 3) at the disk boundary, float (N, 3, H, W)
in [-1, 1] inside), and image grids written as files (logged to MLflow by the caller)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def to_float(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(..., H, W, 3) uint8 -> (..., 3, H, W) float32 in [-1, 1]."""
    t = torch.as_tensor(images).movedim(-1, -3)
    return t.float().div(127.5).sub(1.0)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) float in [-1, 1] -> (N, H, W, 3) uint8."""
    x = images.detach().float().clamp(-1, 1).add(1).mul(127.5).round()
    return x.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def image_grid(images: np.ndarray, ncol: int, scale: int = 2, pad: int = 1) -> Image.Image:
    """(N, H, W, 3) uint8 -> one PIL image, `ncol` per row, nearest-neighbour upscaled."""
    n, h, w, _ = images.shape
    nrow = -(-n // ncol)
    grid = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, 3), 255, np.uint8)
    for k in range(n):
        r, c = divmod(k, ncol)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        grid[top : top + h, left : left + w] = images[k]
    image = Image.fromarray(grid)
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST)


def save_grid(images: np.ndarray, path: Path, ncol: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images, ncol).save(path)
    return path
