"""No orphans: after `kill -9` of marble, nothing it started is left running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.runtime.httpserver import LoopbackHTTPServer, serving
from tasks.runtime.processes import alive
from tasks.runtime.reaper import descendants

pytestmark = pytest.mark.slow


class _Slow(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802
        time.sleep(2.0)
        self.send_response(404)
        self.send_header("Content-Length", "0")
        self.end_headers()


def test_sigkill_of_marble_leaves_nothing_it_started(tmp_path):
    with serving(LoopbackHTTPServer(("127.0.0.1", 0), _Slow), "test-origin") as server:
        host = f"127.0.0.1:{server.server_address[1]}"
        urls = [f"http://{host}/{k}.png" for k in range(40)]
        pq.write_table(pa.table({"url": urls, "caption": ["c"] * 40}), tmp_path / "list.parquet")
        env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect")}
        marble = subprocess.Popen(
            [sys.executable, "-m", "flows.cli", "--home", str(tmp_path / "home"), "ingest",
             str(tmp_path / "list.parquet"), "--allow-host", host, "--processes", "2",
             "--shard-size", "20"],  # two shards: two download processes
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            started: dict[int, int] = {}
            deadline = time.time() + 120
            lock = tmp_path / "home" / ".locks" / "raw.lock"
            while time.time() < deadline:  # until the download runs: Prefect's server and workers
                started |= descendants(marble.pid)
                if lock.exists() and lock.read_text() and len(started) >= 4:
                    time.sleep(2.0)
                    started |= descendants(marble.pid)
                    break
                time.sleep(0.2)
            assert marble.poll() is None and len(started) >= 4, started
            os.kill(marble.pid, signal.SIGKILL)
            marble.wait()
            deadline = time.time() + 15
            while time.time() < deadline and any(alive(p, s) for p, s in started.items()):
                time.sleep(0.2)
            left = [p for p, s in started.items() if alive(p, s)]
            assert not left, f"still running after marble was killed: {left}"
        finally:
            if marble.poll() is None:
                marble.kill()
