"""`sim://NAME` ports for pyserial (and so for esptool, in-process).

Modem lines work as on a POSIX tty: pyserial's `dtr`/`rts` setters change
one line each (TIOCMBIS/TIOCMBIC), and `fileno()` is a real descriptor on
which `fcntl.ioctl` TIOCMGET/TIOCMSET/TIOCMBIS/TIOCMBIC read and set the
lines - what esptool's UnixTightReset (and so esp_rfc2217_server on Linux)
uses to move DTR and RTS together. There is no kernel tty behind the port,
so `fcntl.ioctl` is wrapped once per process: calls on a sim port's
descriptor are answered here, every other call goes to the real ioctl.
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import termios
import threading
import weakref
from typing import Any

import serial
from serial.serialutil import PortNotOpenError, SerialBase, SerialException

from fbuild_watch.sim.board import Disconnected, VirtualBoard
from fbuild_watch.sim.flash import FlashImageError, FlashInUse
from fbuild_watch.sim.registry import SimUrlError, board_for_url, release_if_unused

_MODEM_REQUESTS = frozenset(
    (termios.TIOCMGET, termios.TIOCMSET, termios.TIOCMBIS, termios.TIOCMBIC)
)
# fileno() -> its port; weak, so a port dropped unclosed frees its descriptor
_ports_by_fd: weakref.WeakValueDictionary[int, Serial] = weakref.WeakValueDictionary()
_ports_lock = threading.Lock()
_real_ioctl = fcntl.ioctl


def _ioctl(fd: Any, request: int, arg: Any = 0, mutate_flag: bool = True) -> Any:
    n = fd if isinstance(fd, int) else fd.fileno()
    with _ports_lock:
        port = _ports_by_fd.get(n)
    if port is None or request not in _MODEM_REQUESTS:
        return _real_ioctl(fd, request, arg, mutate_flag)
    return port._modem_ioctl(request, arg, mutate_flag)


def _install_ioctl() -> None:
    if getattr(fcntl.ioctl, "__module__", None) != __name__:
        setattr(fcntl, "ioctl", _ioctl)  # noqa: B010 - typeshed has no settable ioctl


_install_ioctl()


class Serial(SerialBase):
    """A serial port wired to a `VirtualBoard`'s UART and reset lines."""

    board: VirtualBoard | None = None
    _epoch = -1
    _cancel: threading.Event | None = None
    _fd: int | None = None
    _fd_finalizer: weakref.finalize[[int], Serial] | None = None
    _line_dtr = False  # the lines as the "driver" holds them (pyserial caches its own)
    _line_rts = False

    def open(self) -> None:
        if self.port is None:
            raise SerialException("Port must be configured before it can be used.")
        if self.is_open:
            raise SerialException("Port is already open.")
        try:
            board = board_for_url(self.port)
        except FlashInUse as exc:
            # one board per flash file: as a tty another program holds
            raise SerialException(
                errno.EBUSY,
                f"could not open port {self.port}: [Errno 16] Device or resource busy: "
                f"its flash {exc.path} is held by {exc.holder}",
            ) from None
        except (SimUrlError, FlashImageError) as exc:
            raise SerialException(f"could not open port {self.port}: {exc}") from None
        except OSError as exc:  # the flash file's directory or lock file
            raise SerialException(
                exc.errno, f"could not open port {self.port}: {exc.strerror}: {exc.filename}"
            ) from None
        try:
            self._epoch = board.open_port()
        except Disconnected:
            raise SerialException(
                errno.ENOENT,
                f"could not open port {self.port}: [Errno 2] No such file or directory",
            ) from None
        except BlockingIOError:
            raise SerialException(
                errno.EBUSY, f"could not open port {self.port}: [Errno 16] Device or resource busy"
            ) from None
        self.board = board
        self._cancel = threading.Event()
        self.is_open = True
        self._reconfigure_port()
        # opening a tty raises both lines as pyserial's cached states say
        self._line_dtr, self._line_rts = bool(self.dtr), bool(self.rts)
        self._set_lines()

    def close(self) -> None:
        if self.is_open and self.board is not None:
            self.board.close_port(self._epoch)
            release_if_unused(self.board)  # a closed device is free for the next process
        if self._fd_finalizer is not None:
            with _ports_lock:
                _ports_by_fd.pop(self._fd or -1, None)
            self._fd_finalizer()  # closes the descriptor
            self._fd = self._fd_finalizer = None
        self.is_open = False

    def from_url(self, url: str) -> str:
        return url

    def _reconfigure_port(self) -> None:
        if self.board is not None and self.is_open:
            self.board.set_host_baud(int(self.baudrate))

    def _board(self) -> VirtualBoard:
        if not self.is_open or self.board is None:
            raise PortNotOpenError()
        return self.board

    @property
    def in_waiting(self) -> int:
        try:
            return self._board().host_in_waiting(self._epoch)
        except Disconnected as exc:
            raise SerialException(str(exc)) from None

    def read(self, size: int = 1) -> bytes:
        board = self._board()
        out = bytearray()
        timeout = self.timeout
        try:
            while len(out) < size:
                chunk = board.host_read(self._epoch, size - len(out), timeout, self._cancel)
                if not chunk:
                    break
                out += chunk
                timeout = 0 if self.timeout == 0 else timeout
                if self.inter_byte_timeout is not None:
                    timeout = self.inter_byte_timeout
        except Disconnected:
            raise SerialException(
                "device reports readiness to read but returned no data "
                "(device disconnected or multiple access on port?)"
            ) from None
        return bytes(out)

    def cancel_read(self) -> None:
        """Like pyserial's POSIX port: a blocked read returns now; with no
        read in progress, the next one returns at once."""
        if self._cancel is not None and self.board is not None:
            self._cancel.set()
            self.board.wake_host_readers()

    def clear_cancel_read(self) -> None:
        """Forget a cancel no read has consumed (POSIX: drain the abort pipe)."""
        if self._cancel is not None:
            self._cancel.clear()

    def write(self, data: Any) -> int:
        board = self._board()
        payload = bytes(data)
        try:
            board.host_write(self._epoch, payload)
        except Disconnected:
            raise SerialException(errno.EIO, "write failed: [Errno 5] Input/output error") from None
        return len(payload)

    def flush(self) -> None:
        self._board()

    def reset_input_buffer(self) -> None:
        try:
            self._board().host_reset_input(self._epoch)
        except Disconnected as exc:
            raise SerialException(str(exc)) from None

    def reset_output_buffer(self) -> None:
        self._board()

    def _set_lines(self) -> None:
        if not self.is_open or self.board is None:
            return
        try:
            self.board.set_lines(self._epoch, self._line_dtr, self._line_rts)
        except Disconnected:
            raise OSError(errno.EIO, "Input/output error") from None

    def _update_dtr_state(self) -> None:
        self._line_dtr = bool(self.dtr)  # TIOCMBIS/BIC: this line only
        self._set_lines()

    def _update_rts_state(self) -> None:
        self._line_rts = bool(self.rts)
        self._set_lines()

    def _modem_ioctl(self, request: int, arg: Any, mutate_flag: bool) -> Any:
        """TIOCMGET/TIOCMSET/TIOCMBIS/TIOCMBIC, as the tty layer answers them."""
        if isinstance(arg, int):
            raise OSError(errno.EFAULT, "Bad address")  # the kernel reads a pointer
        buf = bytes(arg)
        if len(buf) < 4:
            raise OSError(errno.EFAULT, "Bad address")
        if not self.is_open:
            raise OSError(errno.EBADF, "Bad file descriptor")
        bits = (termios.TIOCM_DTR if self._line_dtr else 0) | (
            termios.TIOCM_RTS if self._line_rts else 0
        )
        if request == termios.TIOCMGET:
            out = struct.pack("I", bits) + buf[4:]
            if isinstance(arg, (bytearray, memoryview)) and mutate_flag:
                memoryview(arg)[:4] = out[:4]
                return 0
            return out
        (value,) = struct.unpack_from("I", buf)
        if request == termios.TIOCMSET:
            bits = value
        elif request == termios.TIOCMBIS:
            bits |= value
        else:
            bits &= ~value
        # one call moves both lines together: the board sees no in-between state
        self._line_dtr = bool(bits & termios.TIOCM_DTR)
        self._line_rts = bool(bits & termios.TIOCM_RTS)
        self._set_lines()
        return 0 if isinstance(arg, (bytearray, memoryview)) and mutate_flag else buf

    def _update_break_state(self) -> None:
        pass

    @property
    def cts(self) -> bool:
        return False

    @property
    def dsr(self) -> bool:
        return False

    @property
    def ri(self) -> bool:
        return False

    @property
    def cd(self) -> bool:
        return False

    def fileno(self) -> int:
        """A descriptor for the modem-line ioctls (not a tty: isatty() is False,
        and reading it is not reading the port)."""
        if not self.is_open:
            raise PortNotOpenError()
        if self._fd is None:  # made on first use: most ports never need one
            fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            with _ports_lock:
                _ports_by_fd[fd] = self
            self._fd = fd
            self._fd_finalizer = weakref.finalize(self, os.close, fd)
        return self._fd


# pyserial looks the class up under this name
__all__ = ["Serial"]
_ = serial
