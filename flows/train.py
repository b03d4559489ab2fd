"""Flow `train`: autoencoders, CLIP encoders and the diffusion grid, in dependency order.

Each model is one Prefect task (one MLflow run); a rerun resumes unfinished trainings and
skips finished ones.
"""

from __future__ import annotations

import dataclasses
import time

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.params import TrainingParams
from tasks.train_autoencoder import AutoencoderTrainSpec, train_autoencoder
from tasks.train_clip import ClipTrainSpec, train_clip
from tasks.train_diffusion import DiffusionTrainSpec, train_diffusion
from tasks.trainer import TrainConfig
from tasks.workspace import Workspace


@task(name="train-autoencoder", cache_policy=NO_CACHE, task_run_name="autoencoder-{spec.preset}")
def autoencoder_task(spec: AutoencoderTrainSpec, home: str | None) -> dict:
    return train_autoencoder(spec, Workspace.from_env(home))


@task(name="train-clip", cache_policy=NO_CACHE, task_run_name="clip-{spec.preset}")
def clip_task(spec: ClipTrainSpec, home: str | None) -> dict:
    return train_clip(spec, Workspace.from_env(home))


@task(name="train-diffusion", cache_policy=NO_CACHE, task_run_name="diffusion-{spec.name}")
def diffusion_task(spec: DiffusionTrainSpec, home: str | None) -> dict:
    return train_diffusion(spec, Workspace.from_env(home))


def training_specs(params: TrainingParams):
    """The specs of every model in the grid, in the order they must be trained."""
    common = {"seed": params.seed, "device": params.device}
    autoencoders = [
        AutoencoderTrainSpec(
            preset=p,
            train=TrainConfig(
                steps=params.autoencoder_steps, batch_size=64, lr=2e-3, ema_decay=0.995, **common
            ),
        )
        for p in params.autoencoders
    ]
    clips = [
        ClipTrainSpec(
            preset=p,
            train=TrainConfig(
                steps=params.clip_steps,
                batch_size=128,
                lr=1e-3,
                weight_decay=0.1,
                ema_decay=0.0,
                **common,
            ),
        )
        for p in params.text_encoders
    ]
    diffusion_defaults = DiffusionTrainSpec().train  # lr, betas, EMA: picked by time to quality
    diffusions = [
        DiffusionTrainSpec(
            text_encoder=text,
            unet=unet,
            autoencoder=ae,
            schedule=params.schedule,
            prediction_type=params.prediction_type,
            min_snr_gamma=params.min_snr_gamma,
            timestep_sampling=params.timestep_sampling,
            cond_dropout=params.cond_dropout,
            train=dataclasses.replace(
                diffusion_defaults,
                steps=params.diffusion_steps,
                batch_size=params.diffusion_batch_size,
                **common,
            ),
        )
        for ae in params.autoencoders
        for text in params.text_encoders
        for unet in params.unets
    ]
    return autoencoders, clips, diffusions


def run_training(params: TrainingParams, home: str | None) -> dict[str, dict]:
    """Train the whole grid (call inside a flow); returns summaries keyed by model."""
    autoencoders, clips, diffusions = training_specs(params)
    out: dict[str, dict] = {}
    for kind, specs, fn in (
        ("autoencoder", autoencoders, autoencoder_task),
        ("clip", clips, clip_task),
        ("diffusion", diffusions, diffusion_task),
    ):
        for spec in specs:
            t0 = time.perf_counter()
            summary = fn(spec, home)
            out[f"{kind}/{spec.name}"] = {**summary, "stage_s": round(time.perf_counter() - t0, 1)}
            print(f"trained {kind}/{spec.name} in {out[f'{kind}/{spec.name}']['stage_s']} s")
    return out


@flow(name="train", log_prints=True)
def train_flow(params: TrainingParams = TrainingParams(), home: str | None = None) -> dict:
    """Train autoencoders, CLIP encoders, then every (autoencoder, text encoder, U-Net) model."""
    return run_training(params, home)
