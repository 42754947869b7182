"""The board's SPI NOR flash: erase to 0xFF, program by clearing bits.

Programming ANDs new data into the array, as NOR flash does, so a write
without an erase leaves wrong bytes behind exactly like a real chip.
Persistence is atomic (temp file + rename) so an interrupted save never
leaves a half-written image.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

from fbuild_watch.fsutil import atomic_write

SECTOR = 0x1000
PAGE = 0x100


class FlashRangeError(Exception):
    pass


class SpiFlash:
    def __init__(self, size: int = 4 << 20, path: Path | None = None) -> None:
        self.size = size
        self.path = path
        self.data = bytearray(b"\xff" * size)
        self.lock = threading.RLock()
        self.dirty = False
        self.sectors_erased = 0
        self.bytes_programmed = 0
        if path is not None and path.exists():
            stored = path.read_bytes()
            self.data[: min(len(stored), size)] = stored[:size]

    def _check(self, addr: int, length: int) -> None:
        if addr < 0 or length < 0 or addr + length > self.size:
            raise FlashRangeError(
                f"0x{addr:x}+0x{length:x} is outside the {self.size >> 20} MB flash"
            )

    def erase(self, addr: int, length: int) -> int:
        """Erase every sector touched by [addr, addr+length); returns sectors erased."""
        if length == 0:
            return 0
        start = addr - addr % SECTOR
        end = -(-(addr + length) // SECTOR) * SECTOR
        self._check(start, end - start)
        with self.lock:
            self.data[start:end] = b"\xff" * (end - start)
            n = (end - start) // SECTOR
            self.sectors_erased += n
            self.dirty = True
        return n

    def program(self, addr: int, payload: bytes) -> None:
        self._check(addr, len(payload))
        with self.lock:
            old = self.data[addr : addr + len(payload)]
            merged = (int.from_bytes(old, "little") & int.from_bytes(payload, "little")).to_bytes(
                len(payload), "little"
            )
            self.data[addr : addr + len(payload)] = merged
            self.bytes_programmed += len(payload)
            self.dirty = True

    def read(self, addr: int, length: int) -> bytes:
        self._check(addr, length)
        with self.lock:
            return bytes(self.data[addr : addr + length])

    def md5(self, addr: int, length: int) -> bytes:
        self._check(addr, length)
        with self.lock:
            return hashlib.md5(memoryview(self.data)[addr : addr + length]).digest()

    def save(self) -> None:
        """Write the image to `path` atomically if it changed."""
        if self.path is None:
            return
        with self.lock:
            if not self.dirty and self.path.exists():
                return
            snapshot = bytes(self.data)
            self.dirty = False
        try:
            atomic_write(self.path, snapshot, fsync=True)
        except BaseException:
            with self.lock:
                self.dirty = True
            raise
