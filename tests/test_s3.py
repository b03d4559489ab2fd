"""Object storage against a local S3 server (moto's, on 127.0.0.1, started here): `marble
publish` uploads the workspace's tables with the manifest last, `marble query --source
s3://...` reads them through DuckDB and gives what the local query gives, a publish that
dies at any write leaves the previous version readable, a URL list is read from the bucket,
and `marble up` refuses an artifact store it cannot write (tests/test_postgres.py runs it
with one)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from tasks.runtime.services import free_port
from tasks.shapes.render import FaultRates, ShapesSpec, write_as_raw_shard
from tasks.store import objectstore
from tasks.store.objectstore import MANIFEST, ObjectStoreError, parse_s3_url, publish
from tasks.store.query import run_query
from tasks.store.workspace import Workspace
from tests.s3_helpers import BUCKET, moto_s3, objects
from tests.service_helpers import cli_env, marble

QUERIES = (
    "SELECT status, count(*) AS n, sum(length(caption)) AS chars FROM raw GROUP BY ALL ORDER BY 1",
    "SELECT model, metric, value FROM evaluations ORDER BY ALL",
)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with moto_s3(tmp_path_factory.mktemp("aws")) as endpoint:
        yield endpoint


def _evaluations(folder, values: dict[str, float], name: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.table(
        {
            "model": ["clip-s_unet-xs"] * len(values),
            "metric": list(values),
            "value": list(values.values()),
        }
    )
    pq.write_table(table, folder / name)


@pytest.fixture
def workspace(tmp_path) -> Workspace:
    """Two raw shards of built-in pairs and two evaluation files."""
    workspace = Workspace(tmp_path / "home")
    workspace.raw.mkdir(parents=True)
    for seed in range(2):
        spec = ShapesSpec(n=30, seed=seed, faults=FaultRates.uniform(0.1))
        write_as_raw_shard(spec, workspace.raw / f"{seed:05d}.parquet")
    _evaluations(workspace.evaluations, {"fid": 310.5, "clip_score": 21.25}, "s1-p0.parquet")
    _evaluations(workspace.evaluations, {"fid": 298.0, "cmmd": 0.75}, "s1-p1.parquet")
    return workspace


def _results(workspace: Workspace, source=None) -> list:
    return [run_query(workspace, sql, source) for sql in QUERIES]


# ---------------------------------------------------------------------------- URLs


@pytest.mark.parametrize(
    "url",
    [
        "http://marble-test/x", "marble-test/x", "s3://", "s3:///x", "s3://Marble/x",
        "s3://ab/x", "s3://-bucket/x", "s3://bucket-/x", "s3://192.168.0.1/x", "s3://a..b/x",
        "s3://key:secret@bucket/x", "s3://bucket:9000/x", "s3://bucket/a/../b",
        "s3://bucket/./b", "s3://bucket/a//b", "s3://bucket/%2e%2e/b", "s3://bucket/a b",
        "s3://bucket/x?versionId=1", "s3://bucket/x#frag", "s3://bucket/a\\b",
    ],
)  # fmt: skip
def test_a_bad_s3_url_is_refused_by_every_entry(url):
    from flows.command_params import PublishParams, QueryParams, UpParams

    with pytest.raises(ObjectStoreError) as refused:
        parse_s3_url(url)
    assert "secret" not in str(refused.value)  # a key in the URL is never echoed
    for model, field in ((PublishParams, "target"), (UpParams, "artifacts")):
        with pytest.raises(ValidationError):
            model(**{field: url})
    with pytest.raises(ValidationError):
        QueryParams(sql="SELECT 1", source=url)


def test_good_s3_urls_keep_bucket_and_prefix():
    assert parse_s3_url("s3://marble-test") == objectstore.S3Prefix("marble-test", "")
    where = parse_s3_url("s3://my.bucket-1/team/run=2026-12-01/")
    assert (where.bucket, where.prefix) == ("my.bucket-1", "team/run=2026-12-01")
    assert str(where) == "s3://my.bucket-1/team/run=2026-12-01"
    assert where.key("raw", "f.parquet") == "my.bucket-1/team/run=2026-12-01/raw/f.parquet"


# ---------------------------------------------------------------------------- publish and query


def test_query_on_s3_equals_the_local_query(s3, workspace):
    where = parse_s3_url(f"s3://{BUCKET}/team/a")
    local = _results(workspace)
    summary = publish(workspace, where, log=lambda *_: None)
    assert summary["tables"] == {"raw": 2, "evaluations": 2}
    assert summary["uploaded"] == 4 and summary["reused"] == 0
    assert _results(workspace, where) == local
    manifest = json.loads(objectstore.filesystem().cat_file(where.key(MANIFEST)))
    keys = {e["key"] for files in manifest["tables"].values() for e in files}
    assert objects("team/a") == keys | {MANIFEST}

    # an unchanged workspace uploads nothing; a changed file replaces its object
    again = publish(workspace, where, log=lambda *_: None)
    assert (again["uploaded"], again["reused"], again["deleted"]) == (0, 4, 0)
    _evaluations(workspace.evaluations, {"fid": 250.0, "cmmd": 0.5}, "s1-p1.parquet")
    changed = publish(workspace, where, log=lambda *_: None)
    assert (changed["uploaded"], changed["reused"], changed["deleted"]) == (1, 3, 1)
    assert _results(workspace, where) == _results(workspace)
    assert len(objects("team/a")) == 5  # the replaced file's object is gone


def test_the_cli_publishes_and_queries(s3, workspace, tmp_path, capsys):
    from flows.cli import main

    env = cli_env(tmp_path)
    target = f"s3://{BUCKET}/cli"
    published = marble(workspace.root, "publish", target, env=env)
    assert published.returncode == 0, published.stderr
    assert json.loads(published.stdout[published.stdout.index("{") :])["uploaded"] == 4
    sql = "SELECT count(*) AS n FROM raw"
    home = ["--home", str(workspace.root)]
    query = ["query", sql, "--format", "csv", "--source"]  # in-process: query starts nothing
    assert main([*home, *query, target]) == 0
    assert capsys.readouterr().out.strip().splitlines() == ["n", "60"]
    assert main([*home, *query, f"s3://{BUCKET}/none"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"marble: error: nothing is published at s3://{BUCKET}/none (no {MANIFEST}); run "
        "marble publish"
    )
    bad = marble(workspace.root, "publish", "s3://Bad_Bucket/x", env=env)
    assert bad.returncode == 2
    (line,) = bad.stderr.strip().splitlines()
    assert line.startswith("marble: error: target: ") and "is not a bucket name" in line, line


class _Dies:
    """The S3 filesystem, failing at its `at`-th write (0-based)."""

    def __init__(self, fs, at: int):
        self._fs, self._at, self.writes = fs, at, 0

    def pipe_file(self, path, data):
        if self.writes == self._at:
            raise ConnectionResetError("the connection died")
        self.writes += 1
        return self._fs.pipe_file(path, data)

    def __getattr__(self, name):
        return getattr(self._fs, name)


def test_a_publish_dying_at_any_write_leaves_the_previous_version(s3, workspace):
    where = parse_s3_url(f"s3://{BUCKET}/crash")
    publish(workspace, where, log=lambda *_: None)
    before = _results(workspace, where)
    published = objects("crash")
    # a new version: one file changed, one added
    _evaluations(workspace.evaluations, {"fid": 199.0}, "s1-p0.parquet")
    _evaluations(workspace.evaluations, {"fid": 180.0}, "s2-p0.parquet")
    writes = 3  # two new objects, then the manifest
    for at in range(writes):
        dying = _Dies(objectstore.filesystem(), at)
        with pytest.raises(ObjectStoreError, match="cannot write to s3://marble-test/crash: "):
            publish(workspace, where, log=lambda *_: None, fs=dying)
        assert _results(workspace, where) == before, at  # the old manifest, all it names
        assert published <= objects("crash")
    done = publish(workspace, where, log=lambda *_: None, fs=_Dies(objectstore.filesystem(), 99))
    assert done["deleted"] == 1  # the old version of s1-p0
    assert _results(workspace, where) == _results(workspace) != before
    assert objects("crash") == {MANIFEST} | {
        e["key"] for files in objectstore.read_manifest(where)["tables"].values() for e in files
    }


def test_a_store_that_cannot_be_reached_is_one_error(s3, workspace, monkeypatch):
    where = parse_s3_url(f"s3://{BUCKET}/x")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing there
    with pytest.raises(ObjectStoreError, match=r"^cannot read s3://marble-test/x: "):
        publish(workspace, where, log=lambda *_: None)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3)
    with pytest.raises(ObjectStoreError, match="cannot write to s3://no-such-bucket"):
        objectstore.check_writable(parse_s3_url("s3://no-such-bucket/x"))


# ---------------------------------------------------------------------------- MLflow artifacts


def test_up_refuses_an_artifact_store_it_cannot_write_before_starting(s3, tmp_path):
    """(tests/test_postgres.py runs `marble up --artifacts` and finds the runs' artifacts in
    the bucket.)"""
    from tasks.runtime import services

    home = tmp_path / "home"
    with pytest.raises(services.ServicesError, match=r"^--artifacts: cannot write to s3://no-"):
        services.up(Workspace(home), 0, 0, artifacts="s3://no-such-bucket/mlflow")
    assert not (home / services.STATE_FILE).exists() and not (home / "logs").exists()


# ---------------------------------------------------------------------------- URL lists on S3


def test_an_s3_url_list_must_name_a_list_object(s3, tmp_path):
    from flows.params import IngestParams, PipelineParams

    for url in ("s3://marble-test/lists/", "s3://marble-test/lists/urls.json", "s3://Bad/x.csv"):
        with pytest.raises(ValidationError):
            IngestParams(url_list=url)
        with pytest.raises(ValidationError):
            PipelineParams(url_list=url)
    assert IngestParams(url_list="s3://marble-test/a/urls.PARQUET").url_list.endswith("PARQUET")
    with pytest.raises(ObjectStoreError, match="URL list s3://marble-test/none.csv does not"):
        objectstore.download_file("s3://marble-test/none.csv", tmp_path)
    assert list(tmp_path.iterdir()) == []  # no partial copy left


@pytest.mark.slow
def test_marble_ingest_reads_a_url_list_from_s3(s3, faulty_source, tmp_path, prefect_api):
    """The CLI's ingest from an s3:// list, reporting to the session's Prefect server (its
    own temporary server's start is test_orphans.py's and test_flows.py's to check)."""
    from flows.fanout import current_api_url

    fs = objectstore.filesystem()
    fs.pipe_file(f"{BUCKET}/lists/urls.parquet", faulty_source.url_list.read_bytes())
    host = faulty_source.base_url.removeprefix("http://")
    home = tmp_path / "home"
    result = marble(home, "ingest", f"s3://{BUCKET}/lists/urls.parquet", "--allow-host", host,
                    "--processes", "1", "--retries", "0",
                    env=cli_env(tmp_path) | {"PREFECT_API_URL": current_api_url()})  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    start = ("\n" + result.stdout).rindex("\n{")  # the manifest, printed last
    manifest, _ = json.JSONDecoder().raw_decode(result.stdout[start:])
    assert sum(manifest["status_counts"].values()) == 120
    (copy,) = (home / "cache" / "url-lists").iterdir()
    assert copy.name.endswith("-urls.parquet")
    assert copy.read_bytes() == faulty_source.url_list.read_bytes()
