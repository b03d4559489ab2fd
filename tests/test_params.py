"""Each default and choice list is defined once: the flow parameters, the CLI and the task
specs must agree. Each test here fails if one of them is written out again and drifts."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import get_args

import pytest

from flows.cli import build_model, build_parser
from flows.command_params import TrainModelParams
from flows.ingest import ingest_config
from flows.params import (
    EvaluateParams,
    FilterParams,
    IngestParams,
    PipelineParams,
    ShapesParams,
    TrainingParams,
)
from flows.train import training_specs
from models.autoencoder import AE_PRESETS
from models.clip import CLIP_PRESETS
from models.diffusion import BETA_SCHEDULES, PREDICTION_TYPES, TIMESTEP_SAMPLINGS
from models.sampling import SAMPLERS
from models.unet import UNET_PRESETS
from tasks.evaluate.spec import SweepSpec
from tasks.filter.keep_rules import KEEP_RULES
from tasks.filter.score import FilterConfig
from tasks.ingest.download import IngestConfig
from tasks.shapes.render import ShapesSpec
from tasks.train.autoencoder import AutoencoderTrainSpec
from tasks.train.clip import ClipTrainSpec, image_tower_spec
from tasks.train.diffusion import DiffusionTrainSpec


def _choices(model, field: str) -> tuple:
    annotation = model.model_fields[field].annotation
    args = get_args(annotation)
    if args and get_args(args[0]):  # list[Literal[...]]
        return get_args(args[0])
    return args


def test_choice_lists_are_the_preset_and_rule_tables():
    assert _choices(TrainingParams, "autoencoders") == tuple(AE_PRESETS)
    assert _choices(TrainingParams, "text_encoders") == tuple(CLIP_PRESETS)
    assert _choices(TrainingParams, "unets") == tuple(UNET_PRESETS)
    assert _choices(TrainingParams, "schedule") == tuple(BETA_SCHEDULES)
    assert _choices(TrainingParams, "prediction_type") == PREDICTION_TYPES
    assert _choices(TrainingParams, "timestep_sampling") == TIMESTEP_SAMPLINGS
    assert _choices(FilterParams, "keep") == tuple(KEEP_RULES)
    assert _choices(TrainModelParams, "unet") == tuple(UNET_PRESETS)
    assert _choices(EvaluateParams, "sampler") == tuple(SAMPLERS)


def test_flow_parameter_defaults_are_the_task_defaults():
    assert ShapesParams().to_spec() == ShapesSpec()
    assert EvaluateParams().to_spec() == SweepSpec()
    assert FilterParams().to_config("marble:x") == FilterConfig(model="marble:x")
    assert ingest_config(IngestParams(url_list="list.csv")) == IngestConfig(Path("list.csv"))
    defaults = DiffusionTrainSpec()
    params = TrainingParams()
    for name in ("prediction_type", "min_snr_gamma", "schedule", "timestep_sampling"):
        assert getattr(params, name) == getattr(defaults, name), name
    assert params.diffusion_batch_size == defaults.train.batch_size
    train = TrainModelParams(kind="diffusion")
    assert (train.unet, train.text_encoder) == (defaults.unet, defaults.text_encoder)
    assert train.autoencoder == AutoencoderTrainSpec().preset == defaults.autoencoder


def test_grid_specs_use_each_kinds_own_recipe():
    """The grid changes only step counts, seed and device of each trainer's defaults."""
    params = TrainingParams(
        autoencoder_steps=7, image_tower_steps=5, clip_steps=8, diffusion_steps=9, seed=3
    )
    autoencoders, clips, diffusions = training_specs(params)

    def expected(spec, steps):
        train = dataclasses.replace(spec.train, steps=steps, seed=3, device="auto")
        return dataclasses.replace(spec, train=train)

    assert autoencoders == [expected(AutoencoderTrainSpec(preset="kl-f4"), 7)]
    tower = expected(image_tower_spec(), 5)  # first: every text encoder trains against it
    assert clips == [tower] + [
        expected(ClipTrainSpec(preset=p, image_tower=tower.name), 8) for p in params.text_encoders
    ]
    own = training_specs(params.model_copy(update={"image_tower_steps": 0}))[1]
    assert own == [expected(ClipTrainSpec(preset=p), 8) for p in params.text_encoders]
    assert len(diffusions) == 4
    for spec in diffusions:
        base = DiffusionTrainSpec(text_encoder=spec.text_encoder, unet=spec.unet)
        assert spec == expected(base, 9)


@pytest.mark.parametrize(
    "argv, model, fields",
    [
        (["filter"], FilterParams, "fields"),
        (["train", "clip"], TrainModelParams, "fields"),
        (["ingest", "list.csv"], IngestParams, "fields"),
        (["shapes", "serve"], ShapesParams, "fields"),
        (["run"], ShapesParams, "shapes_fields"),
        (["run"], TrainingParams, "training_fields"),
    ],
)
def test_cli_defaults_are_the_parameter_models_defaults(argv, model, fields):
    args = build_parser().parse_args(argv)
    built = build_model(model, args, getattr(args, fields))
    required = {k: getattr(built, k) for k, f in model.model_fields.items() if f.is_required()}
    assert built == model(**required)


def test_the_main_jobs_evaluation_options_default_to_its_own_sweep():
    args = build_parser().parse_args(["run"])
    run = PipelineParams().evaluation
    assert {name: getattr(args, name) for name in args.evaluation_fields} == {
        name: getattr(run, name) for name in args.evaluation_fields
    }
    assert run.num_samples < EvaluateParams().num_samples  # a laptop-sized sweep


def test_run_params_defaults_nest_the_stage_defaults():
    params = PipelineParams()
    assert params.shapes == ShapesParams() and params.training == TrainingParams()
    assert params.filter == FilterParams()


def test_list_options_are_repeatable_and_comma_separated():
    args = build_parser().parse_args(
        ["ingest", "l.csv", "--allow-host", "127.0.0.1:1,127.0.0.1:2", "--allow-host", "[::1]:3"]
    )
    assert args.allow_host == ["127.0.0.1:1", "127.0.0.1:2", "[::1]:3"]
    args = build_parser().parse_args(["run", "--unets", "unet-m"])
    assert args.unets == ["unet-m"]  # the first use replaces the default
    config = ingest_config(build_model(IngestParams, build_parser().parse_args(
        ["ingest", "l.csv", "--allow-host", "LOCALHOST:8737"]), IngestParams.model_fields))  # fmt: skip
    assert config.allowed_hosts == ("localhost:8737",)
