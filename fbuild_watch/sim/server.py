"""`fbuild sim serve`: one virtual board behind a TCP socket.

A separate esptool process reaches it as `socket://HOST:PORT`; esptool then
uses `no-reset` (TCP carries no modem lines), so the served board starts in
download mode unless told otherwise. One client at a time, like a serial
port: a second connection is closed at once while the first is open; one that
comes as the first leaves is served when it has gone.

The board outlives its clients, as a chip outlives the host programs that
open its port: a stub left running (`--after no-reset-stub`), the UART baud
and loader-or-app state are what the next client finds. Raw TCP has no wire
and carries no baud rate, so the link always runs at the board's UART baud
(`host_follows_uart`): a baud change never garbles the next client. (A USB
bridge would keep the host's baud and garble until the host matched it;
RFC 2217 is the protocol that carries baud changes.)

`protocol="rfc2217"` serves the board as esptool's `esp_rfc2217_server`
serves a real one (its `EspPortManager` over the board's own `sim://`
port): DTR/RTS and the baud travel with the data, so esptool's resets and
baud changes work as on a real board behind that server.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable

import serial
from esp_rfc2217_server.esp_port_manager import EspPortManager

from fbuild_watch.sim import registry
from fbuild_watch.sim.board import Disconnected, VirtualBoard

ACCEPT_POLL_S = 0.1  # how soon stop() is noticed by the accept loop
READ_POLL_S = 0.05
# A client that connects while another has the board is refused once that
# one is still there after LEAVE_GRACE_S (well inside the 0.1 s in which the
# deploy side takes a close as "busy"); if that one has gone (its connection
# closed) the newcomer waits up to TEARDOWN_WAIT_S for the board instead.
LEAVE_GRACE_S = 0.05
TEARDOWN_WAIT_S = 2.0


class BoardServer:
    def __init__(
        self,
        board: VirtualBoard,
        host: str = "127.0.0.1",
        port: int = 0,
        on_event: Callable[[str], None] | None = None,
        *,
        protocol: str = "raw",
    ) -> None:
        """`on_event(text)`: a client came, left or was refused (any thread)."""
        if protocol not in ("raw", "rfc2217"):
            raise ValueError(f"protocol must be 'raw' or 'rfc2217', got {protocol!r}")
        self.board = board
        self.protocol = protocol
        # raw TCP carries no baud (the link follows the board); RFC 2217 does
        board.host_follows_uart = protocol == "raw"
        if protocol == "rfc2217":
            registry.add_board(board)  # its `sim://` port is what PortManager drives
        self.sock = socket.create_server((host, port))
        self.address: tuple[str, int] = self.sock.getsockname()[:2]
        self.on_event = on_event or (lambda _t: None)
        self.clients_served = 0
        self._stop = threading.Event()
        self._busy = threading.Lock()
        self._gone = threading.Event()  # the current client's connection has closed
        self._thread: threading.Thread | None = None
        self._bridges: list[threading.Thread] = []

    @property
    def url(self) -> str:
        scheme = "socket" if self.protocol == "raw" else "rfc2217"
        return f"{scheme}://{self.address[0]}:{self.address[1]}"

    def start(self) -> BoardServer:
        self._thread = threading.Thread(target=self.serve_forever, name="sim-server", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.sock.settimeout(ACCEPT_POLL_S)
        while not self._stop.is_set():
            try:
                conn, addr = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            peer = f"{addr[0]}:{addr[1]}"
            if self._claim():
                self._gone = threading.Event()
            else:
                conn.close()  # the port is busy: one client at a time
                if not self._stop.is_set():
                    self.on_event(f"refused {peer}: the board is busy with another client")
                continue
            bridge = threading.Thread(
                target=self._bridge,
                args=(conn, peer, self._gone),
                name=f"sim-client-{peer}",
                daemon=True,
            )
            self._bridges = [t for t in self._bridges if t.is_alive()] + [bridge]
            bridge.start()

    def _claim(self) -> bool:
        """The board's port for the client just accepted: at once if free; if
        the client before it has gone but is still being torn down (one
        process closes the port and the next opens it, as esptool's runs
        do), when that is done, as esptool's esp_rfc2217_server queues it
        and a closed serial port is free at once; else refused."""
        t0 = time.monotonic()
        while not self._stop.is_set():
            if self._busy.acquire(timeout=0.01):
                return True
            limit = TEARDOWN_WAIT_S if self._gone.is_set() else LEAVE_GRACE_S
            if time.monotonic() - t0 >= limit:
                break
        return False

    def _bridge(self, conn: socket.socket, peer: str, gone: threading.Event) -> None:
        if self.protocol == "rfc2217":
            self._bridge_rfc2217(conn, peer, gone)
            return
        board = self.board
        try:
            epoch = board.open_port()
        except (Disconnected, BlockingIOError) as exc:
            self._refuse(conn, peer, exc)
            return
        self.on_event(f"client {peer} connected")

        def close() -> None:
            # The port closes; the board keeps running (stub, baud, app) for
            # the next client, as a chip does when its host program exits.
            board.close_port(epoch)

        cancel = threading.Event()

        def cancel_read() -> None:
            cancel.set()
            board.wake_host_readers()

        self._relay(
            conn,
            peer,
            gone,
            to_board=lambda data: board.host_write(epoch, data),
            from_board=lambda: board.host_read(epoch, 65536, READ_POLL_S, cancel),
            cancel_read=cancel_read,
            close=close,
            errors=(Disconnected,),
        )

    def _bridge_rfc2217(self, conn: socket.socket, peer: str, gone: threading.Event) -> None:
        """esptool's `esp_rfc2217_server` redirector, over the board's port."""
        try:
            port = serial.serial_for_url(f"sim://{self.board.name}", timeout=READ_POLL_S)
        except serial.SerialException as exc:
            self._refuse(conn, peer, exc)
            return
        self.on_event(f"client {peer} connected (RFC 2217)")
        # telnet replies and data go out in small writes: no Nagle delays
        with contextlib.suppress(OSError):
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # esptool's own port manager: it recognises esptool's reset sequences in
        # the DTR/RTS changes and replays them at the port with esptool's
        # timing (line changes over a network arrive late and bunched)
        manager = EspPortManager(port, _Writer(conn), esp32r0_delay=False)

        def from_board() -> bytes:
            data = port.read(port.in_waiting or 1)
            manager.check_modem_lines()
            return b"".join(manager.escape(data))

        self._relay(
            conn,
            peer,
            gone,
            to_board=lambda data: port.write(b"".join(manager.filter(data))),
            from_board=from_board,
            cancel_read=port.cancel_read,
            close=port.close,  # the board keeps running for the next client
            errors=(serial.SerialException,),
        )

    def _refuse(self, conn: socket.socket, peer: str, why: BaseException) -> None:
        conn.close()
        self._busy.release()
        self.on_event(f"refused {peer}: {why}")

    def _relay(
        self,
        conn: socket.socket,
        peer: str,
        gone: threading.Event,
        *,
        to_board: Callable[[bytes], object],
        from_board: Callable[[], bytes],
        cancel_read: Callable[[], None],
        close: Callable[[], None],
        errors: tuple[type[Exception], ...],
    ) -> None:
        """Bytes both ways until the client or the server goes; then the
        board's side is closed and the next client may come. `gone` is set
        when the client's side has closed (a newcomer then waits for us)."""
        self.clients_served += 1
        expected: tuple[type[Exception], ...] = (OSError, *errors)  # a side went away
        done = threading.Event()

        def uplink() -> None:
            try:
                while not done.is_set():
                    data = conn.recv(65536)
                    if not data:
                        break
                    to_board(data)
            except expected:
                pass
            finally:
                gone.set()
                done.set()
                with contextlib.suppress(*expected):
                    cancel_read()  # the downlink's read returns now, not at its poll

        up = threading.Thread(target=uplink, name=f"sim-uplink-{peer}", daemon=True)
        up.start()
        try:
            while not done.is_set() and not self._stop.is_set():
                data = from_board()
                if data:
                    conn.sendall(data)
        except expected:
            pass
        finally:
            gone.set()  # ending either way: a newcomer waits for the board
            done.set()
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
            up.join(timeout=1)
            close()
            self._busy.release()
            self.on_event(f"client {peer} left")

    def request_stop(self) -> None:
        """Stop accepting and tell the open connection to end, without waiting
        (several servers stopped together each wait once, side by side)."""
        self._stop.set()
        with contextlib.suppress(OSError):
            self.sock.close()

    def stop(self) -> None:
        """Stop accepting and end the open connection (the board is not closed)."""
        self.request_stop()
        if self._thread is not None:
            self._thread.join(timeout=2)
        for bridge in self._bridges:
            bridge.join(timeout=2)


class _Writer:
    """The connection as PortManager writes to it (telnet replies)."""

    def __init__(self, conn: socket.socket) -> None:
        self._conn = conn
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self._lock, contextlib.suppress(OSError):
            self._conn.sendall(data)
