"""SLIP framing as the ESP ROM loader uses it (RFC 1055 with 0xC0 delimiters)."""

from __future__ import annotations

END = 0xC0
ESC = 0xDB
ESC_END = 0xDC
ESC_ESC = 0xDD


def encode(payload: bytes) -> bytes:
    body = payload.replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc")
    return b"\xc0" + body + b"\xc0"


class SlipDecoder:
    """Incremental decoder: feed bytes, get whole frames.

    Bytes outside a frame are dropped, as the ROM does with line noise.
    An invalid escape ends the frame early and drops it.
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._in_frame = False
        self._escape = False

    def reset(self) -> None:
        self._buf.clear()
        self._in_frame = False
        self._escape = False

    def feed(self, data: bytes) -> list[bytes]:
        frames: list[bytes] = []
        for b in data:
            if not self._in_frame:
                if b == END:
                    self._in_frame = True
                    self._buf.clear()
                continue
            if self._escape:
                self._escape = False
                if b == ESC_END:
                    self._buf.append(END)
                elif b == ESC_ESC:
                    self._buf.append(ESC)
                else:
                    self.reset()
                continue
            if b == ESC:
                self._escape = True
            elif b == END:
                if self._buf:
                    frames.append(bytes(self._buf))
                    self._buf.clear()
                # an empty frame (C0 C0) is the start of the next one
            else:
                self._buf.append(b)
        return frames
