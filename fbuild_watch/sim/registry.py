"""Virtual boards by name, per process: `sim://demo` twice is one board.

The registry also plays the part of USB enumeration for sim boards: which
boards are present, so port discovery and reconnect logic can treat them
like any other port.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import re
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from platformdirs import user_cache_dir

from fbuild_watch.sim.board import VirtualBoard
from fbuild_watch.sim.flash import DEFAULT_SIZE, SIZES, default_jedec_id
from fbuild_watch.sim.regs import ChipIdentity
from fbuild_watch.sim.timing import TIMINGS

_boards: dict[str, VirtualBoard] = {}
_from_url: weakref.WeakSet[VirtualBoard] = weakref.WeakSet()  # made by board_for_url
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
    flash_size: int = DEFAULT_SIZE
    flash_id: int | None = None  # JEDEC id; None: a GigaDevice part of flash_size


_NAME = re.compile(r"[A-Za-z0-9_.-]+")
ESPRESSIF_OUI = bytes.fromhex("58cf79")
_OPTIONS = ("flash", "timing", "usb", "boot", "mac", "flash_size", "flash_id")


def check_name(name: str) -> str:
    """A board name is also its flash file's name: one path component."""
    if not _NAME.fullmatch(name) or name in (".", ".."):
        raise SimUrlError(
            f"board name must be letters, digits, '_', '.' or '-' (not '.' or '..'), got {name!r}"
        )
    return name


def mac_for_name(name: str) -> bytes:
    """A stable MAC per board name, in Espressif's OUI: two boards never
    share one (and so never share a verified-layout cache entry)."""
    return ESPRESSIF_OUI + hashlib.sha256(name.encode()).digest()[:3]


def parse_mac(text: str) -> bytes:
    try:
        mac = bytes.fromhex(text.replace(":", ""))
    except ValueError:
        mac = b""
    if len(mac) != 6:
        raise SimUrlError(f"mac must be 6 bytes, e.g. 58:cf:79:00:00:01, got {text!r}")
    return mac


def parse_flash_size(text: str) -> int:
    sizes = {f"{n >> 20}MB": n for n in SIZES}
    size = sizes.get(text.strip().upper())
    if size is None:
        raise SimUrlError(f"flash_size must be one of {', '.join(sizes)}, got {text!r}")
    return size


def parse_flash_id(text: str) -> int:
    """JEDEC id as RDID returns it: manufacturer, memory type, capacity (hex)."""
    digits = text.strip().lower().removeprefix("0x")
    if not re.fullmatch(r"[0-9a-f]{6}", digits):
        raise SimUrlError(f"flash_id must be 3 bytes of hex (JEDEC id), e.g. c84016, got {text!r}")
    return int(digits, 16)


def size_for_flash_id(jedec_id: int) -> int:
    """The size a JEDEC id's capacity byte announces (esptool reads it so)."""
    size = 1 << (jedec_id & 0xFF) if (jedec_id & 0xFF) < 32 else 0
    if size not in SIZES:
        raise SimUrlError(
            f"flash_id {jedec_id:06x}: capacity byte 0x{jedec_id & 0xFF:02x} is not a supported "
            "size (2, 4, 8 or 16 MB): give flash_size= too"
        )
    return size


def flash_part(size_text: str | None, id_text: str | None) -> tuple[int, int | None]:
    """(size, JEDEC id or None) from `flash_size=` / `flash_id=`; the size
    follows the id's capacity byte when only the id is given."""
    flash_id = parse_flash_id(id_text) if id_text else None
    if size_text:
        return parse_flash_size(size_text), flash_id
    if flash_id is not None:
        return size_for_flash_id(flash_id), flash_id
    return DEFAULT_SIZE, None


def default_flash_path(name: str) -> Path:
    base = Path(os.environ.get("FBUILD_SIM_DIR") or Path(user_cache_dir("fbuild-watch")) / "sim")
    return base / f"{check_name(name)}.flash"


def parse_url(url: str) -> SimOptions:
    """sim://NAME[?flash=PATH|flash=&timing=instant|realistic&usb=jtag&boot=download&mac=..
    &flash_size=4MB&flash_id=c84016]"""
    parts = urlparse(url)
    if parts.scheme != "sim" or not parts.netloc:
        raise SimUrlError(f"expected sim://NAME[?options], got {url!r}")
    name = parts.netloc
    if parts.path or parts.params or parts.fragment:
        name = url.split("://", 1)[1].split("?", 1)[0]  # the whole would-be name, for the error
    check_name(name)
    try:
        q = {
            k: v[-1]
            for k, v in parse_qs(
                parts.query, keep_blank_values=True, strict_parsing=bool(parts.query)
            ).items()
        }
    except ValueError:
        raise SimUrlError(f"bad options in {url!r}") from None
    unknown = set(q) - set(_OPTIONS)
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
    mac = parse_mac(q["mac"]) if "mac" in q else None
    flash_size, flash_id = flash_part(q.get("flash_size"), q.get("flash_id"))
    return SimOptions(name, flash, timing, usb == "jtag", start, mac, flash_size, flash_id)


def make_board(opts: SimOptions) -> VirtualBoard:
    """A new board as `opts` describe it (not registered). Raises FlashInUse
    when another board has its flash file."""
    return VirtualBoard(
        opts.name,
        flash_path=opts.flash,
        timing=TIMINGS[opts.timing],
        identity=ChipIdentity(mac=opts.mac or mac_for_name(opts.name)),
        usb_jtag=opts.usb_jtag,
        start=opts.start,
        flash_size=opts.flash_size,
        flash_id=opts.flash_id if opts.flash_id is not None else default_jedec_id(opts.flash_size),
    )


def board_for_url(url: str) -> VirtualBoard:
    """The board named in the URL, created with its options on first use."""
    opts = parse_url(url)
    with _lock:
        board = _boards.get(opts.name)
        if board is None:
            board = make_board(opts)
            _boards[opts.name] = board
            _from_url.add(board)
        return board


def release_if_unused(board: VirtualBoard) -> None:
    """Its last port was closed: a board opened by URL with a flash file is
    powered off (flash saved, what the chip was doing handed on in
    FLASH.chip) and its flash file freed, so the next process, an esptool
    run or `fbuild sim serve`, can open it, as a closed serial device can
    be. A board that is away (unplugged, re-enumerating), a memory-only one
    (process-private) or one built in code stays as it is."""
    with _lock:
        if (
            board not in _from_url
            or board.flash.path is None
            or not board.present
            or board.port_open
            or _boards.get(board.name) is not board
        ):
            return
        del _boards[board.name]
        _from_url.discard(board)
    board.close()


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
