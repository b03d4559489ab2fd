"""torchrun from a task: the command for one node and for several, 2 gloo CPU processes
training a model whose rank-0 checkpoint loads, one clear error when the ranks fail, and
nothing left running after a failure or an interruption."""

from __future__ import annotations

import dataclasses
import json
import os
import sys

import pytest
import torch

from tasks.runtime.processes import alive
from tasks.runtime.reaper import descendants
from tasks.train.clip import ClipTrainSpec
from tasks.train.diffusion import DiffusionTrainSpec
from tasks.train.torchrun import (
    Rendezvous,
    TorchrunError,
    resolve_nproc,
    run_torchrun,
    torchrun_argv,
    torchrun_env,
)
from tests.training_helpers import make_workspace, tiny_train

ENTRY = ["-m", "flows.torchrun_rank", "/runs/x"]


def _option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_one_node_argv_is_standalone():
    argv = torchrun_argv(2, ENTRY)
    assert argv[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert _option(argv, "--nproc_per_node") == "2" and _option(argv, "--nnodes") == "1"
    assert "--standalone" in argv and "--rdzv_endpoint" not in argv
    assert argv[-3:] == ENTRY  # the entry comes after every torchrun option


def test_multi_node_argv_names_the_rendezvous():
    rdzv = Rendezvous(endpoint="10.0.0.5:29400", nnodes=4, node_rank=3, run_id="sweep-7")
    argv = torchrun_argv(8, ENTRY, rdzv)
    assert "--standalone" not in argv
    assert _option(argv, "--nnodes") == "4" and _option(argv, "--node_rank") == "3"
    assert _option(argv, "--rdzv_backend") == "c10d"
    assert _option(argv, "--rdzv_endpoint") == "10.0.0.5:29400"
    assert _option(argv, "--rdzv_id") == "sweep-7"
    assert _option(argv, "--nproc_per_node") == "8" and argv[-3:] == ENTRY
    env = torchrun_env(on_cpu=False, standalone=False, base={})
    assert "GLOO_SOCKET_IFNAME" not in env and "MASTER_ADDR" not in env  # not loopback
    assert "OMP_NUM_THREADS" not in env


def test_bad_launch_settings_are_refused():
    with pytest.raises(ValueError, match="node_rank must lie in 0 .. nnodes - 1"):
        Rendezvous(endpoint="h:29400", nnodes=2, node_rank=2, run_id="r")
    with pytest.raises(ValueError, match="is not HOST:PORT"):
        Rendezvous(endpoint="h", nnodes=2, node_rank=0, run_id="r")
    with pytest.raises(ValueError, match=">= 0"):
        resolve_nproc(-1)
    assert resolve_nproc(3) == 3
    env = torchrun_env(on_cpu=True, standalone=True, base={"PYTHONPATH": "/x"})
    assert env["OMP_NUM_THREADS"] == "1" and env["GLOO_SOCKET_IFNAME"] == "lo"
    assert env["MASTER_ADDR"] == "127.0.0.1" and env["PYTHONPATH"].endswith(os.pathsep + "/x")


def test_a_batch_smaller_than_the_ranks_is_refused(tmp_path):
    spec = ClipTrainSpec(train=tiny_train(device="cpu", batch_size=2))
    workspace = make_workspace(tmp_path / "home")
    with pytest.raises(ValueError, match="leaves some of the 4 ranks without images"):
        run_torchrun("clip", spec, workspace, nproc_per_node=4)
    assert not (workspace.root / "logs").exists()  # refused before anything was launched


# ---------------------------------------------------------------------------- launching


def _left_running(before: dict[int, int]) -> list[int]:
    """Processes below this one now that were not there `before`."""
    return [pid for pid in descendants(os.getpid()) if pid not in before]


@pytest.mark.slow
def test_two_gloo_processes_train_a_loadable_checkpoint(tmp_path):
    import mlflow

    from tasks.store.checkpoint import load_state
    from tasks.store.loaders import load_clip

    workspace = make_workspace(tmp_path / "home")
    spec = ClipTrainSpec(train=tiny_train(device="cpu"))
    lines: list[str] = []
    summary = run_torchrun("clip", spec, workspace, nproc_per_node=2, log=lines.append)
    assert summary["world_size"] == 2 and summary["nproc_per_node"] == 2
    assert summary["checkpoint"] == str(workspace.checkpoint("clip", "clip-tiny"))
    model, cfg = load_clip(workspace, "clip-tiny")
    assert sum(p.numel() for p in model.parameters()) > 0
    assert load_state(workspace.checkpoint("clip", "clip-tiny"))["step"] == spec.train.steps
    # a client of its own: mlflow.set_tracking_uri would pin later tests to this workspace
    client = mlflow.MlflowClient(tracking_uri=workspace.mlflow_uri)
    experiment = client.get_experiment_by_name("marble-train")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [summary["run_id"]]  # rank 0 alone tracks
    assert [r.data.params["world_size"] for r in runs] == ["2"]
    assert any("clip" in line for line in lines)  # the ranks' output was streamed

    # a text tower against that CLIP's locked image tower (LiT) under DDP: the tower unchanged
    lit = dataclasses.replace(spec, preset="clip-small", image_tower="clip-tiny")
    run_torchrun("clip", lit, workspace, nproc_per_node=2, log=lambda line: None)
    small, _ = load_clip(workspace, "clip-small")
    tower = model.visual.state_dict()
    assert all(torch.equal(v, tower[k]) for k, v in small.visual.state_dict().items())


@pytest.mark.slow
def test_failed_ranks_give_one_error_with_the_exit_code(tmp_path):
    workspace = make_workspace(tmp_path / "home")
    before = descendants(os.getpid())
    spec = DiffusionTrainSpec(text_encoder="clip-tiny", train=tiny_train(device="cpu"))
    with pytest.raises(TorchrunError) as failed:  # no autoencoder, no CLIP checkpoint
        run_torchrun("diffusion", spec, workspace, nproc_per_node=2, log=lambda line: None)
    message = str(failed.value)
    first_line = message.splitlines()[0]
    assert "failed with exit code 1" in first_line
    assert "CheckpointNotFoundError: no autoencoder checkpoint 'kl-f4'" in first_line
    assert "torchrun.log" in message and len(message.splitlines()) > 5  # the log's tail
    assert _left_running(before) == []


@pytest.mark.slow
def test_an_interrupted_task_leaves_no_process(tmp_path):
    """An exception in the launching thread (as Prefect raises on cancellation) while the
    ranks train stops torchrun and both ranks, each in a session of its own."""
    from prefect.exceptions import TerminationSignal

    workspace = make_workspace(tmp_path / "home")
    before = descendants(os.getpid())
    spec = ClipTrainSpec(train=tiny_train(device="cpu", steps=100_000))
    seen: dict[int, tuple[int, str]] = {}  # pid -> (start time, command line)

    def interrupt_once_training(line: str) -> None:
        if "clip:" in line:  # rank 0's progress bar: both ranks are in the loop
            for pid, start in descendants(os.getpid()).items():
                if pid not in before:
                    seen[pid] = (start, _cmdline(pid))
            raise TerminationSignal(15)

    with pytest.raises(TerminationSignal):
        run_torchrun("clip", spec, workspace, nproc_per_node=2, log=interrupt_once_training)
    launched = [cmdline for _, cmdline in seen.values() if "flows.torchrun_rank" in cmdline]
    assert len(launched) == 3, launched  # torchrun and its two ranks were running
    assert not any(alive(pid, start) for pid, (start, _) in seen.items())
    assert _left_running(before) == []


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_the_spec_travels_to_the_ranks_unchanged():
    from flows.torchrun_rank import spec_from_json

    spec = DiffusionTrainSpec(unet="unet-s", min_snr_gamma=None, train=tiny_train(lr=3e-4))
    spec = dataclasses.replace(spec, train=dataclasses.replace(spec.train, betas=(0.8, 0.9)))
    assert spec_from_json("diffusion", json.loads(json.dumps(dataclasses.asdict(spec)))) == spec


def test_run_training_launches_torchrun_when_asked_for_processes(tmp_path, monkeypatch):
    """nproc_per_node > 1: every model of the grid goes to the torchrun task, in order."""
    import flows.train
    from flows.params import TrainingParams

    calls = []

    def fake_torchrun_task(kind, spec, workspace, nproc_per_node):
        calls.append((kind, spec.name, spec.train.steps, nproc_per_node))
        return {"kind": kind, "name": spec.name, "stage_s": 0.1}

    monkeypatch.setattr(flows.train, "torchrun_task", fake_torchrun_task)
    params = TrainingParams(
        autoencoders=["kl-f4"], text_encoders=["clip-tiny"], unets=["unet-xs"],
        autoencoder_steps=7, image_tower_steps=6, clip_steps=8, diffusion_steps=9, device="cpu",
        nproc_per_node=2,
    )  # fmt: skip
    out = flows.train.run_training(params, make_workspace(tmp_path / "home", n=8))
    assert calls == [
        ("autoencoder", "kl-f4", 7, 2),
        ("clip", "image-clip-tiny", 6, 2),
        ("clip", "clip-tiny", 8, 2),
        ("diffusion", "clip-tiny_unet-xs_kl-f4", 9, 2),
    ]
    assert list(out) == [
        "autoencoder/kl-f4", "clip/image-clip-tiny", "clip/clip-tiny",
        "diffusion/clip-tiny_unet-xs_kl-f4",
    ]  # fmt: skip
