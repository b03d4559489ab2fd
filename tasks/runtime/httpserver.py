"""The HTTP server class of the servers marble runs in its own process: the built-in data's
(`tasks.shapes.server`) and the ingest's vetting proxy (`tasks.ingest.fetch_proxy`)."""

from __future__ import annotations

from http.server import ThreadingHTTPServer


class LoopbackHTTPServer(ThreadingHTTPServer):
    """A thread per request, and a listen backlog as deep as the downloaders that connect at
    once. socketserver listens with a backlog of 5; an ingest's downloaders (2 processes of
    32 threads by default) connect together, and each connection the kernel drops from a
    full queue costs its client a SYN retry (1 s, then 2, then 4 ...): on a busy machine
    enough to pass the fetch timeout and fail a download that would have succeeded."""

    request_queue_size = 1024  # Linux caps it at net.core.somaxconn (4096 here)
