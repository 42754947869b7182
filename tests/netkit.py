"""A network link of the tests' own: a TCP relay adding a fixed latency each
way, between us and a serial server (raw TCP or RFC 2217) on loopback."""

from __future__ import annotations

import contextlib
import queue
import socket
import threading
import time


class LatencyRelay:
    """TCP relay adding `delay` seconds to every byte in each direction (a
    fixed-latency line: data keeps its order and the link its throughput).

    `upstream` is the server's URL (`socket://HOST:PORT` or
    `rfc2217://HOST:PORT[?options]`); `url` is the same URL through the relay.
    `delay` may change while it runs: it applies to data read from then on.
    With `record`, what clients send is kept in `sent` (a benchmark counts
    the RFC 2217 commands in it)."""

    def __init__(self, upstream: str, delay: float, *, record: bool = False) -> None:
        scheme, rest = upstream.split("://", 1)
        address, sep, query = rest.partition("?")
        host, port = address.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.delay = delay
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"{scheme}://127.0.0.1:{self.sock.getsockname()[1]}{sep}{query}"
        self.connections = 0  # accepted so far
        self.record = record
        self.sent = bytearray()  # client -> server, with `record`
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream)
            except OSError:
                client.close()  # the server is gone: so is this connection
                continue
            pair = (client, server)
            with self._lock:
                self.connections += 1
                for s in pair:
                    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    self._conns.append(s)
            ends = [threading.Event(), threading.Event()]
            self._pump(client, server, ends[0], self.sent if self.record else None)
            self._pump(server, client, ends[1], None)
            threading.Thread(target=self._reap, args=(pair, ends), daemon=True).start()

    def _reap(self, pair: tuple[socket.socket, socket.socket], ends: list[threading.Event]) -> None:
        """Both directions over: close both sockets (a bench reconnects often)."""
        for end in ends:
            end.wait()
        with self._lock:
            for s in pair:
                with contextlib.suppress(OSError):
                    s.close()
                with contextlib.suppress(ValueError):
                    self._conns.remove(s)

    def _pump(
        self,
        src: socket.socket,
        dst: socket.socket,
        done: threading.Event,
        record: bytearray | None,
    ) -> None:
        line: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()

        def read() -> None:
            while True:
                try:
                    data = src.recv(65536)
                except OSError:
                    data = b""
                if record is not None:
                    record.extend(data)
                line.put((time.monotonic() + self.delay, data))
                if not data:
                    return

        def write() -> None:
            try:
                while True:
                    due, data = line.get()
                    time.sleep(max(0.0, due - time.monotonic()))  # the line's latency itself
                    if not data:
                        with contextlib.suppress(OSError):
                            dst.shutdown(socket.SHUT_WR)
                        return
                    try:
                        dst.sendall(data)
                    except OSError:
                        return
            finally:
                done.set()

        threading.Thread(target=read, daemon=True).start()
        threading.Thread(target=write, daemon=True).start()

    def close(self) -> None:
        self.sock.close()
        with self._lock:
            for s in self._conns:
                with contextlib.suppress(OSError):
                    s.close()

    def __enter__(self) -> LatencyRelay:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
