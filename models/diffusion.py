"""Diffusion maths: noise schedules, the forward process, training targets and the loss.

Notation (code -> paper), after Ho et al. 2020 (DDPM) and Salimans & Ho 2022 (v-prediction):

    alphas_cumprod -> ᾱ_t      (T,) float64, strictly decreasing in (0, 1)
    x0             -> x_0      clean latents, (B, C, h, w)
    x_t            -> x_t      noised latents, x_t = sqrt(ᾱ_t) x_0 + sqrt(1 - ᾱ_t) ε
    eps            -> ε        the noise, N(0, I)
    v              -> v        v = sqrt(ᾱ_t) ε - sqrt(1 - ᾱ_t) x_0
    snr            -> SNR(t)   ᾱ_t / (1 - ᾱ_t)

`t` is a (B,) int64 index into `alphas_cumprod` (0 = least noise). Everything indexed from
the schedule is read in float64 and cast to the dtype of the tensors it multiplies.

Prediction types use diffusers' names: "epsilon" (the network predicts ε), "v_prediction"
(v) and "sample" (x_0). The choice is read in one place, `eps_and_x0`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, get_args

import torch
import torch.nn.functional as F
from torch import Tensor

Schedule = Literal["linear", "scaled_linear", "cosine"]
PredictionType = Literal["epsilon", "v_prediction", "sample"]
PREDICTION_TYPES: tuple[str, ...] = ("epsilon", "v_prediction", "sample")
TimestepSampling = Literal["uniform", "logit_normal"]
TIMESTEP_SAMPLINGS: tuple[str, ...] = get_args(TimestepSampling)


def append_dims(x: Tensor, ndim: int) -> Tensor:
    """(B,) -> (B, 1, ..., 1) with `ndim` dimensions in all, for broadcasting over (B, C, h, w)."""
    return x.reshape(x.shape + (1,) * (ndim - x.ndim))


# ----------------------------------------------------------------------------
# Noise schedules (all in float64, checked when built)


def linear_betas(num_train_timesteps: int, beta_start=1e-4, beta_end=0.02) -> Tensor:
    """DDPM's linear schedule (Ho et al. 2020, §4), rescaled by 1000/T as improved-diffusion
    does so that any T gives the same curve; equal to diffusers' "linear" at T = 1000."""
    scale = 1000 / num_train_timesteps
    return torch.linspace(
        scale * beta_start, scale * beta_end, num_train_timesteps, dtype=torch.float64
    )


def scaled_linear_betas(num_train_timesteps: int, beta_start=8.5e-4, beta_end=1.2e-2) -> Tensor:
    """Stable Diffusion's schedule: linear in sqrt(β), endpoints rescaled by 1000/T;
    equal to diffusers' "scaled_linear" at T = 1000."""
    scale = 1000 / num_train_timesteps
    start, end = math.sqrt(scale * beta_start), math.sqrt(scale * beta_end)
    return torch.linspace(start, end, num_train_timesteps, dtype=torch.float64) ** 2


def cosine_betas(num_train_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Nichol & Dhariwal 2021, Eq. 17: ᾱ(τ) = f(τ)/f(0), f(τ) = cos²((τ + s)/(1 + s) · π/2),
    β_t = 1 - ᾱ(t+1)/ᾱ(t) clipped at 0.999 (§3.2) so that the last step is not singular.
    Index i covers τ from i/T to (i+1)/T, as in diffusers' `betas_for_alpha_bar`."""
    tau = torch.arange(num_train_timesteps + 1, dtype=torch.float64) / num_train_timesteps
    f = torch.cos((tau + s) / (1 + s) * math.pi / 2) ** 2  # (T + 1,)
    betas = 1 - f[1:] / f[:-1]
    return betas.clamp(max=max_beta)


BETA_SCHEDULES: dict[str, Callable[[int], Tensor]] = {
    "linear": linear_betas,
    "scaled_linear": scaled_linear_betas,
    "cosine": cosine_betas,
}


def make_alphas_cumprod(schedule: Schedule, num_train_timesteps: int = 1000) -> Tensor:
    """ᾱ_t = Π_{s<=t} (1 - β_s), (T,) float64; raises unless strictly decreasing in (0, 1)."""
    betas = BETA_SCHEDULES[schedule](num_train_timesteps)  # (T,) float64
    if not ((betas > 0).all() and (betas < 1).all()):
        raise ValueError(f"{schedule} schedule with T={num_train_timesteps} has β outside (0, 1)")
    alphas_cumprod = torch.cumprod(1 - betas, dim=0)
    assert alphas_cumprod.dtype == torch.float64
    assert (alphas_cumprod > 0).all() and (alphas_cumprod < 1).all()
    assert (alphas_cumprod[1:] < alphas_cumprod[:-1]).all(), "ᾱ must strictly decrease"
    return alphas_cumprod


def snr(t: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """SNR(t) = ᾱ_t / (1 - ᾱ_t) = α_t² / σ_t² (Kingma et al. 2021, VDM).  (B,) float64."""
    a = alphas_cumprod.to(t.device)[t]
    return a / (1 - a)


def _coefficients(t: Tensor, alphas_cumprod: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    """sqrt(ᾱ_t), sqrt(1 - ᾱ_t) computed in float64, cast to `like`'s dtype: (B, 1, 1, 1) each."""
    a = alphas_cumprod.to(t.device)[t]  # (B,) float64
    alpha = append_dims(a.sqrt(), like.ndim).to(like.dtype)
    sigma = append_dims((1 - a).sqrt(), like.ndim).to(like.dtype)
    return alpha, sigma


# ----------------------------------------------------------------------------
# Forward process and training targets


def q_sample(x0: Tensor, t: Tensor, noise: Tensor, alphas_cumprod: Tensor) -> Tensor:
    """Draw x_t ~ q(x_t | x_0) (Ho et al. 2020, Eq. 4).  x0, noise: (B, C, h, w); t: (B,)."""
    alpha, sigma = _coefficients(t, alphas_cumprod, x0)  # (B, 1, 1, 1) each
    return alpha * x0 + sigma * noise


def training_target(
    prediction_type: PredictionType, x0: Tensor, noise: Tensor, t: Tensor, alphas_cumprod: Tensor
) -> Tensor:
    """What the network should output for x_t = q_sample(x0, t, noise): ε, v or x_0."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return x0
    if prediction_type == "v_prediction":
        alpha, sigma = _coefficients(t, alphas_cumprod, x0)
        return alpha * noise - sigma * x0  # Salimans & Ho 2022, §4
    raise ValueError(f"unknown prediction_type {prediction_type!r}; expected {PREDICTION_TYPES}")


# ----------------------------------------------------------------------------
# Conversions between ε and x_0, given x_t = α x_0 + σ ε with α = sqrt(ᾱ_t), σ = sqrt(1 - ᾱ_t)
# (floats, or tensors that broadcast against x_t). The one place a prediction type is read:
# the samplers (models/sampling.py) and the tests go through `eps_and_x0`.


def x0_from_eps(eps: Tensor, x_t: Tensor, alpha, sigma) -> Tensor:
    """x̂_0 = (x_t - σ ε) / α  (Ho et al. 2020, Eq. 15)."""
    return (x_t - sigma * eps) / alpha


def eps_from_x0(x0: Tensor, x_t: Tensor, alpha, sigma) -> Tensor:
    """ε = (x_t - α x_0) / σ."""
    return (x_t - alpha * x0) / sigma


def x0_from_v(v: Tensor, x_t: Tensor, alpha, sigma) -> Tensor:
    """x_0 = α x_t - σ v  (Salimans & Ho 2022, §4, α² + σ² = 1)."""
    return alpha * x_t - sigma * v


def eps_from_v(v: Tensor, x_t: Tensor, alpha, sigma) -> Tensor:
    """ε = σ x_t + α v."""
    return sigma * x_t + alpha * v


def eps_and_x0(
    model_output: Tensor, x_t: Tensor, alpha, sigma, prediction_type: str
) -> tuple[Tensor, Tensor]:
    """(ε̂, x̂_0) from the network's output, whatever it predicts; what it predicts is
    returned as it is, the other is derived from it."""
    if prediction_type == "epsilon":
        return model_output, x0_from_eps(model_output, x_t, alpha, sigma)
    if prediction_type == "v_prediction":
        return eps_from_v(model_output, x_t, alpha, sigma), x0_from_v(
            model_output, x_t, alpha, sigma
        )
    if prediction_type == "sample":
        return eps_from_x0(model_output, x_t, alpha, sigma), model_output
    raise ValueError(f"unknown prediction_type {prediction_type!r}; expected {PREDICTION_TYPES}")


def to_epsilon(
    model_output: Tensor, x_t: Tensor, t: Tensor, alphas_cumprod: Tensor, prediction_type: str
) -> Tensor:
    """The network's output at timesteps t (B,), whatever it predicts, as ε."""
    alpha, sigma = _coefficients(t, alphas_cumprod, x_t)
    return eps_and_x0(model_output, x_t, alpha, sigma, prediction_type)[0]


def to_x0(
    model_output: Tensor, x_t: Tensor, t: Tensor, alphas_cumprod: Tensor, prediction_type: str
) -> Tensor:
    """The network's output at timesteps t (B,), whatever it predicts, as x̂_0."""
    alpha, sigma = _coefficients(t, alphas_cumprod, x_t)
    return eps_and_x0(model_output, x_t, alpha, sigma, prediction_type)[1]


# ----------------------------------------------------------------------------
# Training timesteps


def sample_timesteps(
    n: int,
    num_train_timesteps: int,
    generator: torch.Generator | None = None,
    method: TimestepSampling = "uniform",
    scale: float = 1.0,
) -> Tensor:
    """(n,) int64 training timesteps in [0, T).

    "uniform": every t equally often (Ho et al. 2020).
    "logit_normal": t = floor(T · sigmoid(u)), u ~ N(0, scale²), which draws the middle of the
    schedule more often and its two ends (nearly clean, nearly pure noise) less; Esser et
    al. 2024 (SD3, §3.1) found this sampling best among those they compared. For an integer
    k, P(t < k) = Φ(logit(k/T) / scale): at scale 1, 15.9 % = Φ(-1) fall below 0.269 T.
    """
    if method == "uniform":
        return torch.randint(num_train_timesteps, (n,), generator=generator)
    if method == "logit_normal":
        if scale <= 0:
            raise ValueError(f"logit_normal scale must be positive, got {scale}")
        u = torch.randn(n, generator=generator, dtype=torch.float64) * scale
        t = (torch.sigmoid(u) * num_train_timesteps).long()
        return t.clamp_(0, num_train_timesteps - 1)
    raise ValueError(f"unknown timestep sampling {method!r}; expected one of {TIMESTEP_SAMPLINGS}")


# ----------------------------------------------------------------------------
# Loss


def min_snr_weight(
    t: Tensor, alphas_cumprod: Tensor, gamma: float, prediction_type: PredictionType
) -> Tensor:
    """Min-SNR-γ loss weight (Hang et al. 2023: w_t = min(SNR(t), γ) on the x_0 loss),
    carried over to the other targets: ||ε̂ - ε||² = SNR ||x̂_0 - x_0||² and
    ||v̂ - v||² = (SNR + 1) ||x̂_0 - x_0||², so the weights are min(SNR, γ)/SNR for ε,
    min(SNR, γ)/(SNR + 1) for v and min(SNR, γ) for x_0.  (B,) float64."""
    s = snr(t, alphas_cumprod)
    clipped = s.clamp(max=gamma)
    if prediction_type == "epsilon":
        return clipped / s
    if prediction_type == "v_prediction":
        return clipped / (s + 1)
    if prediction_type == "sample":
        return clipped
    raise ValueError(f"unknown prediction_type {prediction_type!r}; expected {PREDICTION_TYPES}")


def diffusion_loss(
    model_output: Tensor,
    target: Tensor,
    t: Tensor,
    alphas_cumprod: Tensor,
    prediction_type: PredictionType,
    min_snr_gamma: float | None = None,
) -> Tensor:
    """Mean squared error in float32 (Ho et al. 2020, Eq. 14 "L_simple"), optionally
    weighted per sample by min-SNR-γ.  model_output, target: (B, C, h, w) -> scalar."""
    per_sample = F.mse_loss(model_output.float(), target.float(), reduction="none")
    per_sample = per_sample.flatten(1).mean(dim=1)  # (B,)
    if min_snr_gamma is not None:
        weight = min_snr_weight(t, alphas_cumprod, min_snr_gamma, prediction_type)
        per_sample = per_sample * weight.to(per_sample.dtype)
    return per_sample.mean()
