"""Flow parameters as pydantic models: Prefect validates them and builds the UI form from them."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ShapesParams(BaseModel):
    """The built-in captioned-shapes data set, served on 127.0.0.1."""

    model_config = ConfigDict(extra="forbid")

    n: int = Field(5000, ge=1, le=1_000_000, description="number of image-text pairs")
    image_size: int = Field(32, ge=8, le=512, description="rendered image side, pixels")
    seed: int = Field(0, ge=0, description="everything about the data follows from it")
    wrong_caption_fraction: float = Field(
        0.2, ge=0, le=1, description="pairs given another image's caption (ground truth kept)"
    )
    two_object_fraction: float = Field(0.25, ge=0, le=1, description="images with two objects")
    fault_rate: float = Field(
        0.005,
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


class IngestParams(BaseModel):
    """Download a URL list with img2dataset into data/raw/."""

    model_config = ConfigDict(extra="forbid")

    url_list: str = Field(description="Parquet, CSV or TSV file with a URL and a caption column")
    url_col: str = "url"
    caption_col: str = "caption"
    image_size: int = Field(32, ge=8, le=4096, description="output side, pixels (centre crop)")
    processes: int = Field(2, ge=1, le=256)
    threads: int = Field(32, ge=1, le=1024)
    shard_size: int = Field(1000, ge=1, le=1_000_000, description="rows per Parquet shard")
    timeout_s: int = Field(10, ge=1, le=600)
    retries: int = Field(1, ge=0, le=10)
    allow_private: bool = Field(False, description="allow private and loopback addresses")
    distributor: Literal["multiprocessing", "pyspark", "ray"] = "multiprocessing"


class TrainingParams(BaseModel):
    """What to train, and for how long. The grid is text encoders x U-Nets (x autoencoders)."""

    model_config = ConfigDict(extra="forbid")

    autoencoders: list[Literal["kl-f4", "kl-f4-dec-s", "kl-f4-dec-l", "kl-f8", "identity"]] = Field(
        ["kl-f4"], min_length=1, description="autoencoder presets (identity = pixel-space control)"
    )
    text_encoders: list[Literal["clip-tiny", "clip-small", "clip-base"]] = Field(
        ["clip-tiny", "clip-small"], min_length=1, description="CLIP sizes (text tower sweep axis)"
    )
    unets: list[Literal["unet-xs", "unet-s", "unet-m", "unet-l"]] = Field(
        ["unet-xs", "unet-s"], min_length=1, description="U-Net sizes (noise predictor sweep axis)"
    )
    autoencoder_steps: int = Field(800, ge=1, le=10_000_000)
    clip_steps: int = Field(300, ge=1, le=10_000_000)
    diffusion_steps: int = Field(300, ge=1, le=10_000_000)
    diffusion_batch_size: int = Field(128, ge=1, le=65536)
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "v_prediction"
    min_snr_gamma: float | None = Field(
        5.0, gt=0, description="min-SNR loss weighting; empty = plain MSE"
    )
    schedule: Literal["linear", "scaled_linear", "cosine"] = "cosine"
    timestep_sampling: Literal["uniform", "logit_normal"] = Field(
        "uniform", description="training timesteps: logit-normal favours mid-schedule"
    )
    cond_dropout: float = Field(0.1, ge=0, le=1)
    seed: int = Field(0, ge=0)
    device: str = Field("auto", description='"auto", "cpu", "cuda" or "cuda:N"')


class FilterParams(BaseModel):
    """Score every raw pair by CLIP image-caption similarity and keep the ones that fit."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        None,
        description='"openclip:ARCH:TAG" (pretrained weights already on disk), "marble:NAME" '
        "(a marble CLIP checkpoint), or empty: train a small filter CLIP on the raw pairs",
    )
    keep: Literal["mixture", "otsu", "threshold", "top_fraction"] = Field(
        "mixture",
        description="mixture: keep pairs the upper component of a two-Gaussian fit of the "
        "similarities explains best; otsu: cut between the two modes of the histogram",
    )
    threshold: float = Field(0.28, ge=-1, le=1, description='for keep="threshold"')
    top_fraction: float = Field(0.3, gt=0, le=1, description='for keep="top_fraction"')
    filter_clip_epochs: float = Field(
        8.0, gt=0, le=100_000, description="training epochs of the filter CLIP over the raw pairs"
    )
    filter_clip_steps: int | None = Field(
        None, ge=1, le=10_000_000, description="a fixed step count instead of the epochs"
    )
    val_fraction: float = Field(0.05, ge=0, lt=1)
    device: str = "auto"


class RunParams(BaseModel):
    """The main job on the built-in data: serve shapes, ingest, and every later stage."""

    model_config = ConfigDict(extra="forbid")

    home: str | None = Field(
        None, description="workspace root; default $MARBLE_HOME or ./marble-home"
    )
    shapes: ShapesParams = ShapesParams()
    filter: FilterParams = FilterParams()
    training: TrainingParams = TrainingParams()
