"""Train a CLIP (image and text towers) from scratch on the pairs with open_clip's loss.

Checkpoint: checkpoints/clip/<preset>/ (model + ema safetensors, config.json holding the
ClipConfig). Validation: image->text and text->image retrieval R@1 / R@5 on the val split,
where a retrieved caption counts as right when its text equals the pair's caption (the
built-in data repeats captions, so index equality would be too strict).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from models.clip import CLIP_PRESETS, ClipConfig, build_clip, clip_loss, make_tokenizer
from tasks.checkpoint import dataclass_from_json, load_config, load_weights
from tasks.pairs import load_split_pairs, to_float
from tasks.tracking import training_tracker
from tasks.trainer import TrainConfig, init_distributed, pick_device, rank_slice, train
from tasks.workspace import Workspace

KIND = "clip"


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

    @property
    def name(self) -> str:
        return f"{self.prefix}{self.preset}"


def load_clip(ckpt_dir: Path, device: torch.device | str = "cpu"):
    """(CLIP model in eval mode, its ClipConfig) from a checkpoint."""
    cfg = dataclass_from_json(ClipConfig, load_config(ckpt_dir)["clip"])
    model = load_weights(ckpt_dir, build_clip(cfg), "ema")
    return model.to(device).eval().requires_grad_(False), cfg


@torch.no_grad()
def retrieval_metrics(model, images: torch.Tensor, tokens: torch.Tensor, captions: list[str]):
    """R@1 / R@5 both ways; images (N, 3, H, W) float, tokens (N, L)."""
    image_f = model.encode_image(images, normalize=True)  # (N, E)
    text_f = model.encode_text(tokens, normalize=True)  # (N, E)
    sim = image_f @ text_f.T  # (N, N)
    ids = {c: k for k, c in enumerate(dict.fromkeys(captions))}
    label = torch.tensor([ids[c] for c in captions], device=sim.device)  # caption class per row
    out = {}
    for name, s in (("i2t", sim), ("t2i", sim.T)):
        top = s.topk(min(5, s.shape[1]), dim=1).indices  # (N, 5)
        hit = label[top] == label[:, None]
        out[f"val_{name}_r1"] = hit[:, 0].float().mean().item()
        out[f"val_{name}_r5"] = hit.any(dim=1).float().mean().item()
    return out


def train_clip(spec: ClipTrainSpec, workspace: Workspace, log=print) -> dict:
    if spec.preset not in CLIP_PRESETS:
        raise ValueError(f"unknown CLIP preset {spec.preset!r}; choose from {list(CLIP_PRESETS)}")
    data = load_split_pairs(None if spec.raw_pairs else workspace.pairs, workspace.raw)
    train_images, train_captions, _ = data["train"]
    val_images, val_captions, _ = data["val"]
    if spec.raw_pairs:
        # The filter CLIP scores every raw pair, so it trains on every raw pair: a held-out
        # val split would score lower for being unseen and be dropped as if mis-captioned.
        # Its val retrieval figures are then in-sample.
        train_images = torch.cat([train_images, val_images])
        train_captions = train_captions + val_captions
    cfg = dataclasses.replace(CLIP_PRESETS[spec.preset], image_size=train_images.shape[1])
    tokenizer = make_tokenizer(cfg)
    train_tokens = tokenizer(train_captions)  # (N, L), once
    val_tokens = tokenizer(val_captions[:512])
    device = pick_device(spec.train.device)
    info = init_distributed(device)
    ckpt_dir = workspace.checkpoints / KIND / spec.name
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
        return clip_loss(image_f, text_f, logit_scale), len(idx)

    def validate(ema, step):
        images = to_float(val_images[:512]).to(device)
        return retrieval_metrics(ema, images, val_tokens.to(device), val_captions[:512])

    tracker = training_tracker(workspace, KIND, spec.name)
    result = train(
        model, loss_fn, spec.train, ckpt_dir, config, tracker, validate, log=log, desc=KIND
    )
    if result.trained_now and info.is_main:
        with tracker(result.run_id) as t:
            t.log_model(f"{KIND}-{spec.name}", ckpt_dir, config)
    return result.summary(KIND, spec.name, ckpt_dir)
