"""Fan-out on Prefect's Dask task runner gives what the sequential run gives: the filter's
shards on marble's own LocalCluster of 2 worker processes (127.0.0.1) and on a cluster
started outside marble (`dask_address`; one for the module), the sweep's grid points on that
cluster, every training wave on marble's own, and the diffusion grid alone on a cluster of
its own."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from flows.fanout import FAN_OUTS, FanOutParams, worker_threads
from tasks.shapes.render import FaultRates, ShapesSpec, build_table, write_as_raw_shard
from tasks.shapes.server import write_source_tables
from tasks.store.workspace import Workspace
from tasks.train.autoencoder import AutoencoderTrainSpec, train_autoencoder
from tasks.train.clip import ClipTrainSpec, train_clip
from tasks.train.diffusion import DiffusionTrainSpec, train_diffusion
from tests.training_helpers import tiny_train

DASK = FanOutParams(task_runner="dask", dask_workers=2)
DIFFUSION_GRID = FanOutParams(task_runner="dask", dask_fan_outs=["train-diffusion-grid"])
SEQUENTIAL = FanOutParams()
JUDGE_STEPS = 6


@pytest.mark.parametrize(
    "address",
    [
        "http://127.0.0.1:8786", "127.0.0.1:8786", "tcp://127.0.0.1", "tcp://:8786",
        "tcp://127.0.0.1:99999", "tcp://127.0.0.1:8786/path", "tcp://u:p@127.0.0.1:8786",
        "tcp://127.0.0.1:8786?x=1", "ws://127.0.0.1:8786", "",
    ],
)  # fmt: skip
def test_a_bad_scheduler_address_is_refused(address):
    with pytest.raises(ValidationError, match="Dask scheduler address"):
        FanOutParams(task_runner="dask", dask_address=address)


def test_scheduler_addresses_and_runner_choice():
    assert FanOutParams(task_runner="dask", dask_address="tcp://10.0.0.5:8786").dask_address
    assert FanOutParams(task_runner="dask", dask_address="tls://[::1]:8786").dask_address
    with pytest.raises(ValidationError, match="task_runner 'dask' only"):
        FanOutParams(dask_address="tcp://127.0.0.1:8786")  # sequential would ignore it
    with pytest.raises(ValidationError):
        FanOutParams(task_runner="ray")
    with pytest.raises(ValidationError, match="filter-shards"):
        FanOutParams(task_runner="dask", dask_fan_outs=["train-everything"])
    with pytest.raises(ValidationError, match="at least 1"):
        FanOutParams(task_runner="dask", dask_fan_outs=[])


def test_which_fan_outs_run_on_dask():
    """None by default; with task_runner dask every fan-out, or those named, and only with
    two or more calls: one call runs in the flow's process, where it has every thread,
    unless the cluster is someone else's (there the work is meant to leave this machine)."""
    assert not any(SEQUENTIAL.on_dask(name, 4) for name in FAN_OUTS)
    assert all(DASK.on_dask(name, 2) for name in FAN_OUTS)
    grid = DIFFUSION_GRID
    assert grid.on_dask("train-diffusion-grid", 4)
    assert not grid.on_dask("train-diffusion-grid", 1)
    assert not grid.on_dask("train-diffusion-grid", 0)
    for name in set(FAN_OUTS) - {"train-diffusion-grid"}:
        assert not grid.on_dask(name, 4), name
    external = FanOutParams(task_runner="dask", dask_address="tcp://10.0.0.5:8786")
    assert external.on_dask("train-diffusion-grid", 1)
    with pytest.raises(ValueError, match="unknown fan-out 'train-grid'"):
        grid.on_dask("train-grid", 2)


def test_local_workers_split_the_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert [worker_threads(n) for n in (1, 2, 3, 16, 32)] == [16, 8, 5, 1, 1]
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    assert worker_threads(2) == 1


@pytest.fixture(scope="module")
def three_shards(tmp_path_factory) -> Workspace:
    """Three raw shards of built-in pairs (truth beside them) and a tiny CLIP to score with."""
    workspace = Workspace(tmp_path_factory.mktemp("dask") / "home")
    workspace.raw.mkdir(parents=True)
    workspace.source.mkdir(parents=True)
    for seed in range(3):
        spec = ShapesSpec(n=60, seed=seed, faults=FaultRates.uniform(0))
        write_as_raw_shard(spec, workspace.raw / f"{seed:05d}.parquet")
    spec = ShapesSpec(n=60, seed=0, faults=FaultRates.uniform(0))
    write_source_tables(spec, build_table(spec), "http://127.0.0.1:1", workspace.source)
    train_clip(ClipTrainSpec(train=tiny_train(ema_halflife_images=0)), workspace)
    return workspace


@contextlib.contextmanager
def one_thread():
    """Torch and BLAS (scipy's matrix square root) on as many threads as a worker of the
    clusters here has (one, on a 2-core machine)."""
    import torch
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(worker_threads(2))
    try:
        with threadpool_limits(limits=worker_threads(2)):
            yield
    finally:
        torch.set_num_threads(threads)


def _copy(workspace: Workspace, root) -> Workspace:
    shutil.copytree(workspace.root, root)
    return Workspace(root)


def _fan_out_runs(name: str) -> list:
    """The completed flow runs called `name` that the test server recorded."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[name])))
    return [r for r in runs if r.state and r.state.is_completed()]


@pytest.fixture(scope="module")
def existing_cluster(prefect_api) -> FanOutParams:
    """A Dask cluster started outside marble, once for this module's tests (2 worker
    processes on 127.0.0.1, reporting to the tests' Prefect API): the runner that points at
    it (`--dask-address`). Closed, workers included, when the module ends. Its start leaves
    this process's environment as it was (Dask's worker settings, the thread counts among
    them, would pass on to later tests' clusters)."""
    import dask
    from distributed import LocalCluster

    from flows.fanout import current_api_url, environ_kept, worker_env

    environ = {"distributed.nanny.pre-spawn-environ": worker_env(2)}  # threads as one_thread()
    with environ_kept(), dask.config.set(environ):
        cluster = LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address=None, env={"PREFECT_API_URL": current_api_url()},
        )  # fmt: skip
    with cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        yield FanOutParams(task_runner="dask", dask_address=cluster.scheduler_address)


@pytest.mark.slow
def test_filter_shards_on_dask_equal_the_sequential_run(
    three_shards, tmp_path, prefect_api, existing_cluster
):
    from flows.filter import filter_flow
    from flows.params import FilterParams

    params = FilterParams(model="marble:clip-tiny", keep="top_fraction", top_fraction=0.7)
    results = {}
    # marble's own local cluster, and one started outside it
    runners = {"sequential": SEQUENTIAL, "dask": DASK, "address": existing_cluster}
    for name, fan in runners.items():
        workspace = _copy(three_shards, tmp_path / name)
        summary = filter_flow(params, home=str(workspace.root), fan_out=fan)
        scores = pq.read_table(workspace.scores / "scores.parquet").sort_by("pair_id")
        pairs = pq.read_table(workspace.pairs).sort_by("pair_id")
        results[name] = (summary, scores, pairs)
    assert len(_fan_out_runs("filter-shards")) == 2  # both dask runs went through the subflow
    seq, seq_scores, seq_pairs = results.pop("sequential")
    assert seq_scores.num_rows == 180 and seq["scored"] == 180
    for dask, dask_scores, dask_pairs in results.values():
        assert dask["scored"] == 180
        assert dask_scores.equals(seq_scores)  # every similarity, bit for bit
        assert dask_pairs.equals(seq_pairs)
    assert dask["threshold"] == seq["threshold"] and dask["kept"] == seq["kept"]


@pytest.fixture(scope="module")
def grid(three_shards, tmp_path_factory) -> Workspace:
    """Kept pairs, an autoencoder, the sweep's judge (clip-tiny, 6 steps: the flows find it
    current) and two diffusion models (U-Nets xs and s on clip-tiny), a few steps each."""
    from tasks.filter.score import FilterConfig, filter_pairs
    from tasks.train.clip import judge_clip_spec

    workspace = _copy(three_shards, tmp_path_factory.mktemp("grid") / "home")
    cfg = FilterConfig(model="marble:clip-tiny", workers=0, keep="top_fraction", top_fraction=0.9)
    filter_pairs(cfg, workspace, log=lambda *_: None)
    train_autoencoder(AutoencoderTrainSpec(train=tiny_train()), workspace)
    train_clip(judge_clip_spec(JUDGE_STEPS, "clip-tiny"), workspace)
    for unet in ("unet-xs", "unet-s"):
        spec = DiffusionTrainSpec(text_encoder="clip-tiny", unet=unet, train=tiny_train(steps=3))
        train_diffusion(spec, workspace)
    return workspace


@pytest.mark.slow
def test_sweep_points_on_dask_equal_the_sequential_run(
    grid, tmp_path, prefect_api, existing_cluster
):
    from flows.evaluate import evaluate_flow
    from flows.params import EvaluateParams

    params = EvaluateParams(
        judge="marble:judge-clip-tiny", judge_steps=JUDGE_STEPS, guidance_scales=[3.0],
        num_samples=8, prompt_set="val", bootstrap=10, batch_size=8, num_inference_steps=4,
    )  # fmt: skip
    values = {}
    for name, fan in (("sequential", SEQUENTIAL), ("dask", existing_cluster)):
        workspace = _copy(grid, tmp_path / name)
        # Dask's workers run one OpenMP / BLAS thread each; a float sum split over another
        # number of threads rounds differently, so the flow's own process runs one as well.
        with one_thread():
            summary = evaluate_flow(params, home=str(workspace.root), fan_out=fan)
        values[name] = {
            (r["model"], r["guidance_scale"], r["metric"]): (r["value"], r["ci_low"], r["ci_high"])
            for r in summary["rows"]
        }
        files = list(workspace.evaluations.glob(f"{summary['sweep_id']}-*.parquet"))
        assert len(files) == 1 + 2  # the reference rows and one file per point
    assert len(_fan_out_runs("sweep-points")) == 1
    assert len({(m, g) for m, g, _ in values["sequential"]}) == 2
    assert values["dask"] == values["sequential"]


def test_training_waves_follow_the_dependencies():
    from flows.params import TrainingParams
    from flows.train import training_waves

    params = TrainingParams(text_encoders=["clip-tiny", "clip-small"], unets=["unet-xs", "unet-s"])
    waves = training_waves(params)
    assert [name for name, _ in waves] == [
        "train-encoders", "train-text-towers", "train-diffusion-grid"
    ]  # fmt: skip
    names = [[f"{kind}/{spec.name}" for kind, spec in wave] for _, wave in waves]
    assert names[0] == ["autoencoder/kl-f4", "clip/image-clip-tiny"]
    assert names[1] == ["clip/clip-tiny", "clip/clip-small"]
    assert names[2] == [  # one U-Net's models together: what runs at once costs alike
        "diffusion/clip-tiny_unet-xs_kl-f4", "diffusion/clip-small_unet-xs_kl-f4",
        "diffusion/clip-tiny_unet-s_kl-f4", "diffusion/clip-small_unet-s_kl-f4",
    ]  # fmt: skip
    whole = training_waves(params.model_copy(update={"image_tower_steps": 0}))
    assert [name for name, _ in whole] == ["train-encoders", "train-diffusion-grid"]
    assert [f"{kind}/{spec.name}" for kind, spec in whole[0][1]] == [
        "autoencoder/kl-f4", "clip/clip-tiny", "clip/clip-small"
    ]  # fmt: skip


@pytest.fixture(scope="module")
def kept_pairs(three_shards, tmp_path_factory) -> Workspace:
    """Filtered pairs and no checkpoints: what the training waves start from."""
    from tasks.filter.score import FilterConfig, filter_pairs

    workspace = _copy(three_shards, tmp_path_factory.mktemp("kept") / "home")
    cfg = FilterConfig(model="marble:clip-tiny", workers=0, keep="top_fraction", top_fraction=0.9)
    filter_pairs(cfg, workspace, log=lambda *_: None)
    shutil.rmtree(workspace.checkpoints)
    return workspace


def _registered_models(workspace: Workspace) -> dict[str, int]:
    """Each registered model name in the workspace's MLflow store, with its version count."""
    from mlflow import MlflowClient

    client = MlflowClient(workspace.mlflow_uri)
    return {
        m.name: len(client.search_model_versions(f"name = '{m.name}'"))
        for m in client.search_registered_models()
    }


@pytest.mark.slow
def test_training_waves_on_dask_equal_the_sequential_run(kept_pairs, tmp_path, prefect_api):
    """The train flow on one shared local cluster (every wave on Dask), and with the diffusion
    grid alone on Dask (on a cluster of its own), trains every model of the grid
    to the same weights, bit for bit, as one process does; each wave that fans out shows as
    its own subflow, and a wave of one training runs in the flow's process."""
    from flows.params import TrainingParams
    from flows.train import train_flow

    params = TrainingParams(
        text_encoders=["clip-tiny"], unets=["unet-xs", "unet-s"], autoencoder_steps=3,
        image_tower_steps=3, clip_steps=3, diffusion_steps=3, diffusion_batch_size=16,
    )  # fmt: skip
    weights, registered = {}, {}
    for name, fan in (("sequential", SEQUENTIAL), ("dask", DASK), ("grid", DIFFUSION_GRID)):
        workspace = _copy(kept_pairs, tmp_path / name)
        with one_thread():  # as in the workers (see the sweep's test)
            summaries = train_flow(params, home=str(workspace.root), fan_out=fan)
        assert len(summaries) == 5 and all(s["stage_s"] > 0 for s in summaries.values())
        weights[name] = {
            str(f.relative_to(workspace.checkpoints)): f.read_bytes()
            for f in sorted(workspace.checkpoints.rglob("*.safetensors"))
        }
        registered[name] = _registered_models(workspace)
    assert len(_fan_out_runs("train-encoders")) == 1  # the dask run's
    assert len(_fan_out_runs("train-diffusion-grid")) == 2  # the dask and the grid run's
    assert not _fan_out_runs("train-text-towers")  # one training: in the flow's process
    assert len(weights["sequential"]) >= 5
    assert weights["dask"] == weights["sequential"] == weights["grid"]
    # every model trained on a worker is registered in MLflow, as in one process
    assert "diffusion-clip-tiny_unet-s_kl-f4" in registered["sequential"]
    assert registered["dask"] == registered["sequential"] == registered["grid"]


@pytest.mark.slow
def test_local_workers_split_the_cores_with_marble_malloc_settings(prefect_api):
    """Each worker its share of the cores' OpenMP threads (one of two), and this process's
    malloc settings, not Dask's MALLOC_TRIM_THRESHOLD_ (it halved a training step's speed);
    this process's own environment is left as it was. A cluster for one fan-out is not
    shared: the fan-out starts it."""
    from distributed import Client

    from flows.fanout import shared_cluster
    from tasks.settings import MALLOC_DEFAULTS

    def worker_env():
        import torch

        return (
            os.environ.get("OMP_NUM_THREADS"),
            {k: os.environ.get(k) for k in MALLOC_DEFAULTS},
            torch.get_num_threads(),
        )

    before = dict(os.environ)
    with shared_cluster(DASK) as fan:
        assert fan.dask_address.startswith("tcp://127.0.0.1:")
        assert dict(os.environ) == before
        with Client(fan.dask_address) as client:
            envs = client.run(worker_env)
    threads = worker_threads(2)
    malloc = {k: str(v) for k, v in MALLOC_DEFAULTS.items()}  # set when conftest imported tasks
    assert list(envs.values()) == [(str(threads), malloc, threads)] * 2
    for params in (SEQUENTIAL, DIFFUSION_GRID):
        with shared_cluster(params) as fan:
            assert fan is params  # nothing to start


def test_a_bare_main_process_registers_a_model_and_lives(tmp_path):
    """Dask's workers (and multiprocessing's spawned children) run a `python -c` __main__
    with neither __spec__ nor __file__. There MLflow's model registration imports
    pyspark.sql.connect, which took itself for a doctest run and called sys.exit(0): each
    training on a worker killed it once, the nanny restarted it and the retried task skipped
    the finished training, so its model was never registered."""
    script = (
        "import sys, json\n"
        "from pathlib import Path\n"
        "from tasks.store.tracking import Tracker\n"
        "from tasks.store.workspace import Workspace\n"
        "home = Path(sys.argv[1])\n"
        "with Tracker(Workspace(home), 'marble-test', 'bare-main') as t:\n"
        "    model_id = t.log_model('probe', home, {'a': 1})\n"
        "print(json.dumps({'model_id': model_id}))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "home")],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[1],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert lines and json.loads(lines[-1])["model_id"], done.stdout[-2000:] + done.stderr[-2000:]
