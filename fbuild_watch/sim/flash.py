"""The board's SPI NOR flash: erase to 0xFF, program by clearing bits.

Programming ANDs new data into the array, as NOR flash does, so a write
without an erase leaves wrong bytes behind exactly like a real chip.
Persistence is atomic (temp file + rename, fsynced) so an interrupted save
never leaves a half-written image.

A file-backed flash is one device: it holds an exclusive lock on
`<file>.lock` from creation to `close()`, so a second board on the same file
(another process, or another name in this one) is refused as a busy port
would be, instead of two boards overwriting each other's image.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import sys
import threading
from pathlib import Path

from fbuild_watch.fsutil import atomic_write

SECTOR = 0x1000
PAGE = 0x100
DEFAULT_SIZE = 4 << 20
SIZES = (2 << 20, 4 << 20, 8 << 20, 16 << 20)
GIGADEVICE = 0xC8
GD25Q_TYPE = 0x40


class FlashRangeError(Exception):
    pass


class FlashInUse(OSError):
    """Another board (this process or another) has the flash file."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(errno.EBUSY, f"{path} is in use by {holder}")
        self.path = path
        self.holder = holder


class FlashImageError(ValueError):
    """The stored image does not fit this flash."""


def default_jedec_id(size: int) -> int:
    """A GigaDevice GD25Q part of `size` bytes: capacity byte = log2(size)."""
    return GIGADEVICE << 16 | GD25Q_TYPE << 8 | (size.bit_length() - 1)


def _describe_self() -> str:
    argv = list(getattr(sys, "orig_argv", sys.argv))
    if argv:
        argv[0] = Path(argv[0]).name
    return f"process {os.getpid()} ({' '.join(argv)[:200]})"


class _FileLock:
    """flock(2) on a lock file beside the image; the holder writes who it is."""

    def __init__(self, image: Path) -> None:
        self.path = image.with_name(image.name + ".lock")
        image.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = ""
            with contextlib.suppress(OSError):
                holder = os.pread(fd, 512, 0).decode(errors="replace").strip()
            os.close(fd)
            raise FlashInUse(image, holder or "another board") from None
        except BaseException:
            os.close(fd)
            raise
        with contextlib.suppress(OSError):  # who holds it is a courtesy, not a need
            os.ftruncate(fd, 0)
            os.pwrite(fd, _describe_self().encode() + b"\n", 0)
        self._fd: int | None = fd

    def release(self) -> None:
        # The file stays: unlinking a flock'ed file lets two holders coexist.
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # drops the lock


class SpiFlash:
    def __init__(
        self, size: int = DEFAULT_SIZE, path: Path | None = None, jedec_id: int | None = None
    ) -> None:
        self.size = size
        self.path = path
        # manufacturer << 16 | memory type << 8 | capacity (RDID's three bytes)
        self.jedec_id = default_jedec_id(size) if jedec_id is None else jedec_id & 0xFFFFFF
        self.data = bytearray(b"\xff" * size)
        self.lock = threading.RLock()
        self.dirty = False
        self.sectors_erased = 0
        self.bytes_programmed = 0
        self.saves = 0
        self._file_lock: _FileLock | None = None
        self._closed = False
        if path is None:
            return
        # Lock before reading: the holder may be saving the file right now.
        self._file_lock = _FileLock(path)
        try:
            if path.exists():
                stored = path.read_bytes()
                if len(stored) > size:
                    raise FlashImageError(
                        f"{path} holds a {_mb(len(stored))} image, larger than this "
                        f"{_mb(size)} flash: pass its size (flash_size=) or another file"
                    )
                self.data[: len(stored)] = stored
        except BaseException:
            self._file_lock.release()
            raise

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
        """Write the image to `path` atomically and durably if it changed."""
        if self.path is None:
            return
        with self.lock:
            if self._closed or (not self.dirty and self.path.exists()):
                return  # after close the lock is gone: the file is no longer ours
            snapshot = bytes(self.data)
            self.dirty = False
            try:
                atomic_write(self.path, snapshot, fsync=True)
                _fsync_dir(self.path.parent)  # the rename itself survives a power cut
            except BaseException:
                self.dirty = True
                raise
            self.saves += 1

    def close(self) -> None:
        """Save, then let another board have the file."""
        try:
            self.save()
        finally:
            with self.lock:
                self._closed = True
                if self._file_lock is not None:
                    self._file_lock.release()
                    self._file_lock = None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mb(n: int) -> str:
    return f"{n >> 20} MB" if n % (1 << 20) == 0 else f"{n} byte"
