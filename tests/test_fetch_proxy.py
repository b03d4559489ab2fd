"""The vetting proxy: redirects to forbidden addresses are never followed, image bombs are
refused from their header, oversized bodies are refused or cut; and ingest goes through it.
Every connection stays on 127.0.0.1: the proxy's own outgoing connections are checked."""

from __future__ import annotations

import contextlib
import http.client
import io
import socket
import struct
import urllib.error
import urllib.request
import zlib
from http.server import BaseHTTPRequestHandler

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tasks.ingest.download import IngestConfig, ingest
from tasks.ingest.fetch_proxy import FetchPolicy, declared_pixels, vetting_proxy
from tasks.runtime.httpserver import LoopbackHTTPServer, serving


def _png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def _bomb_png(width: int, height: int, complete: bool = False) -> bytes:
    """A small PNG whose header declares width x height black RGB pixels. Its data holds
    them all when `complete` (rows of zeros compress about 1000:1), else a few."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    if complete:
        stream, row = zlib.compressobj(9), b"\x00" * (1 + 3 * width)
        data = b"".join(stream.compress(row) for _ in range(height)) + stream.flush()
    else:
        data = zlib.compress(b"\x00" * 1000)
    head = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
    return head + _png_chunk(b"IDAT", data) + _png_chunk(b"IEND", b"")


@contextlib.contextmanager
def _server(routes: dict):
    """A server on 127.0.0.1 answering `routes[path] -> (status, headers, body)`; yields
    (port, hits), hits counting every request it received."""
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            status, headers, body = routes.get(self.path, (404, {}, b""))
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            if "Content-Length" not in headers:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with serving(LoopbackHTTPServer(("127.0.0.1", 0), Handler), "test-origin") as server:
        yield server.server_address[1], hits


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch):
    """Fail the test, not the network, if the proxy ever connects beyond 127.0.0.1."""
    real_connect = http.client.HTTPConnection.connect
    real_create = socket.create_connection

    def connect(self):
        assert self.host == "127.0.0.1", f"proxy connected to {self.host}"
        return real_connect(self)

    def create_connection(address, *args, **kwargs):
        assert address[0] == "127.0.0.1", f"proxy connected to {address[0]}"
        return real_create(address, *args, **kwargs)

    monkeypatch.setattr(http.client.HTTPConnection, "connect", connect)
    monkeypatch.setattr(socket, "create_connection", create_connection)


def _get(proxy_url: str, url: str) -> tuple[int, str, bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({"http": proxy_url}))
    try:
        with opener.open(url, timeout=10) as response:
            return response.status, response.reason, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.reason, b""


# Loopback spellings of the sentinel server: a redirect there must never reach it.
LOOPBACK_SPELLINGS = ["127.0.0.1", "127.1", "2130706433", "0x7f000001", "0177.0.0.1", "localhost",
                      "[::ffff:127.0.0.1]", "sentinel.test"]  # fmt: skip


@pytest.mark.parametrize("spelling", LOOPBACK_SPELLINGS)
def test_a_redirect_to_a_forbidden_address_is_refused_and_never_followed(spelling):
    with _server({"/secret": (200, {}, b"metadata")}) as (sentinel, sentinel_hits):
        target = f"http://{spelling}:{sentinel}/secret"
        routes = {"/img": (302, {"Location": target}, b"")}
        with _server(routes) as (port, hits):
            policy = FetchPolicy(
                allowed_hosts=frozenset({f"127.0.0.1:{port}"}),
                resolver=lambda name, p: ["127.0.0.1"],  # every name resolves to loopback
            )
            with vetting_proxy(policy) as proxy:
                status, reason, _ = _get(proxy, f"http://127.0.0.1:{port}/img")
        assert hits == ["/img"] and sentinel_hits == []
    assert status == 403 and reason == "marble-refused:loopback_address"
    assert policy.refusals["loopback_address"] == 1


# One spelling of every other forbidden class: the proxy must refuse the hop without
# connecting (the autouse guard fails the test if it so much as tries).
OTHER_CLASSES = [
    ("10.0.0.1", "private_address"), ("0xa9fea9fe", "link_local_address"),
    ("[fe80::1]", "link_local_address"), ("0.0.0.0", "unspecified_address"),
    ("224.0.0.1", "multicast_address"), ("100.64.0.1", "shared_address"),
    ("240.0.0.1", "reserved_address"), ("[::ffff:192.168.0.1]", "private_address"),
    ("[2002:a9fe:a9fe::]", "link_local_address"), ("metadata.internal", "link_local_address"),
]  # fmt: skip


@pytest.mark.parametrize("spelling, reason", OTHER_CLASSES)
def test_a_redirect_to_any_forbidden_class_is_refused_without_connecting(spelling, reason):
    routes = {"/img": (302, {"Location": f"http://{spelling}/latest/meta-data"}, b"")}
    with _server(routes) as (port, hits):
        policy = FetchPolicy(
            allowed_hosts=frozenset({f"127.0.0.1:{port}"}),
            resolver=lambda name, p: ["169.254.169.254"],  # names resolve to the metadata IP
        )
        with vetting_proxy(policy) as proxy:
            status, got, _ = _get(proxy, f"http://127.0.0.1:{port}/img")
    assert (status, got) == (403, f"marble-refused:{reason}") and hits == ["/img"]


def test_an_allowed_host_is_fetched_and_other_ports_are_not():
    with _server({"/a.png": (200, {"Content-Type": "image/png"}, _png(8, 8))}) as (port, hits):
        policy = FetchPolicy(allowed_hosts=frozenset({f"127.0.0.1:{port}"}))
        with vetting_proxy(policy) as proxy:
            assert _get(proxy, f"http://127.0.0.1:{port}/a.png")[0] == 200
            assert _get(proxy, f"http://127.0.0.1:{port + 1}/a.png")[:2] == (
                403, "marble-refused:loopback_address"
            )  # fmt: skip
    assert hits == ["/a.png"]


def test_an_image_declaring_too_many_pixels_is_refused_before_decoding():
    bomb = _bomb_png(30_000, 30_000)
    assert len(bomb) < 2000 and declared_pixels(bomb) >= 900_000_000  # PIL: a bomb
    routes = {"/bomb.png": (200, {}, bomb), "/fine.png": (200, {}, _png(100, 100))}
    with _server(routes) as (port, _):
        policy = FetchPolicy(allowed_hosts=frozenset({f"127.0.0.1:{port}"}), max_pixels=1_000_000)
        with vetting_proxy(policy) as proxy:
            assert _get(proxy, f"http://127.0.0.1:{port}/bomb.png")[:2] == (
                403, "marble-refused:too_many_pixels"
            )  # fmt: skip
            assert _get(proxy, f"http://127.0.0.1:{port}/fine.png")[0] == 200


def test_oversized_bodies_are_refused_or_cut_off():
    big = b"\x00" * 300_000
    routes = {
        "/declared": (200, {}, big),  # Content-Length says it all
        "/undeclared": (200, {"Content-Length": "10"}, big),  # lies about its length
    }
    with _server(routes) as (port, _):
        policy = FetchPolicy(allowed_hosts=frozenset({f"127.0.0.1:{port}"}), max_body_bytes=100_000)
        with vetting_proxy(policy) as proxy:
            assert _get(proxy, f"http://127.0.0.1:{port}/declared")[:2] == (
                403, "marble-refused:body_too_large"
            )  # fmt: skip
            status, _, body = _get(proxy, f"http://127.0.0.1:{port}/undeclared")
    assert len(body) <= 100_000


def test_the_proxy_environment_is_for_the_download_process_only(monkeypatch):
    import os

    from tasks.ingest.fetch_proxy import proxy_environment

    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.delenv("http_proxy", raising=False)
    with vetting_proxy(FetchPolicy()) as proxy:
        env = proxy_environment(proxy, 1000)
        assert os.environ.get("http_proxy") is None  # this process is left as it was
    assert env["http_proxy"] == env["HTTPS_PROXY"] == proxy and "no_proxy" not in env
    assert env["OPENCV_IO_MAX_IMAGE_PIXELS"] == "1000"


@pytest.mark.slow
def test_ingest_refuses_redirects_to_forbidden_addresses_and_counts_them(tmp_path, workspace):
    """img2dataset's own workers go through the proxy: a redirect to the sentinel is counted
    as refused and the sentinel is never hit."""
    with _server({"/secret": (200, {}, _png(8, 8))}) as (sentinel, sentinel_hits):
        routes = {
            "/ok.png": (200, {}, _png(32, 32)),
            "/bomb.png": (200, {}, _bomb_png(30_000, 30_000)),
        }
        for k, spelling in enumerate(LOOPBACK_SPELLINGS[:-1]):
            routes[f"/r{k}.png"] = (302, {"Location": f"http://{spelling}:{sentinel}/secret"}, b"")
        with _server(routes) as (port, hits):
            urls = [f"http://127.0.0.1:{port}{path}" for path in routes]
            path = tmp_path / "list.parquet"
            pq.write_table(
                pa.table({"url": urls, "caption": [f"c{k}" for k in range(len(urls))]}), path
            )
            cfg = IngestConfig(url_list=path, allowed_hosts=(f"127.0.0.1:{port}",), retries=0)
            manifest = ingest(cfg, workspace)
    assert sentinel_hits == []
    assert manifest.status_counts == {"success": 1, "failed_to_download": len(urls) - 1}
    assert manifest.error_counts == {
        "refused:loopback_address": len(LOOPBACK_SPELLINGS) - 1,
        "refused:too_many_pixels": 1,
    }
    assert manifest.refused_at_fetch == {  # only the downloads went through the proxy
        "loopback_address": len(LOOPBACK_SPELLINGS) - 1,
        "too_many_pixels": 1,
    }


@pytest.mark.slow
def test_the_decoder_refuses_a_bomb_it_is_handed_with_bounded_memory(tmp_path):
    """https bodies pass the proxy encrypted; there the decoder's pixel limit, which the
    download environment sets, refuses the image before allocating it."""
    import os
    import subprocess
    import sys

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_bomb_png(20_000, 20_000, complete=True))  # 1.2 MB, 1.2 GB decoded
    assert bomb.stat().st_size < 2 << 20
    script = (
        "import sys, cv2, numpy as np\n"
        "data = np.frombuffer(open(sys.argv[1], 'rb').read(), np.uint8)\n"
        "try:\n    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)\n"
        "except cv2.error as e:\n    image = 'refused: ' + str(e).split(chr(10))[0]\n"
        "print(image if isinstance(image, str) else 'decoded')\n"
        "status = open('/proc/self/status').read().split('VmHWM:')[1]\n"
        "print(int(status.split()[0]))\n"  # peak RSS of this image, kB (reset at exec)
    )
    env = {**os.environ, "OPENCV_IO_MAX_IMAGE_PIXELS": "40000000"}
    out = subprocess.run(
        [sys.executable, "-c", script, str(bomb)], env=env, capture_output=True, text=True,
        timeout=60,
    ).stdout.split("\n")  # fmt: skip
    assert out[0].startswith("refused"), out  # without the limit it decodes, in 2.4 GB
    assert int(out[1]) < 400_000  # kB
