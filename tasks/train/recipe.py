"""A training recipe's settings and schedules: `TrainConfig`, the learning-rate schedule
(linear warm-up, then cosine decay) and the EMA of the weights (its update and its decay,
warm-up included). Horizons are counted in images, so a batch-size change leaves them in
place. The loop that uses them is `tasks.train.trainer`."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000  # optimizer steps
    batch_size: int = 64  # images per optimizer step, summed over ranks and micro-batches
    lr: float = 1e-3  # peak learning rate
    # AdamW's decoupled decay, on every trainable parameter (norm gains, biases and CLIP's
    # logit_scale too: sparing them slowed the text-to-image models that use the text tower,
    # docs/training.md)
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW (beta1, beta2)
    warmup_images: int = 3200  # linear warmup over this many images, then cosine decay ...
    min_lr_ratio: float = 0.1  # ... to min_lr_ratio * lr at the last step
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    grad_accum: int = 1  # micro-batches per optimizer step
    # EMA half-life in images (the EMA weight of an image's update halves after this many
    # more); 0 disables (the EMA is then the model itself)
    ema_halflife_images: float = 44_000
    log_every: int = 25
    val_every: int = 0  # 0: validate at the end only
    ckpt_every: int = 200
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", ...
    compile: bool = False  # torch.compile the model (default mode)

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or self.grad_accum < 1:
            raise ValueError("steps, batch_size and grad_accum must be >= 1")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))  # lists from JSON
        for name in ("weight_decay", "warmup_images", "ema_halflife_images"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    @property
    def warmup_steps(self) -> int:
        """The warm-up in optimizer steps at this batch size."""
        return math.ceil(self.warmup_images / self.batch_size)

    @property
    def ema_decay(self) -> float:
        """The EMA's decay per optimizer step at this batch size, once warmed up (0: off)."""
        if self.ema_halflife_images == 0:
            return 0.0
        return 0.5 ** (self.batch_size / self.ema_halflife_images)


def ema_updater(ema: nn.Module, model: nn.Module) -> Callable[[float], None]:
    """update(decay): ema <- decay * ema + (1 - decay) * model, for every parameter, in one
    multi-tensor kernel; buffers are copied. The tensor lists are gathered once here, not at
    every step (walking a U-Net's modules took ~2 ms a step on the CPU)."""
    ema_params, params = list(ema.parameters()), [p.detach() for p in model.parameters()]
    if len(ema_params) != len(params):
        raise ValueError(f"EMA has {len(ema_params)} parameters, the model {len(params)}")
    buffers = list(zip(ema.buffers(), model.buffers(), strict=True))

    @torch.no_grad()
    def update(decay: float) -> None:
        if params:
            torch._foreach_lerp_(ema_params, params, 1.0 - decay)
        for e, b in buffers:
            e.copy_(b)

    return update


# Early in training the EMA's half-life is at most this fraction of the images seen so far,
# so the first weights (far from any optimum) fade fast. With ln 2 / 9 the warm-up decay
# is exp(-9 / (t + 1)) at step t, close to the familiar (1 + t) / (10 + t) once t is in the
# tens, but counted in images rather than steps.
EMA_RAMPUP = math.log(2) / 9


def ema_decay_at(step: int, cfg: TrainConfig) -> float:
    """The EMA's decay at optimizer step `step` (0-based): 0.5 ** (batch / half-life), the
    half-life being cfg.ema_halflife_images, or EMA_RAMPUP of the images seen after this
    step when that is less."""
    seen = (step + 1) * cfg.batch_size
    halflife = min(cfg.ema_halflife_images, EMA_RAMPUP * seen)
    return 0.5 ** (cfg.batch_size / halflife)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """The learning rate at optimizer step `step` (0-based) over cfg.lr: linear warm-up over
    cfg.warmup_images, then a cosine from 1 to cfg.min_lr_ratio at the last step."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine
