"""Ingest on Spark: img2dataset's pyspark distributor in local mode gives the same rows as
the multiprocessing one, its Python workers still fetch through the vetting proxy, Spark
listens on loopback only, and no process it started (the JVM, its Python workers) outlives
the ingest."""

from __future__ import annotations

import contextlib
import io
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tasks.ingest.download import IngestConfig, ingest, raw_shards
from tasks.ingest.url_list import UrlListError
from tasks.runtime.httpserver import LoopbackHTTPServer, serving
from tasks.runtime.processes import alive
from tasks.runtime.reaper import descendants
from tasks.store.workspace import Workspace

# a redirect from an allowed host to each of these is a hop the proxy must refuse
FORBIDDEN_SPELLINGS = ("127.0.0.1", "localhost", "0x7f000001")


@contextlib.contextmanager
def _server(routes: dict) -> Iterator[tuple[int, list[str]]]:
    """A server on 127.0.0.1 answering `routes[path] -> (status, headers, body)`; yields
    (port, paths it was asked for)."""
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802 (http.server's naming)
            hits.append(self.path)
            status, headers, body = routes.get(self.path, (404, {}, b""))
            self.send_response(status)
            for key, value in {"Content-Length": str(len(body)), **headers}.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

    with serving(LoopbackHTTPServer(("127.0.0.1", 0), Handler), "test-origin") as server:
        yield server.server_address[1], hits


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------- watching processes


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _listening(pid: int) -> set[str]:
    """Local addresses ("hexaddr:hexport" as /proc/net/tcp* writes them) of the sockets
    `pid` listens on."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                found.add(fields[1])
    return found


LOOPBACK = ("0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000")


class ChildWatch:
    """Records every process below this one that starts while it runs: pid -> (start time,
    command line), and the addresses each Java process listens on."""

    def __init__(self):
        self.before = set(descendants(os.getpid()))  # e.g. the reaper of an in-process CLI test
        self.seen: dict[int, tuple[int, str]] = {}
        self.java_listening: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            for pid, start in descendants(os.getpid()).items():
                if pid in self.before:
                    continue
                cmdline = _cmdline(pid)  # read again: spark-submit execs the JVM
                if cmdline or pid not in self.seen:
                    self.seen[pid] = (start, cmdline)
                if cmdline.split(" ")[0].endswith("/java"):
                    self.java_listening |= _listening(pid)
            time.sleep(0.1)

    def __enter__(self) -> ChildWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def still_running(self) -> list[str]:
        return [
            f"{pid}: {cmdline[:200]}"
            for pid, (start, cmdline) in self.seen.items()
            if alive(pid, start)
        ]


# ---------------------------------------------------------------------------- the test


def _rows(workspace: Workspace) -> dict[str, tuple]:
    rows = pa.concat_tables(pq.read_table(s) for s in raw_shards(workspace.raw)).to_pylist()
    return {r["pair_id"]: (r["status"], r["caption"], r["png"]) for r in rows}


@pytest.mark.slow
def test_pyspark_ingest_matches_multiprocessing_through_the_proxy(faulty_source, tmp_path):
    shapes_host = faulty_source.base_url.removeprefix("http://")
    with _server({"/secret.png": (200, {}, _png())}) as (sentinel, sentinel_hits):
        routes = {
            f"/r{k}.png": (302, {"Location": f"http://{spelling}:{sentinel}/secret.png"}, b"")
            for k, spelling in enumerate(FORBIDDEN_SPELLINGS)
        }
        with _server(routes) as (port, hits):
            redirects = pa.table(
                {
                    "url": [f"http://127.0.0.1:{port}{path}" for path in routes],
                    "caption": [f"redirect {k}" for k in range(len(routes))],
                }
            )
            url_list = tmp_path / "list.parquet"
            pq.write_table(
                pa.concat_tables([pq.read_table(faulty_source.url_list), redirects]), url_list
            )
            results = {}
            for distributor in ("multiprocessing", "pyspark"):
                cfg = IngestConfig(
                    url_list=url_list,
                    allowed_hosts=(shapes_host, f"127.0.0.1:{port}"),
                    shard_size=50,
                    processes=2,
                    retries=0,
                    distributor=distributor,
                )
                workspace = Workspace(tmp_path / distributor)
                t0 = time.perf_counter()
                with ChildWatch() as watch:
                    manifest = ingest(cfg, workspace)
                print(f"{distributor}: {time.perf_counter() - t0:.1f} s")
                results[distributor] = (manifest, _rows(workspace), watch)

    multi, multi_rows, multi_watch = results["multiprocessing"]
    spark, spark_rows, spark_watch = results["pyspark"]
    # Spark did the work: a JVM and Spark's Python daemon ran
    commands = [cmdline for _, cmdline in spark_watch.seen.values()]
    assert any("org.apache.spark.deploy.SparkSubmit" in c for c in commands), commands
    assert any("pyspark.daemon" in c for c in commands), commands
    assert not any("pyspark.daemon" in c for _, c in multi_watch.seen.values())
    # ... on loopback only
    assert spark_watch.java_listening, "no listening socket of the JVM was seen"
    assert {address.split(":")[0] for address in spark_watch.java_listening} <= set(LOOPBACK)
    # the same rows, counts and image bytes
    n = 120 + len(FORBIDDEN_SPELLINGS)
    assert len(spark_rows) == n and spark_rows == multi_rows
    assert spark.status_counts == multi.status_counts
    assert sum(spark.status_counts.values()) == n
    truth = {r["pair_id"]: r["fault"] for r in pq.read_table(faulty_source.truth).to_pylist()}
    for pid, fault in truth.items():
        assert (spark_rows[pid][0] == "success") == (fault in (None, "slow", "redirect"))
    # Spark's Python workers fetch through the vetting proxy: every hop refused, none followed
    assert sentinel_hits == []
    for manifest in (multi, spark):
        assert manifest.refused_at_fetch == {"loopback_address": len(FORBIDDEN_SPELLINGS)}
        assert manifest.error_counts["refused:loopback_address"] == len(FORBIDDEN_SPELLINGS)
    # nothing either run started is left: not the JVM, not a Python worker
    assert multi_watch.still_running() == [] and spark_watch.still_running() == []


def test_spark_master_is_checked(tmp_path):
    url_list = tmp_path / "list.csv"
    with pytest.raises(UrlListError, match="pyspark distributor only"):
        IngestConfig(url_list=url_list, spark_master="local[2]")
    with pytest.raises(UrlListError, match="not a Spark master URL"):
        IngestConfig(url_list=url_list, distributor="pyspark", spark_master="local[two]")
    for master in ("local[4]", "local[*]", "spark://10.0.0.5:7077", "yarn", "k8s://https://k:6443"):
        assert IngestConfig(url_list=url_list, distributor="pyspark", spark_master=master)
