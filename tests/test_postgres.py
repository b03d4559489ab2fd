"""`marble up --database postgresql://...` against a throwaway PostgreSQL 15 cluster
(tests/postgres_helpers.py): the Prefect server and MLflow keep their data there (and, with
`--artifacts s3://...`, MLflow's artifacts in a local S3 server), the pipeline's small run
through the worker records its flow runs and MLflow runs there, and `marble down` leaves
no process. A bad URL or a database that cannot be used is refused
with one line before anything starts, and the password shows up nowhere."""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from pathlib import Path

import pytest

from tasks.runtime import services
from tasks.runtime.database import DatabaseError, parse_url, prepare
from tasks.runtime.processes import group_members
from tasks.runtime.services import free_port
from tasks.store.workspace import Workspace
from tests.postgres_helpers import throwaway_cluster, unavailable_reason
from tests.s3_helpers import BUCKET, moto_s3, objects
from tests.service_helpers import assert_all_stopped, cli_env, marble, started, wait_final

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(unavailable_reason() is not None, reason=str(unavailable_reason())),
]

PASSWORD = "s3cret@pg!"  # '@' must be percent-encoded in a URL: both forms must stay hidden
IN_URL = "s3cret%40pg!"
_ROLES = itertools.count()


@pytest.fixture(scope="module")
def cluster():
    with throwaway_cluster() as running_cluster:
        yield running_cluster


@pytest.fixture
def role(cluster):
    """A fresh role with CREATEDB and a database it owns, unique to the test: its URL."""
    name = f"marble{next(_ROLES)}"
    cluster.add_role(name, PASSWORD, "CREATEDB")
    cluster.add_database(name, name)
    return cluster.url(name, IN_URL, name)


def _query(url: str, sql: str) -> list[tuple]:
    import psycopg2

    with contextlib.closing(psycopg2.connect(url)) as connection:
        with connection.cursor() as cursor:
            cursor.execute(sql)
            return cursor.fetchall()


def _assert_hidden(*texts: str) -> None:
    for text in texts:
        assert PASSWORD not in text and IN_URL not in text, text


def _nothing_started(home) -> None:
    assert not (home / services.STATE_FILE).exists()
    assert not (home / "logs").exists() and not (home / "prefect").exists()


# ---------------------------------------------------------------------------- the real thing


def test_up_on_postgres_and_s3_records_the_pipeline_s_runs_there_and_down(tmp_path, cluster, role):
    """One `marble up` for both production stores (each start costs a minute): PostgreSQL
    for Prefect and MLflow, and S3 (moto's server on 127.0.0.1) for MLflow's artifacts."""
    with moto_s3(tmp_path):
        _up_on_postgres_and_s3(tmp_path, role)


def _up_on_postgres_and_s3(tmp_path, role):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tasks.store.tracking import Tracker, use_tracking_store
    from tests.test_deployments import SMALL

    home = tmp_path / "home"
    env = cli_env(tmp_path)
    mlflow_db = parse_url(role).url(parse_url(role).mlflow_database)  # libpq's URL, no driver
    clock = time.monotonic()
    artifacts = f"s3://{BUCKET}/mlflow"
    up = marble(home, "up", "--prefect-port", "0", "--mlflow-port", "0", "--database", role,
                "--artifacts", artifacts, env=env)  # fmt: skip
    up_s = time.monotonic() - clock
    processes = []
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        state, processes = started(home)
        masked = role.replace(IN_URL, "***")
        assert state["database"] == masked and f"database:    {masked}" in up.stdout
        assert state["artifacts"] == artifacts and f"artifacts:   {artifacts}" in up.stdout
        assert "created MLflow's database" in up.stdout
        _assert_hidden(up.stdout, up.stderr, (home / services.STATE_FILE).read_text())
        for process in processes:  # `ps` shows every command line to every user
            for pid in group_members(process):
                with contextlib.suppress(OSError):
                    _assert_hidden(Path(f"/proc/{pid}/cmdline").read_bytes().decode())
        # Prefect's tables are in the database itself, MLflow's in DB_mlflow
        assert _query(role, "SELECT count(*) FROM work_pool WHERE name = 'marble-process'") == [
            (1,)
        ]
        assert _query(mlflow_db, "SELECT count(*) FROM experiments")[0][0] >= 1

        with temporary_settings(updates={PREFECT_API_URL: state["prefect_url"] + "/api"}):
            with get_client(sync_client=True) as client:
                params = {"params": SMALL | {"shapes": SMALL["shapes"] | {"port": free_port()}}}
                created = run_deployment("pipeline/pipeline", parameters=params, timeout=0)
                run = wait_final(client, created.id)
                assert run.state.is_completed(), run.state.message

        flow_runs = _query(
            role,
            "SELECT f.name, r.state_type FROM flow_run r JOIN flow f ON f.id = r.flow_id "
            f"WHERE r.id = '{created.id}'",
        )
        assert flow_runs == [("pipeline", "COMPLETED")]
        mlflow_runs = _query(
            mlflow_db,
            "SELECT e.name, r.name, r.status FROM runs r "
            "JOIN experiments e ON e.experiment_id = r.experiment_id",
        )
        experiments = {e for e, _, _ in mlflow_runs}
        assert {"marble-train", "marble-evaluate"} <= experiments, mlflow_runs
        assert all(status == "FINISHED" for _, _, status in mlflow_runs), mlflow_runs
        assert not (home / "mlflow.db").exists()  # nothing went to the workspace's SQLite
        # the runs' artifacts (sample grids, the sweep's summary) are in the bucket
        stored = objects("mlflow")
        assert any(key.endswith("/summary.txt") for key in stored), stored
        assert not (home / "mlartifacts").exists()

        # a run made in this process (an in-process flow) while up runs goes there too
        workspace = Workspace(home)
        assert use_tracking_store(workspace) == state["mlflow_url"]
        with Tracker(workspace, "marble-in-process", "here") as tracker:
            tracker.log_metrics({"x": 1.0}, step=0)
            tracker.log_text("made in this process", "here.txt")
        here = _query(mlflow_db, f"SELECT name FROM runs WHERE run_uuid = '{tracker.run_id}'")
        assert here == [("here",)]
        assert any(
            f"/{tracker.run_id}/" in k and k.endswith("/here.txt") for k in objects("mlflow")
        )
        logs = "".join(p.read_text(errors="replace") for p in (home / "logs").glob("*.log"))
        _assert_hidden(logs)
    finally:
        clock_down = time.monotonic()
        down = marble(home, "down", env=env)
        down_s = time.monotonic() - clock_down
    assert down.returncode == 0, down.stderr
    assert not (home / services.STATE_FILE).exists()
    assert_all_stopped(processes)
    print(f"marble up on PostgreSQL: {up_s:.1f} s; marble down: {down_s:.1f} s")


# ---------------------------------------------------------------------------- refused


@pytest.mark.parametrize(
    "url, message",
    [
        ("mysql://u:s3cret%40pg!@127.0.0.1/d", "is not a PostgreSQL URL"),
        ("postgresql://u:s3cret%40pg!@/d", "names no host"),
        ("postgresql://u:s3cret%40pg!@127.0.0.1:5432/", "names no database"),
        ("postgresql://127.0.0.1/d", "names no user"),
        ("postgresql://u:s3cret%40pg!@127.0.0.1/d?sslmode=require", "options after '?'"),
    ],
)
def test_bad_urls_are_refused_before_anything_starts(tmp_path, url, message):
    from pydantic import ValidationError

    from flows.command_params import UpParams

    with pytest.raises(ValidationError, match=message) as refused:
        UpParams(database=url)
    _assert_hidden(str(refused.value))
    home = tmp_path / "home"
    with pytest.raises(services.ServicesError, match=message) as refused:
        services.up(Workspace(home), 0, 0, database=url)
    _assert_hidden(str(refused.value))
    _nothing_started(home)


def test_the_cli_refuses_a_bad_url_and_an_unreachable_database_in_one_line(tmp_path, cluster):
    env = cli_env(tmp_path)
    home = tmp_path / "home"
    bad = marble(home, "up", "--database", f"mysql://u:{IN_URL}@127.0.0.1/d", env=env)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "marble: error: database: Value error, 'mysql://u:***@127.0.0.1/d' is not a "
        "PostgreSQL URL: write postgresql://USER[:PASS]@HOST[:PORT]/DB"
    ], bad.stderr
    closed = free_port()  # nothing listens there
    url = f"postgresql://marble:{IN_URL}@127.0.0.1:{closed}/marble"
    gone = marble(home, "up", "--prefect-port", "0", "--mlflow-port", "0", "--database", url,
                  env=env)  # fmt: skip
    assert gone.returncode == 2
    (line,) = gone.stderr.strip().splitlines()
    assert (
        line.startswith(
            f"marble: error: cannot connect to postgresql://marble:***@127.0.0.1:{closed}/marble: "
        )
        and "refused" in line
    ), line
    _assert_hidden(bad.stdout, bad.stderr, gone.stdout, gone.stderr)
    _nothing_started(home)


def test_wrong_password_and_missing_database_are_refused(tmp_path, cluster, role):
    home = tmp_path / "home"
    wrong = role.replace(IN_URL, "not-it")
    with pytest.raises(services.ServicesError, match="password authentication failed"):
        services.up(Workspace(home), 0, 0, database=wrong)
    missing = role.rsplit("/", 1)[0] + "/nowhere"
    with pytest.raises(services.ServicesError, match='database "nowhere" does not exist') as e:
        services.up(Workspace(home), 0, 0, database=missing)
    _assert_hidden(str(e.value))
    _nothing_started(home)


def test_a_role_that_cannot_create_mlflow_s_database_is_named(tmp_path, cluster):
    cluster.add_role("plain", PASSWORD)  # no CREATEDB
    cluster.add_database("plain", "plain")
    url = cluster.url("plain", IN_URL, "plain")
    home = tmp_path / "home"
    with pytest.raises(services.ServicesError) as refused:
        services.up(Workspace(home), 0, 0, database=url)
    message = str(refused.value)
    assert message.startswith(
        "cannot create MLflow's database 'plain_mlflow' on "
        f"postgresql://plain:***@127.0.0.1:{cluster.port}/plain: role 'plain' lacks the "
        "CREATEDB privilege"
    ), message
    _assert_hidden(message)
    _nothing_started(home)
    assert "plain_mlflow" not in cluster.databases()

    # made by an administrator, but owned by someone else: no CREATE on its schema public
    cluster.add_database("plain_mlflow", "postgres")
    with pytest.raises(services.ServicesError, match="cannot create tables in schema 'public'"):
        services.up(Workspace(home), 0, 0, database=url)
    cluster.admin('ALTER DATABASE "plain_mlflow" OWNER TO "plain"')
    assert prepare(parse_url(url)) is False  # usable now, and nothing to create


def test_a_url_without_password_uses_pgpassword(cluster, role, monkeypatch):
    """What docs/scaling.md promises: asyncpg (Prefect) and psycopg2 (MLflow, marble's
    checks) both read $PGPASSWORD, so the password need not be in the URL."""
    import asyncio

    import sqlalchemy
    from sqlalchemy.ext.asyncio import create_async_engine

    url = parse_url(role.replace(":" + IN_URL, ""))
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    assert prepare(url) is True  # created DB_mlflow

    engine = sqlalchemy.create_engine(url.mlflow_url)
    with engine.connect() as connection:
        assert connection.execute(sqlalchemy.text("SELECT current_database()")).scalar() == (
            url.mlflow_database
        )
    engine.dispose()

    async def prefect_side():
        engine = create_async_engine(url.prefect_url)
        async with engine.connect() as connection:
            result = await connection.execute(sqlalchemy.text("SELECT current_user"))
            name = result.scalar()
        await engine.dispose()
        return name

    assert asyncio.run(prefect_side()) == url.user
    monkeypatch.delenv("PGPASSWORD")
    with pytest.raises(DatabaseError, match="no password supplied"):
        prepare(url)


def test_services_json_of_an_older_up_still_reads(tmp_path):
    """services.json written before the database was recorded: read as SQLite."""
    from tasks.store.tracking import tracking_server_url

    workspace = Workspace(tmp_path / "home")
    workspace.root.mkdir()
    record = {"home": str(workspace.root), "prefect_url": "a", "mlflow_url": "b",
              "pool": services.POOL, "processes": [], "deployments": {}}  # fmt: skip
    (workspace.root / services.STATE_FILE).write_text(json.dumps(record))
    assert services.read_state(workspace).database == "sqlite"
    assert tracking_server_url(workspace) is None
