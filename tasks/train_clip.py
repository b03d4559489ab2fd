"""Train a CLIP (image and text towers) from scratch on the pairs with open_clip's loss.

Checkpoint: checkpoints/clip/<name>/ (model + ema safetensors, config.json holding the
ClipConfig). Validation: image->text and text->image retrieval R@1 / R@5 on the val split
(eval/retrieval.py).

The judge CLIP (`judge_clip_spec`) scores generated images in evaluation: the largest preset,
trained on the kept pairs with its own seed, so it is never a text encoder under test.

The filter CLIP (`filter_clip_spec`) is the same recipe trained on every raw pair, both
splits: it scores every raw pair, and a pair it never saw would score lower for being unseen
and be dropped as if mis-captioned. Its budget is set in epochs over the raw pairs, so a
small data set is not trained into memorising its wrong captions.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field

import torch

from eval.retrieval import retrieval_metrics
from models.clip import CLIP_PRESETS, build_clip, clip_loss, make_tokenizer
from tasks.checkpoint import CheckpointDir
from tasks.pairs import ParquetPairs, load_split_pairs, pairs_digest
from tasks.plots import to_float
from tasks.tracking import training_tracker
from tasks.trainer import TrainConfig, init_distributed, one_writer, pick_device, rank_slice, train
from tasks.workspace import Workspace

KIND = "clip"
FILTER_PREFIX = "filter-"
JUDGE_PREFIX = "judge-"
JUDGE_SEED = 1  # the conditioning CLIPs train with seed 0 by default
FILTER_CLIP_PRESET = "clip-tiny"
FILTER_CLIP_EPOCHS = 8.0  # passes over the raw pairs (312 steps of 128 on 5,000 pairs)


@dataclass(frozen=True)
class ClipTrainSpec:
    preset: str = "clip-tiny"  # key of CLIP_PRESETS
    raw_pairs: bool = False  # the filter CLIP: train on every raw pair (both splits)
    prefix: str = ""  # checkpoint name prefix, e.g. "filter-"
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            steps=600, batch_size=128, lr=1e-3, weight_decay=0.1, ema_decay=0.0
        )
    )

    def __post_init__(self):
        if self.preset not in CLIP_PRESETS:
            raise ValueError(
                f"unknown CLIP preset {self.preset!r}; choose from {list(CLIP_PRESETS)}"
            )

    @property
    def name(self) -> str:
        return f"{self.prefix}{self.preset}"


def filter_clip_spec(
    workspace: Workspace,
    epochs: float = FILTER_CLIP_EPOCHS,
    steps: int | None = None,
    preset: str = FILTER_CLIP_PRESET,
) -> ClipTrainSpec:
    """The filter CLIP: the default recipe on every raw pair, for `epochs` passes over them
    (or a fixed number of `steps`)."""
    recipe = ClipTrainSpec().train
    if steps is None:
        n_pairs = len(ParquetPairs(workspace.raw))
        steps = max(1, round(epochs * n_pairs / recipe.batch_size))
    return ClipTrainSpec(
        preset=preset,
        raw_pairs=True,
        prefix=FILTER_PREFIX,
        train=dataclasses.replace(recipe, steps=steps),
    )


def judge_clip_spec(steps: int | None = None, preset: str | None = None) -> ClipTrainSpec:
    """The judge CLIP: the largest preset (by default), the default recipe, its own seed."""
    recipe = ClipTrainSpec().train
    return ClipTrainSpec(
        preset=preset or list(CLIP_PRESETS)[-1],
        prefix=JUDGE_PREFIX,
        train=dataclasses.replace(recipe, steps=steps or recipe.steps, seed=JUDGE_SEED),
    )


@one_writer(KIND)
def train_clip(spec: ClipTrainSpec, workspace: Workspace, log=print) -> dict:
    data = load_split_pairs(None if spec.raw_pairs else workspace.pairs, workspace.raw)
    train_images, train_captions, _ = data["train"]
    val_images, val_captions, _ = data["val"]
    if spec.raw_pairs:  # every raw pair; the val retrieval figures are then in-sample
        train_images = torch.cat([train_images, val_images])
        train_captions = train_captions + val_captions
    cfg = dataclasses.replace(CLIP_PRESETS[spec.preset], image_size=train_images.shape[1])
    tokenizer = make_tokenizer(cfg)
    train_tokens = tokenizer(train_captions)  # (N, L), once
    val_tokens = tokenizer(val_captions[:512])
    device = pick_device(spec.train.device)
    info = init_distributed(device)
    checkpoint = CheckpointDir(workspace.checkpoint(KIND, spec.name))
    config = {
        "kind": KIND,
        "preset": spec.preset,
        "clip": asdict(cfg),
        "raw_pairs": spec.raw_pairs,
    }

    torch.manual_seed(spec.train.seed)
    model = build_clip(cfg)

    def loss_fn(net, step, micro, g):
        per_micro = spec.train.batch_size // spec.train.grad_accum
        idx = rank_slice(torch.randperm(len(train_images), generator=g)[:per_micro], info)
        images = to_float(train_images[idx]).to(device)
        image_f, text_f, logit_scale = net(images, train_tokens[idx].to(device))[:3]
        return clip_loss(image_f, text_f, logit_scale, info.rank, info.world), len(idx)

    def validate(ema, step):
        images = to_float(val_images[:512]).to(device)
        metrics = retrieval_metrics(ema, images, val_tokens.to(device), val_captions[:512])
        return {f"val_{k}": v for k, v in metrics.items()}

    tracker = training_tracker(workspace, KIND, spec.name)
    result = train(
        model, loss_fn, spec.train, checkpoint, config, tracker, validate, log=log, desc=KIND,
        inputs={"pairs": pairs_digest(data)},
    )  # fmt: skip
    if result.trained_now and info.is_main:
        with tracker(result.run_id) as t:
            t.log_model(f"{KIND}-{spec.name}", checkpoint.path, config)
    return result.summary(KIND, spec.name, checkpoint.path)
