"""Flow parameters as pydantic models: Prefect validates them and builds the UI form from them,
and the `marble` CLI derives its options from them (flows/cli.py). The commands that run no
flow (train, query, publish, up) have theirs in flows/command_params.py.

Each default is written once. Task settings default to their task spec's value
(`spec_field`, flows/spec_fields.py) and go back into the spec with `to_spec`; choice lists
are Literals built from the preset tables and rule tables themselves; the defaults that only
describe the built-in run (its training budgets, its grid) live here.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from flows.fanout import FanOutParams
from flows.spec_fields import spec_field, to_spec
from models.autoencoder import AE_PRESETS
from models.clip import CLIP_PRESETS
from models.diffusion import BETA_SCHEDULES, PREDICTION_TYPES, TIMESTEP_SAMPLINGS
from models.sampling import SAMPLERS
from models.unet import UNET_PRESETS
from tasks.evaluate.spec import SweepSpec, parse_target_effect
from tasks.filter.keep_rules import KEEP_RULES
from tasks.filter.score import FilterConfig
from tasks.ingest.download import IngestConfig
from tasks.shapes.render import DEFAULT_FAULT_RATE, FaultRates, ShapesSpec
from tasks.store.objectstore import is_s3, parse_s3_file
from tasks.store.workspace import DATA_VARIANTS, DEFAULT_VARIANT
from tasks.train.clip import (
    FILTER_CLIP_EPOCHS,
    FILTER_CLIP_PRESET,
    FILTER_PREFIX,
    JUDGE_PREFIX,
    judge_clip_spec,
)
from tasks.train.diffusion import DiffusionTrainSpec
from tasks.train.trainer import TrainConfig

AutoencoderPreset = Literal[tuple(AE_PRESETS)]
ClipPreset = Literal[tuple(CLIP_PRESETS)]
UNetPreset = Literal[tuple(UNET_PRESETS)]
ScheduleName = Literal[tuple(BETA_SCHEDULES)]
PredictionTypeName = Literal[PREDICTION_TYPES]
TimestepSamplingName = Literal[TIMESTEP_SAMPLINGS]
KeepRuleName = Literal[tuple(KEEP_RULES)]
SamplerName = Literal[tuple(SAMPLERS)]
Distributor = Literal["multiprocessing", "pyspark", "ray"]
DataVariantName = Literal[tuple(DATA_VARIANTS)]
# each variant once, in the order given
DataVariants = Annotated[list[DataVariantName], AfterValidator(lambda v: list(dict.fromkeys(v)))]
VARIANTS_HELP = "; ".join(f"{k}: {v}" for k, v in DATA_VARIANTS.items())


def _url_list(value: str) -> str:
    return str(parse_s3_file(value)) if is_s3(value) else value


UrlList = Annotated[str, AfterValidator(_url_list)]  # a file, or s3://BUCKET/KEY of one


def _target_effect(value: str) -> str:
    parse_target_effect(value)  # a ValueError names the problem
    return value


TargetEffect = Annotated[str, AfterValidator(_target_effect)]  # METRIC=EFFECT, checked


class ShapesParams(BaseModel):
    """The built-in captioned-shapes data set, served on 127.0.0.1."""

    model_config = ConfigDict(extra="forbid")

    n: int = spec_field(
        ShapesSpec, "n", ge=1, le=1_000_000, description="number of image-text pairs"
    )
    image_size: int = spec_field(
        ShapesSpec, "image_size", ge=8, le=512, description="image side, pixels"
    )
    seed: int = spec_field(
        ShapesSpec, "seed", ge=0, description="everything about the data follows"
    )
    wrong_caption_fraction: float = spec_field(
        ShapesSpec,
        "wrong_caption_fraction",
        ge=0,
        le=1,
        description="pairs given another image's caption (ground truth kept)",
    )
    two_object_fraction: float = spec_field(
        ShapesSpec, "two_object_fraction", ge=0, le=1, description="images with two objects"
    )
    fault_rate: float = Field(
        DEFAULT_FAULT_RATE,
        ge=0,
        le=0.2,
        description="fraction of URLs given each fault: 404, corrupt, truncated, slow, redirect",
    )
    port: int = Field(
        8737,
        ge=0,
        le=65535,
        description="loopback port; a fixed port keeps URLs (and pair_ids) stable across runs; "
        "0 or a busy port falls back to a free one",
    )

    def to_spec(self) -> ShapesSpec:
        return to_spec(self, ShapesSpec, faults=FaultRates.uniform(self.fault_rate))


class IngestOptions(BaseModel):
    """How a URL list is downloaded with img2dataset into data/raw/."""

    model_config = ConfigDict(extra="forbid")

    url_col: str = spec_field(IngestConfig, "url_col", description="URL column")
    caption_col: str = spec_field(IngestConfig, "caption_col", description="caption column")
    image_size: int = spec_field(
        IngestConfig, "image_size", ge=8, le=4096, description="output side, pixels (centre crop)"
    )
    processes: int = spec_field(
        IngestConfig, "processes", ge=1, le=256, description="downloaders, one per shard at most"
    )
    threads: int = spec_field(IngestConfig, "threads", ge=1, le=1024)
    shard_size: int = spec_field(
        IngestConfig, "shard_size", ge=1, le=1_000_000, description="rows per Parquet shard"
    )
    timeout_s: int = spec_field(IngestConfig, "timeout_s", ge=1, le=600)
    retries: int = spec_field(IngestConfig, "retries", ge=0, le=10)
    allow_private: bool = spec_field(
        IngestConfig,
        "allow_private",
        description="fetch every address, private, loopback and link-local included",
    )
    allow_host: list[str] = Field(
        [],
        description="HOST:PORT fetched even if its address is private (exact match); repeatable",
    )
    max_caption_chars: int = spec_field(
        IngestConfig,
        "max_caption_chars",
        ge=1,
        le=1_000_000,
        description="longer captions are refused",
    )
    max_body_bytes: int = spec_field(
        IngestConfig,
        "max_body_bytes",
        ge=1,
        le=1 << 34,
        description="a larger download is refused (declared) or cut off",
    )
    retry_failed: bool = spec_field(
        IngestConfig,
        "retry_failed",
        description="rerun an unchanged list to retry its failed downloads (else it is skipped)",
    )
    max_pixels: int = spec_field(
        IngestConfig,
        "max_pixels",
        ge=1,
        le=1 << 34,
        description="an image declaring more pixels is refused before it is decoded",
    )
    distributor: Distributor = spec_field(IngestConfig, "distributor")
    spark_master: str = spec_field(
        IngestConfig,
        "spark_master",
        description="pyspark only: a Spark master URL (spark://HOST:PORT, yarn, k8s://...); "
        "empty: local[PROCESSES] on this machine",
    )


class IngestParams(IngestOptions):
    """Download a URL list with img2dataset into data/raw/."""

    url_list: UrlList = Field(
        description="Parquet, CSV or TSV file with a URL and a caption column, or "
        "s3://BUCKET/KEY of one"
    )


class TrainingParams(BaseModel):
    """What to train, and for how long. The grid is text encoders x U-Nets (x autoencoders).

    The step budgets are the built-in run's, for `make run` on 2 CPU cores: each is what
    the measurements in docs/training.md showed it buys (the autoencoder's 1,600 steps of 32
    read back 93 % of scenes right, 800 of 64 only 54 %; one locked 1,200-step image tower
    lets 150 text-tower steps tell the shapes apart; 900 diffusion steps draw 74-83 % of
    fresh prompts all correct with unet-s and unet-xs, 300 steps 4-20 %)."""

    model_config = ConfigDict(extra="forbid")

    autoencoders: list[AutoencoderPreset] = Field(
        ["kl-f4"], min_length=1, description="autoencoder presets (identity = pixel-space control)"
    )
    text_encoders: list[ClipPreset] = Field(
        ["clip-tiny", "clip-small"], min_length=1, description="CLIP sizes (text tower sweep axis)"
    )
    unets: list[UNetPreset] = Field(
        ["unet-xs", "unet-s"], min_length=1, description="U-Net sizes (noise predictor sweep axis)"
    )
    data_variants: DataVariants = Field(
        [DEFAULT_VARIANT],
        min_length=1,
        description="training sets of the diffusion grid (data sweep axis; the encoders are "
        f"trained on the kept pairs): {VARIANTS_HELP}",
    )
    autoencoder_steps: int = Field(1600, ge=1, le=10_000_000, description="optimizer steps")
    image_tower_steps: int = Field(
        1200,
        ge=0,
        le=10_000_000,
        description="steps of the one CLIP whose locked image tower every text encoder trains "
        "against (LiT); 0: each text encoder trains its own image tower",
    )
    clip_steps: int = Field(
        150, ge=1, le=10_000_000, description="optimizer steps of each text encoder"
    )
    diffusion_steps: int = Field(900, ge=1, le=10_000_000, description="optimizer steps")
    # the diffusion trainer's own defaults: the settings time to quality picked
    diffusion_batch_size: int = spec_field(DiffusionTrainSpec().train, "batch_size", ge=1, le=65536)
    prediction_type: PredictionTypeName = spec_field(DiffusionTrainSpec, "prediction_type")
    min_snr_gamma: float | None = spec_field(
        DiffusionTrainSpec,
        "min_snr_gamma",
        gt=0,
        description="min-SNR loss weighting; empty = plain MSE",
    )
    schedule: ScheduleName = spec_field(DiffusionTrainSpec, "schedule")
    timestep_sampling: TimestepSamplingName = spec_field(
        DiffusionTrainSpec,
        "timestep_sampling",
        description="training timesteps: logit-normal favours mid-schedule",
    )
    cond_dropout: float = spec_field(DiffusionTrainSpec, "cond_dropout", ge=0, le=1)
    seed: int = spec_field(TrainConfig, "seed", ge=0, description="seed of every training")
    replicates: int = Field(
        1,
        ge=1,
        le=100,
        description="trainings of every grid point (text encoder and noise predictor), each "
        "with its own seed: K >= 2 lets a verdict include the spread between trainings",
    )
    first_replicate: int = Field(
        0,
        ge=0,
        le=10_000,
        description="the first replicate's number: replicate r trains with seed + r and is "
        "named -r<r> (0: the plain name); another range adds replicates to a workspace",
    )
    device: str = spec_field(TrainConfig, "device", description='"auto", "cpu", "cuda" or "cuda:N"')
    nproc_per_node: int = Field(
        1,
        ge=0,
        le=1024,
        description="processes per training: 1 trains in this process; N > 1 launches torchrun "
        "with N processes (DDP; gloo on CPU); 0: torchrun with one per CUDA GPU",
    )


class FilterParams(BaseModel):
    """Score every raw pair by CLIP image-caption similarity and keep the ones that fit."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        None,
        description='"openclip:ARCH:TAG" (pretrained weights already on disk), "marble:NAME" '
        "(a marble CLIP checkpoint), or empty: train a small filter CLIP on the raw pairs",
    )
    keep: KeepRuleName = spec_field(
        FilterConfig,
        "keep",
        description="mixture: keep pairs the upper component of a two-Gaussian fit of the "
        "similarities explains best; otsu: cut between the two modes of the histogram",
    )
    threshold: float = spec_field(
        FilterConfig, "threshold", ge=-1, le=1, description='for keep="threshold"'
    )
    top_fraction: float = spec_field(
        FilterConfig, "top_fraction", gt=0, le=1, description='for keep="top_fraction"'
    )
    filter_clip_epochs: float = Field(
        FILTER_CLIP_EPOCHS,
        gt=0,
        le=100_000,
        description="when no model is given: training epochs of the filter CLIP over the raw pairs",
    )
    filter_clip_steps: int | None = Field(
        None, ge=1, le=10_000_000, description="a fixed step count instead of the epochs"
    )
    val_fraction: float = spec_field(FilterConfig, "val_fraction", ge=0, lt=1)
    device: str = spec_field(FilterConfig, "device", description="auto, cpu, cuda...")

    def to_config(self, model: str) -> FilterConfig:
        return to_spec(self, FilterConfig, model=model)


class EvaluateParams(BaseModel):
    """An evaluation sweep: every trained diffusion model x guidance scale, on the same
    prompts and noise; FID, fd_clip, CMMD, CLIP score (and attribute accuracy on the
    built-in data), each with a bootstrap interval."""

    model_config = ConfigDict(extra="forbid")

    models: list[str] = Field(
        [], description="diffusion checkpoint names; empty: every trained model"
    )
    data_variants: DataVariants = Field(
        [], description=f"only models trained on these training sets; empty: all ({VARIANTS_HELP})"
    )
    guidance_scales: list[float] = spec_field(
        SweepSpec,
        "guidance_scales",
        min_length=1,
        description="classifier-free guidance scales (Imagen's sweep by default)",
    )
    sampler: SamplerName = spec_field(SweepSpec, "sampler")
    num_inference_steps: int = spec_field(
        SweepSpec, "num_inference_steps", ge=1, le=1000, description="sampler steps"
    )
    num_samples: int = spec_field(
        SweepSpec,
        "num_samples",
        ge=2,
        le=1_000_000,
        description="images per point (10,000: FID-10K)",
    )
    prompt_set: Literal["auto", "val", "heldout"] = spec_field(
        SweepSpec,
        "prompt_set",
        description="val: the kept pairs' val split; heldout: fresh built-in scenes; "
        "auto: heldout on the built-in data, else val",
    )
    judge: str = spec_field(
        SweepSpec,
        "judge",
        description='the CLIP that scores: "marble:NAME" or "openclip:ARCH:TAG"; the default '
        "marble judge is trained on the kept pairs first when missing",
    )
    judge_steps: int = spec_field(
        judge_clip_spec().train, "steps", ge=1, le=10_000_000, description="training of that judge"
    )
    bootstrap: int = spec_field(
        SweepSpec, "bootstrap", ge=1, le=100_000, description="interval replicates"
    )
    batch_size: int = spec_field(SweepSpec, "batch_size", ge=1, le=65536)
    fid_weights: str | None = Field(
        None, description="an FID Inception weights file (default: the installed one)"
    )
    seed: int = spec_field(SweepSpec, "seed", ge=0, description="bootstrap seed")
    target_effect: list[TargetEffect] = Field(
        [],
        description="METRIC=EFFECT (e.g. fid=2): the summary says what replicates that "
        "effect would need to be resolved; repeatable",
    )
    device: str = spec_field(SweepSpec, "device", description="auto, cpu, cuda...")

    @property
    def trains_judge(self) -> bool:
        return self.judge.startswith(f"marble:{JUDGE_PREFIX}")

    def to_spec(self) -> SweepSpec:
        effects = tuple(
            (v.partition("=")[0], float(v.partition("=")[2])) for v in self.target_effect
        )
        return to_spec(self, SweepSpec, target_effects=effects)


class PipelineParams(BaseModel):
    """The whole chain: ingest, filter, train every model of the grid, evaluate, summarise.
    With no URL list, on the built-in captioned shapes served on 127.0.0.1 (`make run`)."""

    model_config = ConfigDict(extra="forbid")

    home: str | None = Field(
        None, description="workspace root; default $MARBLE_HOME or ./marble-home"
    )
    url_list: UrlList | None = Field(
        None,
        description="a URL list (Parquet, CSV, TSV; a file or s3://BUCKET/KEY) to ingest; "
        "empty: the built-in captioned shapes, served on 127.0.0.1",
    )
    ingest: IngestOptions = IngestOptions()
    shapes: ShapesParams = ShapesParams()
    filter: FilterParams = FilterParams()
    training: TrainingParams = TrainingParams()
    fan_out: FanOutParams = FanOutParams()

    # A small sweep sized for a CPU laptop (docs/evaluation.md has what each part costs). It
    # shares the filter CLIP as the judge, which never conditions a model under test.
    evaluation: EvaluateParams = EvaluateParams(
        num_samples=100,
        guidance_scales=[1.0, 4.0],
        bootstrap=50,
        judge=f"marble:{FILTER_PREFIX}{FILTER_CLIP_PRESET}",
    )
