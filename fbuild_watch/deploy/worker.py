"""One thread owns each board's serial port for the whole session.

The `BoardWorker` thread reads the port (the monitor) and, between reads,
runs the jobs other threads give it: a deploy, a connect ahead, a reset, a
write from the console. A job lends the port to esptool (`lend()`) on the
same thread, so there is no hand-over: no reader to pause, no read to
cancel. A deploy resets the board at its end and reads on, so the boot log
is read from its first byte. When the port disappears (unplug, USB
re-enumeration) the worker says so, keeps trying, and re-attaches to the
same port when it comes back.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import select
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any, TypeVar

try:  # FIONREAD on a raw TCP port's socket (not on Windows)
    import fcntl
    import termios
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

import serial
from esptool.loader import DEFAULT_SERIAL_WRITE_TIMEOUT, DEFAULT_TIMEOUT, ESP_ROM_BAUD

from fbuild_watch.deploy.ports import PortInfo, is_network, present, pyserial_url
from fbuild_watch.deploy.rfc2217 import serial_for_url
from fbuild_watch.errors import RuntimeFailure

log = logging.getLogger(__name__)

T = TypeVar("T")

REOPEN_INTERVAL_S = 0.25
FAST_REOPEN_S = 0.01  # right after our own reset a USB re-enumeration is expected
# The reader's read timeout: how long a job given to the worker can wait for
# the read in progress to end (at most this; 5 ms on average).
READ_TIMEOUT_S = 0.01
# A TCP serial server that already has a client accepts and closes a second
# one (`fbuild sim serve`, ser2net); a close this soon after connecting, before
# any byte, means "busy". Waited only on socket:// opens with a silent board.
NETWORK_BUSY_WINDOW_S = 0.1
# A network connection ending this soon after it opened, before any byte
# arrived, was refused by a busy server (the close came after the window).
NETWORK_BUSY_LATE_S = 2.0
# How long a job waits for a port that is away (e.g. re-enumerating after our
# own reset) before it fails with the reason.
PORT_WAIT_S = 5.0

_WAKE = object()  # put on the job queue to make a waiting worker look again


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


class BoardWorker:
    def __init__(
        self,
        info: PortInfo,
        *,
        baud: int = 115200,
        on_data: Callable[[bytes, float], None] | None = None,
        on_state: Callable[[str, str], None] | None = None,
        on_pause: Callable[[], None] | None = None,
    ) -> None:
        """`on_data(bytes, time)` and `on_pause()` (a job is about to lend
        the port to esptool) run on the worker thread; `on_state` on
        whichever thread saw the change."""
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
        self._lock = threading.Lock()  # self.port: the worker vs close()/check_alive()
        self._lent = False  # esptool has the port (a job, or a board held in its loader)
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return self.info.url

    # -- lifecycle --------------------------------------------------------------
    def open(self, *, wait: bool = False) -> None:
        """Open now and start the worker. If the port cannot be opened: raise
        RuntimeFailure with the reason, or with `wait`, keep trying in the
        background (state "waiting") until the board appears."""
        self._stop.clear()
        try:
            self._open_port()
        except RuntimeFailure as exc:
            if not wait:
                raise
            self.unavailable = str(exc)
            self._set_state("waiting", str(exc))
        # named for its role (reader-, or esptool- while a job has the port
        # lent): what a trace or the virtual board's read log shows
        self._thread = threading.Thread(target=self._run, name=f"reader-{self.url}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the worker and close the port. From another thread while a
        job runs, the job fails at its next read or write (an abort)."""
        self._stop.set()
        self._jobs.put(_WAKE)
        with self._lock:
            port, self.port = self.port, None
        if port is not None:
            with contextlib.suppress(Exception):
                port.close()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2)
        self._fail_queued()
        self._set_state("closed", "")

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._stop.is_set()

    # -- jobs ---------------------------------------------------------------------
    def submit(self, job: Callable[[], T]) -> Future[T]:
        """Run `job` on the worker thread (between two reads) and return its
        future; `asyncio.wrap_future` awaits it. On the worker thread itself,
        or with no worker running (nothing else reads the port), the job
        runs at once on the calling thread."""
        fut: Future[T] = Future()
        if threading.current_thread() is self._thread or not self.running:
            _run_job(job, fut)
        else:
            self._jobs.put((job, fut))
            if not self.running:  # closed meanwhile: nobody will run it
                self._fail_queued()
        return fut

    def call(self, job: Callable[[], T]) -> T:
        """`submit` and wait for the result (from any thread but asyncio's)."""
        return self.submit(job).result()

    def write(self, data: bytes) -> Future[None]:
        """Send bytes to the app (the console), in order with the jobs."""

        def send() -> None:
            port = self.port
            if port is None or self._lent:
                raise RuntimeFailure(self.unavailable or f"{self.url}: board not connected")
            port.write(data)

        return self.submit(send)

    def _fail_queued(self) -> None:
        while True:
            try:
                item = self._jobs.get_nowait()
            except queue.Empty:
                return
            if item is not _WAKE:
                _job, fut = item
                if fut.set_running_or_notify_cancel():
                    fut.set_exception(RuntimeFailure(f"{self.url}: port closed"))

    # -- the worker thread --------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            if self._lent or self.port is None:
                # held in its loader, or away: wait for a job (or the next
                # reopen attempt), not for serial data
                timeout = None if self._lent else self._reopen_interval()
                if self._run_next(timeout):
                    continue
                if self.port is None and not self._lent and not self._stop.is_set():
                    self._try_reopen()
                continue
            if self._run_next(0):
                continue
            self._read_once()

    def _run_next(self, timeout: float | None) -> bool:
        """Run one queued job; wait up to `timeout` (None: until one comes)."""
        try:
            item = self._jobs.get(block=timeout != 0, timeout=timeout or None)
        except queue.Empty:
            return False
        if item is _WAKE:
            return False
        job, fut = item
        _run_job(job, fut)
        return True

    def _read_once(self) -> bool:
        """One read of the port; True if it brought data."""
        port = self.port
        if port is None:
            return False
        try:
            # read(1) returns at the first byte; then take what is buffered.
            # (read(4096) would wait out the timeout on a quiet line.)
            data = port.read(1)
            if data:
                waiting = _waiting(port)
                if waiting:
                    data += port.read(waiting)
        except (serial.SerialException, OSError, TypeError, AttributeError) as exc:
            if not self._stop.is_set():
                self._lost(str(exc))
            return False
        if not data:
            return False
        self._got_data = True
        self.last_data_at = time.monotonic()
        try:
            self.on_data(data, time.time())
        except Exception:  # a view's bug must not stop the monitor
            log.exception("serial data handler failed")
        return True

    def read_until_data(self, timeout: float) -> float | None:
        """On the worker thread, after a reset: read (and hand on) until the
        first byte arrives; its monotonic time, or None after `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self._stop.is_set():
            if self.port is None:
                self._try_reopen(deadline - time.monotonic())
            elif self._read_once():
                return self.last_data_at
        return None

    # -- opening, losing, reopening ----------------------------------------------
    def _open_port(self) -> None:
        try:
            port = serial_for_url(  # rfc2217://: our client (deploy/rfc2217.py)
                pyserial_url(self.url),
                baudrate=self.baud,
                timeout=READ_TIMEOUT_S,
                exclusive=True,
            )
            port.open()
        except (serial.SerialException, OSError, ValueError) as exc:
            raise RuntimeFailure(self._open_error(str(exc))) from None
        if self.url.startswith("socket://") and _closed_at_once(port):
            with contextlib.suppress(Exception):
                port.close()
            raise RuntimeFailure(self._busy_message())
        with self._lock:
            if self._stop.is_set():
                port.close()  # closed meanwhile
                return
            self.port = port
            self._opened_at = time.monotonic()
            self._got_data = False
        self.unavailable = ""
        self._set_state("connected", "")

    def _busy_message(self) -> str:
        if is_network(self.url):
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

    def _set_state(self, state: str, message: str) -> None:
        if state != self.state:
            self.state = state
            self.on_state(state, message)

    def _lost(self, reason: str) -> None:
        with self._lock:
            port, self.port = self.port, None
        if port is not None:
            with contextlib.suppress(Exception):
                port.close()
        self.disconnects.append(time.monotonic())
        after = time.monotonic() - self._opened_at
        if is_network(self.url) and not self._got_data and after < NETWORK_BUSY_LATE_S:
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

    def _reopen_interval(self) -> float:
        return FAST_REOPEN_S if time.monotonic() < self._fast_until else REOPEN_INTERVAL_S

    def _try_reopen(self, wait: float = 0.0) -> None:
        if wait > 0 and self._stop.wait(min(wait, self._reopen_interval())):
            return
        if not present(self.info):
            return
        try:
            self._open_port()
        except RuntimeFailure as exc:
            self.unavailable = str(exc)  # e.g. busy: a deploy says so, not "not connected"

    def check_alive(self) -> bool:
        """Ask the port itself (not the worker's last view) whether it is
        still there; a dead port is recorded as a disconnect edge now."""
        port = self.port
        if port is None:
            return False
        try:
            port.in_waiting  # noqa: B018 - raises on a vanished device
        except (serial.SerialException, OSError, TypeError, AttributeError) as exc:
            self._lost(str(exc))
            return False
        return present(self.info)

    # -- lending the port to esptool (on the worker thread) -----------------------
    @contextlib.contextmanager
    def lend(self, timeout: float = PORT_WAIT_S) -> Iterator[LentPort]:
        """The open port for esptool, wrapped to count bytes and set up as
        esptool sets up a port it opens; ours are restored when it is given
        back (`LentPort.give_back`, at the latest when the block ends).
        Called by a job: the worker does not read meanwhile. A port that is
        away is waited for up to `timeout`; then RuntimeFailure (one line:
        busy, gone, ...)."""
        if self.running and threading.current_thread() is not self._thread:
            raise RuntimeError("lend() is for jobs: use submit() or call()")
        deadline = time.monotonic() + timeout
        while self.port is None:
            left = deadline - time.monotonic()
            if left <= 0 or self._stop.is_set():
                raise RuntimeFailure(self.unavailable or f"{self.url}: board not connected")
            self._try_reopen(left)
        try:
            self.on_pause()
        except Exception:  # a view's bug must not stop a deploy
            log.exception("serial pause handler failed")
        lent = LentPort(self, self.port)
        self._lent = True
        threading.current_thread().name = f"esptool-{self.url}"
        try:
            lent.take()
            yield lent
        finally:
            lent.give_back()


def _run_job(job: Callable[[], T], fut: Future[T]) -> None:
    if not fut.set_running_or_notify_cancel():
        return
    try:
        fut.set_result(job())
    except BaseException as exc:  # handed to whoever waits for it
        fut.set_exception(exc)


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


class LentPort:
    """The port while esptool has it."""

    def __init__(self, worker: BoardWorker, port: Any) -> None:
        self.worker = worker
        self.port = CountingPort(port)
        self.given_back = False
        self._saved: dict[str, Any] | None = None

    def take(self) -> None:
        """Give the port esptool's settings, remembering the reader's."""
        raw = self.port._port
        self._saved = {name: getattr(raw, name) for name in _LENT_SETTINGS}
        _apply(raw, _esptool_settings())

    def give_back(self) -> None:
        """The reader's settings back; the worker reads again after this job
        (a reset just before returning is read from its first byte)."""
        if self.given_back:
            return
        self.given_back = True
        if self._saved is not None:
            try:
                _apply(self.port._port, self._saved)
            except Exception as exc:  # a vanished port: the worker notices and says so
                log.debug("restoring %s settings failed: %s", self.worker.url, exc)
        self.worker._lent = False
        threading.current_thread().name = f"reader-{self.worker.url}"


def _waiting(port: Any) -> int:
    """Bytes ready to read. pyserial's raw `socket://` says 0 or 1 (it only
    asks select), which made the reader take 2 bytes a read and fall seconds
    behind a 2 Mbaud flood: ask the socket itself (FIONREAD)."""
    if type(port).__module__ == "serial.urlhandler.protocol_socket" and fcntl is not None:
        sock = getattr(port, "_socket", None)
        if sock is not None:
            with contextlib.suppress(OSError, ValueError):
                got = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
                return int.from_bytes(got, sys.byteorder)
    return int(port.in_waiting)
