"""Train a CLIP from scratch on the pairs with open_clip's loss: both towers, or a text tower
on another CLIP's locked image tower.

Checkpoint: checkpoints/clip/<name>/ (model + ema safetensors, config.json holding the
ClipConfig). Validation: image->text and text->image retrieval R@1 / R@5 on the val split
(eval/retrieval.py).

The grid's text encoders train against one shared image tower (`image_tower_spec`, trained
first, whole) copied in and locked: LiT (Zhai et al. 2022). Its image features are computed
once, so a step runs the text tower alone, and the text encoders differ only in their text
towers.

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
from models.clip import CLIP_PRESETS, ClipConfig, build_clip, clip_loss, make_tokenizer
from tasks.runtime.devices import pick_device
from tasks.store.checkpoint import CheckpointDir, digest
from tasks.store.images import to_float
from tasks.store.loaders import load_clip
from tasks.store.pairs import load_split_pairs, pairs_digest, raw_content_plan
from tasks.store.tracking import training_tracker
from tasks.store.workspace import Workspace
from tasks.train.token_rows import (
    RowsCheckpoint,
    TokenRows,
    optimizer_index,
    shrink_token_table,
)
from tasks.train.trainer import (
    TrainConfig,
    init_distributed,
    one_writer,
    rank_slice,
    train,
)

KIND = "clip"
FILTER_PREFIX = "filter-"
JUDGE_PREFIX = "judge-"
IMAGE_TOWER_PREFIX = "image-"
JUDGE_SEED = 1  # the conditioning CLIPs train with seed 0 by default
FILTER_CLIP_PRESET = "clip-tiny"
FILTER_CLIP_EPOCHS = 8.0  # passes over the raw pairs (312 steps of 128 on 5,000 pairs)


@dataclass(frozen=True)
class ClipTrainSpec:
    preset: str = "clip-tiny"  # key of CLIP_PRESETS
    raw_pairs: bool = False  # the filter CLIP: train on every raw pair (both splits)
    prefix: str = ""  # checkpoint name prefix, e.g. "filter-"
    # LiT: the name of a CLIP checkpoint whose image tower is copied and locked; only the
    # text tower (and the temperature) trains. Empty: both towers train from scratch.
    image_tower: str = ""
    # a training replicate of the grid (its own seed, `replicate_seed`): named "-r<replicate>"
    replicate: int = 0
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            steps=600,
            batch_size=128,
            lr=1e-3,
            weight_decay=0.1,
            warmup_images=6400,
            ema_halflife_images=0,
        )
    )

    def __post_init__(self):
        if self.preset not in CLIP_PRESETS:
            raise ValueError(
                f"unknown CLIP preset {self.preset!r}; choose from {list(CLIP_PRESETS)}"
            )

    @property
    def name(self) -> str:
        return replicate_name(f"{self.prefix}{self.preset}", self.replicate)


def replicate_name(name: str, replicate: int) -> str:
    """The checkpoint name of a training replicate: replicate 0 keeps the plain name."""
    return f"{name}-r{replicate}" if replicate else name


def replicate_seed(seed: int, replicate: int) -> int:
    """The training seed of a replicate (initialisation, data order, noise)."""
    return seed + replicate


def filter_clip_spec(
    workspace: Workspace,
    epochs: float = FILTER_CLIP_EPOCHS,
    steps: int | None = None,
    preset: str = FILTER_CLIP_PRESET,
) -> ClipTrainSpec:
    """The filter CLIP: the default recipe on every raw pair, for `epochs` passes over them
    (or a fixed number of `steps`). The passes count the pairs it trains on, duplicates
    dropped (`raw_content_plan`): the same pictures ingested again under new URLs leave its
    settings, and so its checkpoint, as they were."""
    recipe = ClipTrainSpec().train
    if steps is None:
        n_pairs = len(raw_content_plan(workspace.raw).unique_ids())
        steps = max(1, round(epochs * n_pairs / recipe.batch_size))
    return ClipTrainSpec(
        preset=preset,
        raw_pairs=True,
        prefix=FILTER_PREFIX,
        train=dataclasses.replace(recipe, steps=steps),
    )


def image_tower_spec() -> ClipTrainSpec:
    """The shared image tower: a whole CLIP of the smallest preset on the kept pairs (its own
    text tower is a by-product); the grid's text encoders then train against its image
    tower, locked, so they differ only in their text towers."""
    return ClipTrainSpec(preset=list(CLIP_PRESETS)[0], prefix=IMAGE_TOWER_PREFIX)


def judge_clip_spec(steps: int | None = None, preset: str | None = None) -> ClipTrainSpec:
    """The judge CLIP: the largest preset (by default), the default recipe, its own seed."""
    recipe = ClipTrainSpec().train
    return ClipTrainSpec(
        preset=preset or list(CLIP_PRESETS)[-1],
        prefix=JUDGE_PREFIX,
        train=dataclasses.replace(recipe, steps=steps or recipe.steps, seed=JUDGE_SEED),
    )


def lit_config(preset: ClipConfig, image_tower: ClipConfig) -> ClipConfig:
    """The preset's text tower on a locked image tower: the shared embedding width and every
    vision field come from the image tower's config."""
    fields = ("embed_dim", "image_size", "patch_size", "vision_width", "vision_layers")
    return dataclasses.replace(
        preset, **{k: getattr(image_tower, k) for k in (*fields, "vision_heads")}
    )


def lock_image_tower(model, locked) -> None:
    """Copy `locked`'s image tower into `model` and freeze it: LiT (Zhai et al. 2022)."""
    model.visual.load_state_dict(locked.visual.state_dict())
    model.visual.requires_grad_(False)


@torch.no_grad()
def image_features(model, images: torch.Tensor, device, batch: int = 512) -> torch.Tensor:
    """Unit-norm features of a locked image tower, (N, E), computed once."""
    model.visual.eval()
    return torch.cat(
        [
            model.encode_image(to_float(images[k : k + batch]).to(device), normalize=True)
            for k in range(0, len(images), batch)
        ]
    )


@one_writer(KIND)
def train_clip(spec: ClipTrainSpec, workspace: Workspace, log=print) -> dict:
    data = load_split_pairs(None if spec.raw_pairs else workspace.pairs, workspace.raw)
    train_images, train_captions, _ = data["train"]
    val_images, val_captions, _ = data["val"]
    if spec.raw_pairs:  # every raw pair; the val retrieval figures are then in-sample
        train_images = torch.cat([train_images, val_images])
        train_captions = train_captions + val_captions
    device = pick_device(spec.train.device)
    inputs = {"pairs": pairs_digest(data)}
    cfg = dataclasses.replace(CLIP_PRESETS[spec.preset], image_size=train_images.shape[1])
    locked = None
    if spec.image_tower:  # a missing tower is one error naming it, before training starts
        locked, locked_cfg = load_clip(workspace, spec.image_tower, device)
        if locked_cfg.image_size != train_images.shape[1]:
            raise ValueError(
                f"image tower {spec.image_tower!r} takes {locked_cfg.image_size} px images; "
                f"the pairs are {train_images.shape[1]} px"
            )
        cfg = lit_config(cfg, locked_cfg)
        # the tower's weights digest is the input; config["image_tower"] (its name, below)
        # shares the key, so a renamed copy of the same tower is not a change of settings
        inputs["image_tower"] = digest(workspace.checkpoint(KIND, spec.image_tower))
    tokenizer = make_tokenizer(cfg)
    train_tokens = tokenizer(train_captions)  # (N, L), once
    val_tokens = tokenizer(val_captions[:512])
    info = init_distributed(device)
    checkpoint = CheckpointDir(workspace.checkpoint(KIND, spec.name))
    config = {
        "kind": KIND,
        "preset": spec.preset,
        "clip": asdict(cfg),
        "raw_pairs": spec.raw_pairs,
    }
    if spec.replicate:  # replicate 0 keeps the config (and so the checkpoint) it always had
        config["replicate"] = spec.replicate
    if locked is not None:
        config["image_tower"] = spec.image_tower

    torch.manual_seed(spec.train.seed)
    model = build_clip(cfg)
    features = None
    if locked is not None:
        lock_image_tower(model, locked)
        features = image_features(model.to(device), train_images, device)
        del locked
    # the token table trains on the rows these captions use; the checkpoint holds it whole
    rows = TokenRows.of(cfg.vocab_size, train_tokens, val_tokens)
    initial = shrink_token_table(model, rows)
    train_tokens, val_tokens = rows.index(train_tokens), rows.index(val_tokens)
    checkpoint = RowsCheckpoint(checkpoint, rows, initial, spec.train, optimizer_index(model))

    def loss_fn(net, step, micro, g):
        per_micro = spec.train.batch_size // spec.train.grad_accum
        idx = rank_slice(torch.randperm(len(train_images), generator=g)[:per_micro], info)
        tokens = train_tokens[idx].to(device)
        if features is None:
            image_f, text_f, logit_scale = net(to_float(train_images[idx]).to(device), tokens)[:3]
        else:  # the locked tower's features; the forward runs the text tower alone
            _, text_f, logit_scale = net(None, tokens)[:3]
            image_f = features[idx.to(features.device)]
        return clip_loss(image_f, text_f, logit_scale, info.rank, info.world), len(idx)

    def validate(ema, step):
        images = to_float(val_images[:512]).to(device)
        metrics = retrieval_metrics(ema, images, val_tokens.to(device), val_captions[:512])
        return {f"val_{k}": v for k, v in metrics.items()}

    tracker = training_tracker(workspace, KIND, spec.name)
    result = train(
        model, loss_fn, spec.train, checkpoint, config, tracker, validate, log=log, desc=KIND,
        inputs=inputs,
    )  # fmt: skip
    if result.trained_now and info.is_main:
        with tracker(result.run_id) as t:
            t.log_model(f"{KIND}-{spec.name}", checkpoint.path, config)
    return result.summary(KIND, spec.name, checkpoint.path)
