"""Serial bytes -> log lines, and a log file that keeps every byte."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import BinaryIO

MAX_LINE = 4096  # a longer "line" is split: a flood without newlines must not grow memory
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# ESP-IDF log line: "I (123) tag: message", optionally wrapped in colour codes
IDF_LINE = re.compile(r"^(?:\x1b\[[0-9;]*m)?([EWIDV]) \((\d+)\) ([^:]+):")


class LineSplitter:
    """Bytes -> text lines. CRLF, LF and CR-only line ends; invalid UTF-8
    becomes U+FFFD; megabyte "lines" are cut every MAX_LINE characters."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._cr = False  # the last byte seen was a CR (a LF may follow)
        self.partial_since = 0.0

    def feed(self, data: bytes) -> list[str]:
        lines: list[str] = []
        start = 0
        buf = self._buf
        for i, b in enumerate(data):
            if b == 0x0A:  # LF
                if self._cr:
                    self._cr = False
                    start = i + 1
                    continue
                buf += data[start:i]
                lines.append(self._take())
                start = i + 1
            elif b == 0x0D:  # CR: ends a line; swallow a following LF
                buf += data[start:i]
                lines.append(self._take())
                self._cr = True
                start = i + 1
            else:
                self._cr = False
                if len(buf) + (i - start) >= MAX_LINE:
                    buf += data[start : i + 1]
                    lines.append(self._take())
                    start = i + 1
        buf += data[start:]
        if buf and not self.partial_since:
            self.partial_since = time.monotonic()
        return lines

    def _take(self) -> str:
        text = self._buf.decode("utf-8", "replace")
        self._buf.clear()
        self.partial_since = 0.0
        return text

    def flush(self, older_than: float = 0.0) -> str | None:
        """A partial line (a prompt without newline) once it is old enough."""
        if self._buf and time.monotonic() - self.partial_since >= older_than:
            return self._take()
        return None


def strip_ansi(text: str) -> str:
    return ANSI.sub("", text)


def idf_level(text: str) -> str | None:
    m = IDF_LINE.match(text)
    return m.group(1) if m else None


class LogFile:
    """Every byte the board sent, with no loss, whatever the UI drops."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f: BinaryIO | None = path.open("ab")
        self._lock = threading.Lock()
        self.bytes_written = 0

    def write(self, data: bytes) -> None:
        with self._lock:
            if self._f is not None:
                self._f.write(data)
                self.bytes_written += len(data)

    def flush(self) -> None:
        with self._lock:
            if self._f is not None:
                self._f.flush()

    def close(self) -> None:
        with self._lock:
            if self._f is not None:
                self._f.close()
                self._f = None
