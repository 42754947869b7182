"""`sim://NAME` ports for pyserial (and so for esptool, in-process)."""

from __future__ import annotations

import errno
import threading
from typing import Any

import serial
from serial.serialutil import PortNotOpenError, SerialBase, SerialException

from fbuild_watch.sim.board import Disconnected, VirtualBoard
from fbuild_watch.sim.registry import SimUrlError, board_for_url


class Serial(SerialBase):
    """A serial port wired to a `VirtualBoard`'s UART and reset lines."""

    board: VirtualBoard | None = None
    _epoch = -1
    _cancel: threading.Event | None = None

    def open(self) -> None:
        if self.port is None:
            raise SerialException("Port must be configured before it can be used.")
        if self.is_open:
            raise SerialException("Port is already open.")
        try:
            board = board_for_url(self.port)
        except SimUrlError as exc:
            raise SerialException(f"could not open port {self.port}: {exc}") from None
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
        self._update_dtr_state()

    def close(self) -> None:
        if self.is_open and self.board is not None:
            self.board.close_port(self._epoch)
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
            self.board.set_lines(self._epoch, bool(self.dtr), bool(self.rts))
        except Disconnected:
            raise OSError(errno.EIO, "Input/output error") from None

    def _update_dtr_state(self) -> None:
        self._set_lines()

    def _update_rts_state(self) -> None:
        self._set_lines()

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
        # No kernel tty behind this port: modem-line ioctls are impossible,
        # which is what esptool sees on a pty (it then uses its classic reset).
        raise OSError(errno.ENOTTY, "Inappropriate ioctl for device")


# pyserial looks the class up under this name
__all__ = ["Serial"]
_ = serial
