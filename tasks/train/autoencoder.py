"""Train the KL autoencoder on the pairs' images (captions unused), then measure the latent
statistics that normalise latents for diffusion.

Checkpoint: checkpoints/autoencoder/<name>/ (model + ema safetensors, config.json with the
AutoencoderConfig including latent_mean / latent_std). The `identity` preset has no weights:
its checkpoint is a config alone, and the latent statistics are measured all the same.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from eval.reconstruction import psnr
from models.autoencoder import AE_PRESETS, autoencoder_loss, build_autoencoder, with_latent_stats
from tasks.runtime.devices import pick_device
from tasks.store.checkpoint import CheckpointDir
from tasks.store.files import atomic_dir, atomic_write_bytes
from tasks.store.images import save_grid, to_float, to_uint8
from tasks.store.pairs import load_split_pairs, pairs_digest
from tasks.store.tracking import training_tracker
from tasks.store.workspace import Workspace
from tasks.train.trainer import (
    FINISHED,
    TrainConfig,
    init_distributed,
    one_writer,
    rank_slice,
    train,
)

KIND = "autoencoder"


@dataclass(frozen=True)
class AutoencoderTrainSpec:
    preset: str = "kl-f4"  # key of AE_PRESETS
    kl_weight: float = 1e-6  # as in latent-diffusion
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            steps=1600,
            batch_size=32,  # a step learns about as much as one of 64 at 57 % of its cost
            lr=2e-3,
            ema_halflife_images=8850,  # 0.9975 a step at 32
        )
    )

    def __post_init__(self):
        if self.preset not in AE_PRESETS:
            raise ValueError(
                f"unknown autoencoder preset {self.preset!r}; choose from {list(AE_PRESETS)}"
            )

    @property
    def name(self) -> str:
        return self.preset


@torch.no_grad()
def _raw_latents(model, images: torch.Tensor, device, batch: int = 256) -> torch.Tensor:
    """Posterior means (unnormalised) of uint8 images (N, H, W, 3)."""
    parts = [
        model.encode(to_float(images[i : i + batch]).to(device)).mode().cpu()
        for i in range(0, len(images), batch)
    ]
    return torch.cat(parts)


@one_writer(KIND)
def train_autoencoder(
    spec: AutoencoderTrainSpec, workspace: Workspace, log=print, validate_fn=None
) -> dict:
    """Train one autoencoder preset on the workspace's pairs; returns a summary.

    validate_fn(ema, step) -> metrics, optional extra validation of the EMA model (e.g. how
    many reconstructions the attribute detector reads back right: bench/autoencoder_steps.py).
    """
    ckpt_dir = workspace.checkpoint(KIND, spec.name)
    data = load_split_pairs(workspace.pairs, workspace.raw)
    train_images, val_images = data["train"][0], data["val"][0]
    cfg = AE_PRESETS[spec.preset]
    device = pick_device(spec.train.device)
    config = {
        "kind": KIND,
        "preset": spec.preset,
        "autoencoder": asdict(cfg),
        "kl_weight": spec.kl_weight,
    }

    tracker = training_tracker(workspace, KIND, spec.name)

    if cfg.identity:  # nothing to train: the latents are the pixels
        model = build_autoencoder(cfg)
        with atomic_dir(ckpt_dir) as tmp:
            (tmp / "config.json").write_text(json.dumps(config, indent=2))
        result_run, wall, metrics, trained_now = None, 0.0, {}, False
    else:
        torch.manual_seed(spec.train.seed)
        model = build_autoencoder(cfg)
        info = init_distributed(device)

        def loss_fn(net, step, micro, g):
            per_micro = spec.train.batch_size // spec.train.grad_accum
            idx = rank_slice(torch.randint(len(train_images), (per_micro,), generator=g), info)
            x = to_float(train_images[idx]).to(device)
            recon, posterior = net(x, generator=g)
            loss, _ = autoencoder_loss(x, recon, posterior, spec.kl_weight)
            return loss, len(idx)

        def validate(ema, step):
            x = to_float(val_images[:512]).to(device)
            with torch.no_grad():
                recon = ema.decode(ema.encode(x).mode())
            metrics = {"val_psnr": psnr(recon, x), "val_l1": (recon - x).abs().mean().item()}
            return metrics | (validate_fn(ema, step) if validate_fn is not None else {})

        result = train(
            model, loss_fn, spec.train, CheckpointDir(ckpt_dir), config, tracker, validate,
            log=log, desc=KIND, inputs={"pairs": pairs_digest(data)},
        )  # fmt: skip
        model, result_run, wall, metrics = result.ema, result.run_id, result.wall_s, result.metrics
        trained_now = result.trained_now

    # Latent statistics on the training images, stored in the config beside the weights.
    model = model.to(device).eval()
    stats_cfg = with_latent_stats(cfg, _raw_latents(model, train_images, device))
    config = {**config, "autoencoder": asdict(stats_cfg)}
    atomic_write_bytes(ckpt_dir / "config.json", json.dumps(config, indent=2).encode())

    if trained_now:
        with tracker(result_run) as t:
            x = to_float(val_images[:16]).to(device)
            with torch.no_grad():
                recon = model.decode(model.encode(x).mode())
            with tempfile.TemporaryDirectory() as tmp:
                grid = torch.cat([x, recon]).cpu()
                t.log_artifact(
                    save_grid(to_uint8(grid), Path(tmp) / "reconstructions.png", ncol=16)
                )
            t.log_params({"latent_mean": stats_cfg.latent_mean, "latent_std": stats_cfg.latent_std})
            t.log_model(f"{KIND}-{spec.name}", ckpt_dir, config)
    summary = {"kind": KIND, "name": spec.name, "checkpoint": str(ckpt_dir), "run_id": result_run}
    if not trained_now and not cfg.identity:
        summary["skipped"] = FINISHED
    return summary | {"wall_s": round(wall, 1), **metrics, "latent_std": list(stats_cfg.latent_std)}
