"""Samplers against closed-form ideal denoisers, timestep spacings, per-image determinism."""

import math

import numpy as np
import pytest
import torch

from models.diffusion import append_dims, make_alphas_cumprod
from models.sampling import (
    SAMPLERS,
    make_generators,
    make_timesteps,
    randn_per_image,
    sample_ddim,
    sample_ddpm,
)

# ----------------------------------------------------------------------------
# Timestep spacings


def test_spacings_worked_example_t1000_10_steps():
    assert make_timesteps(1000, 10, "leading").tolist() == list(range(900, -1, -100))
    assert make_timesteps(1000, 10, "trailing").tolist() == list(range(999, 98, -100))
    assert make_timesteps(1000, 10, "linspace").tolist() == [
        999, 888, 777, 666, 555, 444, 333, 222, 111, 0,
    ]  # fmt: skip


def _diffusers_timesteps(big_t: int, n: int, spacing: str) -> np.ndarray:
    """diffusers' DDIMScheduler.set_timesteps (steps_offset=0), in numpy, as the oracle."""
    if spacing == "leading":
        return (np.arange(0, n) * (big_t // n)).round()[::-1].astype(np.int64)
    if spacing == "trailing":
        return (np.round(np.arange(big_t, 0, -big_t / n)).astype(np.int64) - 1)[:n]
    return np.linspace(0, big_t - 1, n).round()[::-1].astype(np.int64)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_spacings_match_diffusers_formulas(spacing):
    for big_t, n in [
        (1000, 1),
        (1000, 3),
        (1000, 27),
        (1000, 48),
        (1000, 61),
        (1000, 999),
        (37, 7),
    ]:
        got = make_timesteps(big_t, n, spacing)
        assert got.dtype == torch.int64 and len(got) == n
        np.testing.assert_array_equal(got.numpy(), _diffusers_timesteps(big_t, n, spacing))
        assert (got[1:] < got[:-1]).all() and got.min() >= 0 and got.max() < big_t


def test_bad_step_count_raises():
    with pytest.raises(ValueError):
        make_timesteps(1000, 0, "trailing")


# ----------------------------------------------------------------------------
# Point mass: the ideal ε is (x_t - sqrt(ᾱ) x0) / sqrt(1 - ᾱ), so every sampler lands on x0


def _point_mass_eps_fn(x0, ac):
    def eps_fn(x, t):
        a = append_dims(ac[t], x.ndim)
        return (x - a.sqrt() * x0) / (1 - a).sqrt()

    return eps_fn


@pytest.mark.parametrize(
    "name, eta", [("ddim", 0.0), ("ddim", 1.0), ("ddpm", 0.0), ("dpmpp_2m", 0.0)]
)
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_samplers_recover_point_mass(name, eta, spacing):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    ac = make_alphas_cumprod("scaled_linear")
    x_T = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    steps = make_timesteps(1000, 20, spacing)
    out = SAMPLERS[name](
        _point_mass_eps_fn(x0, ac), x_T, steps, ac, eta=eta, generators=make_generators([1, 2])
    )
    torch.testing.assert_close(out, x0)


# ----------------------------------------------------------------------------
# Gaussian data N(μ, s²): the ideal ε is E[ε | x_t] = σ (x_t - α μ) / (α² s² + σ²)

MU, S = 0.8, 0.5


def _gaussian_eps_fn(ac):
    def eps_fn(x, t):
        a = append_dims(ac[t], x.ndim)
        return (1 - a).sqrt() * (x - a.sqrt() * MU) / (a * S**2 + 1 - a)

    return eps_fn


@pytest.mark.parametrize(
    "name, steps, eta, bias",
    [  # bias: the discretisation error in the std measured at these step counts, plus margin
        ("ddim", 200, 0.0, 0.006),
        ("ddpm", 1000, 0.0, 0.004),
        ("dpmpp_2m", 25, 0.0, 0.002),
    ],
)
def test_samplers_match_gaussian_data(name, steps, eta, bias):
    # DDIM with η = 1 is the DDPM step (test_ddpm_equals_ddim_eta_one), so it is covered too.
    ac = make_alphas_cumprod("cosine")
    timesteps = make_timesteps(1000, steps, "trailing")
    gens = make_generators(range(4))
    a = ac[timesteps[0]].item()  # start from the exact marginal at the first timestep
    z = randn_per_image((1, 64, 128), gens, torch.float64)  # 4 x 8192 scalars
    x_T = math.sqrt(a) * MU + math.sqrt(a * S**2 + 1 - a) * z
    x = SAMPLERS[name](_gaussian_eps_fn(ac), x_T, timesteps, ac, eta=eta, generators=gens)
    n = x.numel()
    assert abs(x.mean().item() - MU) < 5 * S / math.sqrt(n)  # CLT
    assert abs(x.std().item() - S) < 5 * S / math.sqrt(2 * n) + bias


def test_ddpm_equals_ddim_eta_one():
    # Both are the DDPM posterior step, written two ways.
    ac = make_alphas_cumprod("linear")
    g = torch.Generator().manual_seed(3)
    x_T = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    steps = make_timesteps(1000, 30, "trailing")
    eps_fn = _gaussian_eps_fn(ac)
    a = sample_ddpm(eps_fn, x_T, steps, ac, generators=make_generators([5, 6]))
    b = sample_ddim(eps_fn, x_T, steps, ac, eta=1.0, generators=make_generators([5, 6]))
    torch.testing.assert_close(a, b)


# ----------------------------------------------------------------------------
# Per-image randomness


def test_randn_per_image_rows_independent_of_batch():
    batch = randn_per_image((4, 8, 8), [7, 8, 9])
    alone = randn_per_image((4, 8, 8), [8])
    assert batch.shape == (3, 4, 8, 8) and batch.dtype == torch.float32
    assert torch.equal(batch[1], alone[0])
    assert torch.equal(batch[0], torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(7)))


def test_randn_per_image_generators_advance():
    gens = make_generators([1])
    first, second = randn_per_image((3,), gens), randn_per_image((3,), gens)
    assert not torch.equal(first, second)
    fresh = make_generators([1])
    assert torch.equal(torch.cat([first, second], 1), randn_per_image((6,), fresh))


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_same_seed_same_image_at_any_batch_size(name):
    ac = make_alphas_cumprod("cosine")
    steps = make_timesteps(1000, 8, "trailing")
    eps_fn = _gaussian_eps_fn(ac)

    def generate(seeds):
        gens = make_generators(seeds)
        x_T = randn_per_image((4, 8, 8), gens)  # then the same generators for ancestral noise
        return SAMPLERS[name](eps_fn, x_T, steps, ac, eta=1.0, generators=gens)

    batch = generate([11, 12, 13])
    assert torch.equal(batch, generate([11, 12, 13]))  # twice: bit-identical
    assert torch.equal(batch[1:2], generate([12]))  # alone: bit-identical
    assert batch.dtype == torch.float32


def test_callback_sees_every_step():
    ac = make_alphas_cumprod("cosine")
    seen = []
    steps = make_timesteps(1000, 5, "trailing")
    x_T = torch.randn(1, 1, 2, 2, dtype=torch.float64)
    callback = lambda i, x, x0_hat: seen.append(i)  # noqa: E731
    SAMPLERS["dpmpp_2m"](_gaussian_eps_fn(ac), x_T, steps, ac, callback=callback)
    assert seen == [0, 1, 2, 3, 4]


# ----------------------------------------------------------------------------
# Float32 precision with v-prediction: the sampler turns v into x̂_0 = α x_t - σ v directly


def _gaussian_v_fn(ac):
    """The ideal v for N(MU, S²) data, computed in x_t's dtype: v = α ε̂ - σ x̂_0."""

    def v_fn(x, t):
        a = append_dims(ac[t], x.ndim).to(x.dtype)
        alpha, sigma = a.sqrt(), (1 - a).sqrt()
        x0_hat = MU + alpha * S**2 * (x - alpha * MU) / (a * S**2 + 1 - a)
        return alpha * (x - alpha * x0_hat) / sigma - sigma * x0_hat

    return v_fn


@pytest.mark.parametrize("name", ["ddim", "dpmpp_2m"])
def test_v_prediction_in_float32_matches_float64(name):
    ac = make_alphas_cumprod("cosine")  # ᾱ at t = 999 is 2.4e-9: α = 4.9e-5
    timesteps = make_timesteps(1000, 25, "trailing")
    x_T = randn_per_image((4, 8, 8), [0, 1, 2, 3], torch.float64)

    def run(dtype):
        seen = []
        out = SAMPLERS[name](
            _gaussian_v_fn(ac), x_T.to(dtype), timesteps, ac, prediction_type="v_prediction",
            callback=lambda i, x, x0_hat: seen.append(x0_hat.double()),
        )  # fmt: skip
        return out.double(), seen

    out32, seen32 = run(torch.float32)
    out64, seen64 = run(torch.float64)
    assert (seen32[0] - seen64[0]).abs().max() < 2e-6  # the noisiest step's x̂_0
    assert max((a - b).abs().max() for a, b in zip(seen32, seen64, strict=True)) < 1e-5
    assert (out32 - out64).abs().max() < 1e-5
    # The route through ε divides by α: float32 loses about three digits at that step.
    x, t = x_T.float(), timesteps[:1].expand(len(x_T))
    alpha, sigma = math.sqrt(ac[999].item()), math.sqrt(1 - ac[999].item())
    eps = sigma * x + alpha * _gaussian_v_fn(ac)(x, t)
    assert ((x - sigma * eps) / alpha - seen64[0]).abs().max() > 1e-4


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_every_prediction_type_recovers_the_point_mass(prediction_type):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
    ac = make_alphas_cumprod("cosine")
    eps_fn = _point_mass_eps_fn(x0, ac)

    def model_fn(x, t):
        a = append_dims(ac[t], x.ndim)
        eps = eps_fn(x, t)
        return {"epsilon": eps, "sample": x0, "v_prediction": a.sqrt() * eps - (1 - a).sqrt() * x0}[
            prediction_type
        ]

    x_T = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    out = sample_ddim(
        model_fn, x_T, make_timesteps(1000, 10, "trailing"), ac, prediction_type=prediction_type
    )
    torch.testing.assert_close(out, x0)
    with pytest.raises(ValueError, match="unknown prediction_type 'x0'"):
        sample_ddim(model_fn, x_T, make_timesteps(1000, 2, "trailing"), ac, prediction_type="x0")
