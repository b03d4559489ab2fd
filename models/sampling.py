"""Samplers: functions over a denoiser `model_fn(x_t, t) -> network output`, with the schedule
and the network's prediction type passed in.

Notation (code -> paper): alphas_cumprod -> ᾱ_t, eps -> ε̂, x0_hat -> x̂_0, eta -> η,
alpha -> α_t = sqrt(ᾱ_t), sigma -> σ_t = sqrt(1 - ᾱ_t), lam -> λ_t = log(α_t / σ_t).

Every sampler has the call signature

    sampler(model_fn, x_T, timesteps, alphas_cumprod, *, prediction_type="epsilon",
            eta=0.0, generators=None, callback=None)

- model_fn(x_t, t): x_t (B, C, h, w), t (B,) int64 on x_t's device -> the network's output
  (B, C, h, w): ε, v or x_0 as `prediction_type` says ("epsilon", "v_prediction", "sample").
  Guidance lives inside it (see `models.guidance.guided_model_fn`); samplers never see it.
- Each step turns the output into (ε̂, x̂_0) once, in the direction that needs no division
  where one can be avoided (`predict_eps_x0`): from v, x̂_0 = α x_t - σ v and
  ε̂ = σ x_t + α v. Going through ε instead (x̂_0 = (x_t - σ ε̂) / α) divides by α, which is
  5e-5 at the noisiest step of the cosine schedule and costs float32 three digits.
- timesteps: descending int64 from `make_timesteps`. The last step goes to ᾱ = 1, i.e. the
  sampler returns the final x̂_0 (diffusers' `set_alpha_to_one=True` / `final_sigmas_type="zero"`).
- Computation runs in x_T's dtype (the output is cast to it); schedule values are read
  in float64 and enter as Python floats.
- generators: one CPU `torch.Generator` per batch row for ancestral noise, so row k's
  noise depends only on its own generator and the batch size never changes an image.
  None draws from the global RNG. Ignored by deterministic samplers.
- callback(i, x, x0_hat) after step i (k-diffusion style), for progress or previews.

Timestep spacings (diffusers' names, `timestep_spacing`), with T train steps and n steps:
- "leading":  t_i = (n - 1 - i) · (T // n)            T=1000, n=10 -> 900, 800, ..., 0
- "trailing": t_i = round(T - i · T/n) - 1            T=1000, n=10 -> 999, 899, ..., 99
- "linspace": linspace(0, T - 1, n) rounded, reversed  T=1000, n=10 -> 999, 888, ..., 111, 0
"trailing" starts at the noisiest step (Lin et al. 2024 recommend it for few steps);
"leading" never visits t = T - 1 and "linspace" always ends at t = 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import Tensor

from models.diffusion import PREDICTION_TYPES, PredictionType, eps_and_x0

ModelFn = Callable[[Tensor, Tensor], Tensor]
Callback = Callable[[int, Tensor, Tensor], None]
Spacing = Literal["leading", "trailing", "linspace"]

# ----------------------------------------------------------------------------
# Timesteps and per-image randomness


def make_timesteps(num_train_timesteps: int, num_inference_steps: int, spacing: Spacing) -> Tensor:
    """Descending int64 timesteps, as diffusers' DDIMScheduler.set_timesteps (steps_offset=0)."""
    big_t, n = num_train_timesteps, num_inference_steps
    if not 1 <= n <= big_t:
        raise ValueError(f"num_inference_steps must be in [1, {big_t}], got {n}")
    i = torch.arange(n, dtype=torch.float64)
    # Float steps are formed as numpy forms them in diffusers, so the rounding matches at .5.
    if spacing == "leading":  # np.arange(0, n) * (T // n), reversed
        timesteps = (i * (big_t // n)).flip(0)
    elif spacing == "trailing":  # np.round(np.arange(T, 0, -T / n)) - 1 (first n values)
        delta = (big_t - big_t / n) - big_t  # numpy's arange step: buffer[1] - buffer[0]
        timesteps = torch.round(big_t + i * delta) - 1
    elif spacing == "linspace":  # np.linspace(0, T - 1, n).round(), reversed
        values = i * ((big_t - 1) / max(n - 1, 1))  # (n,)
        values[-1] = big_t - 1 if n > 1 else 0  # numpy sets the end point exactly
        timesteps = values.round().flip(0)
    else:
        raise ValueError(f"unknown spacing {spacing!r}; expected leading, trailing or linspace")
    return timesteps.to(torch.int64)


def make_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per image, seeded with that image's seed (EDM's per-sample RNG)."""
    return [torch.Generator().manual_seed(int(seed)) for seed in seeds]


def randn_per_image(
    shape: Sequence[int],
    seeds: Sequence[int] | Sequence[torch.Generator],
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> Tensor:
    """(B, *shape) standard normal; row k drawn from seeds[k] alone, so it is the same at any
    batch size and on any device (drawn on the CPU, then moved).  Each entry is an int seed
    (a fresh generator) or a `torch.Generator` (drawn from, so its state advances: draw x_T
    and then pass the same generators to an ancestral sampler for independent noise)."""
    generators = [
        s if isinstance(s, torch.Generator) else torch.Generator().manual_seed(int(s))
        for s in seeds
    ]
    draw_dtype = torch.promote_types(dtype, torch.float32)  # f16/bf16 drawn as f32, then cast
    rows = [torch.randn(tuple(shape), generator=g, dtype=draw_dtype) for g in generators]
    return torch.stack(rows).to(device=device, dtype=dtype)


def _noise_like(x: Tensor, generators: Sequence[torch.Generator] | None) -> Tensor:
    if generators is None:
        return torch.randn_like(x)
    if len(generators) != len(x):
        raise ValueError(f"need one generator per image: {len(generators)} for {len(x)}")
    return randn_per_image(x.shape[1:], generators, x.dtype, x.device)


def _schedule(timesteps: Tensor, alphas_cumprod: Tensor) -> list[float]:
    """ᾱ at each timestep, then 1.0 for the clean end point, as Python floats (float64)."""
    ac = alphas_cumprod.detach().to("cpu", torch.float64)
    return [float(ac[int(t)]) for t in timesteps] + [1.0]


def _t_batch(t: Tensor, x: Tensor) -> Tensor:
    return torch.full((len(x),), int(t), dtype=torch.int64, device=x.device)  # (B,)


def predict_eps_x0(
    model_fn: ModelFn, x: Tensor, t: Tensor, abar_t: float, prediction_type: PredictionType
) -> tuple[Tensor, Tensor]:
    """(ε̂, x̂_0) at x_t = x, timestep t with ᾱ_t = abar_t (a float64 Python float)."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"unknown prediction_type {prediction_type!r}; expected {PREDICTION_TYPES}"
        )
    out = model_fn(x, _t_batch(t, x)).to(x.dtype)
    return eps_and_x0(out, x, math.sqrt(abar_t), math.sqrt(1 - abar_t), prediction_type)


# ----------------------------------------------------------------------------
# Samplers


@torch.no_grad()
def sample_ddim(
    model_fn: ModelFn,
    x_T: Tensor,
    timesteps: Tensor,
    alphas_cumprod: Tensor,
    *,
    prediction_type: PredictionType = "epsilon",
    eta: float = 0.0,
    generators: Sequence[torch.Generator] | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """DDIM, Song et al. 2021, Eq. 12 with σ from Eq. 16: η = 0 is deterministic, η = 1 has
    the DDPM posterior variance.  x_T: (B, C, h, w) -> x_0 (B, C, h, w)."""
    abar = _schedule(timesteps, alphas_cumprod)
    x = x_T
    for i, t in enumerate(timesteps):
        a_t, a_prev = abar[i], abar[i + 1]
        eps, x0_hat = predict_eps_x0(model_fn, x, t, a_t, prediction_type)
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
        x = math.sqrt(a_prev) * x0_hat + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps
        if sigma > 0:
            x = x + sigma * _noise_like(x, generators)
        if callback is not None:
            callback(i, x, x0_hat)
    return x


@torch.no_grad()
def sample_ddpm(
    model_fn: ModelFn,
    x_T: Tensor,
    timesteps: Tensor,
    alphas_cumprod: Tensor,
    *,
    prediction_type: PredictionType = "epsilon",
    eta: float = 0.0,
    generators: Sequence[torch.Generator] | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Ancestral DDPM (Ho et al. 2020, Eqs. 6-7): x_prev ~ q(x_prev | x_t, x̂_0) with mean
    μ̃ = sqrt(ᾱ_prev) β/(1 - ᾱ_t) x̂_0 + sqrt(1 - β)(1 - ᾱ_prev)/(1 - ᾱ_t) x_t and variance
    β̃ = (1 - ᾱ_prev)/(1 - ᾱ_t) β, where β = 1 - ᾱ_t/ᾱ_prev spans the (possibly skipped)
    step.  Always stochastic: `eta` is accepted for the shared signature and ignored."""
    abar = _schedule(timesteps, alphas_cumprod)
    x = x_T
    for i, t in enumerate(timesteps):
        a_t, a_prev = abar[i], abar[i + 1]
        beta = 1 - a_t / a_prev
        eps, x0_hat = predict_eps_x0(model_fn, x, t, a_t, prediction_type)
        coef_x0 = math.sqrt(a_prev) * beta / (1 - a_t)
        coef_xt = math.sqrt(1 - beta) * (1 - a_prev) / (1 - a_t)
        variance = (1 - a_prev) / (1 - a_t) * beta
        x = coef_x0 * x0_hat + coef_xt * x
        if variance > 0:
            x = x + math.sqrt(variance) * _noise_like(x, generators)
        if callback is not None:
            callback(i, x, x0_hat)
    return x


@torch.no_grad()
def sample_dpmpp_2m(
    model_fn: ModelFn,
    x_T: Tensor,
    timesteps: Tensor,
    alphas_cumprod: Tensor,
    *,
    prediction_type: PredictionType = "epsilon",
    eta: float = 0.0,
    generators: Sequence[torch.Generator] | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """DPM-Solver++(2M), Lu et al. 2022 (arXiv:2211.01095), Algorithm 2: multistep, 2nd order,
    on the data prediction x̂_0.  With h_i = λ_{t_i} - λ_{t_{i-1}} and r = h_{i-1}/h_i,
        x_{t_i} = (σ_{t_i}/σ_{t_{i-1}}) x_{t_{i-1}} - α_{t_i} (e^{-h_i} - 1) D_i,
        D_i = (1 + 1/(2r)) x̂_0^(i-1) - 1/(2r) x̂_0^(i-2),
    first order (D = x̂_0, i.e. DDIM) on the first step and on the last step to ᾱ = 1, where
    h is infinite and the update is x = x̂_0.  Deterministic: `eta` and `generators` are
    accepted for the shared signature and ignored."""
    abar = _schedule(timesteps, alphas_cumprod)
    x = x_T
    x0_prev: Tensor | None = None
    h_prev = 0.0
    for i, t in enumerate(timesteps):
        a_s, a_t = abar[i], abar[i + 1]  # from s = timesteps[i] to the next (less noisy) time t
        _, x0_hat = predict_eps_x0(model_fn, x, t, a_s, prediction_type)
        if a_t >= 1.0:  # final step to the clean end point
            x = x0_hat
        else:
            lam_s = 0.5 * math.log(a_s / (1 - a_s))
            lam_t = 0.5 * math.log(a_t / (1 - a_t))
            h = lam_t - lam_s
            if x0_prev is None:
                d = x0_hat
            else:
                r = h_prev / h
                d = (1 + 1 / (2 * r)) * x0_hat - (1 / (2 * r)) * x0_prev
            sigma_ratio = math.sqrt((1 - a_t) / (1 - a_s))
            x = sigma_ratio * x - math.sqrt(a_t) * math.expm1(-h) * d
            h_prev = h
        x0_prev = x0_hat
        if callback is not None:
            callback(i, x, x0_hat)
    return x


Sampler = Callable[..., Tensor]
SAMPLERS: dict[str, Sampler] = {
    "ddpm": sample_ddpm,
    "ddim": sample_ddim,
    "dpmpp_2m": sample_dpmpp_2m,
}
