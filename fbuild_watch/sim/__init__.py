"""The virtual ESP32-C3 board.

Importing this package registers the `sim://NAME` URL scheme with pyserial,
so `serial.serial_for_url("sim://demo")` and esptool open a virtual board.
"""

from __future__ import annotations

import serial

from fbuild_watch.sim.board import BoardState, VirtualBoard
from fbuild_watch.sim.registry import add_board, board_for_url, get_board, remove_board
from fbuild_watch.sim.timing import INSTANT, REALISTIC, Timing

_HANDLERS = "fbuild_watch.sim.urlhandler"


def register() -> None:
    if _HANDLERS not in serial.protocol_handler_packages:
        serial.protocol_handler_packages.append(_HANDLERS)


register()
# sim:// as a port scheme of the deploy side (presence, USB serial, USB-JTAG)
from fbuild_watch.sim import port_scheme as _port_scheme  # noqa: E402, F401

__all__ = [
    "INSTANT",
    "REALISTIC",
    "BoardState",
    "Timing",
    "VirtualBoard",
    "add_board",
    "board_for_url",
    "get_board",
    "register",
    "remove_board",
]
