"""The HTTP server class of the servers marble runs in its own process: the built-in data's
(`tasks.shapes.server`) and the ingest's vetting proxy (`tasks.ingest.fetch_proxy`), and
`serving`, which runs one in a thread for the length of a block."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from socketserver import BaseServer

# How often a serving loop checks whether shutdown() was called. socketserver's default,
# 0.5 s, made every stop of a server wait up to half a second (an ingest stops two).
POLL_INTERVAL_S = 0.02


class LoopbackHTTPServer(ThreadingHTTPServer):
    """A thread per request, and a listen backlog as deep as the downloaders that connect at
    once. socketserver listens with a backlog of 5; an ingest's downloaders (2 processes of
    32 threads by default) connect together, and each connection the kernel drops from a
    full queue costs its client a SYN retry (1 s, then 2, then 4 ...): on a busy machine
    enough to pass the fetch timeout and fail a download that would have succeeded."""

    request_queue_size = 1024  # Linux caps it at net.core.somaxconn (4096 here)
    daemon_threads = True  # a request still running does not keep the process alive


@contextlib.contextmanager
def serving(server: BaseServer, name: str) -> Iterator[BaseServer]:
    """Serve `server` in a daemon thread while the block runs; then stop it (within
    POLL_INTERVAL_S), close its socket and wait for the thread."""
    thread = threading.Thread(
        target=server.serve_forever, args=(POLL_INTERVAL_S,), name=name, daemon=True
    )
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
