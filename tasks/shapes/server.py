"""Serve the captioned shapes over HTTP on 127.0.0.1, with injected faults.

`serve_shapes(spec, source_dir)` is a context manager: it starts a threaded HTTP server on
a free (or given) loopback port, writes the URL list (`urls.parquet`: url, caption) and the
ground truth (`truth.parquet`) into `source_dir`, yields a `ShapesSource`, and stops the
server on exit. Images are rendered on request from (seed, index).

URLs look like http://127.0.0.1:PORT/shapes/<seed>/<index>.png
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tasks.runtime.httpserver import LoopbackHTTPServer, serving
from tasks.shapes.render import ShapesSpec, ShapesTable, build_table, render_png
from tasks.store.files import atomic_dir
from tasks.store.ids import pair_id

_PATH_RE = re.compile(r"^/shapes/(?P<seed>\d+)/(?P<index>\d+)\.png(?P<query>\?.*)?$")


@dataclass(frozen=True)
class ShapesSource:
    base_url: str  # http://127.0.0.1:PORT
    url_list: Path  # Parquet: url, caption
    truth: Path  # Parquet: ground truth per pair
    spec: ShapesSpec


def _handler_for(spec: ShapesSpec, table: ShapesTable) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):  # silence the default stderr access log
            pass

        def _send(self, code: int, body: bytes, content_type: str = "image/png") -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            m = _PATH_RE.match(self.path)
            if not m or int(m["seed"]) != spec.seed or int(m["index"]) >= spec.n:
                self._send(404, b"not found", "text/plain")
                return
            index = int(m["index"])
            fault = table.faults[index]
            if fault == "not_found":
                self._send(404, b"not found", "text/plain")
            elif fault == "redirect" and not m["query"]:
                self.send_response(302)
                self.send_header("Location", f"/shapes/{spec.seed}/{index}.png?hop=1")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif fault == "corrupt":
                rng = np.random.default_rng([spec.seed, index, 3])
                self._send(200, b"\x89PNG\r\n\x1a\n" + rng.bytes(256))
            elif fault == "truncated":
                png = render_png(spec, index)
                self._send(200, png[: max(8, len(png) // 3)])
            else:
                if fault == "slow":
                    time.sleep(spec.slow_delay_s)
                self._send(200, render_png(spec, index))

    return Handler


def write_source_tables(spec: ShapesSpec, table: ShapesTable, base_url: str, out_dir: Path) -> None:
    """Write urls.parquet (what the pipeline reads) and truth.parquet (what evaluation reads)."""
    urls = [f"{base_url}/shapes/{spec.seed}/{i}.png" for i in range(spec.n)]
    ids = [pair_id(u, c) for u, c in zip(urls, table.captions, strict=True)]
    pq.write_table(pa.table({"url": urls, "caption": table.captions}), out_dir / "urls.parquet")

    def column(k: int, attr: str) -> list[str | None]:
        return [getattr(s.objects[k], attr) if len(s.objects) > k else None for s in table.scenes]

    truth = {
        "pair_id": ids,
        "url": urls,
        "index": list(range(spec.n)),
        "caption": table.captions,
        "true_caption": table.true_captions,
        "caption_is_wrong": table.caption_is_wrong.tolist(),
        "fault": table.faults,
        "n_objects": [len(s.objects) for s in table.scenes],
        "background": [s.background for s in table.scenes],
    }
    for k in range(2):
        for attr in ("colour", "shape", "size", "position"):
            truth[f"{attr}_{k}"] = column(k, attr)
    pq.write_table(pa.table(truth), out_dir / "truth.parquet")


def spec_digest(spec: ShapesSpec) -> str:
    return hashlib.sha1(repr(spec).encode()).hexdigest()[:12]


def _bind(handler: type[BaseHTTPRequestHandler], port: int) -> LoopbackHTTPServer:
    try:
        return LoopbackHTTPServer(("127.0.0.1", port), handler)
    except OSError:
        if port == 0:
            raise
        return LoopbackHTTPServer(("127.0.0.1", 0), handler)  # busy: take a free port


@contextlib.contextmanager
def serve_shapes(spec: ShapesSpec, source_dir: Path, port: int = 0) -> Iterator[ShapesSource]:
    """Serve `spec` on 127.0.0.1:`port` and write its tables to `source_dir`.

    port 0 takes a free port; a busy port falls back to a free one (URLs, and so pair_ids,
    then differ from a run on the usual port).
    """
    table = build_table(spec)
    with serving(_bind(_handler_for(spec, table), port), "shapes-http") as server:
        base_url = f"http://127.0.0.1:{server.server_address[1]}"
        with atomic_dir(source_dir) as tmp:
            write_source_tables(spec, table, base_url, tmp)
        yield ShapesSource(
            base_url, source_dir / "urls.parquet", source_dir / "truth.parquet", spec
        )
