"""`marble up` for real: a Prefect server on 127.0.0.1 (free port, SQLite in a temporary
workspace), the deployments of infra/prefect.yaml on a process work pool, a worker, and the
MLflow UI. A flow run of `pipeline` is created through the API, as the UI's Run button does,
and what it wrote is checked; then `marble down` must leave none of the processes alive."""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tasks.runtime.processes import group_members
from tests.service_helpers import assert_all_stopped, marble, started, wait_final

pytestmark = pytest.mark.slow

SMALL = {  # the built-in data with tiny budgets: every stage runs, in about a minute
    "shapes": {"n": 200},
    "training": {
        "text_encoders": ["clip-tiny"],
        "unets": ["unet-xs"],
        "autoencoder_steps": 3,
        "image_tower_steps": 3,
        "clip_steps": 3,
        "diffusion_steps": 3,
    },
    "evaluation": {"num_samples": 6, "guidance_scales": [3], "bootstrap": 5, "judge_steps": 3},
}


def test_up_deploys_and_runs_from_the_api(ui_stack, ui_shapes_port):
    """On the session's `marble up` (conftest.py), which test_browser.py may have run a
    pipeline on first: of these data and training settings, so this run's training stages
    are skipped then, and run here when that test did not run."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    home, env, up = ui_stack
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    state, processes = started(home)
    assert {p.name for p in processes} == {"prefect-server", "prefect-worker", "mlflow-ui"}
    assert state["prefect_url"].startswith("http://127.0.0.1:")
    assert f"Prefect UI:  {state['prefect_url']}" in up.stdout
    for name in ("pipeline/pipeline", "evaluate-nightly/evaluate-nightly", "ingest/ingest"):
        page = state["deployments"][name]
        assert page.startswith(f"{state['prefect_url']}/deployments/deployment/"), page
        assert f"{name}" in up.stdout and page in up.stdout

    again = marble(home, "up", "--prefect-port", "0", "--mlflow-port", "0", env=env)
    assert again.returncode == 2 and "already runs" in again.stderr, again.stderr

    with temporary_settings(updates={PREFECT_API_URL: state["prefect_url"] + "/api"}):
        with get_client(sync_client=True) as client:
            nightly = client.read_deployment_by_name("evaluate-nightly/evaluate-nightly")
            (schedule,) = nightly.schedules
            assert schedule.schedule.cron == "0 2 * * *"
            assert schedule.schedule.timezone == "Europe/Berlin" and schedule.active
            # one nightly at a time: a run due while one runs is cancelled
            assert nightly.global_concurrency_limit.limit == 1
            assert nightly.concurrency_options.collision_strategy.value == "CANCEL_NEW"
            client.read_deployment_by_name("ingest/ingest")
            assert client.read_work_pool("marble-process").type == "process"

            params = {"params": SMALL | {"shapes": SMALL["shapes"] | {"port": ui_shapes_port}}}
            created = run_deployment("pipeline/pipeline", parameters=params, timeout=0)
            run = wait_final(client, created.id)
            assert run.state.is_completed(), run.state.message
            artifacts = client.read_artifacts(limit=100)
            kinds = {a.type for a in artifacts}
            assert {"table", "markdown", "progress"} <= kinds, kinds
            stages = next(a for a in artifacts if a.key == "pipeline-stages")
            assert "diffusion/clip-tiny_unet-xs_kl-f4" in stages.data

            # the nightly deployment on what the pipeline trained: the point is
            # skipped (same checkpoints and settings) and this is the first night
            small_eval = {"params": SMALL["evaluation"]}
            created = run_deployment(
                "evaluate-nightly/evaluate-nightly", parameters=small_eval, timeout=0
            )
            run = wait_final(client, created.id)
            assert run.state.is_completed(), run.state.message
            assert run.state.message.startswith("nightly: first night"), run.state.message

    # what the run wrote into the workspace: Parquet rows and MLflow runs
    rows = [r for p in (home / "results" / "evaluations").glob("*.parquet")
            for r in pq.read_table(p).to_pylist()]  # fmt: skip
    point = [r for r in rows if r.get("guidance_scale") == 3.0]
    assert {r["metric"] for r in point} >= {"fid", "fd_clip", "cmmd", "clip_score"}
    assert all(r["model"] == "clip-tiny_unet-xs_kl-f4" and r["n"] == 6 for r in point)
    assert list((home / "results" / "nightly").glob("*.json"))
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    names = {e.name for e in client.search_experiments()}
    assert {"marble-evaluate"} <= names, names
    evaluate = client.get_experiment_by_name("marble-evaluate")
    runs = client.search_runs([evaluate.experiment_id])
    tagged = [r for r in runs if r.data.tags.get("nightly")]
    assert tagged and tagged[0].data.tags["nightly"] == "unchanged"
    # the nightly fitted itself to the schedule's day, from the pipeline's measured rate
    assert (
        tagged[0].data.tags["nightly.fit"].startswith("time budget: 1 guidance scale x N = 6 fits")
    )
    assert evaluate.tags["mlflow.experimentKind"] == "custom_model_development"
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert children and "fid" in children[0].data.metrics

    # the MLflow UI serves the sweep's artifacts (the links in the Prefect artifact)
    mlflow_url = state["mlflow_url"]
    with urllib.request.urlopen(f"{mlflow_url}/health", timeout=10) as response:
        assert response.status == 200
    # MLflow runs its server and a uvicorn worker, not its GenAI job runner and consumers
    (mlflow,) = [p for p in processes if p.name == "mlflow-ui"]
    commands = [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in group_members(mlflow)]
    assert commands and not any(b"huey" in c or b"_job_runner" in c for c in commands), commands


def test_down_stops_every_process_it_started(ui_stack):
    """`marble down` of the session's stack (the last test to use it) leaves none alive."""
    home, env, _ = ui_stack
    _, processes = started(home)
    down = marble(home, "down", env=env)
    assert down.returncode == 0, down.stderr
    assert "stopped prefect-worker" in down.stdout and "stopped prefect-server" in down.stdout
    assert not (home / "services.json").exists()
    assert_all_stopped(processes)
