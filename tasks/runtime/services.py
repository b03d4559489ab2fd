"""The local services behind `marble up` / `marble down`: a Prefect server (SQLite in the
workspace), a worker of a process work pool, and the MLflow UI, all on 127.0.0.1.

With `database` (a PostgreSQL URL, tasks/runtime/database.py) the Prefect server and MLflow keep
their data there instead; it is checked, and MLflow's database created, before anything
starts. With `artifacts` (s3://BUCKET/PREFIX) the MLflow server stores run artifacts there
and serves them to clients (`mlflow-artifacts:/`), so only the server needs the store's
credentials. With either, the worker's flow runs log to MLflow through the MLflow server.

Each service runs in a session of its own, so it outlives the `marble up` that started it
and can be stopped as one process group. `services.json` in the workspace records what was
started: each leader's pid and start time (clock ticks since boot, from /proc), so `marble
down` signals exactly those processes and their group, never a process that later reused
a pid. While that file names a live service, a second `marble up` refuses.

Stopping: the server and MLflow end on SIGTERM; Prefect's worker ignores SIGTERM and ends
on a second SIGINT. Whatever is still alive after the grace time is killed.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tasks.runtime import database as pg
from tasks.runtime.processes import Process, group_alive, spawn, start_time, stop_process
from tasks.store.objectstore import ObjectStoreError, check_writable, parse_s3_url
from tasks.store.services_file import STATE_FILE, Services, ServicesError, read_state, write_state
from tasks.store.workspace import Workspace

ROOT = Path(__file__).resolve().parents[2]  # the checkout: flows are loaded from here
PREFECT_FILE = ROOT / "infra" / "prefect.yaml"
POOL = "marble-process"
GPU_TAG = "gpu"  # trainings and sweeps on CUDA carry it; its limit is the number of GPUs
START_TIMEOUT_S = 180.0  # the Prefect server and MLflow take 15-25 s, longer under load
GRACE_S = 20.0


def _spawn(name: str, argv: list[str], env: dict, logs: Path, stop: tuple[str, ...]) -> Process:
    try:
        return spawn(name, argv, env, ROOT, logs / f"{name}.log", stop)
    except ChildProcessError as e:
        raise ServicesError(str(e)) from None


# ---------------------------------------------------------------------------- health, ports


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_healthy(url: str, process: Process, timeout_s: float = START_TIMEOUT_S) -> None:
    """Poll `url` until it answers 200; fail early when the process has died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if start_time(process.pid) != process.start:
            raise ServicesError(f"{process.name} stopped while starting; see {process.log}")
        time.sleep(0.5)
    raise ServicesError(
        f"{process.name} was not healthy after {timeout_s:.0f} s; see {process.log}"
    )


# ---------------------------------------------------------------------------- environment


def prefect_env(workspace: Workspace, port: int) -> dict[str, str]:
    """Settings that point Prefect's server, CLI, worker and flow runs at the workspace's
    server on 127.0.0.1:port (the UI too: without the API host and port it calls :4200).

    On SQLite a write that meets another writer's lock gets a 503, which Prefect's own client
    retries and its UI shows as "Oops. Something went wrong."; the server logs each one here
    (it would not by default), so its log says why a click failed."""
    home = workspace.root / "prefect"
    return {
        "PREFECT_HOME": str(home),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_LOG_RETRYABLE_ERRORS": "true",
        "PREFECT_WORKER_QUERY_SECONDS": "3",
        "MARBLE_HOME": str(workspace.root),
    }


# MLflow 3's server also starts a job runner for its GenAI jobs (judges, prompt
# optimisation, trace rollups): 8 more Python processes (huey consumers), which marble never
# uses. Off, `marble up` starts 2 MLflow processes instead of 10, and MLflow stops in about
# 1 s instead of 5 after a pipeline run. infra/compose.yaml's MLflow has the same setting.
MLFLOW_SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def deploy_env(pool: str, timezone: str, cron: str) -> dict[str, str]:
    """The variables infra/prefect.yaml reads when deploying."""
    return {
        "MARBLE_ROOT": str(ROOT),
        "MARBLE_POOL": pool,
        "MARBLE_NIGHTLY_TZ": timezone,
        "MARBLE_NIGHTLY_CRON": cron,
    }


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


# ---------------------------------------------------------------------------- state file


def mlflow_ui_url(workspace: Workspace) -> str | None:
    """The MLflow UI that `marble up` started for this workspace, if it recorded one."""
    try:
        state = read_state(workspace)
    except ServicesError:
        return None
    return state.mlflow_url if state is not None else None


def running(workspace: Workspace) -> Services | None:
    """The services `marble up` started in this workspace, when any of them still runs."""
    state = read_state(workspace)
    if state is not None and any(group_alive(p) for p in state.processes):
        return state
    return None


# ---------------------------------------------------------------------------- up and down


def _setup_server(services: Services, gpus: int) -> None:
    """Create the process work pool and the GPU concurrency limit through the API."""
    import anyio
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.workers.process import ProcessWorker

    async def setup():
        async with get_client() as client:
            try:
                await client.create_work_pool(
                    WorkPoolCreate(
                        name=services.pool,
                        type="process",
                        base_job_template=ProcessWorker.get_default_base_job_template(),
                    )
                )
            except ObjectAlreadyExists:
                pass
            await client.create_concurrency_limit(tag=GPU_TAG, concurrency_limit=max(gpus, 1))

    with temporary_settings(updates={PREFECT_API_URL: services.api_url}):
        anyio.run(setup)


def _api_filter(services: Services, kind: str) -> list[dict]:
    """POST {api}/{kind}/filter with no filter: every object of that kind."""
    request = urllib.request.Request(
        f"{services.api_url}/{kind}/filter", data=b"{}", method="POST",
        headers={"content-type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def deployment_pages(services: Services) -> dict[str, str]:
    """Each deployment's page in the Prefect UI, by "flow/deployment" name."""
    flow_names = {f["id"]: f["name"] for f in _api_filter(services, "flows")}
    return {
        f"{flow_names.get(d['flow_id'], '?')}/{d['name']}": (
            f"{services.prefect_url}/deployments/deployment/{d['id']}"
        )
        for d in sorted(_api_filter(services, "deployments"), key=lambda d: d["name"])
    }


def deploy(env: dict[str, str], log: Path) -> None:
    """`prefect deploy --all` from infra/prefect.yaml; its output goes to `log`."""
    argv = [_bin("prefect"), "--no-prompt", "deploy", "--all", "--prefect-file", str(PREFECT_FILE)]
    with open(log, "ab") as out:
        done = subprocess.run(argv, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise ServicesError(f"deploying {PREFECT_FILE} failed; see {log}")


def up(
    workspace: Workspace,
    prefect_port: int,
    mlflow_port: int,
    timezone: str = "UTC",
    cron: str = "0 2 * * *",
    gpus: int = 0,
    log=print,
    database: str | None = None,
    artifacts: str | None = None,
) -> Services:
    """Start the server, create the pool and deploy, start the worker and the MLflow UI.
    Port 0 picks a free port. Everything started is stopped again when a later step fails.
    Holds the workspace's `services` lock, so two `marble up` at once cannot both start.
    `database`: a PostgreSQL URL for Prefect and MLflow; None keeps SQLite in the workspace.
    `artifacts`: an s3:// prefix for MLflow's artifacts; None keeps them in the workspace."""
    try:
        url = None if database is None else pg.parse_url(database)
    except ValueError as e:
        raise ServicesError(f"--database: {e}") from None
    try:
        store = None if artifacts is None else parse_s3_url(artifacts)
    except ValueError as e:
        raise ServicesError(f"--artifacts: {e}") from None
    workspace.root.mkdir(parents=True, exist_ok=True)
    with workspace.lock("services"):
        return _up(workspace, prefect_port, mlflow_port, timezone, cron, gpus, log, url, store)


def _up(workspace, prefect_port, mlflow_port, timezone, cron, gpus, log, url, store) -> Services:
    found = running(workspace)
    if found is not None:
        raise ServicesError(
            f"marble up already runs for {workspace.root} (Prefect UI {found.prefect_url}, "
            f"MLflow UI {found.mlflow_url}); `marble down` stops it"
        )
    prefect_port = prefect_port or free_port()
    mlflow_port = mlflow_port or free_port()
    for port in (prefect_port, mlflow_port):
        if port_in_use(port):
            raise ServicesError(f"port {port} on 127.0.0.1 is in use; choose another")
    if url is not None:
        try:
            if pg.prepare(url):
                log(f"created MLflow's database {url.mlflow_database!r} on {url.masked}")
        except pg.DatabaseError as e:
            raise ServicesError(str(e)) from None
    if store is not None:
        try:
            check_writable(store)
        except ObjectStoreError as e:
            raise ServicesError(f"--artifacts: {e}") from None
    (workspace.root / "prefect").mkdir(exist_ok=True)
    logs = workspace.root / "logs"
    env = os.environ | prefect_env(workspace, prefect_port)
    services = Services(
        home=str(workspace.root),
        prefect_url=f"http://127.0.0.1:{prefect_port}",
        mlflow_url=f"http://127.0.0.1:{mlflow_port}",
        pool=POOL,
        database="sqlite" if url is None else url.masked,
        artifacts="workspace" if store is None else str(store),
    )
    # Database URLs go through the environment, never argv (`ps` shows argv to everyone),
    # and only to the process that needs them.
    server_env, worker_env = env, env
    mlflow_store = workspace.mlflow_uri if url is None else url.mlflow_url
    mlflow_env = env | MLFLOW_SERVER_ENV | {"MLFLOW_BACKEND_STORE_URI": mlflow_store}
    if url is not None:
        server_env = env | {"PREFECT_API_DATABASE_CONNECTION_URL": url.prefect_url}
    if url is not None or store is not None:
        worker_env = env | {"MLFLOW_TRACKING_URI": services.mlflow_url}
    if store is None:
        artifact_options = ["--default-artifact-root", workspace.mlartifacts.as_uri()]
    else:  # the server proxies artifacts (mlflow-artifacts:/) to the store
        artifact_options = ["--serve-artifacts", "--artifacts-destination", str(store)]
    try:
        server = _spawn(
            "prefect-server",
            [_bin("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(prefect_port)],
            server_env, logs, ("SIGTERM",),
        )  # fmt: skip
        services.processes.append(server)
        write_state(workspace, services)  # from here on, `marble down` can stop it
        mlflow = _spawn(
            "mlflow-ui",
            [
                _bin("mlflow"), "server", "--host", "127.0.0.1", "--port", str(mlflow_port),
                *artifact_options, "--workers", "1",
            ],
            mlflow_env, logs, ("SIGTERM",),
        )  # fmt: skip
        services.processes.append(mlflow)
        write_state(workspace, services)
        log(f"starting the Prefect server at {services.prefect_url} ...")
        wait_healthy(f"{services.api_url}/health", server)
        _setup_server(services, gpus)
        log(f"deploying {PREFECT_FILE.relative_to(ROOT)} to work pool {POOL} ...")
        deploy(env | deploy_env(POOL, timezone, cron), logs / "deploy.log")
        worker = _spawn(
            "prefect-worker",
            [_bin("prefect"), "worker", "start", "--pool", POOL, "--type", "process"],
            worker_env, logs, ("SIGINT", "SIGINT"),
        )  # fmt: skip
        services.processes.append(worker)
        write_state(workspace, services)
        wait_healthy(f"{services.mlflow_url}/health", mlflow)
        services.deployments = deployment_pages(services)
        write_state(workspace, services)
    except BaseException:
        _down(workspace, log=lambda _: None)
        raise
    return services


def down(workspace: Workspace, log=print) -> list[str]:
    """Stop what `marble up` started in this workspace; returns the names stopped."""
    if not workspace.root.is_dir():
        return []
    with workspace.lock("services"):
        return _down(workspace, log)


def _down(workspace: Workspace, log) -> list[str]:
    state = read_state(workspace)
    if state is None:
        return []
    stopped = []
    for process in reversed(state.processes):  # the worker first, the server last
        if group_alive(process):
            clean = stop_process(process, GRACE_S)
            stopped.append(process.name)
            log(f"stopped {process.name} (pid {process.pid})" + ("" if clean else ", killed"))
    (workspace.root / STATE_FILE).unlink(missing_ok=True)
    return stopped
