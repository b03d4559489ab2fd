"""Text-to-image generation: tokenizer -> frozen text tower -> guided sampler over the U-Net ->
autoencoder decoder. Pure compute; loading the parts from checkpoints is a task's job.

    pipe = TextToImage(unet, autoencoder, text, tokenizer, alphas_cumprod, "v_prediction", (4, 8, 8))
    images = pipe.generate(captions, seeds, guidance_scale=4.0)   # (B, 3, H, W) in [-1, 1]

Image k depends only on (caption k, seed k) and the settings: the initial noise (and any
ancestral noise) comes from a per-image generator (`randn_per_image`), so the batch size
changes an image only by float rounding (CPU matmul kernels round differently per batch size;
the same batch twice is bit-identical).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from models.diffusion import PredictionType
from models.guidance import guided_model_fn
from models.sampling import SAMPLERS, Spacing, make_generators, make_timesteps, randn_per_image


@dataclass
class TextToImage:
    unet: nn.Module  # unet(x_t, t, context, context_mask) on normalised latents
    autoencoder: nn.Module  # decode_latents(z) -> images in [-1, 1]
    text: nn.Module  # TextConditioner: tokens (B, L) -> (context (B, L, D), mask (B, L))
    tokenizer: Callable[[list[str]], Tensor]  # list[str] -> (B, L) int64
    alphas_cumprod: Tensor  # (T,) float64
    prediction_type: PredictionType
    latent_shape: tuple[int, int, int]  # (C, h, w)

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @torch.no_grad()
    def encode_text(self, captions: Sequence[str]) -> tuple[Tensor, Tensor]:
        """captions -> (context (B, L, D), mask (B, L) bool) on the U-Net's device."""
        context, mask = self.text(self.tokenizer(list(captions)).to(self.device))
        return context, mask

    @torch.no_grad()
    def generate(
        self,
        captions: Sequence[str],
        seeds: Sequence[int],
        guidance_scale: float = 4.0,
        num_inference_steps: int = 25,
        sampler: str = "ddim",
        spacing: Spacing = "trailing",
        eta: float = 0.0,
        callback: Callable | None = None,
    ) -> Tensor:
        """(B, 3, H, W) images in [-1, 1] for B captions, one seed each."""
        if len(captions) != len(seeds):
            raise ValueError(f"{len(captions)} captions but {len(seeds)} seeds")
        device = self.device
        context, mask = self.encode_text(captions)
        null_context, null_mask = self.encode_text([""])
        ac = self.alphas_cumprod.to(device)
        model_fn = guided_model_fn(
            self.unet, context, mask, null_context, null_mask, guidance_scale
        )
        generators = make_generators(list(seeds))  # x_T, then any ancestral noise, per image
        x_T = randn_per_image(self.latent_shape, generators, device=device)  # (B, C, h, w)
        timesteps = make_timesteps(len(ac), num_inference_steps, spacing).to(device)
        z0 = SAMPLERS[sampler](
            model_fn, x_T, timesteps, ac, prediction_type=self.prediction_type, eta=eta,
            generators=generators, callback=callback,
        )  # fmt: skip
        return self.autoencoder.decode_latents(z0).clamp(-1, 1)
