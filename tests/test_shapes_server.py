"""The shapes HTTP server: loopback only, URL list and ground truth, each fault kind."""

from __future__ import annotations

import http.client
import http.server
import io
import select
import socket
import time
from urllib.parse import urlsplit

import pyarrow.parquet as pq
import pytest
from PIL import Image

from tasks.shapes.render import build_table
from tasks.store.ids import pair_id
from tests.conftest import FAULTY_SPEC


def _get(url: str) -> http.client.HTTPResponse:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""))
    return conn.getresponse()


def _index_with(fault: str | None) -> int:
    return build_table(FAULTY_SPEC).faults.index(fault)


def test_tables_and_loopback(faulty_source):
    assert faulty_source.base_url.startswith("http://127.0.0.1:")
    urls = pq.read_table(faulty_source.url_list)
    assert urls.column_names == ["url", "caption"] and urls.num_rows == FAULTY_SPEC.n
    truth = pq.read_table(faulty_source.truth).to_pylist()
    assert truth[5]["pair_id"] == pair_id(truth[5]["url"], truth[5]["caption"])
    assert sum(r["caption_is_wrong"] for r in truth) == round(0.2 * FAULTY_SPEC.n)
    assert "caption_is_wrong" not in urls.column_names


def test_clean_image(faulty_source):
    r = _get(f"{faulty_source.base_url}/shapes/0/{_index_with(None)}.png")
    assert r.status == 200
    assert Image.open(io.BytesIO(r.read())).size == (32, 32)


@pytest.mark.parametrize("fault", ["corrupt", "truncated"])
def test_broken_bytes_do_not_decode(faulty_source, fault):
    r = _get(f"{faulty_source.base_url}/shapes/0/{_index_with(fault)}.png")
    assert r.status == 200
    with pytest.raises(OSError):
        Image.open(io.BytesIO(r.read())).load()


def test_not_found_redirect_slow(faulty_source):
    base = faulty_source.base_url
    assert _get(f"{base}/shapes/0/{_index_with('not_found')}.png").status == 404
    assert _get(f"{base}/shapes/0/99999.png").status == 404
    assert _get(f"{base}/nothing").status == 404
    r = _get(f"{base}/shapes/0/{_index_with('redirect')}.png")
    assert r.status == 302 and r.getheader("Location").endswith("?hop=1")
    assert _get(base + r.getheader("Location")).status == 200
    t0 = time.perf_counter()
    assert _get(f"{base}/shapes/0/{_index_with('slow')}.png").status == 200
    assert time.perf_counter() - t0 >= FAULTY_SPEC.slow_delay_s


def test_server_stops_on_exit(tmp_path):
    from tasks.shapes.render import ShapesSpec
    from tasks.shapes.server import serve_shapes

    with serve_shapes(ShapesSpec(n=3), tmp_path) as source:
        assert _get(f"{source.base_url}/shapes/0/0.png").status == 200
    with pytest.raises(OSError):
        _get(f"{source.base_url}/shapes/0/0.png")


def _handshakes(port: int, n: int = 100, wait_s: float = 1.0) -> int:
    """Connections of n clients at once that the kernel completes within wait_s while the
    server accepts none (its backlog holds them; past it, SYNs are dropped)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
        pending, done = set(socks), 0
        deadline = time.monotonic() + wait_s
        while pending and (left := deadline - time.monotonic()) > 0:
            _, writable, _ = select.select([], list(pending), [], left)
            for s in writable:
                pending.discard(s)
                done += s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        return done
    finally:
        for s in socks:
            s.close()


def test_the_servers_hold_every_downloader_that_connects_at_once(monkeypatch):
    """The built-in data's server and the vetting proxy listen with a backlog as deep as an
    ingest's downloaders (64 by default): with socketserver's 5, the kernel dropped hundreds
    of connections in one ingest test, each costing a client a SYN retry of a second or more."""
    from tasks.ingest import fetch_proxy
    from tasks.runtime.httpserver import LoopbackHTTPServer
    from tasks.shapes.server import _bind

    server = _bind(http.server.BaseHTTPRequestHandler, 0)  # bound and listening, not serving
    try:
        assert isinstance(server, LoopbackHTTPServer)
        assert _handshakes(server.server_address[1]) == 100
    finally:
        server.server_close()

    built = []

    class Recorded(LoopbackHTTPServer):
        def __init__(self, *args):
            built.append(self)
            super().__init__(*args)

    monkeypatch.setattr(fetch_proxy, "LoopbackHTTPServer", Recorded)
    with fetch_proxy.vetting_proxy(fetch_proxy.FetchPolicy()):
        assert len(built) == 1
