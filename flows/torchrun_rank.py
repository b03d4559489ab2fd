"""What every torchrun rank runs (tasks/train/torchrun.py launches it):

    python -m torch.distributed.run ... -m flows.torchrun_rank RUN_DIR

It rebuilds the spec that `run_torchrun` wrote to RUN_DIR/spec.json and calls the kind's
trainer, which joins the process group; rank 0 writes RUN_DIR/summary.json. Rank 0's
progress goes to stdout as `marble-progress:` lines, and a rank that fails prints one
`marble-rank-error:` line before it exits, for the launcher to pass on.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

import tasks  # noqa: F401  (offline defaults before anything imports Prefect or MLflow)
from tasks.runtime import progress
from tasks.store.checkpoint import dataclass_from_json
from tasks.store.files import atomic_write_bytes
from tasks.store.workspace import Workspace
from tasks.train.registry import TRAINERS
from tasks.train.torchrun import PROGRESS, RANK_ERROR, SPEC_FILE, SUMMARY_FILE
from tasks.train.trainer import TrainConfig


def spec_from_json(kind: str, values: dict):
    """The spec of `kind` from its dataclasses.asdict form."""
    train = dataclass_from_json(TrainConfig, values["train"])
    return TRAINERS[kind].spec(**values | {"train": train})


def main(run_dir: Path) -> int:
    """Train the spec in `run_dir` on this rank; rank 0 writes the summary."""
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", 0))
    try:
        payload = json.loads((run_dir / SPEC_FILE).read_text())
        kind = payload["kind"]
        spec = spec_from_json(kind, payload["spec"])

        def show_progress(name: str, done: int, total: int) -> None:
            print(f"{PROGRESS} {name} {done} {total}", flush=True)

        with progress.reporting(show_progress):
            summary = TRAINERS[kind].train(spec, Workspace(Path(payload["workspace"])))
        world = dist.get_world_size() if dist.is_initialized() else 1
        if rank == 0:
            summary = summary | {"world_size": world}
            atomic_write_bytes(
                run_dir / SUMMARY_FILE, json.dumps(summary, indent=2, default=str).encode()
            )
        if dist.is_initialized():
            dist.destroy_process_group()
        return 0
    except Exception as e:
        traceback.print_exc()
        message = str(e).splitlines()[0] if str(e) else ""
        print(f"{RANK_ERROR} rank {rank}: {type(e).__name__}: {message}", flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
