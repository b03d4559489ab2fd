"""Schedules, forward process, targets, conversions and the loss: closed-form oracles."""

import math

import pytest
import torch

from models.diffusion import (
    append_dims,
    diffusion_loss,
    eps_and_x0,
    eps_from_v,
    eps_from_x0,
    make_alphas_cumprod,
    min_snr_weight,
    q_sample,
    sample_timesteps,
    snr,
    to_epsilon,
    to_x0,
    training_target,
    x0_from_eps,
    x0_from_v,
)

SCHEDULES = ["linear", "scaled_linear", "cosine"]
PREDICTION_TYPES = ["epsilon", "v_prediction", "sample"]


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("num_train_timesteps", [1000, 100])
def test_alphas_cumprod_strictly_decreasing_in_unit_interval(schedule, num_train_timesteps):
    ac = make_alphas_cumprod(schedule, num_train_timesteps)
    assert ac.dtype == torch.float64 and ac.shape == (num_train_timesteps,)
    assert (ac > 0).all() and (ac < 1).all()
    assert (ac[1:] < ac[:-1]).all()


def test_schedules_match_their_definitions():
    # Linear (DDPM): β from 1e-4 to 0.02, so ᾱ_0 = 1 - 1e-4.
    assert make_alphas_cumprod("linear")[0].item() == pytest.approx(1 - 1e-4, abs=1e-15)
    # Scaled linear (SD): sqrt(β) linear from sqrt(8.5e-4) to sqrt(1.2e-2).
    ac = make_alphas_cumprod("scaled_linear")
    betas = 1 - ac[1:] / ac[:-1]
    assert betas[-1].item() == pytest.approx(1.2e-2, rel=1e-9)
    # Cosine: ᾱ at index i is f((i+1)/T)/f(0) while β stays under the 0.999 clip.
    f = lambda tau: math.cos((tau + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    ac = make_alphas_cumprod("cosine")
    assert ac[499].item() == pytest.approx(f(0.5) / f(0.0), rel=1e-12)
    assert (1 - ac[-1] / ac[-2]).item() == pytest.approx(0.999)  # the clip is active at the end


def test_schedule_that_leaves_unit_interval_raises():
    with pytest.raises(ValueError):
        make_alphas_cumprod("linear", 10)  # β_end = 0.02 * 100 > 1


def test_q_sample_mean_and_variance_monte_carlo():
    # x_t = sqrt(ᾱ) x0 + sqrt(1 - ᾱ) ε: per row, mean sqrt(ᾱ_t) x0 and variance 1 - ᾱ_t.
    g = torch.Generator().manual_seed(0)
    ac = make_alphas_cumprod("cosine")
    t = torch.tensor([0, 10, 250, 500, 750, 999])
    n = 200_000
    x0 = torch.full((len(t), 1, 1, n), 0.7, dtype=torch.float64)
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    x_t = q_sample(x0, t, noise, ac).flatten(1)  # (B, n)
    a = ac[t]
    mean_se = (1 - a).sqrt() / math.sqrt(n)  # CLT: sd of a sample mean
    var_se = (1 - a) * math.sqrt(2 / (n - 1))  # sd of a Gaussian sample variance
    assert ((x_t.mean(1) - a.sqrt() * 0.7).abs() < 5 * mean_se).all()
    assert ((x_t.var(1) - (1 - a)).abs() < 5 * var_se).all()


def _xt_x0_eps(prediction_dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    ac = make_alphas_cumprod("scaled_linear")
    x0 = torch.randn(3, 4, 8, 8, generator=g, dtype=prediction_dtype)
    eps = torch.randn(3, 4, 8, 8, generator=g, dtype=prediction_dtype)
    t = torch.tensor([0, 500, 999])
    return ac, t, x0, eps, q_sample(x0, t, eps, ac)


def test_conversions_invert_each_other():
    ac, t, x0, eps, x_t = _xt_x0_eps()
    alpha = ac[t].sqrt().view(-1, 1, 1, 1)
    sigma = (1 - ac[t]).sqrt().view(-1, 1, 1, 1)
    v = training_target("v_prediction", x0, eps, t, ac)
    torch.testing.assert_close(v, alpha * eps - sigma * x0)  # Salimans & Ho 2022, §4
    torch.testing.assert_close(x0_from_eps(eps, x_t, alpha, sigma), x0)
    torch.testing.assert_close(eps_from_x0(x0, x_t, alpha, sigma), eps)
    torch.testing.assert_close(x0_from_v(v, x_t, alpha, sigma), x0)
    torch.testing.assert_close(eps_from_v(v, x_t, alpha, sigma), eps)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_to_epsilon_and_x0_from_each_target(prediction_type):
    ac, t, x0, eps, x_t = _xt_x0_eps()
    out = training_target(prediction_type, x0, eps, t, ac)  # a perfect prediction
    torch.testing.assert_close(to_epsilon(out, x_t, t, ac, prediction_type), eps)
    torch.testing.assert_close(to_x0(out, x_t, t, ac, prediction_type), x0)
    # the samplers' path: α, σ as float64 Python floats, one timestep
    abar = float(ac[500])
    e, x = eps_and_x0(out[1:2], x_t[1:2], abar**0.5, (1 - abar) ** 0.5, prediction_type)
    torch.testing.assert_close(e, eps[1:2])
    torch.testing.assert_close(x, x0[1:2])


def test_unknown_prediction_type_raises():
    ac, t, x0, eps, x_t = _xt_x0_eps()
    with pytest.raises(ValueError):
        to_epsilon(eps, x_t, t, ac, "score")


def test_v_target_is_unit_variance_combination():
    # v = α ε - σ x0 with α² + σ² = 1: for t where ᾱ = 1/2 it is (ε - x0)/sqrt(2).
    ac = torch.tensor([0.9, 0.5, 0.1], dtype=torch.float64)
    x0, eps = torch.ones(1, 1, 2, 2), torch.full((1, 1, 2, 2), 3.0)
    v = training_target("v_prediction", x0, eps, torch.tensor([1]), ac)
    torch.testing.assert_close(v, torch.full_like(v, 2 / math.sqrt(2)))


def test_min_snr_weight_closed_form():
    ac = torch.tensor([0.96, 0.8, 0.5, 0.2], dtype=torch.float64)  # SNR = 24, 4, 1, 0.25
    t = torch.arange(4)
    torch.testing.assert_close(
        snr(t, ac), torch.tensor([24.0, 4.0, 1.0, 0.25], dtype=torch.float64)
    )
    gamma = 5.0
    expected = {
        "epsilon": [5 / 24, 1.0, 1.0, 1.0],  # min(SNR, γ) / SNR
        "v_prediction": [5 / 25, 4 / 5, 1 / 2, 0.25 / 1.25],  # min(SNR, γ) / (SNR + 1)
        "sample": [5.0, 4.0, 1.0, 0.25],  # min(SNR, γ)
    }
    for prediction_type, weights in expected.items():
        got = min_snr_weight(t, ac, gamma, prediction_type)
        torch.testing.assert_close(got, torch.tensor(weights, dtype=torch.float64))


def test_diffusion_loss_is_mse_and_weighted_mean():
    ac = torch.tensor([0.96, 0.8], dtype=torch.float64)  # SNR 24, 4
    t = torch.tensor([0, 1])
    target = torch.zeros(2, 4, 2, 2)
    out = torch.stack([torch.full((4, 2, 2), 1.0), torch.full((4, 2, 2), 2.0)])  # MSE 1 and 4
    plain = diffusion_loss(out, target, t, ac, "epsilon")
    assert plain.item() == pytest.approx((1 + 4) / 2)
    weighted = diffusion_loss(out, target, t, ac, "epsilon", min_snr_gamma=5.0)
    assert weighted.item() == pytest.approx((5 / 24 * 1 + 1.0 * 4) / 2)
    assert weighted.dtype == torch.float32


def test_append_dims():
    assert append_dims(torch.zeros(3), 4).shape == (3, 1, 1, 1)


def test_logit_normal_timesteps_follow_their_cdf():
    """t = floor(T·σ(u)), u ~ N(0, s²), so P(t < k) = P(σ(u) < k/T) = Φ(logit(k/T) / s)."""
    T, n = 1000, 200_000
    g = torch.Generator().manual_seed(0)

    def expected(k: int, scale: float) -> float:
        logit = math.log(k / (T - k))
        return 0.5 * (1 + math.erf(logit / scale / math.sqrt(2)))  # Φ

    for scale in (1.0, 0.5):
        t = sample_timesteps(n, T, g, "logit_normal", scale=scale)
        assert 0 <= t.min() and t.max() <= T - 1 and t.dtype == torch.int64
        for k in (100, 269, 500, 731, 900):  # 269 = T·σ(-1): 15.9 % below it at scale 1
            share = (t < k).double().mean().item()
            assert share == pytest.approx(expected(k, scale), abs=0.003)  # SE ≤ 0.0012


def test_uniform_timesteps_and_bad_sampling():
    g = torch.Generator().manual_seed(0)
    t = sample_timesteps(100_000, 10, g)
    counts = torch.bincount(t, minlength=10).double() / len(t)
    assert counts.tolist() == pytest.approx([0.1] * 10, abs=0.005)
    with pytest.raises(ValueError, match="unknown timestep sampling 'beta'"):
        sample_timesteps(4, 10, g, "beta")
    with pytest.raises(ValueError, match="scale must be positive"):
        sample_timesteps(4, 10, g, "logit_normal", scale=0.0)
