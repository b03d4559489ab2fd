"""Small workspaces for training tests: raw shards written directly (no HTTP, no img2dataset)."""

from __future__ import annotations

from pathlib import Path

from tasks.shapes.render import FaultRates, ShapesSpec, write_as_raw_shard
from tasks.store.workspace import Workspace
from tasks.train.trainer import TrainConfig


def make_workspace(root: Path, n: int = 160, seed: int = 0) -> Workspace:
    """A workspace whose data/raw holds n rendered 32 px shapes, all downloaded fine."""
    workspace = Workspace(root)
    workspace.raw.mkdir(parents=True)
    spec = ShapesSpec(n=n, seed=seed, faults=FaultRates(0, 0, 0, 0, 0))
    write_as_raw_shard(spec, workspace.raw / "00000.parquet")
    return workspace


def tiny_train(**kw) -> TrainConfig:
    base = dict(steps=6, batch_size=8, lr=1e-3, warmup_steps=2, log_every=2, ckpt_every=3)
    return TrainConfig(**(base | kw))
