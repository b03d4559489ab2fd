"""The shapes HTTP server: loopback only, URL list and ground truth, each fault kind."""

from __future__ import annotations

import http.client
import io
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
