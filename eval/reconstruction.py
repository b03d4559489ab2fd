"""Reconstruction quality of an autoencoder: PSNR."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def psnr(x: Tensor, y: Tensor, peak_to_peak: float = 2.0) -> float:
    """Peak signal-to-noise ratio in dB, 10 log10(peak² / MSE), of two image batches; images
    in [-1, 1] have peak-to-peak 2. Identical images give +inf."""
    mse = (x.double() - y.double()).pow(2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(peak_to_peak**2 / mse)


def psnr_per_image(x: Tensor, y: Tensor, peak_to_peak: float = 2.0) -> Tensor:
    """PSNR in dB of each image pair of two batches (B, C, H, W) -> (B,) float64; identical
    images give +inf."""
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(peak_to_peak**2 / mse)
