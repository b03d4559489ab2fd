"""A CLIP trained on the token rows its captions use equals one trained on its whole table
(tasks/train/token_rows.py), its checkpoints are in the full format, and it resumes from
checkpoints of either way of training."""

from __future__ import annotations

import dataclasses
import shutil

import pytest
import torch

from models.clip import ClipConfig, build_clip, clip_loss
from tasks.store.checkpoint import CheckpointDir, load_state, read_weights
from tasks.train.recipe import TrainConfig
from tasks.train.token_rows import (
    TABLE,
    RowsCheckpoint,
    TokenRows,
    decay_factors,
    optimizer_index,
    shrink_token_table,
)
from tasks.train.trainer import train
from tests.training_helpers import null_tracker

VOCAB = 300
CFG = ClipConfig(
    embed_dim=32, text_width=32, text_layers=1, text_heads=2, image_size=16, patch_size=8,
    vision_width=32, vision_layers=1, vision_heads=2, context_length=12, vocab_size=VOCAB,
)  # fmt: skip
# a large lr * weight_decay, so the unused rows' decay (x0.90 over the run) shows
TRAIN = TrainConfig(
    steps=8, batch_size=16, lr=1e-2, weight_decay=2.0, warmup_images=48, grad_clip=1.0,
    ema_halflife_images=64, ckpt_every=4, log_every=4,
)  # fmt: skip


def _captions(n: int = 48, seed: int = 0) -> torch.Tensor:
    """(n, 12) token ids as open_clip lays them out: SOT, words, EOT (the largest id), pads."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.zeros(n, CFG.context_length, dtype=torch.long)
    for row in tokens:
        words = torch.randint(5, 60, (int(torch.randint(2, 9, (), generator=g)),), generator=g)
        row[: len(words) + 2] = torch.cat(
            [torch.tensor([VOCAB - 2]), words, torch.tensor([VOCAB - 1])]
        )
    return tokens


class _Crash(RuntimeError):
    pass


def _train(folder, shrunk: bool, crash_at: int | None = None, cfg: TrainConfig = TRAIN):
    """Train the small CLIP on fixed pairs; `shrunk`: on the used token rows alone."""
    tokens = _captions()
    images = torch.rand(len(tokens), 3, 16, 16, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    model = build_clip(CFG)
    checkpoint = CheckpointDir(folder)
    if shrunk:
        rows = TokenRows.of(VOCAB, tokens)
        initial = shrink_token_table(model, rows)
        tokens = rows.index(tokens)
        checkpoint = RowsCheckpoint(checkpoint, rows, initial, cfg, optimizer_index(model))

    def loss_fn(net, step, micro, g):
        if step == crash_at:
            raise _Crash
        idx = torch.randperm(len(tokens), generator=g)[: cfg.batch_size]
        image_f, text_f, scale = net(images[idx], tokens[idx])[:3]
        return clip_loss(image_f, text_f, scale), len(idx)

    train(model, loss_fn, cfg, checkpoint, {}, null_tracker(), log=lambda *_: None)


def _assert_same_checkpoint(a, b, exact: bool = False):
    close = torch.equal if exact else lambda x, y: torch.allclose(x, y, rtol=1e-4, atol=1e-6)
    for name in ("model", "ema"):
        wa, wb = read_weights(a, name), read_weights(b, name)
        assert wa.keys() == wb.keys()
        for key in wa:
            assert wa[key].shape == wb[key].shape and close(wa[key], wb[key]), (name, key)
    sa, sb = load_state(a)["optimizer"]["state"], load_state(b)["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for index in sa:
        for key in ("exp_avg", "exp_avg_sq"):
            assert sa[index][key].shape == sb[index][key].shape
            assert close(sa[index][key], sb[index][key]), (index, key)


def test_a_shrunk_token_table_trains_as_the_whole_table_does(tmp_path):
    """Same weights, EMA and Adam moments, every row of the table included: the rows no
    caption uses take AdamW's decay in closed form."""
    _train(tmp_path / "whole", shrunk=False)
    _train(tmp_path / "rows", shrunk=True)
    _assert_same_checkpoint(tmp_path / "whole", tmp_path / "rows")

    unused = torch.ones(VOCAB, dtype=torch.bool)
    unused[torch.unique(_captions())] = False
    torch.manual_seed(0)
    initial = build_clip(CFG).token_embedding.weight.detach()[unused]
    model, ema = decay_factors(TRAIN, TRAIN.steps)
    assert model < 0.95 and model < ema < 1  # the decay shows, and the EMA lags it
    for name, factor in (("model", model), ("ema", ema)):
        table = read_weights(tmp_path / "rows", name)[TABLE][unused]
        torch.testing.assert_close(table, initial * factor, rtol=0, atol=0)
        whole = read_weights(tmp_path / "whole", name)[TABLE][unused]  # AdamW's own, step by step
        torch.testing.assert_close(whole, initial * factor, rtol=1e-6, atol=0)


def test_resume_either_way_of_training_from_either_checkpoint(tmp_path):
    """A shrunk run crashed after its step-4 checkpoint resumes bit-identical to an
    uninterrupted one; each way of training resumes from the other's checkpoint."""
    _train(tmp_path / "rows", shrunk=True)
    _train(tmp_path / "whole", shrunk=False)
    for first, then in ((True, True), (False, True), (True, False)):
        folder = tmp_path / f"crash-{first}-{then}"
        with pytest.raises(_Crash):
            _train(folder, shrunk=first, crash_at=6)
        assert load_state(folder)["step"] == 4
        _train(folder, shrunk=then)
        assert load_state(folder)["step"] == TRAIN.steps
        reference = tmp_path / ("rows" if then else "whole")
        _assert_same_checkpoint(reference, folder, exact=first == then)
        shutil.rmtree(folder)


def test_decay_factors_closed_form():
    """A constant lr: (1 - lr * wd)^n; without an EMA the EMA's factor is the model's; with
    one, the recursion ema <- d * ema + (1 - d) * model by hand for two steps."""
    flat = TrainConfig(steps=10, lr=0.1, weight_decay=0.5, warmup_images=0, min_lr_ratio=1.0,
                       ema_halflife_images=0)  # fmt: skip
    model, ema = decay_factors(flat, 7)
    assert model == pytest.approx(0.95**7, rel=1e-12) and ema == model
    assert decay_factors(flat, 0) == (1.0, 1.0)
    with_ema = dataclasses.replace(flat, ema_halflife_images=64, batch_size=64)
    from tasks.train.recipe import ema_decay_at

    d0, d1 = ema_decay_at(0, with_ema), ema_decay_at(1, with_ema)
    ema_by_hand = d1 * (d0 + (1 - d0) * 0.95) + (1 - d1) * 0.95**2
    assert decay_factors(with_ema, 2) == pytest.approx((0.95**2, ema_by_hand), rel=1e-12)


def test_token_rows_keep_the_order_and_name_what_they_lack():
    rows = TokenRows.of(100, torch.tensor([[98, 5, 99, 0], [98, 7, 99, 0]]))
    assert rows.ids.tolist() == [0, 5, 7, 98, 99]
    index = rows.index(torch.tensor([[98, 7, 99, 0]]))
    assert index.tolist() == [[3, 2, 4, 0]] and index.argmax().item() == 2  # EOT stays largest
    with pytest.raises(ValueError, match=r"token ids \[6, 8\] are not among the trained rows"):
        rows.index(torch.tensor([5, 6, 8, 6]))
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 100\)"):
        TokenRows.of(100, torch.tensor([5, 100]))
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 100\)"):
        TokenRows.of(100, torch.tensor([-1, 5]))
    model = build_clip(CFG)
    with pytest.raises(ValueError, match="the token table has 300 rows, the ids index 100"):
        shrink_token_table(model, rows)
