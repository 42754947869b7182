"""`fbuild sim serve`: one virtual board behind a TCP socket.

A separate esptool process reaches it as `socket://HOST:PORT`; esptool then
uses `no-reset` (TCP carries no modem lines), so the served board starts in
download mode unless told otherwise. One client at a time, like a serial
port; a second connection is refused while the first is open.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable

from fbuild_watch.sim.board import Disconnected, VirtualBoard


class BoardServer:
    def __init__(self, board: VirtualBoard, host: str = "127.0.0.1", port: int = 0) -> None:
        self.board = board
        self.sock = socket.create_server((host, port))
        self.address: tuple[str, int] = self.sock.getsockname()[:2]
        self._stop = threading.Event()
        self._busy = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"socket://{self.address[0]}:{self.address[1]}"

    def start(self) -> BoardServer:
        self._thread = threading.Thread(target=self.serve_forever, name="sim-server", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self, on_client: Callable[[str], None] | None = None) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, peer = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            if not self._busy.acquire(blocking=False):
                conn.close()  # the port is busy
                continue
            if on_client:
                on_client(f"{peer[0]}:{peer[1]}")
            threading.Thread(target=self._bridge, args=(conn,), daemon=True).start()

    def _bridge(self, conn: socket.socket) -> None:
        board = self.board
        try:
            epoch = board.open_port()
        except (Disconnected, BlockingIOError):
            conn.close()
            self._busy.release()
            return
        done = threading.Event()

        def uplink() -> None:
            try:
                while not done.is_set():
                    data = conn.recv(65536)
                    if not data:
                        break
                    board.host_write(epoch, data)
            except (OSError, Disconnected):
                pass
            finally:
                done.set()

        up = threading.Thread(target=uplink, daemon=True)
        up.start()
        try:
            while not done.is_set() and not self._stop.is_set():
                data = board.host_read(epoch, 65536, 0.05)
                if data:
                    conn.sendall(data)
        except (OSError, Disconnected):
            pass
        finally:
            done.set()
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
            up.join(timeout=1)
            board.close_port(epoch)
            self._busy.release()

    def stop(self) -> None:
        self._stop.set()
        with contextlib.suppress(OSError):
            self.sock.close()
        if self._thread is not None:
            self._thread.join(timeout=2)
