"""CLIP presets built from scratch, tokenizer, text hidden states, frozen conditioner, loss."""

import dataclasses
import math

import pytest
import torch

from models.clip import (
    CLIP_PRESETS,
    PARAM_COUNTS,
    TextConditioner,
    build_clip,
    clip_loss,
    encode_text_tokens,
    length_groups,
    make_tokenizer,
)

CAPTIONS = ["a large red circle on the left", "", "a small blue square"]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return CLIP_PRESETS["clip-tiny"], build_clip(CLIP_PRESETS["clip-tiny"])


def test_every_preset_has_a_param_count():
    assert set(PARAM_COUNTS) == set(CLIP_PRESETS)


@pytest.mark.parametrize("name", sorted(CLIP_PRESETS))
def test_every_preset_builds_with_its_param_count(name):
    model = build_clip(CLIP_PRESETS[name])
    assert sum(p.numel() for p in model.parameters()) == PARAM_COUNTS[name]


def test_text_towers_differ_in_width_and_depth():
    cfgs = [CLIP_PRESETS[name] for name in ("clip-tiny", "clip-small", "clip-base")]
    assert len({c.text_width for c in cfgs}) == 3 and len({c.text_layers for c in cfgs}) == 3


def test_build_is_deterministic_under_manual_seed():
    cfg = CLIP_PRESETS["clip-tiny"]
    torch.manual_seed(3)
    a = build_clip(cfg).state_dict()
    torch.manual_seed(3)
    b = build_clip(cfg).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_tokenizer_is_open_clip_with_config_context_length(tiny):
    cfg, _ = tiny
    tokens = make_tokenizer(cfg)(CAPTIONS)
    assert tokens.shape == (3, cfg.context_length) and tokens.dtype == torch.int64
    assert tokens[1, :2].tolist() == [49406, 49407]  # "" is [SOT, EOT]
    short = make_tokenizer(dataclasses.replace(cfg, context_length=4))(CAPTIONS[:1])
    assert short.shape == (1, 4) and short[0, -1].item() == 49407  # truncated, EOT kept


def test_text_hidden_states_and_mask(tiny):
    import open_clip

    cfg, model = tiny
    tokens = make_tokenizer(cfg)(CAPTIONS)
    hidden, mask = encode_text_tokens(model, tokens)
    assert hidden.shape == (3, cfg.context_length, cfg.text_width)
    assert mask.shape == (3, cfg.context_length) and mask.dtype == torch.bool
    lengths = (tokens != 0).sum(1)  # no caption here contains token 0 ("!")
    assert mask.sum(1).tolist() == lengths.tolist() == [9, 2, 6]
    assert mask[:, 0].all() and not mask[1, 2:].any()
    # Pooling our hidden states at EOT and projecting gives open_clip's own text features.
    pooled = hidden[torch.arange(3), tokens.argmax(-1)] @ model.text_projection
    open_clips = open_clip.CLIP.encode_text(model, tokens)  # build_clip's class trims; not this
    torch.testing.assert_close(pooled, open_clips, rtol=1e-5, atol=1e-5)


def test_hidden_states_causal_so_padding_does_not_change_real_tokens(tiny):
    cfg, model = tiny
    tokens = make_tokenizer(cfg)(CAPTIONS[:1])
    full, mask = encode_text_tokens(model, tokens)
    trimmed, _ = encode_text_tokens(model, tokens[:, :12])  # shorter L also works
    torch.testing.assert_close(full[:, :12], trimmed)


def test_length_groups_merge_the_neighbours_that_add_the_least_padding():
    lengths = torch.tensor([9, 3, 12, 9, 3, 5, 9])  # distinct 3 (x2), 5, 9 (x3), 12
    as_lists = lambda groups: [(rows.tolist(), length) for rows, length in groups]  # noqa: E731
    assert as_lists(length_groups(lengths, 4)) == [([1, 4], 3), ([5], 5), ([0, 3, 6], 9), ([2], 12)]
    # merging 3 into 5 pads 2 rows by 2 (4); 5 into 9: 1 row by 4 (4); 9 into 12: 3 by 3 (9):
    # the first of the cheapest goes
    assert as_lists(length_groups(lengths, 3)) == [([1, 4, 5], 5), ([0, 3, 6], 9), ([2], 12)]
    # then {3, 5} into 9 pads 3 rows by 4 (12), 9 into 12 pads 3 by 3 (9)
    assert as_lists(length_groups(lengths, 2)) == [([1, 4, 5], 5), ([0, 2, 3, 6], 12)]
    assert as_lists(length_groups(lengths, 1)) == [(list(range(7)), 12)]
    assert as_lists(length_groups(lengths, 10)) == as_lists(length_groups(lengths, 4))
    with pytest.raises(ValueError, match="max_groups must be at least 1"):
        length_groups(lengths, 0)


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_encode_text_by_length_equals_open_clips(tiny, monkeypatch, groups):
    """The features, and their gradients, of the batch run in groups of like length, each to
    its longest caption, equal those of open_clip's encode_text over every context
    position."""
    import open_clip

    import models.clip

    monkeypatch.setattr(models.clip, "TEXT_GROUPS", groups)
    _, model = tiny
    captions = [*CAPTIONS, "a red circle", "a blue square on the left"]  # 9 2 6 5 8
    tokens = make_tokenizer(tiny[0])(captions)
    assert (tokens.argmax(-1) + 1).tolist() == [9, 2, 6, 5, 8]
    lengths = []  # the sequence length each transformer pass runs over
    hook = model.transformer.register_forward_hook(lambda m, a, out: lengths.append(out.shape[1]))
    ours = model.encode_text(tokens, normalize=True)
    theirs = open_clip.CLIP.encode_text(model, tokens, normalize=True)
    hook.remove()
    # one group: the longest caption; two: {2, 5, 6} and {8, 9}; four: {2} {5, 6} {8} {9}
    assert lengths == {1: [9], 2: [6, 9], 4: [2, 6, 8, 9]}[groups] + [32]  # open_clip's: 32
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    weights = torch.randn(ours.shape, generator=torch.Generator().manual_seed(0))
    grads = [torch.autograd.grad((f * weights).sum(), model.token_embedding.weight)[0]
             for f in (ours, theirs)]  # fmt: skip
    scale = grads[1].abs().max()  # sums over positions in another order: ~1e-6 of it apart
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-4 * scale.item())
    assert model.encode_text(tokens[:0]).shape == (0, ours.shape[1])  # an empty batch


def test_text_conditioner_is_frozen_copy(tiny):
    cfg, model = tiny
    conditioner = TextConditioner(model)
    assert conditioner.width == cfg.text_width
    assert all(not p.requires_grad for p in conditioner.parameters())
    assert all(p.requires_grad for p in model.parameters())  # the CLIP itself is untouched
    conditioner.train()
    assert not conditioner.training
    tokens = make_tokenizer(cfg)(CAPTIONS)
    context, mask = conditioner(tokens)
    hidden, expected_mask = encode_text_tokens(model, tokens)
    torch.testing.assert_close(context, hidden)
    assert torch.equal(mask, expected_mask) and not context.requires_grad
    assert "token_embedding.weight" in conditioner.state_dict()


def test_clip_loss_equal_logits_is_log_batch():
    features = torch.nn.functional.normalize(torch.ones(5, 8), dim=-1)
    loss = clip_loss(features, features, torch.tensor(100.0))
    assert loss.item() == pytest.approx(math.log(5))


def test_clip_loss_perfect_alignment_is_near_zero():
    features = torch.eye(4)
    assert clip_loss(features, features, torch.tensor(100.0)).item() < 1e-6


def test_image_features_at_configured_size(tiny):
    cfg, model = tiny
    features = model.encode_image(torch.randn(2, 3, cfg.image_size, cfg.image_size))
    assert features.shape == (2, cfg.embed_dim)
    model64 = build_clip(dataclasses.replace(cfg, image_size=64))
    assert model64.encode_image(torch.randn(1, 3, 64, 64)).shape == (1, cfg.embed_dim)
