"""One process owns each board's serial port for the whole session.

The monitor reads from it on a reader thread; a deploy pauses the reader and
hands the *same* port object to esptool, then resumes reading before it
resets the board so the boot log is captured from its first byte. When the
port disappears (unplug, USB re-enumeration) the connection says so, keeps
trying, and re-attaches to the same port when it comes back.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import serial
from esptool.loader import DEFAULT_SERIAL_WRITE_TIMEOUT, DEFAULT_TIMEOUT, ESP_ROM_BAUD

from fbuild_watch.deploy.ports import PortInfo
from fbuild_watch.deploy.simport import sim_present
from fbuild_watch.errors import RuntimeFailure

log = logging.getLogger(__name__)

REOPEN_INTERVAL_S = 0.25
FAST_REOPEN_S = 0.01  # right after our own reset a USB re-enumeration is expected
# The reader's read timeout. A deploy interrupts the read (cancel_read) where
# the port supports it; elsewhere (rfc2217, socket) this bounds its wait.
READ_TIMEOUT_S = 0.01
# A TCP serial server that already has a client accepts and closes a second
# one (`fbuild sim serve`, ser2net); a close this soon after connecting, before
# any byte, means "busy". Waited only on socket:// opens with a silent board.
NETWORK_BUSY_WINDOW_S = 0.1
# A network connection ending this soon after it opened, before any byte
# arrived, was refused by a busy server (the close came after the window).
NETWORK_BUSY_LATE_S = 2.0


class CountingPort:
    """Delegates to a serial port and counts the bytes on the wire, so the
    numbers are real on real hardware too."""

    def __init__(self, port: Any) -> None:
        object.__setattr__(self, "_port", port)
        object.__setattr__(self, "sent", 0)
        object.__setattr__(self, "received", 0)

    def read(self, size: int = 1) -> bytes:
        data: bytes = self._port.read(size)
        object.__setattr__(self, "received", self.received + len(data))
        return data

    def write(self, data: bytes) -> int:
        n: int = self._port.write(data)
        object.__setattr__(self, "sent", self.sent + len(data))
        return n

    def close(self) -> None:
        """esptool closes the port when it gives up connecting; the port is
        ours for the whole session, so that is ignored."""

    def __getattr__(self, name: str) -> Any:
        return getattr(self._port, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._port, name, value)


def _present(info: PortInfo) -> bool:
    if info.url.startswith("sim://"):
        return sim_present(info.url)
    if "://" in info.url:
        return True  # network ports: only an open attempt can tell
    return Path(info.url).exists()


class BoardConnection:
    def __init__(
        self,
        info: PortInfo,
        *,
        baud: int = 115200,
        on_data: Callable[[bytes, float], None] | None = None,
        on_state: Callable[[str, str], None] | None = None,
        on_pause: Callable[[], None] | None = None,
    ) -> None:
        """`on_data(bytes, time)` and `on_pause()` (the reader stops for a
        deploy) run on the reader thread; `on_state` on whichever thread
        saw the change."""
        self.info = info
        self.baud = baud  # the app's console baud (the monitor reads at this rate)
        self.on_data = on_data or (lambda _d, _t: None)
        self.on_state = on_state or (lambda _s, _m: None)
        self.on_pause = on_pause or (lambda: None)
        self.port: Any = None
        self.state = "closed"
        self.disconnects: list[float] = []  # monotonic times of disconnect edges
        self.last_data_at = 0.0
        # why the port is not open now ("" while it is): the busy or open error
        self.unavailable = ""
        self._opened_at = 0.0
        self._got_data = False  # since the last open
        self._fast_until = 0.0
        self._lock = threading.Lock()
        self._go = threading.Event()  # set while the reader may read; cleared by a deploy
        self._go.set()
        self._paused = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return self.info.url

    # -- lifecycle --------------------------------------------------------------
    def open(self, *, wait: bool = False) -> None:
        """Open now and start reading. If the port cannot be opened: raise
        RuntimeFailure with the reason, or with `wait`, keep trying in the
        background (state "waiting") until the board appears."""
        try:
            self._open_port()
        except RuntimeFailure as exc:
            if not wait:
                raise
            self.unavailable = str(exc)
            self._set_state("waiting", str(exc))
        self._stop.clear()
        self._thread = threading.Thread(target=self._reader, name=f"reader-{self.url}", daemon=True)
        self._thread.start()

    def _open_port(self) -> None:
        try:
            port = serial.serial_for_url(
                self.url,
                baudrate=self.baud,
                timeout=READ_TIMEOUT_S,
                exclusive=True,
                do_not_open=True,
            )
            port.open()
        except (serial.SerialException, OSError, ValueError) as exc:
            raise RuntimeFailure(self._open_error(str(exc))) from None
        if self.url.startswith("socket://") and _closed_at_once(port):
            with contextlib.suppress(Exception):
                port.close()
            raise RuntimeFailure(self._busy_message())
        with self._lock:
            self.port = port
            self._opened_at = time.monotonic()
            self._got_data = False
        self.unavailable = ""
        self._set_state("connected", "")

    def _busy_message(self) -> str:
        if "://" in self.url and not self.url.startswith("sim://"):
            # `fuser`/`lsof` cannot name a remote holder: say what was seen
            return (
                f"{self.url}: port busy: the server closed the connection at once "
                "(another client has the port open)"
            )
        return f"{self.url}: port busy: another program has it open"

    def _open_error(self, text: str) -> str:
        """One line for a failed open, "port busy" whatever the port type."""
        low = text.lower()
        if "busy" in low or "lock" in low:
            # e.g. another monitor; `fuser PORT` or `lsof PORT` names it (a
            # virtual board's lock names its holder itself)
            held = (
                text[low.index("held by") :] if "held by" in low else "another program has it open"
            )
            return f"{self.url}: port busy: {held}"
        if self.url.startswith("rfc2217://") and "rfc2217" in low:
            # pyserial's "Remote does not seem to support RFC2217": an RFC 2217
            # server serving another client keeps us in its backlog, unanswered
            return (
                f"{self.url}: port busy: the RFC 2217 server did not answer "
                "(another client has the port open, or it is not an RFC 2217 server)"
            )
        return f"{self.url}: cannot open port: {text}"

    def close(self) -> None:
        self._stop.set()
        self._go.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=2)
        with self._lock:
            port, self.port = self.port, None
        if port is not None:
            with contextlib.suppress(Exception):
                port.close()
        self._set_state("closed", "")

    def _set_state(self, state: str, message: str) -> None:
        if state != self.state:
            self.state = state
            self.on_state(state, message)

    # -- the reader -------------------------------------------------------------
    def _reader(self) -> None:
        while not self._stop.is_set():
            if not self._go.is_set():
                try:
                    self.on_pause()
                except Exception:  # a view's bug must not stop the monitor
                    log.exception("serial pause handler failed")
                self._paused.set()
                while not self._go.is_set() and not self._stop.is_set():
                    # blocks, not polls: a deploy's esptool needs the GIL
                    self._go.wait(0.1)
                self._paused.clear()
                continue
            port = self.port
            if port is None:
                self._reconnect()
                continue
            try:
                # read(1) returns at the first byte; then take what is buffered.
                # (read(4096) would wait out the timeout on a quiet line.)
                data = port.read(1)
                if data:
                    waiting = port.in_waiting
                    if waiting:
                        data += port.read(waiting)
            except (serial.SerialException, OSError, TypeError, AttributeError) as exc:
                self._lost(str(exc))
                continue
            if data:
                self._got_data = True
                self.last_data_at = time.monotonic()
                try:
                    self.on_data(data, time.time())
                except Exception:  # a view's bug must not stop the monitor
                    log.exception("serial data handler failed")

    def _lost(self, reason: str) -> None:
        with self._lock:
            port, self.port = self.port, None
        if port is not None:
            with contextlib.suppress(Exception):
                port.close()
        self.disconnects.append(time.monotonic())
        after = time.monotonic() - self._opened_at
        if (
            "://" in self.url
            and not self.url.startswith("sim://")
            and not self._got_data
            and after < NETWORK_BUSY_LATE_S
        ):
            # most likely a busy server whose close came after our open returned
            self.unavailable = (
                f"{self.url}: port busy? the server closed the connection {after:.1f} s "
                "after it opened, before any data (another client may have the port open)"
            )
            self._set_state("waiting", self.unavailable)
            return
        self.unavailable = f"{self.url}: port disappeared ({reason})"
        self._set_state("waiting", f"port disappeared ({reason}); waiting for the board")

    def expect_reenumeration(self, window_s: float = 3.0) -> None:
        """Our own reset may make the USB device vanish and come back: look
        for it often for a while, so little of the boot log is missed."""
        self._fast_until = time.monotonic() + window_s

    def _reconnect(self) -> None:
        interval = FAST_REOPEN_S if time.monotonic() < self._fast_until else REOPEN_INTERVAL_S
        if self._stop.wait(interval):
            return
        if not self._go.is_set() or not _present(self.info):
            return
        try:
            self._open_port()
        except RuntimeFailure as exc:
            self.unavailable = str(exc)  # e.g. busy: a deploy says so, not "not connected"

    def check_alive(self) -> bool:
        """Ask the port itself (not the reader's last view) whether it is
        still there; a dead port is recorded as a disconnect edge now."""
        port = self.port
        if port is None:
            return False
        try:
            port.in_waiting  # noqa: B018 - raises on a vanished device
        except (serial.SerialException, OSError, TypeError, AttributeError) as exc:
            self._lost(str(exc))
            return False
        return _present(self.info)

    # -- exclusive use by a deploy ----------------------------------------------
    @contextlib.contextmanager
    def exclusive(self, timeout: float = 5.0) -> Iterator[ExclusiveUse]:
        """Pause the reader and lend the open port (wrapped to count bytes),
        set up as esptool sets up a port it opens; ours are restored after.
        RuntimeFailure (one line: busy, gone, ...) when there is no port."""
        deadline = time.monotonic() + timeout
        while self.port is None:
            if time.monotonic() >= deadline:
                raise RuntimeFailure(self.unavailable or f"{self.url}: board not connected")
            time.sleep(0.02)
        self._go.clear()
        port = self.port
        if port is not None and self._thread is not None and self._thread.is_alive():
            _interrupt_read(port)  # the reader may sit in read() for READ_TIMEOUT_S
            self._paused.wait(timeout)
            _clear_interrupt(port)
        # the reader may have lost the port before it paused
        port = self.port
        if port is None:
            self._go.set()
            raise RuntimeFailure(self.unavailable or f"{self.url}: board not connected")
        use = ExclusiveUse(self, port)
        try:
            use.lend()
            yield use
        finally:
            use.resume()

    def resume(self) -> None:
        self._go.set()


def _interrupt_read(port: Any) -> None:
    cancel = getattr(port, "cancel_read", None)
    if callable(cancel):
        with contextlib.suppress(Exception):
            cancel()


def _clear_interrupt(port: Any) -> None:
    """A cancel that found no read in progress stays pending and would cut
    esptool's first read short: consume it, now that the reader is paused
    (pyserial's POSIX abort pipe; the virtual board's flag; Windows keeps none)."""
    fd = getattr(port, "pipe_abort_read_r", None)
    if isinstance(fd, int):
        with contextlib.suppress(OSError):
            os.read(fd, 1000)
    clear = getattr(port, "clear_cancel_read", None)
    if callable(clear):
        clear()


def _closed_at_once(port: Any) -> bool:
    """Whether a just-opened socket:// port's server closed it at once (a
    server that already has a client does that). Bytes already sent stay
    buffered for the reader; a silent board costs NETWORK_BUSY_WINDOW_S."""
    sock = getattr(port, "_socket", None)
    if sock is None:
        return False
    try:
        readable, _, _ = select.select([sock], [], [], NETWORK_BUSY_WINDOW_S)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except OSError:  # reset by the peer
        return True


# What esptool's ESPLoader sets on a port it opens itself; the reader's own
# settings (a 10 ms read timeout above all) would cut esptool's reads short.
_LENT_SETTINGS = ("baudrate", "timeout", "inter_byte_timeout", "write_timeout")


def _esptool_settings() -> dict[str, Any]:
    # esptool opens with no read timeout and sets one per command; its reads
    # outside a command (the stub's "OHAI", read_flash's data) then wait for
    # the bytes. Its default command timeout bounds them here instead, so a
    # board that died mid-deploy fails the deploy rather than hanging it.
    return {
        "baudrate": ESP_ROM_BAUD,
        "timeout": DEFAULT_TIMEOUT,
        "inter_byte_timeout": None,
        "write_timeout": DEFAULT_SERIAL_WRITE_TIMEOUT,
    }


def _apply(port: Any, settings: dict[str, Any]) -> None:
    for name, value in settings.items():
        if getattr(port, name) == value:
            continue  # a tty reconfigures on every set
        try:
            setattr(port, name, value)
        except NotImplementedError:
            # pyserial's rfc2217 has no write timeout (esptool does the same)
            setattr(port, name, None)


class ExclusiveUse:
    def __init__(self, conn: BoardConnection, port: Any) -> None:
        self.conn = conn
        self.port = CountingPort(port)
        self.resumed = False
        self._saved: dict[str, Any] | None = None

    def lend(self) -> None:
        """Give the port esptool's settings, remembering the reader's."""
        raw = self.port._port
        self._saved = {name: getattr(raw, name) for name in _LENT_SETTINGS}
        _apply(raw, _esptool_settings())

    def resume(self) -> None:
        """Give the port back to the reader with its settings (before a
        reset, so the first boot byte is read)."""
        if not self.resumed:
            self.resumed = True
            if self._saved is not None:
                try:
                    _apply(self.port._port, self._saved)
                except Exception as exc:  # a vanished port: the reader notices and says so
                    log.debug("restoring %s settings failed: %s", self.conn.url, exc)
            self.conn.resume()
