"""Finding the board's serial port: --port, ESPPORT, or the one likely ESP."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from serial.tools import list_ports

from fbuild_watch.errors import RuntimeFailure

# USB VID:PID of Espressif's USB-Serial/JTAG and the usual devkit bridges.
KNOWN_BRIDGES: dict[tuple[int, int], str] = {
    (0x303A, 0x1001): "Espressif USB-Serial/JTAG",
    (0x303A, 0x0002): "Espressif USB-OTG (CDC)",
    (0x10C4, 0xEA60): "Silicon Labs CP210x",
    (0x1A86, 0x7523): "WCH CH340",
    (0x1A86, 0x55D4): "WCH CH9102",
    (0x1A86, 0x55D3): "WCH CH343",
    (0x0403, 0x6001): "FTDI FT232R",
    (0x0403, 0x6010): "FTDI FT2232",
    (0x0403, 0x6014): "FTDI FT232H",
    (0x0403, 0x6015): "FTDI FT-X",
}
USB_JTAG = (0x303A, 0x1001)


@dataclass(frozen=True)
class PortScheme:
    """What the deploy side asks of a URL scheme that is not a plain device
    or a network port. Plug-ins (the virtual board) register one at import,
    as they register their URL handler with pyserial, so this package never
    imports them."""

    prefix: str  # "sim://"
    # Is the device there (the USB bus's answer for a real port)?
    present: Callable[[str], bool]
    # The USB serial number the OS would report, if any.
    usb_serial: Callable[[str], str | None] = lambda _url: None
    # Does it sit behind Espressif's USB-Serial/JTAG (its own reset sequence)?
    usb_jtag: Callable[[str], bool] = lambda _url: False


_SCHEMES: dict[str, PortScheme] = {}


def register_scheme(scheme: PortScheme) -> None:
    _SCHEMES[scheme.prefix] = scheme


def scheme_for(url: str) -> PortScheme | None:
    if "://" not in url:
        return None
    return _SCHEMES.get(url.split("://", 1)[0] + "://")


def is_network(url: str) -> bool:
    """A pyserial network URL (socket://, rfc2217://): the far end can only
    be known by opening it."""
    return "://" in url and scheme_for(url) is None


def pyserial_url(url: str) -> str:
    """What pyserial opens for `url`. An RFC 2217 URL gets `ign_set_control`
    unless it has it: esptool's `esp_rfc2217_server` (pyserial's
    PortManager) never confirms SET_CONTROL, so pyserial would give up after
    3 s ("timeout while waiting for option 'control'"); the option only
    skips waiting for that confirmation, which no server needs."""
    if url.startswith("rfc2217://") and "ign_set_control" not in url:
        return url + ("&" if "?" in url else "?") + "ign_set_control"
    return url


def present(info: PortInfo) -> bool:
    scheme = scheme_for(info.url)
    if scheme is not None:
        return scheme.present(info.url)
    if "://" in info.url:
        return True  # network ports: only an open attempt can tell
    return Path(info.url).exists()


def usb_serial(info: PortInfo) -> str | None:
    scheme = scheme_for(info.url)
    return scheme.usb_serial(info.url) if scheme is not None else info.serial_number


@dataclass(frozen=True)
class PortInfo:
    url: str  # what to open: device path or pyserial URL
    description: str = ""
    vid: int | None = None
    pid: int | None = None
    serial_number: str | None = None
    location: str | None = None

    @property
    def usb_jtag(self) -> bool:
        scheme = scheme_for(self.url)
        if scheme is not None:
            return scheme.usb_jtag(self.url)
        return (self.vid, self.pid) == USB_JTAG


def describe(url: str) -> PortInfo:
    """USB facts about a port, where the OS has them."""
    if "://" in url:
        return PortInfo(url, description=url.split("://", 1)[0] + " port")
    real = os.path.realpath(url)
    for p in list_ports.comports():
        if p.device in (url, real):
            return PortInfo(url, p.description or "", p.vid, p.pid, p.serial_number, p.location)
    return PortInfo(url)


def likely_esp_ports() -> list[PortInfo]:
    out = []
    for p in list_ports.comports():
        if p.vid is not None and (p.vid, p.pid) in KNOWN_BRIDGES:
            out.append(PortInfo(p.device, KNOWN_BRIDGES[(p.vid, p.pid)], p.vid, p.pid,
                                p.serial_number, p.location))  # fmt: skip
    return out


def board_ports(requested: list[str] | None, configured: Sequence[str] = ()) -> list[PortInfo]:
    """--port values, else [board] port from fbuild.toml, else resolve_ports' search."""
    return resolve_ports(list(requested or configured) or None)


def resolve_ports(requested: list[str] | None) -> list[PortInfo]:
    """--port values, else ESPPORT (like ESP-IDF), else exactly one likely ESP."""
    if requested:
        return [describe(p) for p in requested]
    env = os.environ.get("ESPPORT")
    if env:
        return [describe(env)]
    found = likely_esp_ports()
    if len(found) == 1:
        return found
    if not found:
        raise RuntimeFailure(
            "no ESP board found: pass --port (a device, sim://NAME for the virtual board, "
            "socket://HOST:PORT or rfc2217://HOST:PORT) or set ESPPORT"
        )
    listing = ", ".join(f"{p.url} ({p.description})" for p in found)
    raise RuntimeFailure(f"several possible ESP ports: {listing}; choose one with --port")
