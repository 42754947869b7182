"""Virtual boards by name, per process: `sim://demo` twice is one board.

The registry also plays the part of USB enumeration for sim boards: which
boards are present, so port discovery and reconnect logic can treat them
like any other port.
"""

from __future__ import annotations

import atexit
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from platformdirs import user_cache_dir

from fbuild_watch.sim.board import VirtualBoard
from fbuild_watch.sim.regs import ChipIdentity
from fbuild_watch.sim.timing import TIMINGS

_boards: dict[str, VirtualBoard] = {}
_lock = threading.Lock()


class SimUrlError(ValueError):
    pass


@dataclass(frozen=True)
class SimOptions:
    name: str
    flash: Path | None
    timing: str
    usb_jtag: bool
    start: str
    mac: bytes | None


def default_flash_path(name: str) -> Path:
    base = Path(os.environ.get("FBUILD_SIM_DIR") or Path(user_cache_dir("fbuild-watch")) / "sim")
    return base / f"{name}.flash"


def parse_url(url: str) -> SimOptions:
    """sim://NAME[?flash=PATH|flash=&timing=instant|realistic&usb=jtag&boot=download&mac=..]"""
    parts = urlparse(url)
    if parts.scheme != "sim" or not parts.netloc:
        raise SimUrlError(f"expected sim://NAME[?options], got {url!r}")
    name = parts.netloc
    try:
        q = {
            k: v[-1]
            for k, v in parse_qs(
                parts.query, keep_blank_values=True, strict_parsing=bool(parts.query)
            ).items()
        }
    except ValueError:
        raise SimUrlError(f"bad options in {url!r}") from None
    unknown = set(q) - {"flash", "timing", "usb", "boot", "mac"}
    if unknown:
        raise SimUrlError(f"unknown option(s) {', '.join(sorted(unknown))} in {url!r}")
    flash: Path | None = default_flash_path(name)
    if "flash" in q:
        flash = Path(q["flash"]) if q["flash"] else None  # "?flash=": memory only
    timing = q.get("timing", "realistic")
    if timing not in TIMINGS:
        raise SimUrlError(f"timing must be one of {', '.join(TIMINGS)}, got {timing!r}")
    usb = q.get("usb", "uart")
    if usb not in ("uart", "jtag"):
        raise SimUrlError(f"usb must be 'uart' or 'jtag', got {usb!r}")
    start = q.get("boot", "app")
    if start not in ("app", "download"):
        raise SimUrlError(f"boot must be 'app' or 'download', got {start!r}")
    mac = None
    if "mac" in q:
        try:
            mac = bytes.fromhex(q["mac"].replace(":", ""))
        except ValueError:
            mac = b""
        if len(mac) != 6:
            raise SimUrlError(f"mac must be 6 bytes, e.g. 58:cf:79:00:00:01, got {q['mac']!r}")
    return SimOptions(name, flash, timing, usb == "jtag", start, mac)


def board_for_url(url: str) -> VirtualBoard:
    """The board named in the URL, created with its options on first use."""
    opts = parse_url(url)
    with _lock:
        board = _boards.get(opts.name)
        if board is None:
            identity = ChipIdentity(mac=opts.mac) if opts.mac else None
            board = VirtualBoard(
                opts.name,
                flash_path=opts.flash,
                timing=TIMINGS[opts.timing],
                identity=identity,
                usb_jtag=opts.usb_jtag,
                start=opts.start,
            )
            _boards[opts.name] = board
        return board


def add_board(board: VirtualBoard) -> VirtualBoard:
    """Register a board built in code (tests, benchmarks)."""
    with _lock:
        old = _boards.get(board.name)
        if old is not None and old is not board:
            raise SimUrlError(f"a board named {board.name!r} already exists")
        _boards[board.name] = board
    return board


def remove_board(name: str) -> None:
    with _lock:
        board = _boards.pop(name, None)
    if board is not None:
        board.close()


def get_board(name: str) -> VirtualBoard | None:
    with _lock:
        return _boards.get(name)


@atexit.register
def _close_all() -> None:
    with _lock:
        boards = list(_boards.values())
        _boards.clear()
    for b in boards:
        b.close()
