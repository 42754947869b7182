"""The virtual board as a port scheme of the deploy side: presence (the USB
bus's answer for a real port), USB serial number and USB-Serial/JTAG.

Registered when `fbuild_watch.sim` is imported, so `deploy/` never imports
the virtual board (it is a plug-in; the `sim` extra may not be installed).
"""

from __future__ import annotations

from fbuild_watch.deploy.ports import PortScheme, register_scheme
from fbuild_watch.sim.board import VirtualBoard
from fbuild_watch.sim.registry import SimUrlError, get_board, parse_url


def _board(url: str) -> VirtualBoard | None:
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


def sim_usb_jtag(url: str) -> bool:
    return "usb=jtag" in url


SIM_SCHEME = PortScheme("sim://", sim_present, sim_usb_serial, sim_usb_jtag)
register_scheme(SIM_SCHEME)
