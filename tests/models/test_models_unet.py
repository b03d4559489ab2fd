"""U-Net, attention and classifier-free guidance."""

import dataclasses

import pytest
import torch

from models.attention import Attention, SpatialTransformer
from models.diffusion import make_alphas_cumprod, to_epsilon
from models.guidance import guided_model_fn
from models.sampling import (
    make_generators,
    make_timesteps,
    randn_per_image,
    sample_ddim,
)
from models.unet import PARAM_COUNTS, UNET_PRESETS, UNet, UNetConfig, timestep_embedding

TINY = UNetConfig(
    base_channels=16, channel_mult=(1, 2), attn_levels=(0, 1), context_dim=12, head_dim=8,
    norm_groups=4,
)  # fmt: skip


def _tiny_unet(seed=0, **changes):
    torch.manual_seed(seed)
    unet = UNet(dataclasses.replace(TINY, **changes)).eval()
    for p in unet.parameters():  # zero-initialised outputs would hide bugs: randomise all
        torch.nn.init.normal_(p, std=0.2)
    return unet


def _context(batch=2, length=5, dim=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    context = torch.randn(batch, length, dim, generator=g)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[0, 3:] = False
    return context, mask


# ----------------------------------------------------------------------------
# Presets


def test_every_preset_has_a_param_count():
    assert set(PARAM_COUNTS) == set(UNET_PRESETS)


@pytest.mark.parametrize("name", sorted(UNET_PRESETS))
def test_every_preset_builds_with_its_param_count(name):
    unet = UNet(UNET_PRESETS[name])
    assert sum(p.numel() for p in unet.parameters()) == PARAM_COUNTS[name]


def test_small_preset_forward_on_8x8_latents_and_untrained_output_is_zero():
    unet = UNet(UNET_PRESETS["unet-s"])
    x = torch.randn(2, 4, 8, 8)
    out = unet(x, torch.tensor([0, 999]), torch.randn(2, 7, 128), torch.ones(2, 7, dtype=bool))
    assert out.shape == x.shape
    assert (out == 0).all()  # zero-initialised output convolution


def test_bad_config_raises():
    with pytest.raises(ValueError):
        UNetConfig(attn_levels=(3,))
    with pytest.raises(ValueError):
        UNetConfig(base_channels=40)  # 40 is not divisible by 16 GroupNorm groups


# ----------------------------------------------------------------------------
# Forward


def test_forward_shapes_and_timestep_types():
    unet = _tiny_unet()
    x = torch.randn(2, 4, 8, 8)
    context, mask = _context()
    out_int = unet(x, torch.tensor([3, 500]), context, mask)
    out_float = unet(x, torch.tensor([3.0, 500.0]), context, mask)
    assert out_int.shape == x.shape
    torch.testing.assert_close(out_int, out_float)
    assert out_int.abs().sum() > 0


def test_other_context_dim_and_pixel_channels():
    unet = _tiny_unet(context_dim=20, in_channels=3, out_channels=3)
    out = unet(torch.randn(1, 3, 4, 4), torch.tensor([1]), torch.randn(1, 6, 20))
    assert out.shape == (1, 3, 4, 4)


def test_batch_rows_independent():
    unet = _tiny_unet()
    x = torch.randn(2, 4, 8, 8)
    context, mask = _context()
    both = unet(x, torch.tensor([3, 500]), context, mask)
    second = unet(x[1:], torch.tensor([500]), context[1:], mask[1:])
    torch.testing.assert_close(both[1:], second, rtol=1e-5, atol=1e-5)


def test_timestep_embedding_closed_form():
    emb = timestep_embedding(torch.tensor([0, 7]), 6)  # freqs 1, 10000^(-1/3), 10000^(-2/3)
    freqs = torch.tensor([1.0, 10_000 ** (-1 / 3), 10_000 ** (-2 / 3)])
    torch.testing.assert_close(emb[0], torch.tensor([1.0, 1, 1, 0, 0, 0]))
    torch.testing.assert_close(emb[1], torch.cat([torch.cos(7 * freqs), torch.sin(7 * freqs)]))


# ----------------------------------------------------------------------------
# Attention


def _reference_attention(x, context, w_q, w_k, w_v, heads, mask=None):
    """softmax(q k^T / sqrt(d)) v per head, written out with plain matmuls."""
    q, k, v = x @ w_q.T, context @ w_k.T, context @ w_v.T
    b, n, inner = q.shape
    d = inner // heads
    q, k, v = (t.view(b, -1, heads, d).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / d**0.5  # (B, heads, N, L)
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    return (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, inner)


def test_attention_matches_written_out_softmax():
    """Self- and masked cross-attention equal softmax(q k^T / sqrt(d)) v per head."""
    torch.manual_seed(0)
    x, (context, mask) = torch.randn(2, 10, 16), _context()
    for attn, ctx, ctx_mask in (
        (Attention(query_dim=16, context_dim=None, heads=2, head_dim=8), x, None),
        (Attention(query_dim=16, context_dim=12, heads=2, head_dim=8), context, mask),
    ):
        weights = attn.to_q.weight, attn.to_k.weight, attn.to_v.weight
        reference = _reference_attention(x, ctx, *weights, heads=2, mask=ctx_mask)
        got = attn(x) if ctx is x else attn(x, ctx, ctx_mask)
        torch.testing.assert_close(got, attn.to_out(reference))


def test_cross_attention_invariant_to_context_permutation():
    torch.manual_seed(0)
    attn = Attention(query_dim=16, context_dim=12, heads=2, head_dim=8)
    x = torch.randn(2, 10, 16)
    context, _ = _context()
    perm = torch.tensor([4, 2, 0, 3, 1])
    torch.testing.assert_close(attn(x, context), attn(x, context[:, perm]))


def test_masked_tokens_have_no_effect():
    torch.manual_seed(0)
    block = SpatialTransformer(16, context_dim=12, head_dim=8, norm_groups=4)
    torch.nn.init.normal_(block.proj_out.weight)  # not the zero init, so attention shows
    x = torch.randn(2, 16, 4, 4)
    context, mask = _context()
    changed = context.clone()
    changed[~mask] = 100.0  # row 0, positions 3 and 4
    torch.testing.assert_close(block(x, context, mask), block(x, changed, mask))
    assert not torch.allclose(block(x, context), block(x, changed))  # without a mask they count


def test_unet_ignores_masked_tokens():
    unet = _tiny_unet()
    x = torch.randn(2, 4, 8, 8)
    context, mask = _context()
    changed = context.clone()
    changed[~mask] = -50.0
    t = torch.tensor([10, 900])
    torch.testing.assert_close(unet(x, t, context, mask), unet(x, t, changed, mask))


# ----------------------------------------------------------------------------
# Guidance


class CountingUNet(torch.nn.Module):
    """Wraps a U-Net and records the batch size of each call."""

    def __init__(self, unet):
        super().__init__()
        self.unet, self.batch_sizes = unet, []

    def forward(self, x_t, t, context, context_mask=None):
        self.batch_sizes.append(len(x_t))
        return self.unet(x_t, t, context, context_mask)


def test_guidance_scale_one_equals_conditional_exactly():
    unet = CountingUNet(_tiny_unet())
    context, mask = _context()
    null, null_mask = _context(batch=1, seed=9)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([100, 700])
    model_fn = guided_model_fn(unet, context, mask, null, null_mask, 1.0)
    expected = unet(x, t, context, mask)
    assert torch.equal(model_fn(x, t), expected)
    assert unet.batch_sizes == [2, 2]  # no unconditional pass


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_guidance_is_one_batched_pass_and_extrapolates_in_epsilon(prediction_type):
    # Guidance combines raw outputs; converted to ε it must equal Eq. 6 on converted outputs.
    unet, ac = CountingUNet(_tiny_unet()), make_alphas_cumprod("cosine")
    context, mask = _context()
    null, null_mask = _context(batch=1, seed=9)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([100, 700])
    model_fn = guided_model_fn(unet, context, mask, null, null_mask, 4.0)
    guided = to_epsilon(model_fn(x, t), x, t, ac, prediction_type)
    assert unet.batch_sizes == [4]  # conditional and unconditional in one forward
    null_b, null_mask_b = null.expand(2, -1, -1), null_mask.expand(2, -1)
    eps_c = to_epsilon(unet(x, t, context, mask), x, t, ac, prediction_type)
    eps_u = to_epsilon(unet(x, t, null_b, null_mask_b), x, t, ac, prediction_type)
    torch.testing.assert_close(guided, eps_u + 4.0 * (eps_c - eps_u), rtol=1e-4, atol=1e-4)


def test_sampling_with_unet_is_deterministic_per_seed():
    unet, ac = _tiny_unet(), make_alphas_cumprod("cosine")
    steps = make_timesteps(1000, 4, "trailing")

    def generate(seeds):
        context = _context(batch=3)[0][: len(seeds)]
        null = torch.zeros(1, 5, 12)
        model_fn = guided_model_fn(unet, context, None, null, None, 3.0)
        gens = make_generators(seeds)
        x_T = randn_per_image((4, 8, 8), gens)
        return sample_ddim(model_fn, x_T, steps, ac, eta=1.0, generators=gens)

    assert torch.equal(generate([1, 2, 3]), generate([1, 2, 3]))


def test_sampling_with_unet_same_image_alone_or_in_batch():
    # The noise is per image, so only BLAS rounding (which depends on the batch size) can
    # differ: identical to float64 precision, bit-identical with a per-pixel denoiser
    # (see test_models_sampling.py).
    unet, ac = _tiny_unet().double(), make_alphas_cumprod("cosine")
    steps = make_timesteps(1000, 4, "trailing")
    context = _context(batch=3)[0].double()

    def generate(rows, seeds):
        null = torch.zeros(1, 5, 12, dtype=torch.float64)
        model_fn = guided_model_fn(unet, context[rows], None, null, None, 3.0)
        gens = make_generators(seeds)
        x_T = randn_per_image((4, 8, 8), gens, torch.float64)
        return sample_ddim(model_fn, x_T, steps, ac, eta=1.0, generators=gens)

    torch.testing.assert_close(generate([0, 1, 2], [1, 2, 3])[1:2], generate([1], [2]))
