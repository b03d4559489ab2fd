"""Flow `train`: autoencoders, CLIP encoders and the diffusion grid, in dependency order.

Each model is one Prefect task (one MLflow run); a rerun resumes unfinished trainings and
skips finished ones.
"""

from __future__ import annotations

import dataclasses
import time

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.artifacts import with_progress
from flows.params import TrainingParams
from tasks.services import GPU_TAG
from tasks.torchrun import run_torchrun
from tasks.train_autoencoder import AutoencoderTrainSpec, train_autoencoder
from tasks.train_clip import ClipTrainSpec, image_tower_spec, train_clip
from tasks.train_diffusion import DiffusionTrainSpec, train_diffusion
from tasks.trainer import pick_device
from tasks.workspace import Workspace


@task(name="train-autoencoder", cache_policy=NO_CACHE, task_run_name="autoencoder-{spec.name}")
@with_progress("training")
def autoencoder_task(spec: AutoencoderTrainSpec, workspace: Workspace) -> dict:
    return train_autoencoder(spec, workspace)


@task(name="train-clip", cache_policy=NO_CACHE, task_run_name="clip-{spec.name}")
@with_progress("training")
def clip_task(spec: ClipTrainSpec, workspace: Workspace) -> dict:
    return train_clip(spec, workspace)


@task(name="train-diffusion", cache_policy=NO_CACHE, task_run_name="diffusion-{spec.name}")
@with_progress("training")
def diffusion_task(spec: DiffusionTrainSpec, workspace: Workspace) -> dict:
    return train_diffusion(spec, workspace)


@task(name="train-torchrun", cache_policy=NO_CACHE, task_run_name="torchrun-{kind}-{spec.name}")
@with_progress("training")
def torchrun_task(kind: str, spec, workspace: Workspace, nproc_per_node: int) -> dict:
    """One training under torchrun with `nproc_per_node` processes (0: one per GPU)."""
    return run_torchrun(kind, spec, workspace, nproc_per_node)


def on_device(task_fn, device: str):
    """The task as it runs on `device`: on a GPU it carries the tag whose concurrency limit
    (`marble up` sets it) is the number of GPUs, so GPU tasks never oversubscribe them."""
    if pick_device(device).type == "cuda":
        return task_fn.with_options(tags={GPU_TAG})
    return task_fn


def training_specs(params: TrainingParams):
    """The specs of every model in the grid, in the order they must be trained: each kind's
    own recipe (its spec's defaults) with the grid's step counts, seed and device. With
    `image_tower_steps`, the CLIPs start with the shared image tower and every text encoder
    trains against it locked."""
    common = {"seed": params.seed, "device": params.device}

    def recipe(spec, **changes):
        return dataclasses.replace(spec, train=dataclasses.replace(spec.train, **changes, **common))

    autoencoders = [
        recipe(AutoencoderTrainSpec(preset=p), steps=params.autoencoder_steps)
        for p in params.autoencoders
    ]
    clips = []
    image_tower = ""
    if params.image_tower_steps:  # one image tower, trained first, locked under every text tower
        tower = recipe(image_tower_spec(), steps=params.image_tower_steps)
        clips.append(tower)
        image_tower = tower.name
    clips += [
        recipe(ClipTrainSpec(preset=p, image_tower=image_tower), steps=params.clip_steps)
        for p in params.text_encoders
    ]
    diffusions = [
        recipe(
            DiffusionTrainSpec(
                text_encoder=text,
                unet=unet,
                autoencoder=ae,
                schedule=params.schedule,
                prediction_type=params.prediction_type,
                min_snr_gamma=params.min_snr_gamma,
                timestep_sampling=params.timestep_sampling,
                cond_dropout=params.cond_dropout,
            ),
            steps=params.diffusion_steps,
            batch_size=params.diffusion_batch_size,
        )
        for ae in params.autoencoders
        for text in params.text_encoders
        for unet in params.unets
    ]
    return autoencoders, clips, diffusions


def run_training(params: TrainingParams, workspace: Workspace) -> dict[str, dict]:
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
            if params.nproc_per_node == 1:
                summary = on_device(fn, spec.train.device)(spec, workspace)
            else:
                summary = on_device(torchrun_task, spec.train.device)(
                    kind, spec, workspace, params.nproc_per_node
                )
            out[f"{kind}/{spec.name}"] = {**summary, "stage_s": round(time.perf_counter() - t0, 1)}
            print(f"trained {kind}/{spec.name} in {out[f'{kind}/{spec.name}']['stage_s']} s")
    return out


@flow(name="train", log_prints=True)
def train_flow(params: TrainingParams = TrainingParams(), home: str | None = None) -> dict:
    """Train autoencoders, CLIP encoders, then every (autoencoder, text encoder, U-Net) model."""
    return run_training(params, Workspace.from_env(home))
