"""KL-regularised autoencoder, image <-> latent (Rombach et al. 2022, §3 and Appendix G).

Images are float in [-1, 1], (B, 3, H, W); latents are (B, 4, H/f, W/f).  The encoder returns
a diagonal Gaussian posterior q(z | x); the decoder maps a latent back to an image.  The
decoder's widths are set independently of the encoder's (the decoder-size sweep axis).

Latent normalisation: `with_latent_stats` measures per-channel mean and std of raw latents
on the training data and stores them in the config; `encode_latents` returns
(z - mean) / std and `decode_latents` undoes it, so the diffusion model sees roughly unit
variance per channel (latent-diffusion uses one hard-coded `scale_factor` instead).  The
statistics are non-persistent buffers built from the config, so weights saved before the
statistics were measured load into a module built from the updated config.

Presets (`AE_PRESETS`; parameter counts in `PARAM_COUNTS`):

| preset      | f | encoder widths | decoder widths | res blocks |
| ----------- | - | -------------- | -------------- | ---------- |
| identity    | 1 | -              | -              | -          |
| kl-f4       | 4 | 16, 32, 64     | 16, 32, 64     | 1          |
| kl-f4-dec-s | 4 | 16, 32, 64     | 8, 16, 32      | 1          |
| kl-f4-dec-l | 4 | 16, 32, 64     | 32, 64, 128    | 1          |
| kl-f8       | 8 | 16, 32, 64, 64 | 16, 32, 64, 64 | 1          |

`identity` has no weights: its latents are the pixels (f = 1, 3 channels), so pixel-space
diffusion runs through the same code as a control.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class AutoencoderConfig:
    in_channels: int = 3  # image channels (RGB)
    latent_channels: int = 4  # latent channels (= in_channels for the identity)
    encoder_channels: tuple[int, ...] = (16, 32, 64)  # width per level; f = 2**(levels - 1)
    decoder_channels: tuple[int, ...] = (16, 32, 64)  # same number of levels, any widths
    num_res_blocks: int = 1  # ResNet blocks per level, encoder and decoder alike
    identity: bool = False  # no network: latents are the pixels
    latent_mean: tuple[float, ...] | None = None  # per-channel mean of raw latents (measured)
    latent_std: tuple[float, ...] | None = None  # per-channel std of raw latents (measured)
    norm_groups: int = 8  # GroupNorm groups; must divide every width

    def __post_init__(self):
        if self.identity:
            if self.latent_channels != self.in_channels or self.encoder_channels:
                raise ValueError("identity autoencoder: latent_channels = in_channels, no widths")
        else:
            if len(self.encoder_channels) != len(self.decoder_channels):
                raise ValueError("encoder and decoder need the same number of levels")
            for width in self.encoder_channels + self.decoder_channels:
                if width % self.norm_groups:
                    raise ValueError(f"width {width} not divisible by norm_groups")
        for stats in (self.latent_mean, self.latent_std):
            if stats is not None and len(stats) != self.latent_channels:
                raise ValueError(f"latent statistics need {self.latent_channels} values")

    @property
    def downsample_factor(self) -> int:
        """f: image side / latent side."""
        return 1 if self.identity else 2 ** (len(self.encoder_channels) - 1)


AE_PRESETS: dict[str, AutoencoderConfig] = {
    "identity": AutoencoderConfig(
        latent_channels=3, encoder_channels=(), decoder_channels=(), num_res_blocks=0, identity=True
    ),
    "kl-f4": AutoencoderConfig(),
    "kl-f4-dec-s": AutoencoderConfig(decoder_channels=(8, 16, 32)),
    "kl-f4-dec-l": AutoencoderConfig(decoder_channels=(32, 64, 128)),
    "kl-f8": AutoencoderConfig(
        encoder_channels=(16, 32, 64, 64), decoder_channels=(16, 32, 64, 64)
    ),
}

PARAM_COUNTS: dict[str, int] = {
    "identity": 0,
    "kl-f4": 365_307,
    "kl-f4-dec-s": 218_187,
    "kl-f4-dec-l": 949_851,
    "kl-f8": 587_387,
}

# ----------------------------------------------------------------------------
# Posterior


class DiagonalGaussian:
    """q(z | x) = N(mean, diag(exp(logvar))); logvar clamped to [-30, 20] as in
    latent-diffusion.  `deterministic=True` is a point mass at the mean (zero variance):
    sample() and mode() both return the mean, and kl() is 0 by latent-diffusion's convention."""

    def __init__(self, mean: Tensor, logvar: Tensor, deterministic: bool = False):
        self.mean = mean  # (B, C, h, w)
        self.logvar = logvar.clamp(-30.0, 20.0)  # (B, C, h, w)
        self.deterministic = deterministic

    @classmethod
    def point_mass(cls, mean: Tensor) -> DiagonalGaussian:
        return cls(mean, torch.zeros_like(mean), deterministic=True)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """z = mean + std * ε, ε drawn on the generator's device, then moved.  (B, C, h, w)."""
        if self.deterministic:
            return self.mean
        device = self.mean.device if generator is None else generator.device
        noise = torch.randn(
            self.mean.shape, generator=generator, device=device, dtype=self.mean.dtype
        )
        return self.mean + torch.exp(0.5 * self.logvar) * noise.to(self.mean.device)

    def mode(self) -> Tensor:
        return self.mean

    def kl(self) -> Tensor:
        """KL(q || N(0, I)) = ½ Σ (μ² + σ² - 1 - log σ²) over (C, h, w) (Kingma & Welling 2014,
        Appendix B) -> (B,)."""
        if self.deterministic:
            return self.mean.new_zeros(len(self.mean))
        kl = 0.5 * (self.mean**2 + torch.exp(self.logvar) - 1.0 - self.logvar)
        return kl.flatten(1).sum(dim=1)


# ----------------------------------------------------------------------------
# Blocks


class ResnetBlock(nn.Module):
    """GroupNorm-SiLU-Conv twice, added to the input (1x1 conv when the width changes)."""

    def __init__(self, in_ch: int, out_ch: int, norm_groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(norm_groups, in_ch, eps=1e-6)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = nn.GroupNorm(norm_groups, out_ch, eps=1e-6)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_ch, H, W) -> (B, out_ch, H, W)."""
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Encoder(nn.Module):
    """conv_in, per level ResNet blocks then a stride-2 conv (not after the last level),
    a middle ResNet block, GroupNorm-SiLU-conv to 2 * latent channels (mean, logvar)."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        widths, groups = cfg.encoder_channels, cfg.norm_groups
        layers: list[nn.Module] = [nn.Conv2d(cfg.in_channels, widths[0], 3, padding=1)]
        ch = widths[0]
        for level, width in enumerate(widths):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResnetBlock(ch, width, groups))
                ch = width
            if level != len(widths) - 1:
                layers.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))  # (H, W) -> (H/2, W/2)
        layers += [
            ResnetBlock(ch, ch, groups),
            nn.GroupNorm(groups, ch, eps=1e-6),
            nn.SiLU(),
            nn.Conv2d(ch, 2 * cfg.latent_channels, 3, padding=1),
        ]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, 2 * latent_channels, H/f, W/f)."""
        return self.net(x)


class Decoder(nn.Module):
    """Mirror of the encoder with its own widths: conv_in, middle block, per level (deepest
    first) ResNet blocks then nearest-neighbour 2x upsampling + a conv to the next level's
    width (cheaper at full resolution than latent-diffusion's same-width conv), then
    GroupNorm-SiLU-conv to the image."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        widths, groups = cfg.decoder_channels, cfg.norm_groups
        ch = widths[-1]
        layers: list[nn.Module] = [
            nn.Conv2d(cfg.latent_channels, ch, 3, padding=1),
            ResnetBlock(ch, ch, groups),
        ]
        for level in reversed(range(len(widths))):
            for _ in range(cfg.num_res_blocks):
                layers.append(ResnetBlock(ch, widths[level], groups))
                ch = widths[level]
            if level != 0:  # (h, w) -> (2h, 2w), conv straight to the next level's width
                layers.append(nn.Upsample(scale_factor=2.0, mode="nearest"))
                layers.append(nn.Conv2d(ch, widths[level - 1], 3, padding=1))
                ch = widths[level - 1]
        layers += [
            nn.GroupNorm(groups, ch, eps=1e-6),
            nn.SiLU(),
            nn.Conv2d(ch, cfg.in_channels, 3, padding=1),
        ]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        """(B, latent_channels, h, w) -> (B, 3, h*f, w*f)."""
        return self.net(z)


# ----------------------------------------------------------------------------
# Autoencoders


class AutoencoderBase(nn.Module):
    """Shared by both autoencoders: the measured per-channel normalisation of latents."""

    def __init__(self, cfg: AutoencoderConfig):
        super().__init__()
        self.cfg = cfg
        channels = cfg.latent_channels
        mean = cfg.latent_mean if cfg.latent_mean is not None else (0.0,) * channels
        std = cfg.latent_std if cfg.latent_std is not None else (1.0,) * channels
        self.register_buffer("latent_mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("latent_std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def encode(self, x: Tensor) -> DiagonalGaussian:
        raise NotImplementedError

    def decode(self, z: Tensor) -> Tensor:
        raise NotImplementedError

    def normalize(self, z: Tensor) -> Tensor:
        """Raw latents -> (z - mean) / std per channel.  (B, C, h, w)."""
        return (z - self.latent_mean.to(z.dtype)) / self.latent_std.to(z.dtype)

    def denormalize(self, z: Tensor) -> Tensor:
        """Inverse of `normalize`.  (B, C, h, w)."""
        return z * self.latent_std.to(z.dtype) + self.latent_mean.to(z.dtype)

    def encode_latents(
        self, x: Tensor, generator: torch.Generator | None = None, *, sample_posterior: bool = True
    ) -> Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> normalised latents (B, C, h, w): a posterior
        sample (latent-diffusion's choice) or, with sample_posterior=False, its mean."""
        posterior = self.encode(x)
        z = posterior.sample(generator) if sample_posterior else posterior.mode()
        return self.normalize(z)

    def decode_latents(self, z: Tensor) -> Tensor:
        """Normalised latents (B, C, h, w) -> images (B, 3, H, W)."""
        return self.decode(self.denormalize(z))

    def forward(
        self, x: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, DiagonalGaussian]:
        """x: (B, 3, H, W) -> (reconstruction (B, 3, H, W), posterior), for training."""
        posterior = self.encode(x)
        return self.decode(posterior.sample(generator)), posterior


class AutoencoderKL(AutoencoderBase):
    def __init__(self, cfg: AutoencoderConfig):
        super().__init__(cfg)
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def encode(self, x: Tensor) -> DiagonalGaussian:
        """(B, 3, H, W) -> posterior over (B, latent_channels, H/f, W/f)."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)  # (B, C, h, w) each
        return DiagonalGaussian(mean, logvar)

    def decode(self, z: Tensor) -> Tensor:
        """Raw latents (B, latent_channels, h, w) -> images (B, 3, H, W)."""
        return self.decoder(z)


class IdentityAutoencoder(AutoencoderBase):
    """No parameters: the posterior is a point mass at the image, decode returns its input."""

    def encode(self, x: Tensor) -> DiagonalGaussian:
        return DiagonalGaussian.point_mass(x)

    def decode(self, z: Tensor) -> Tensor:
        return z


def build_autoencoder(cfg: AutoencoderConfig) -> AutoencoderKL | IdentityAutoencoder:
    return IdentityAutoencoder(cfg) if cfg.identity else AutoencoderKL(cfg)


def with_latent_stats(cfg: AutoencoderConfig, latents: Tensor) -> AutoencoderConfig:
    """Per-channel mean and std of raw (unnormalised) latents (B, C, h, w), stored in a copy
    of the config."""
    if latents.ndim != 4 or latents.shape[1] != cfg.latent_channels:
        raise ValueError(f"expected (B, {cfg.latent_channels}, h, w), got {tuple(latents.shape)}")
    flat = latents.detach().double().transpose(0, 1).flatten(1)  # (C, B*h*w)
    mean = tuple(float(m) for m in flat.mean(dim=1))
    std = tuple(float(s) for s in flat.std(dim=1))
    return dataclasses.replace(cfg, latent_mean=mean, latent_std=std)


def autoencoder_loss(
    x: Tensor, recon: Tensor, posterior: DiagonalGaussian, kl_weight: float = 1e-6
) -> tuple[Tensor, dict[str, float]]:
    """L1 reconstruction (mean over pixels) + kl_weight * KL (summed over the latent, mean over
    the batch).  Returns the scalar loss and {"l1", "kl"} for logging."""
    l1 = (x - recon).abs().mean()
    kl = posterior.kl().mean()
    return l1 + kl_weight * kl, {"l1": float(l1.detach()), "kl": float(kl.detach())}
