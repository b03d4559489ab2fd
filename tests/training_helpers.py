"""Small workspaces for training tests: raw shards written directly (no HTTP, no img2dataset)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.ids import pair_id
from tasks.shapes import FaultRates, ShapesSpec, build_table, render_png
from tasks.trainer import TrainConfig
from tasks.workspace import Workspace


def make_workspace(root: Path, n: int = 160, seed: int = 0) -> Workspace:
    """A workspace whose data/raw holds n rendered 32 px shapes, all downloaded fine."""
    spec = ShapesSpec(n=n, seed=seed, faults=FaultRates(0, 0, 0, 0, 0))
    table = build_table(spec)
    rows = []
    for i in range(n):
        url = f"http://127.0.0.1:1/shapes/{seed}/{i}.png"
        rows.append(
            {
                "pair_id": pair_id(url, table.captions[i]),
                "caption": table.captions[i],
                "url": url,
                "status": "success",
                "png": render_png(spec, i),
            }
        )
    workspace = Workspace(root)
    workspace.raw.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), workspace.raw / "00000.parquet")
    return workspace


def tiny_train(**kw) -> TrainConfig:
    base = dict(steps=6, batch_size=8, lr=1e-3, warmup_steps=2, log_every=2, ckpt_every=3)
    return TrainConfig(**(base | kw))
