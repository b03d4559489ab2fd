"""Flows end to end: the ingest flow in Prefect's in-process mode, and the main job offline."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_ingest_flow_in_process(faulty_source, tmp_path, prefect_api):
    from flows.ingest import ingest_flow
    from flows.params import IngestParams

    params = IngestParams(url_list=str(faulty_source.url_list), allow_private=True, shard_size=60)
    manifest = ingest_flow(params, home=str(tmp_path / "home"))
    assert manifest["total_status_counts"]["success"] == 102
    assert (tmp_path / "home" / "data" / "raw" / "_manifest.json").exists()


def _netns_available() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    return subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0


def test_main_job_end_to_end_killed_resumed_then_skipped(tmp_path, prefect_api):
    """`marble run` with tiny budgets: serve, ingest, filter (training its CLIP), the
    training grid and the evaluation sweep, three times on one workspace. The first run is
    killed (SIGKILL, its whole process group) once the diffusion model's step-200 checkpoint
    is on disk; the second skips the finished stages, continues that training from its
    checkpoint and finishes the chain; the third skips every stage and says so. Where this
    machine allows a network namespace, the first two runs are in one whose only interface
    is loopback, which proves nothing needs the internet; elsewhere they run as they are
    (every server they start binds 127.0.0.1 all the same). The two that work start a
    temporary Prefect server each, on a Prefect home whose database is migrated already
    (test_orphans starts one on a new home); the third reports to the session's."""
    import signal
    import time

    from flows.fanout import current_api_url
    from tasks.runtime.services import free_port

    home = tmp_path / "home"
    marble = Path(sys.executable).with_name("marble")
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
    (tmp_path / "prefect").mkdir()
    shutil.copy(prefect_api, tmp_path / "prefect" / "prefect.db")
    # one port for every run: the same URLs, so the same pairs
    job = (
        f"{marble} --home {home} run --n 200 --port {free_port()} --text-encoders clip-tiny "
        "--unets unet-xs --autoencoder-steps 3 --image-tower-steps 3 --clip-steps 3 "
        "--diffusion-steps 400 --diffusion-batch-size 8 --num-samples 6 --guidance-scales 3 "
        "--bootstrap 5"
    )
    if _netns_available():
        argv = ["unshare", "-n", "sh", "-c", f"ip link set lo up && exec {job}"]
    else:
        argv = job.split()
    ckpt = home / "checkpoints" / "diffusion" / "clip-tiny_unet-xs_kl-f4" / "config.json"
    first = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while not ckpt.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ckpt.exists() and first.poll() is None, "no checkpoint while the run was alive"
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()

    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    for stage in ("ingest", "filter", "autoencoder/kl-f4", "clip/clip-tiny"):
        assert f"skipped {stage}:" in out, stage
    assert "resuming from its checkpoint at step 200 of 400" in out
    manifest = json.loads((home / "data" / "raw" / "_manifest.json").read_text())
    assert manifest["accepted"] == 200
    assert manifest["total_status_counts"]["success"] == 200 - 3  # 0.5 % of 200, rounded, x3
    assert (home / "data" / "source" / "truth.parquet").exists()
    assert (home / "data" / "scores" / "scores.parquet").exists()
    for part in (
        "clip/filter-clip-tiny",
        "autoencoder/kl-f4",
        "clip/clip-tiny",
        "diffusion/clip-tiny_unet-xs_kl-f4",
    ):
        assert (home / "checkpoints" / part / "config.json").exists(), part
    evaluations = list((home / "results" / "evaluations").glob("*.parquet"))
    assert len(evaluations) == 2  # the reference rows and the one grid point
    assert list((home / "results" / "plots").glob("pareto-*.png"))
    assert "lowest FID measured: clip-tiny_unet-xs_kl-f4 at guidance 3" in proc.stdout

    # the check that a finished chain is skipped needs no network namespace of its own: this
    # run reports to the session's Prefect server instead of starting one
    session_api = {"PREFECT_API_URL": current_api_url()}
    again = subprocess.run(job.split(), capture_output=True, text=True, env=env | session_api,
                           timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    out = again.stdout + again.stderr
    for stage in ("ingest", "filter", "autoencoder/kl-f4", "clip/clip-tiny",
                  "diffusion/clip-tiny_unet-xs_kl-f4"):  # fmt: skip
        assert f"skipped {stage}:" in out, stage
    assert "resuming" not in out
    assert "evaluate clip-tiny_unet-xs_kl-f4@3: skipped" in out
