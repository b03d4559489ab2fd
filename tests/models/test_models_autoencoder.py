"""KL autoencoder: shapes, posterior maths, latent normalisation, identity control."""

import dataclasses
import math

import pytest
import torch

from models.autoencoder import (
    AE_PRESETS,
    PARAM_COUNTS,
    AutoencoderConfig,
    DiagonalGaussian,
    IdentityAutoencoder,
    autoencoder_loss,
    build_autoencoder,
    with_latent_stats,
)


def _images(batch=2, side=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, side, side, generator=g) * 2 - 1  # [-1, 1]


def test_every_preset_has_a_param_count():
    assert set(PARAM_COUNTS) == set(AE_PRESETS)


@pytest.mark.parametrize("name", sorted(AE_PRESETS))
def test_every_preset_builds_with_its_param_count(name):
    ae = build_autoencoder(AE_PRESETS[name])
    assert sum(p.numel() for p in ae.parameters()) == PARAM_COUNTS[name]


@pytest.mark.parametrize(
    "name, latent_shape",
    [("kl-f4", (2, 4, 16, 16)), ("kl-f8", (2, 4, 8, 8)), ("kl-f4-dec-s", (2, 4, 16, 16))],
)
def test_encode_decode_shapes(name, latent_shape):
    cfg = AE_PRESETS[name]
    ae = build_autoencoder(cfg)
    x = _images()
    posterior = ae.encode(x)
    assert posterior.mean.shape == posterior.logvar.shape == latent_shape
    assert cfg.downsample_factor == 64 // latent_shape[-1]
    assert ae.decode(posterior.sample()).shape == x.shape
    recon, post = ae(x, torch.Generator().manual_seed(0))
    assert recon.shape == x.shape and post.mean.shape == latent_shape


def test_identity_autoencoder_is_exact_and_weightless():
    cfg = AE_PRESETS["identity"]
    ae = build_autoencoder(cfg)
    assert isinstance(ae, IdentityAutoencoder) and cfg.downsample_factor == 1
    x = _images()
    assert torch.equal(ae.encode_latents(x, torch.Generator().manual_seed(0)), x)
    assert torch.equal(ae.decode_latents(x), x)
    assert torch.equal(ae.encode(x).mode(), x) and torch.equal(ae.encode(x).sample(), x)
    recon, posterior = ae(x)
    assert torch.equal(recon, x)
    assert torch.equal(posterior.kl(), torch.zeros(2))


def test_kl_of_standard_normal_is_zero():
    posterior = DiagonalGaussian(torch.zeros(3, 4, 2, 2), torch.zeros(3, 4, 2, 2))
    assert torch.equal(posterior.kl(), torch.zeros(3))


def test_kl_closed_form():
    # KL(N(μ, σ²) || N(0, 1)) = ½ (μ² + σ² - 1 - log σ²) per element, summed over C, h, w.
    mean = torch.full((2, 4, 2, 2), 0.5, dtype=torch.float64)
    logvar = torch.full((2, 4, 2, 2), math.log(2.0), dtype=torch.float64)
    per_element = 0.5 * (0.25 + 2.0 - 1.0 - math.log(2.0))
    expected = torch.full((2,), 16 * per_element, dtype=torch.float64)
    torch.testing.assert_close(DiagonalGaussian(mean, logvar).kl(), expected)


def test_posterior_sample_moments_and_generator():
    mean = torch.full((1, 1, 200, 200), 2.0, dtype=torch.float64)
    posterior = DiagonalGaussian(mean, torch.full_like(mean, math.log(0.25)))  # std 0.5
    z = posterior.sample(torch.Generator().manual_seed(0))
    n = z.numel()
    assert abs(z.mean().item() - 2.0) < 5 * 0.5 / math.sqrt(n)
    assert abs(z.std().item() - 0.5) < 5 * 0.5 / math.sqrt(2 * n)
    assert torch.equal(z, posterior.sample(torch.Generator().manual_seed(0)))
    assert torch.equal(posterior.mode(), mean)


def test_latent_normalisation_round_trips_and_standardises():
    torch.manual_seed(0)
    ae = build_autoencoder(AE_PRESETS["kl-f4"])
    x = _images(batch=4, side=32)
    raw = ae.encode(x).mode()  # (4, 4, 8, 8)
    cfg = with_latent_stats(AE_PRESETS["kl-f4"], raw)
    assert len(cfg.latent_mean) == len(cfg.latent_std) == 4
    normalised_ae = build_autoencoder(cfg)
    normalised_ae.load_state_dict(ae.state_dict())  # statistics are not in the state dict
    z = normalised_ae.encode_latents(x, sample_posterior=False)
    per_channel = z.transpose(0, 1).flatten(1)  # (C, B*h*w)
    torch.testing.assert_close(per_channel.mean(1), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(per_channel.std(1), torch.ones(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(normalised_ae.denormalize(z), raw, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(normalised_ae.decode_latents(z), ae.decode(raw), atol=1e-5, rtol=0)


def test_with_latent_stats_closed_form():
    latents = torch.tensor([1.0, 3.0, 5.0, 7.0]).view(2, 1, 1, 2)  # (B, C, h, w)
    cfg = dataclasses.replace(AE_PRESETS["kl-f4"], latent_channels=1)
    cfg = with_latent_stats(cfg, latents)
    assert cfg.latent_mean == (4.0,)
    assert cfg.latent_std == pytest.approx((math.sqrt(20 / 3),))  # unbiased std of 1, 3, 5, 7


def test_autoencoder_loss_is_l1_plus_weighted_kl():
    x = torch.zeros(2, 3, 4, 4)
    recon = torch.full_like(x, 0.5)
    posterior = DiagonalGaussian(torch.ones(2, 4, 1, 1), torch.zeros(2, 4, 1, 1))  # KL 2 each
    loss, logs = autoencoder_loss(x, recon, posterior, kl_weight=0.1)
    assert loss.item() == pytest.approx(0.5 + 0.1 * 2.0)
    assert logs == pytest.approx({"l1": 0.5, "kl": 2.0})


def test_bad_configs_raise():
    with pytest.raises(ValueError):
        AutoencoderConfig(decoder_channels=(16, 32))  # levels differ from the encoder
    with pytest.raises(ValueError):
        AutoencoderConfig(identity=True, latent_channels=4, encoder_channels=())
    with pytest.raises(ValueError):
        AutoencoderConfig(latent_mean=(0.0, 0.0))


def test_decoder_width_is_independent_of_encoder():
    small = build_autoencoder(AE_PRESETS["kl-f4-dec-s"])
    large = build_autoencoder(AE_PRESETS["kl-f4-dec-l"])
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(small.encoder) == n(large.encoder)
    assert n(small.decoder) < n(large.decoder)
