"""The vetting forward proxy every download goes through.

img2dataset fetches with urllib, which sends every request to the proxy named by the
`http_proxy` / `https_proxy` environment variables. `vetting_proxy()` starts one on
127.0.0.1; `proxy_environment()` is the environment a download process runs in (it and every
worker it starts, whatever the distributor). marble's own process keeps its environment, so
its own HTTP clients (Prefect's API, MLflow) never go through the proxy. For each request,
and so for every redirect hop (urllib follows redirects with a new request), the proxy:

1. resolves the host once and checks every address (tasks/ingest/addresses.py), then connects to
   the checked address itself, so DNS cannot answer a second look-up differently;
2. refuses a body whose declared length exceeds `max_body_bytes`, and cuts one that grows
   past it (the client sees a truncated response, which fails);
3. for plain http, reads the image header before passing any of the body on and refuses an
   image that declares more than `max_pixels` pixels (https is end-to-end encrypted; there
   the decoder's own limit, OPENCV_IO_MAX_IMAGE_PIXELS, set to the same value, stops it).

A refusal answers `403 marble-refused:<reason>`, which img2dataset records as the row's
error message, so each reason is counted. `refusals` counts them in the proxy too.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import os
import select
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from urllib.parse import urlsplit

from PIL import Image, UnidentifiedImageError

from tasks.ingest.addresses import AddressRefused, Resolver, resolve_checked, system_resolver
from tasks.runtime.httpserver import LoopbackHTTPServer, serving

REFUSED = "marble-refused"
SNIFF_BYTES = 1 << 20  # enough for any image header (a JPEG's SOF can sit behind EXIF)
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te",
              "trailer", "upgrade", "proxy-authenticate", "proxy-authorization"}  # fmt: skip
PROXY_VARIABLES = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")
BYPASS_VARIABLES = ("no_proxy", "NO_PROXY")


@dataclass
class FetchPolicy:
    allowed_hosts: frozenset[str] = frozenset()  # exact "host:port" fetched even if private
    allow_private: bool = False
    max_body_bytes: int = 10 << 20
    max_pixels: int = 64_000_000
    timeout_s: float = 10.0
    resolver: Resolver = system_resolver
    refusals: Counter = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def refuse(self, reason: str) -> None:
        with self.lock:
            self.refusals[reason] += 1


def declared_pixels(prefix: bytes) -> int | None:
    """Width x height an image declares in its header (no decoding), None if unknown."""
    try:
        with Image.open(io.BytesIO(prefix)) as image:
            width, height = image.size
    except Image.DecompressionBombError:  # PIL's own limit, far above ours: too many
        return 1 << 62
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None
    return width * height


class _Refusal(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _handler(policy: FetchPolicy) -> type[BaseHTTPRequestHandler]:
    class VettingHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, format, *args):  # quiet
            pass

        def _refuse(self, reason: str) -> None:
            policy.refuse(reason)
            self.send_response(403, f"{REFUSED}:{reason}")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _target(self, host: str, port: int, scheme: str) -> str:
            try:
                return resolve_checked(
                    host, port, policy.allowed_hosts, policy.allow_private, policy.resolver, scheme
                )
            except AddressRefused as e:
                raise _Refusal(e.reason) from None

        # ---------------------------------------------------------------- plain http

        def do_GET(self):  # noqa: N802 (http.server's naming)
            self._forward("GET")

        def do_HEAD(self):  # noqa: N802
            self._forward("HEAD")

        def _forward(self, method: str) -> None:
            try:
                parts = urlsplit(self.path)
                port = parts.port or 80
            except ValueError:  # e.g. a port out of range
                return self._refuse("malformed_url")
            if parts.scheme != "http" or not parts.hostname:
                return self._refuse("bad_scheme")
            if parts.username or parts.password:
                return self._refuse("credentials_in_url")
            try:
                address = self._target(parts.hostname, port, "http")
            except _Refusal as e:
                return self._refuse(e.reason)
            path = parts.path or "/"
            if parts.query:
                path += f"?{parts.query}"
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            conn = http.client.HTTPConnection(address, port, timeout=policy.timeout_s)
            try:
                conn.request(method, path, headers=headers)
                response = conn.getresponse()
                self._relay(response)
            except _Refusal as e:
                self._refuse(e.reason)
            except OSError:
                self.close_connection = True  # the client sees the failure
            finally:
                conn.close()

        def _relay(self, response: http.client.HTTPResponse) -> None:
            length = response.getheader("Content-Length")
            if length is not None and length.isdigit() and int(length) > policy.max_body_bytes:
                raise _Refusal("body_too_large")
            prefix = b""
            if response.status == 200:
                prefix = response.read(SNIFF_BYTES)
                pixels = declared_pixels(prefix)
                if pixels is not None and pixels > policy.max_pixels:
                    raise _Refusal("too_many_pixels")
                if len(prefix) > policy.max_body_bytes:
                    raise _Refusal("body_too_large")
            self.send_response_only(response.status, response.reason)
            for key, value in response.getheaders():
                if key.lower() not in HOP_BY_HOP:
                    self.send_header(key, value)
            self.send_header("Connection", "close")
            self.end_headers()
            sent = len(prefix)
            self.wfile.write(prefix)
            while chunk := response.read(64 << 10):
                sent += len(chunk)
                if sent > policy.max_body_bytes:  # grew past the limit: cut it off
                    policy.refuse("body_too_large")
                    self.close_connection = True
                    return
                self.wfile.write(chunk)

        # ---------------------------------------------------------------- https tunnels

        def do_CONNECT(self):  # noqa: N802
            host, _, port = self.path.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                return self._refuse("malformed_url")
            try:
                address = self._target(host.strip("[]"), int(port), "https")
                upstream = socket.create_connection((address, int(port)), policy.timeout_s)
            except _Refusal as e:
                return self._refuse(e.reason)
            except OSError:
                self.send_response(502)
                self.end_headers()
                return
            self.send_response(200, "Connection established")
            self.end_headers()
            self._tunnel(upstream)

        def _tunnel(self, upstream: socket.socket) -> None:
            client, budget = self.connection, policy.max_body_bytes + (256 << 10)
            try:
                while True:
                    ready, _, _ = select.select([client, upstream], [], [], policy.timeout_s)
                    if not ready:
                        return
                    for source in ready:
                        data = source.recv(64 << 10)
                        if not data:
                            return
                        if source is upstream:
                            budget -= len(data)
                            if budget < 0:
                                policy.refuse("body_too_large")
                                return
                            client.sendall(data)
                        else:
                            upstream.sendall(data)
            except OSError:
                return
            finally:
                upstream.close()
                self.close_connection = True

    return VettingHandler


@contextlib.contextmanager
def vetting_proxy(policy: FetchPolicy) -> Iterator[str]:
    """Serve the proxy on 127.0.0.1 (a free port) while the block runs; yields its URL."""
    with serving(LoopbackHTTPServer(("127.0.0.1", 0), _handler(policy)), "vetting-proxy") as server:
        yield f"http://127.0.0.1:{server.server_address[1]}"


def proxy_environment(proxy_url: str, max_pixels: int) -> dict[str, str]:
    """This process's environment with every fetch sent through `proxy_url` (no bypass
    list) and the decoder's pixel limit set, for a download process and its workers."""
    env = {k: v for k, v in os.environ.items() if k not in BYPASS_VARIABLES}
    env |= dict.fromkeys(PROXY_VARIABLES, proxy_url)
    env["OPENCV_IO_MAX_IMAGE_PIXELS"] = str(max_pixels)
    return env
