"""An S3 server for tests: moto's, in a thread on 127.0.0.1, with the AWS settings that point
at it (no ~/.aws file is read, nothing leaves the machine)."""

from __future__ import annotations

import contextlib
import logging
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

BUCKET = "marble-test"


@contextlib.contextmanager
def moto_s3(scratch: Path) -> Iterator[str]:
    """Start the server, set AWS_* for this process (and the children it starts), create
    BUCKET; yields the endpoint URL. Everything is undone on exit."""
    from moto.server import ThreadedMotoServer

    from tasks.store import objectstore

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    # moto keeps its buckets per process: start from none, whatever an earlier test left
    reset = urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")
    urllib.request.build_opener(urllib.request.ProxyHandler({})).open(reset, timeout=10).close()
    nowhere = scratch / "no-aws-config"
    try:
        with pytest.MonkeyPatch.context() as env:
            for name, value in {
                "AWS_ACCESS_KEY_ID": "marble", "AWS_SECRET_ACCESS_KEY": "marble-secret",
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint,
                "AWS_CONFIG_FILE": str(nowhere), "AWS_SHARED_CREDENTIALS_FILE": str(nowhere),
                "AWS_MAX_ATTEMPTS": "1",
            }.items():  # fmt: skip
                env.setenv(name, value)
            objectstore.filesystem().mkdir(BUCKET)
            yield endpoint
    finally:
        server.stop()


def objects(prefix: str) -> set[str]:
    """Keys under BUCKET/prefix, relative to it."""
    from tasks.store import objectstore

    fs = objectstore.filesystem()
    return {path.removeprefix(f"{BUCKET}/{prefix}/") for path in fs.find(f"{BUCKET}/{prefix}")}
