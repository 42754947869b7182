"""Helpers for tests that talk to virtual boards."""

from __future__ import annotations

import itertools
import re
import time

import serial

import fbuild_watch.sim as sim
from fbuild_watch.sim.board import VirtualBoard
from tests.fwkit import Build

_names = itertools.count()


def new_board(prefix: str = "t", **kwargs: object) -> VirtualBoard:
    """A fresh in-memory board with instant timing, registered for sim://."""
    kwargs.setdefault("timing", sim.INSTANT)
    board = VirtualBoard(f"{prefix}{next(_names)}", **kwargs)  # type: ignore[arg-type]
    return sim.add_board(board)


def preload(board: VirtualBoard, build: Build) -> None:
    """Put a build on the board's flash directly (as if flashed earlier)."""
    for off, f in (
        (0, build.bootloader_bin),
        (0x8000, build.partitions_bin),
        (0x10000, build.app_bin),
    ):
        data = f.read_bytes()
        board.flash.erase(off, len(data))
        board.flash.program(off, data)


def open_port(board: VirtualBoard, **kwargs: object) -> serial.SerialBase:
    kwargs.setdefault("baudrate", 115200)
    kwargs.setdefault("timeout", 0.05)
    return serial.serial_for_url(f"sim://{board.name}", **kwargs)


def read_until(port: serial.SerialBase, pattern: str | bytes, timeout: float = 5.0) -> bytes:
    """Read until `pattern` (regex) matches the accumulated bytes."""
    rx = re.compile(pattern.encode() if isinstance(pattern, str) else pattern, re.S)
    buf = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        buf += port.read(4096)
        if rx.search(buf):
            return buf
    raise AssertionError(
        f"pattern {rx.pattern!r} not seen in {timeout}s; got:\n{buf.decode(errors='replace')[-2000:]}"
    )
