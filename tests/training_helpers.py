"""Small workspaces for training tests: raw shards written directly (no HTTP, no img2dataset)."""

from __future__ import annotations

from pathlib import Path

from tasks.shapes.render import FaultRates, ShapesSpec, build_table, write_as_raw_shard
from tasks.shapes.server import write_source_tables
from tasks.store.tracking import Tracker
from tasks.store.workspace import Workspace
from tasks.train.trainer import TrainConfig


def make_workspace(root: Path, n: int = 160, seed: int = 0, truth: bool = False) -> Workspace:
    """A workspace whose data/raw holds n rendered 32 px shapes, all downloaded fine; with
    `truth`, the built-in source tables beside them (the ground truth evaluation reads)."""
    workspace = Workspace(root)
    workspace.raw.mkdir(parents=True)
    spec = ShapesSpec(n=n, seed=seed, faults=FaultRates(0, 0, 0, 0, 0))
    write_as_raw_shard(spec, workspace.raw / "00000.parquet")
    if truth:
        workspace.source.mkdir(parents=True)
        write_source_tables(spec, build_table(spec), "http://127.0.0.1:1", workspace.source)
    return workspace


def tiny_train(**kw) -> TrainConfig:
    base = dict(steps=6, batch_size=8, lr=1e-3, warmup_images=16, log_every=2, ckpt_every=3)
    return TrainConfig(**(base | kw))


def null_tracker():
    """A tracker factory for `tasks.train.trainer.train` that logs nothing (MLflow off)."""
    return lambda run_id, enabled: Tracker(None, "marble-test", "loop", run_id, enabled=False)
