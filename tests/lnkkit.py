"""A blob server on 127.0.0.1 for `.lnk` tests: routes to bytes, redirects
or errors, counts requests, optionally TLS (trustme) for https redirects."""

from __future__ import annotations

import hashlib
import http.server
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fbuild_watch.lnk.format import dump_pointer


@dataclass
class Route:
    body: bytes = b""
    status: int = 200
    location: str | None = None
    content_length: int | None = None  # a lie when set; -1: no header (read until close)
    chunk_delay_s: float = 0.0  # paced body: a download that takes a while


@dataclass
class BlobServer:
    routes: dict[str, Route] = field(default_factory=dict)
    hits: list[str] = field(default_factory=list)
    scheme: str = "http"
    port: int = 0

    def url(self, path: str) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def add(self, path: str, body: bytes, **kw: object) -> str:
        self.routes[path] = Route(body, **kw)  # type: ignore[arg-type]
        return self.url(path)

    def count(self, path: str) -> int:
        return sum(1 for h in self.hits if h == path)


def _handler(server: BlobServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            server.hits.append(self.path)
            route = server.routes.get(self.path)
            if route is None:
                self.send_error(404, "Not Found")
                return
            self.send_response(route.status)
            if route.location:
                self.send_header("Location", route.location)
            length = route.content_length if route.content_length is not None else len(route.body)
            if length >= 0:
                self.send_header("Content-Length", str(length))
            self.end_headers()
            if route.chunk_delay_s:
                for i in range(0, len(route.body), 4096):
                    self.wfile.write(route.body[i : i + 4096])
                    self.wfile.flush()
                    time.sleep(route.chunk_delay_s)
            else:
                try:
                    self.wfile.write(route.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

    return Handler


@contextmanager
def serve(tls_dir: Path | None = None) -> Iterator[BlobServer]:
    """`tls_dir`: serve https with a trustme CA written there as ca.pem."""
    bs = BlobServer()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(bs))
    httpd.daemon_threads = True
    if tls_dir is not None:
        import trustme

        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert.configure_cert(ctx)
        httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
        ca.cert_pem.write_to_path(str(tls_dir / "ca.pem"))
        bs.scheme = "https"
    bs.port = httpd.server_address[1]
    t = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    t.start()
    try:
        yield bs
    finally:
        httpd.shutdown()
        httpd.server_close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_pointer(
    path: Path, url: str, data: bytes, *, size: bool = True, extract: str = "file"
) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(dump_pointer(url, sha(data), len(data) if size else None, extract))
    return path


def blob(n: int, seed: int = 1) -> bytes:
    """n incompressible-ish bytes, deterministic."""
    out = bytearray()
    x = seed
    while len(out) < n:
        x = hashlib.sha256(x.to_bytes(8, "little")).digest()
        out += x
        x = int.from_bytes(x[:8], "little")
    return bytes(out[:n])
