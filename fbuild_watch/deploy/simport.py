"""What the deploy side asks of `sim://` ports: presence (the USB bus's
answer for a real port) and the USB serial number.

Imported lazily: the virtual board needs the `sim` extra (unicorn), which a
user with real hardware only may not have installed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fbuild_watch.sim.board import VirtualBoard


def _board(url: str) -> VirtualBoard | None:
    from fbuild_watch.sim.registry import SimUrlError, get_board, parse_url

    try:
        return get_board(parse_url(url).name)
    except SimUrlError:
        return None  # opening the port says what is wrong with the URL


def sim_present(url: str) -> bool:
    board = _board(url)
    return board is None or board.present  # not created yet: opening creates it


def sim_usb_serial(url: str) -> str | None:
    board = _board(url)
    if board is None:
        return None
    # USB-Serial/JTAG reports the chip MAC as its serial number; a bridge chip
    # has its own serial, independent of the ESP behind it.
    return board.identity.mac.hex(":") if board.usb_jtag else f"SIMBRIDGE-{board.name}"


def register_sim() -> None:
    """Make `sim://` URLs openable in this process, when the sim extra is installed."""
    try:
        from fbuild_watch.sim import register
    except ImportError:  # no unicorn: real ports only
        return
    register()
