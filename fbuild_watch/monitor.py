"""Serial bytes -> log lines, and a log file that keeps every byte."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import threading
from collections.abc import Callable
from io import FileIO
from pathlib import Path

log = logging.getLogger(__name__)

# A longer "line" is cut into pieces (a flood without newlines must not grow
# memory); each piece but the last is a LinePiece, so views can say so.
MAX_LINE = 64 * 1024
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# ESP-IDF log line: "I (123) tag: message", optionally wrapped in colour codes
IDF_LINE = re.compile(r"^(?:\x1b\[[0-9;]*m)?([EWIDV]) \((\d+)\) ([^:]+):")


_EOL = re.compile(rb"\r\n|\r|\n")


class LinePiece(str):
    """A piece of a line longer than MAX_LINE bytes: the next line continues
    it (`"partial": true` in `--json`)."""

    __slots__ = ()


CONTINUES = " [line continues]"  # how the human views end a LinePiece


def _cut(raw: bytes) -> int:
    """Where to cut a long line: at MAX_LINE, moved back to the start of a
    UTF-8 character so no piece ends in half of one."""
    at = MAX_LINE
    while at > MAX_LINE - 4 and raw[at] & 0xC0 == 0x80:
        at -= 1
    return at


class LineSplitter:
    """Bytes -> text lines. CRLF, LF and CR-only line ends; invalid UTF-8
    becomes U+FFFD; megabyte "lines" are cut into LinePieces of MAX_LINE
    bytes at most.

    Splitting is done by the regex engine, not a Python loop per byte: at
    flood rates the reader thread must leave the GIL to the UI.
    """

    def __init__(self) -> None:
        self._buf = b""
        self._cr = False  # the previous chunk ended with CR: a LF may follow

    def feed(self, data: bytes) -> list[str]:
        if not data:
            return []  # a read timeout: must not forget a pending CR
        if self._cr and data[:1] == b"\n":
            data = data[1:]
        self._cr = data[-1:] == b"\r"
        data = self._buf + data
        lines: list[str] = []
        pos = 0
        for m in _EOL.finditer(data):
            self._emit(data[pos : m.start()], lines)
            pos = m.end()
        rest = data[pos:]
        while len(rest) > MAX_LINE:  # the rest continues it, whatever comes
            at = _cut(rest)
            lines.append(LinePiece(rest[:at].decode("utf-8", "replace")))
            rest = rest[at:]
        self._buf = rest
        return lines

    def flush(self) -> list[str]:
        """The unfinished line, as a line of its own (the port is lent to
        esptool: what comes next is a reset's boot log, not its rest)."""
        rest, self._buf, self._cr = self._buf, b"", False
        lines: list[str] = []
        if rest:
            self._emit(rest, lines)
        return lines

    @staticmethod
    def _emit(raw: bytes, lines: list[str]) -> None:
        while len(raw) > MAX_LINE:
            at = _cut(raw)
            lines.append(LinePiece(raw[:at].decode("utf-8", "replace")))
            raw = raw[at:]
        lines.append(raw.decode("utf-8", "replace"))


def strip_ansi(text: str) -> str:
    return ANSI.sub("", text)


def idf_level(text: str) -> str | None:
    m = IDF_LINE.match(text)
    return m.group(1) if m else None


class LogFile:
    """Every byte the board sent, with no loss, whatever the UI drops.

    A file that cannot be written (full disk, removed medium, read-only) is
    turned off at the first error: `failed` says why, `on_error` is called
    once with that line, and the monitor goes on showing everything."""

    def __init__(self, path: Path, on_error: Callable[[str], None] | None = None) -> None:
        self.path = path
        self.on_error = on_error or (lambda _m: None)
        self.failed: str | None = None
        # unbuffered: each chunk is with the OS as soon as it is read (a killed
        # process loses nothing), and a failed write leaves no buffer behind
        self._f: FileIO | None = None
        self._lock = threading.Lock()
        self.bytes_written = 0
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._fail(f"cannot create its directory {path.parent}", exc)
            return
        try:
            self._f = FileIO(path, "ab")
        except OSError as exc:
            self._fail("cannot open", exc)

    def write(self, data: bytes) -> None:
        with self._lock:
            if self._f is not None:
                view = memoryview(data)
                try:
                    while view:
                        n = self._f.write(view)  # a full disk may take part of it
                        if not n:
                            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                        self.bytes_written += n
                        view = view[n:]
                except OSError as exc:
                    self._fail("cannot write", exc)

    def flush(self) -> None:
        """Nothing is buffered here; kept for callers that flush."""

    def close(self) -> None:
        with self._lock:
            f, self._f = self._f, None
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()

    def _fail(self, what: str, exc: OSError) -> None:
        """Turn the file off and say so once (the lock is held)."""
        f, self._f = self._f, None
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()
        if self.failed is not None:
            return
        reason = exc.strerror or str(exc)
        self.failed = f"log file {self.path}: {what}: {reason}; not logging to it"
        try:
            self.on_error(self.failed)
        except Exception:  # a view's bug must not stop the monitor
            log.exception("log file error handler failed")
