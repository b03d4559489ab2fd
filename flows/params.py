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


class RunParams(BaseModel):
    """The main job on the built-in data: serve shapes, ingest, and every later stage."""

    model_config = ConfigDict(extra="forbid")

    home: str | None = Field(
        None, description="workspace root; default $MARBLE_HOME or ./marble-home"
    )
    shapes: ShapesParams = ShapesParams()
