"""A workspace moved or copied keeps working and never touches its old location."""

from __future__ import annotations

import hashlib
import shutil

import pytest

from tasks.store.workspace import Workspace
from tasks.train.clip import ClipTrainSpec, train_clip
from tests.training_helpers import make_workspace, tiny_train

pytestmark = pytest.mark.slow


def _snapshot(folder) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and ".locks" not in p.parts
    }


def test_a_copied_workspace_writes_only_into_itself(tmp_path):
    import mlflow

    original = make_workspace(tmp_path / "original")
    train_clip(ClipTrainSpec(train=tiny_train(ema_halflife_images=0)), original)
    before = _snapshot(original.root)
    copy = Workspace(tmp_path / "copy")
    shutil.copytree(original.root, copy.root)
    summary = train_clip(
        ClipTrainSpec(preset="clip-small", train=tiny_train(ema_halflife_images=0)), copy
    )
    assert _snapshot(original.root) == before  # nothing written into the original
    run = mlflow.get_run(summary["run_id"])  # the copy's store is the current one
    assert run.info.artifact_uri.startswith(copy.mlartifacts.as_uri())
    experiment = mlflow.get_experiment(run.info.experiment_id)
    assert experiment.artifact_location.startswith(copy.mlartifacts.as_uri())
    assert any(copy.mlartifacts.rglob("*"))
    for name in mlflow.MlflowClient().search_registered_models():  # the first model's paths too
        for version in name.latest_versions:
            assert str(original.root) not in (version.source or "")


def _follow(root: str, barrier) -> None:
    from pathlib import Path

    from tasks.store.moved import follow_moved_workspace

    barrier.wait()
    follow_moved_workspace(Workspace(Path(root)))


def test_processes_that_find_a_copied_store_at_once_rewrite_it_once(tmp_path):
    """Dask workers starting their trainings together in a copied workspace: every one
    goes on, and the store names only the copy."""
    import multiprocessing
    import sqlite3

    original = make_workspace(tmp_path / "original")
    train_clip(ClipTrainSpec(train=tiny_train(ema_halflife_images=0)), original)
    copy = tmp_path / "copy"
    shutil.copytree(original.root, copy)
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_follow, args=(str(copy), barrier)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0] * 4
    with sqlite3.connect(copy / "mlflow.db") as db:
        dump = "\n".join(db.iterdump())
    assert str(copy) in dump and str(original.root) not in dump
    assert (copy / ".marble-workspace").read_text() == str(copy)
