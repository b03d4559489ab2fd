"""Flow `train`: autoencoders, CLIP encoders and the diffusion grid, in dependency order.

Each model is one Prefect task (one MLflow run); a rerun resumes unfinished trainings and
skips finished ones. The trainings come in waves, each needing only the waves before it:
the autoencoders with the shared image tower (or with the whole CLIPs, without one), the
text towers, the diffusion grid. A wave's trainings run one after another, or at once on
Dask workers (`FanOutParams`). Running them at once is for machines with cores or GPUs to
spare: on a 2-core CPU, pairs of one-thread trainings shorten the diffusion wave by 7–16 %
and lengthen the other waves, which pair a short training with a long one; the grid alone
in pairs took 3 % off `make run` (docs/performance.md#make-run).
"""

from __future__ import annotations

import dataclasses

from prefect import Task, flow, task
from prefect.cache_policies import NO_CACHE

from flows import fanout
from flows.artifacts import with_progress
from flows.fanout import FanOutParams
from flows.params import TrainingParams
from flows.spec_fields import to_spec
from flows.timing import Stopwatch, timed
from tasks.filter.variants import write_variant
from tasks.runtime.devices import pick_device
from tasks.runtime.services import GPU_TAG
from tasks.store.workspace import DEFAULT_VARIANT, Workspace
from tasks.train.autoencoder import AutoencoderTrainSpec
from tasks.train.clip import ClipTrainSpec, image_tower_spec, replicate_seed
from tasks.train.diffusion import DiffusionTrainSpec
from tasks.train.registry import TRAINERS, Trainer
from tasks.train.torchrun import run_torchrun


def training_task(kind: str, trainer: Trainer) -> Task:
    """The Prefect task `train-KIND` (its runs named `KIND-NAME`): one training in this
    process, its summary with the seconds it took (`stage_s`), its progress an artifact."""

    def train(spec, workspace: Workspace) -> dict:
        return timed(trainer.train, spec, workspace)

    train.__name__ = train.__qualname__ = f"{kind}_task"  # Prefect keys a task by this name
    run_name = f"{kind}-{{spec.name}}"
    return task(name=f"train-{kind}", cache_policy=NO_CACHE, task_run_name=run_name)(
        with_progress("training")(train)
    )


TASKS = {kind: training_task(kind, trainer) for kind, trainer in TRAINERS.items()}


@task(name="write-data-variant", cache_policy=NO_CACHE, task_run_name="data-variant-{variant}")
def variant_task(variant: str, workspace: Workspace) -> dict:
    """The training set of a data variant other than the kept pairs (tasks/filter/variants.py)."""
    return timed(write_variant, workspace, variant)


@task(name="train-torchrun", cache_policy=NO_CACHE, task_run_name="torchrun-{kind}-{spec.name}")
@with_progress("training")
def torchrun_task(kind: str, spec, workspace: Workspace, nproc_per_node: int) -> dict:
    """One training under torchrun with `nproc_per_node` processes (0: one per GPU)."""
    return timed(run_torchrun, kind, spec, workspace, nproc_per_node)


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
    replicates = range(params.first_replicate, params.first_replicate + params.replicates)

    def replica(spec, r: int):
        """Replicate r of a grid model: its own name and training seed."""
        seed = replicate_seed(params.seed, r)
        return dataclasses.replace(
            spec, replicate=r, train=dataclasses.replace(spec.train, seed=seed)
        )

    text_encoders = {
        (p, r): replica(
            recipe(ClipTrainSpec(preset=p, image_tower=image_tower), steps=params.clip_steps), r
        )
        for r in replicates
        for p in params.text_encoders
    }
    clips += list(text_encoders.values())
    diffusions = [
        replica(
            recipe(  # the grid's settings of the diffusion recipe (schedule, loss weighting...)
                to_spec(
                    params,
                    DiffusionTrainSpec,
                    text_encoder=text_encoders[text, r].name,
                    unet=unet,
                    autoencoder=ae,
                    data_variant=variant,
                ),
                steps=params.diffusion_steps,
                batch_size=params.diffusion_batch_size,
            ),
            r,
        )  # fmt: skip
        for variant in params.data_variants
        for r in replicates
        for ae in params.autoencoders
        for text in params.text_encoders
        for unet in params.unets
    ]
    return autoencoders, clips, diffusions


def training_waves(params: TrainingParams) -> list[tuple[str, list[tuple[str, object]]]]:
    """The grid's (kind, spec) trainings in waves, each named: a wave needs only the models
    of the waves before it. The diffusion wave lists the models of one U-Net together, so
    trainings that run at once are of like cost."""
    autoencoders, clips, diffusions = training_specs(params)
    towers = clips[:1] if params.image_tower_steps else clips
    waves = [
        ("train-encoders", [("autoencoder", s) for s in autoencoders] + [("clip", s) for s in towers]),
        ("train-text-towers", [("clip", s) for s in clips[len(towers) :]]),
        ("train-diffusion-grid", [
            ("diffusion", s) for s in sorted(diffusions, key=lambda s: params.unets.index(s.unet))
        ]),
    ]  # fmt: skip
    return [(name, wave) for name, wave in waves if wave]


def run_training(
    params: TrainingParams, workspace: Workspace, fan: FanOutParams = FanOutParams()
) -> dict[str, dict]:
    """Train the whole grid (call inside a flow), wave by wave; under torchrun one model at
    a time, since each takes every process it is given. Returns summaries keyed by model.
    The training sets of the grid's data variants are written (or found current) first."""
    out: dict[str, dict] = {}
    for variant in params.data_variants:
        if variant != DEFAULT_VARIANT:  # the kept pairs are the filter's output
            out[f"data/{variant}"] = variant_task(variant, workspace)
    for name, wave in training_waves(params):
        if params.nproc_per_node == 1:
            jobs = [
                (on_device(TASKS[kind], spec.train.device), (spec, workspace))
                for kind, spec in wave
            ]
            runner = fan
        else:
            jobs = [
                (
                    on_device(torchrun_task, spec.train.device),
                    (kind, spec, workspace, params.nproc_per_node),
                )
                for kind, spec in wave
            ]
            runner = FanOutParams(task_runner="sequential")  # each on all its ranks, in turn
        with Stopwatch() as watch:
            summaries = fanout.run_jobs(jobs, runner, name)
            for (kind, spec), summary in zip(wave, summaries, strict=True):
                out[f"{kind}/{spec.name}"] = summary
                print(f"trained {kind}/{spec.name} in {summary['stage_s']} s")
        print(f"{name}: {len(wave)} models in {watch.seconds:.0f} s")
    return out


@flow(name="train", log_prints=True)
def train_flow(
    params: TrainingParams = TrainingParams(),
    home: str | None = None,
    fan_out: FanOutParams = FanOutParams(),
) -> dict:
    """Train autoencoders, CLIP encoders, then every (autoencoder, text encoder, U-Net) model."""
    waves = [name for name, _ in training_waves(params)]
    with fanout.shared_cluster(fan_out, waves) as fan:
        return run_training(params, Workspace.from_env(home), fan)
