"""pyserial's RFC 2217 client without its fixed waits.

Measured over a relay (BENCHMARKS.md, "Remote boards"), they were ~3 s of
the ~4.5 s an edit took on a remote board, whatever the round trip:

* every read/write timeout change renegotiated baud, size, parity and stop
  bits and slept in 50 ms steps until the server agreed (esptool changes
  the timeout around many commands). RFC 2217 has no timeout: the change
  stays in the client, and the settings go out only when one of them
  really changed;
* with `ign_set_control` (needed for esptool's `esp_rfc2217_server`, which
  never confirms), every DTR/RTS change slept 0.1 s. TCP keeps the change
  in order with the data, and esptool's reset sequences sleep their own
  timings: it is sent and not waited for;
* purges and real settings changes wait for the server's answer, but look
  for it every 2 ms instead of every 50 ms.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterable
from typing import Any

import serial
from serial import SerialException, rfc2217

POLL_S = 0.002


def _wait(items: Iterable[Any], timeout_s: float, what: str) -> None:
    items = list(items)
    deadline = time.monotonic() + timeout_s
    while not all(item.active for item in items):
        if time.monotonic() > deadline:
            raise SerialException(f"RFC 2217 server did not confirm {what}: {items!r}")
        time.sleep(POLL_S)


class Rfc2217Port(rfc2217.Serial):
    """`rfc2217://` as pyserial opens it, minus the waits above."""

    # pyserial's own state, which its type stubs leave out
    _baudrate: int
    _bytesize: int
    _parity: str
    _stopbits: float
    _rtscts: bool
    _xonxoff: bool
    _socket: Any
    _network_timeout: float
    _ignore_set_control_answer: bool
    _rfc2217_options: dict[str, Any]
    _rfc2217_port_settings: dict[str, Any]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._sent_settings: tuple[object, ...] | None = None
        super().__init__(*args, **kwargs)

    def _reconfigure_port(self) -> None:
        if self._socket is None:
            raise SerialException("Can only operate on open ports")
        wanted = (
            self._baudrate,
            self._bytesize,
            self._parity,
            self._stopbits,
            self._rtscts,
            self._xonxoff,
        )
        if wanted == self._sent_settings:
            return  # only a timeout changed: nothing for the server
        if not 0 < self._baudrate < 2**32:
            raise ValueError(f"invalid baudrate: {self._baudrate!r}")
        settings = self._rfc2217_port_settings
        settings["baudrate"].set(struct.pack(b"!I", self._baudrate))
        settings["datasize"].set(struct.pack(b"!B", self._bytesize))
        settings["parity"].set(struct.pack(b"!B", rfc2217.RFC2217_PARITY_MAP[self._parity]))
        settings["stopsize"].set(struct.pack(b"!B", rfc2217.RFC2217_STOPBIT_MAP[self._stopbits]))
        _wait(settings.values(), self._network_timeout, "the port settings")
        if self._rtscts and self._xonxoff:
            raise ValueError("xonxoff and rtscts together are not supported")
        if self._rtscts:
            self.rfc2217_set_control(rfc2217.SET_CONTROL_USE_HW_FLOW_CONTROL)
        elif self._xonxoff:
            self.rfc2217_set_control(rfc2217.SET_CONTROL_USE_SW_FLOW_CONTROL)
        else:
            self.rfc2217_set_control(rfc2217.SET_CONTROL_USE_NO_FLOW_CONTROL)
        self._sent_settings = wanted

    def rfc2217_set_control(self, value: bytes) -> None:
        item = self._rfc2217_options["control"]
        item.set(value)
        if not self._ignore_set_control_answer:
            _wait([item], self._network_timeout, "a control line change")

    def rfc2217_send_purge(self, value: bytes) -> None:
        item = self._rfc2217_options["purge"]
        item.set(value)
        _wait([item], self._network_timeout, "a purge")

    def close(self) -> None:
        self._sent_settings = None
        super().close()


def serial_for_url(url: str, **kwargs: Any) -> Any:
    """pyserial's `serial_for_url(..., do_not_open=True)`, with our RFC 2217
    client for `rfc2217://`."""
    if url.startswith("rfc2217://"):
        port = Rfc2217Port(None, **kwargs)
        port.port = url
        # opened with DTR and RTS low, as esp-idf-monitor opens: behind
        # esptool's port manager (esp_rfc2217_server, `fbuild sim serve`) a
        # DTR raise starts a reset into the ROM loader, so pyserial's default
        # (DTR high) stopped a running app (`fbuild monitor --no-reset`)
        port.dtr = False
        port.rts = False
        return port

    return serial.serial_for_url(url, do_not_open=True, **kwargs)
