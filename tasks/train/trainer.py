"""The one training loop every trainer uses (autoencoder, CLIP, diffusion).

A trainer supplies a model, a `loss_fn(model, step, micro, generator) -> (loss, n_images)`
that draws its own batch from `generator`, the checkpoint folder to resume from and write to
(`tasks.store.checkpoint.CheckpointDir`) and a factory of MLflow runs (`tasks.store.tracking`); this
module itself touches no file. The generator is seeded by (seed, step, micro)
alone, so the data order and every noise draw are functions of the step number: a run
killed at any point and resumed from its last checkpoint ends bit-identical (on CPU) to an
uninterrupted run. The loop owns the rest:

- device (CUDA if present, else CPU), bf16 autocast on CUDA, optional torch.compile
- AdamW (fused, on CUDA and CPU), linear warmup then cosine decay, gradient clipping, accumulation
- EMA of the weights (what sampling and validation use)
- warm-up and EMA horizons counted in images (TrainConfig and the schedules: tasks.train.recipe)
- progress bar (loss, img/s), a log line and MLflow metrics every `log_every` steps
- validation every `val_every` steps, atomic checkpoints every `ckpt_every` steps and at the end
- DDP under torchrun: every rank draws the same batch indices and takes its own slice
  (`rank_slice`), gradients are averaged, rank 0 alone writes checkpoints and MLflow
- a non-finite loss stops the run with an error naming the step; the last checkpoint stays
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm import tqdm

from tasks.runtime.devices import pick_device
from tasks.runtime.progress import report
from tasks.store.digests import json_digest
from tasks.train.recipe import TrainConfig, ema_decay_at, ema_updater, lr_factor

LossFn = Callable[[nn.Module, int, int, torch.Generator], tuple[Tensor, int]]
ValidateFn = Callable[[nn.Module, int], dict[str, float]]


class Checkpoint(Protocol):
    """Where a training resumes from and writes to (tasks.store.checkpoint.CheckpointDir)."""

    path: Path

    def state(self) -> dict[str, Any] | None: ...
    def load(self, module: nn.Module, name: str) -> None: ...
    def save(
        self, modules: dict[str, nn.Module], config: dict[str, Any], state: dict[str, Any]
    ) -> None: ...


class Run(Protocol):
    """One tracked run (tasks.store.tracking.Tracker), used as a context manager."""

    run_id: str | None

    def log_params(self, params: dict[str, Any]) -> None: ...
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...


TrackerFactory = Callable[[str | None, bool], AbstractContextManager[Run]]


FINISHED = "its checkpoint finished training with the same settings"


class NonFiniteLossError(RuntimeError):
    pass


@dataclass
class TrainResult:
    step: int
    ema: nn.Module  # the weights to use (EMA, or the model when EMA is off)
    metrics: dict[str, float]  # last validation metrics
    wall_s: float
    images_per_s: float
    run_id: str | None
    resumed_from: int  # step the run resumed at (0: fresh start)

    @property
    def trained_now(self) -> bool:
        """Whether this call trained at all (False for a rerun of a finished training)."""
        return self.step > self.resumed_from

    def summary(self, kind: str, name: str, ckpt_dir: Path) -> dict:
        skipped = {} if self.trained_now else {"skipped": FINISHED}
        return {
            "kind": kind,
            "name": name,
            "checkpoint": str(ckpt_dir),
            "run_id": self.run_id,
            "wall_s": round(self.wall_s, 1),
            "img_per_s": round(self.images_per_s, 1),
            **self.metrics,
        } | skipped


# ---------------------------------------------------------------------------- devices, DDP


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world == 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size())


def rank_slice(indices: Tensor, info: DistInfo) -> Tensor:
    """This rank's share of a batch drawn identically on every rank."""
    return indices[info.rank :: info.world]


def step_generator(seed: int, step: int, micro: int = 0) -> torch.Generator:
    """The generator for one micro-batch: a pure function of (seed, step, micro)."""
    key = hashlib.sha256(f"{seed}:{step}:{micro}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(key[:8], "little") & (2**63 - 1))


def one_writer(kind: str):
    """Decorate a trainer `fn(spec, workspace, ...)`: the main process holds the workspace's
    lock on the checkpoint `<kind>/<spec.name>` while it trains, so a second run training
    the same model stops with one line instead of writing beside it."""

    def decorate(fn):
        @functools.wraps(fn)
        def train_locked(spec, workspace, *args, **kwargs):
            info = init_distributed(pick_device(spec.train.device))
            lock = f"checkpoint-{kind}-{spec.name}"
            with workspace.lock(lock) if info.is_main else contextlib.nullcontext():
                return fn(spec, workspace, *args, **kwargs)

        return train_locked

    return decorate


def settings_digest(config: dict[str, Any], cfg: TrainConfig) -> str:
    """What a checkpoint was trained with; resuming under other settings is refused."""
    return json_digest({"config": config, "train": asdict(cfg)})


# ---------------------------------------------------------------------------- the loop


def train(
    model: nn.Module,
    loss_fn: LossFn,
    cfg: TrainConfig,
    checkpoint: Checkpoint,
    config: dict[str, Any],
    tracker_factory: TrackerFactory,
    validate: ValidateFn | None = None,
    log: Callable[[str], None] = print,
    desc: str = "train",
    inputs: dict[str, Any] | None = None,
) -> TrainResult:
    """Train `model` to `cfg.steps`, resuming from `checkpoint` when it holds one.

    config: JSON-able description that rebuilds the model (written to config.json).
    tracker_factory(run_id, enabled): the MLflow run (resumed when run_id is given).
    inputs: digests of what the model is trained from (its data, upstream checkpoints;
    config entries named here count as inputs, not settings). A checkpoint trained from
    other inputs is out of date: training starts again from scratch and replaces it. One
    trained from the same inputs with other settings is refused (choose another name).
    """
    inputs = inputs or {}
    device = pick_device(cfg.device)
    info = init_distributed(device)
    model = model.to(device)
    ema = copy.deepcopy(model).requires_grad_(False).eval() if cfg.ema_decay > 0 else model
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=cfg.lr,
        betas=cfg.betas,
        weight_decay=cfg.weight_decay,
        fused=True,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg))
    settings = settings_digest({k: v for k, v in config.items() if k not in inputs}, cfg)
    inputs_key = json_digest(inputs)

    step, run_id = 0, None
    state = checkpoint.state()
    if state is not None and state.get("inputs", inputs_key) != inputs_key:
        log(f"{desc}: its data or upstream models changed; training again from scratch")
        state = None
    if state is not None:
        if state["settings"] != settings:
            raise ValueError(
                f"{checkpoint.path} holds a checkpoint trained with other settings; "
                "delete it or choose another run name"
            )
        checkpoint.load(model, "model")
        if ema is not model:
            checkpoint.load(ema, "ema")
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["cpu_rng"])
        step, run_id = int(state["step"]), state.get("run_id")
        if step < cfg.steps:
            log(f"{desc}: resuming from its checkpoint at step {step} of {cfg.steps}")
    resumed_from = step

    train_model = model
    if info.world > 1:
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if cfg.compile:
        train_model = torch.compile(train_model)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    def save(tracker: Run) -> None:
        if info.is_main:
            modules = {"model": model} | ({"ema": ema} if ema is not model else {"ema": model})
            state = {
                "step": step,
                "settings": settings,
                "inputs": inputs_key,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "cpu_rng": torch.get_rng_state(),
                "run_id": tracker.run_id,
            }
            checkpoint.save(modules, config, state)
        if info.world > 1:
            dist.barrier()

    metrics: dict[str, float] = {}
    images, t_start = 0, time.perf_counter()
    with tracker_factory(run_id, info.is_main) as tracker:
        tracker.log_params({"train": asdict(cfg), "model": config, "world_size": info.world})
        bar = tqdm(
            total=cfg.steps, initial=step, desc=desc, disable=not info.is_main, mininterval=2.0
        )
        window_loss, window_images, window_t = 0.0, 0, time.perf_counter()
        params = list(model.parameters())  # gathered once: a module walk costs ~1 ms a step
        update_ema = ema_updater(ema, model) if ema is not model else None
        model.train()
        while step < cfg.steps:
            optimizer.zero_grad(set_to_none=True)
            step_loss = 0.0
            for micro in range(cfg.grad_accum):
                with autocast:
                    loss, n = loss_fn(
                        train_model, step, micro, step_generator(cfg.seed, step, micro)
                    )
                if not torch.isfinite(loss):
                    raise NonFiniteLossError(
                        f"loss is {loss.item()} at step {step}; stopping. The last good "
                        f"checkpoint (if any) is kept in {checkpoint.path}"
                    )
                (loss / cfg.grad_accum).backward()
                step_loss += loss.item() / cfg.grad_accum
                images += n * info.world
                window_images += n * info.world
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip, foreach=True)
            optimizer.step()
            scheduler.step()
            if update_ema is not None:
                update_ema(ema_decay_at(step, cfg))
            step += 1
            window_loss += step_loss
            bar.update(1)
            if info.is_main:
                report(desc, step, cfg.steps)
            if step % cfg.log_every == 0 or step == cfg.steps:
                seconds = time.perf_counter() - window_t
                n_steps = cfg.log_every if step % cfg.log_every == 0 else step % cfg.log_every
                line = {
                    "loss": window_loss / n_steps,
                    "lr": scheduler.get_last_lr()[0],
                    "img_per_s": window_images / max(seconds, 1e-9),
                }
                bar.set_postfix(loss=f"{line['loss']:.4f}", img_s=f"{line['img_per_s']:.0f}")
                tracker.log_metrics(line, step)
                window_loss, window_images, window_t = 0.0, 0, time.perf_counter()
            if validate is not None and info.is_main:
                if (cfg.val_every and step % cfg.val_every == 0) or step == cfg.steps:
                    metrics = validate(ema, step)
                    model.train()  # without an EMA, `ema` is the model: validation may switch it
                    tracker.log_metrics(metrics, step)
                    log(
                        f"{desc} step {step}: "
                        + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
                    )
            if step % cfg.ckpt_every == 0 or step == cfg.steps:
                save(tracker)
        bar.close()
        wall = time.perf_counter() - t_start
        run_id = tracker.run_id
    return TrainResult(
        step=step,
        ema=ema,
        metrics=metrics,
        wall_s=wall,
        images_per_s=images / wall if images else 0.0,
        run_id=run_id,
        resumed_from=resumed_from,
    )
