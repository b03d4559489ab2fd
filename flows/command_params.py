"""Parameters of the `marble` commands that run no Prefect flow: train (one model, also
under torchrun), query, publish and up. Like the flows' (flows/params.py), they give the
command line its options, defaults and bounds, and check the values.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from flows.params import (
    VARIANTS_HELP,
    AutoencoderPreset,
    ClipPreset,
    DataVariantName,
    UNetPreset,
)
from flows.spec_fields import spec_field
from tasks.store.objectstore import parse_s3_url
from tasks.store.query import FORMATS
from tasks.train.autoencoder import AutoencoderTrainSpec
from tasks.train.clip import ClipTrainSpec
from tasks.train.diffusion import DiffusionTrainSpec
from tasks.train.registry import KINDS
from tasks.train.trainer import TrainConfig

QueryFormat = Literal[FORMATS]


def _s3_url(value: str) -> str:
    return str(parse_s3_url(value))  # an ObjectStoreError (a ValueError) names the problem


S3Url = Annotated[str, AfterValidator(_s3_url)]  # s3://BUCKET[/PREFIX], checked


class TrainModelParams(BaseModel):
    """One model trained directly, without Prefect (what `torchrun -m flows.cli train` runs)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal[KINDS]
    autoencoder: AutoencoderPreset = spec_field(
        AutoencoderTrainSpec, "preset", description="autoencoder preset"
    )
    text_encoder: ClipPreset = spec_field(ClipTrainSpec, "preset", description="CLIP preset")
    unet: UNetPreset = spec_field(DiffusionTrainSpec, "unet", description="U-Net preset")
    steps: int | None = Field(
        None, ge=1, le=10_000_000, description="optimizer steps (default: the trainer's)"
    )
    batch_size: int | None = Field(
        None, ge=1, le=65536, description="images per step (default: the trainer's)"
    )
    device: str = spec_field(TrainConfig, "device", description='"auto", "cpu", "cuda" or "cuda:N"')
    seed: int = spec_field(TrainConfig, "seed", ge=0, description="seed of the training")
    replicate: int = Field(
        0,
        ge=0,
        le=10_000,
        description="a training replicate of a grid model (clip, diffusion): named -r<N>, "
        "trained with seed + N; a diffusion replicate uses its text encoder's replicate",
    )
    data_variant: DataVariantName = spec_field(
        DiffusionTrainSpec,
        "data_variant",
        description=f"diffusion's training set ({VARIANTS_HELP})",
    )


class QueryParams(BaseModel):
    """SQL over the workspace's tables and MLflow runs (DuckDB)."""

    model_config = ConfigDict(extra="forbid")

    sql: str = Field(description="a query over raw, scores, pairs, evaluations, samples, runs")
    format: QueryFormat = Field("table", description="how to print the result")
    source: S3Url | None = Field(
        None,
        description="read the Parquet views from what `marble publish` wrote at "
        "s3://BUCKET/PREFIX; default: the workspace's own files",
    )


class PublishParams(BaseModel):
    """Upload the workspace's Parquet tables to S3, the manifest last (tasks/store/objectstore.py)."""

    model_config = ConfigDict(extra="forbid")

    target: S3Url = Field(description="s3://BUCKET[/PREFIX]")


class UpParams(BaseModel):
    """The local services on 127.0.0.1: Prefect server and UI, a process worker, MLflow UI."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)  # URLs hold passwords

    prefect_port: int = Field(
        4200, ge=0, le=65535, description="Prefect server and UI; 0: any free port"
    )
    mlflow_port: int = Field(5000, ge=0, le=65535, description="MLflow UI; 0: any free port")
    timezone: str = Field("UTC", description="time zone of the nightly evaluation (IANA name)")
    nightly_cron: str = Field("0 2 * * *", description="when the nightly evaluation runs (cron)")
    database: str | None = Field(
        None,
        description="PostgreSQL for Prefect and MLflow: postgresql://USER[:PASS]@HOST[:PORT]/DB "
        "(MLflow uses DB_mlflow, created if missing); default: SQLite in the workspace",
    )

    artifacts: S3Url | None = Field(
        None,
        description="where the MLflow server stores run artifacts: s3://BUCKET[/PREFIX] "
        "(AWS_* settings: credentials, AWS_ENDPOINT_URL); default: mlartifacts/ in the workspace",
    )

    @field_validator("database")
    @classmethod
    def _postgres_url(cls, value: str | None) -> str | None:
        from tasks.runtime.database import parse_url

        if value is not None:
            parse_url(value)  # a ValueError names the problem, the password masked
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r} (an IANA name: UTC, Europe/Berlin)"
            ) from None
        return value

    @field_validator("nightly_cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        from cronsim import CronSim, CronSimError

        try:
            CronSim(value, datetime.now())
        except CronSimError as e:
            raise ValueError(f"not a cron expression: {value!r} ({e})") from None
        return value
