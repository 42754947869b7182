"""A build's output, bounded: every byte goes to a log file in the project,
memory keeps only a tail, diagnostics are picked out as the lines stream by,
and the view gets the lines at a bounded rate, so a build printing 50 MB
neither grows the process nor swamps the event loop with a million events."""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from fbuild_watch.build.diagnostics import DiagnosticCollector

KEEP_LINES = 2000  # the tail kept in memory (and in BuildResult.output)
KEEP_BYTES = 512 * 1024  # ... and at most this much of it
MAX_LINE = 4096  # bytes of one line kept; the log file has it whole
# The view: a burst of lines at once (a normal build never exceeds it), then
# RATE lines a second; delivery pauses until RESUME lines' worth of budget
# came back, so a flood shows as a few blocks of lines between one "not
# shown" line each, not as alternating single lines.
BURST_LINES = 500
RATE_LINES_S = 200.0
RESUME_LINES = 100
TAIL_LINES = 200  # lines not shown when a command ends: the last ones are (errors come last)


class BuildOutput:
    """Collects the output of a build's commands (one reader thread)."""

    def __init__(
        self,
        log_path: Path | None,
        on_line: Callable[[str], None] | None,
        *,
        project_dir: Path | None = None,
        rate_limited: bool = True,
    ) -> None:
        self.log_path = log_path
        self.on_line = on_line
        self.rate_limited = rate_limited
        self.lines = 0  # all lines, shown or not
        self.diagnostics = DiagnosticCollector()
        self._tail: deque[bytes] = deque(maxlen=KEEP_LINES)
        self._partial = b""  # the line being read (at most MAX_LINE + 1 bytes)
        self._log: BinaryIO | None = None
        self._tokens = float(BURST_LINES)
        self._refilled = time.monotonic()
        self._skipped = 0  # lines not shown since the last one shown
        self._skipping = False
        if log_path is not None:
            self._open_log(log_path, project_dir)

    # -- the log file ------------------------------------------------------------
    def _open_log(self, path: Path, project_dir: Path | None) -> None:
        try:
            path.parent.mkdir(exist_ok=True)
            if project_dir is not None and not path.parent.resolve().is_relative_to(
                project_dir.resolve()
            ):  # a symlinked .fbuild: nothing outside the project is written
                raise OSError(f"{path.parent} leads outside the project")
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
            self._log = os.fdopen(os.open(path, flags, 0o644), "wb", buffering=256 * 1024)
        except OSError as exc:
            self._log_failed(exc)

    def _log_failed(self, exc: OSError) -> None:
        log, self._log = self._log, None
        if log is not None:
            try:
                log.close()
            except OSError:
                pass  # the same full disk: already said below
        reason = exc.strerror or str(exc)
        path, self.log_path = self.log_path, None
        self._own(
            f"fbuild: warning: cannot write the build log {path}: {reason} "
            "(only the last lines of the output are kept)"
        )

    def _write(self, data: bytes) -> None:
        if self._log is not None:
            try:
                self._log.write(data)
            except OSError as exc:
                self._log_failed(exc)

    # -- lines in --------------------------------------------------------------------
    def feed(self, chunk: bytes) -> None:
        """Bytes from the build's stdout/stderr."""
        self._write(chunk)
        parts = chunk.split(b"\n")
        if len(parts) == 1:
            self._partial = (self._partial + chunk)[: MAX_LINE + 1]
            return
        parts[0] = self._partial + parts[0]
        self._partial = parts.pop()[: MAX_LINE + 1]
        self._lines(parts)

    def say(self, line: str) -> None:
        """A line of fbuild's own (a download, a warning): always shown."""
        self.end_command()
        self._own(line)

    def record(self, line: str) -> None:
        """A line of fbuild's own for the log file and the kept tail only
        (the build's result says it to the view)."""
        data = line.encode("utf-8", "replace")
        self._write(data + b"\n")
        self.lines += 1
        self._tail.append(data)

    def _own(self, line: str) -> None:
        data = line.encode("utf-8", "replace")
        self._write(data + b"\n")
        self.lines += 1
        self._tail.append(data)
        self.diagnostics.feed(line)
        if self.on_line is not None:
            self.on_line(line)

    def end_command(self) -> None:
        """A command ended: its last line, and the tail of what was not shown."""
        if self._partial:
            partial, self._partial = self._partial, b""
            self._lines([partial])
        if self._skipped:
            shown = min(TAIL_LINES, self._skipped, len(self._tail))
            if self._skipped > shown:
                self._not_shown(self._skipped - shown)
            self._skipped = 0
            self._skipping = False
            if self.on_line is not None:
                for raw in list(self._tail)[len(self._tail) - shown :]:
                    self.on_line(_text(raw))

    def close(self) -> None:
        self.end_command()
        if self._log is not None:
            try:
                self._log.close()
            except OSError as exc:
                self._log_failed(exc)

    def _lines(self, lines: list[bytes]) -> None:
        lines = [ln if len(ln) <= MAX_LINE else ln[:MAX_LINE] + b" [...]" for ln in lines]
        self.lines += len(lines)
        self._tail.extend(lines)
        for ln in lines:
            if self.diagnostics.wants(ln):
                self.diagnostics.feed(_text(ln))
        if self.on_line is None:
            return
        if not self.rate_limited:
            for ln in lines:
                self.on_line(_text(ln))
            return
        now = time.monotonic()
        self._tokens = min(BURST_LINES, self._tokens + (now - self._refilled) * RATE_LINES_S)
        self._refilled = now
        if self._skipping and self._tokens < RESUME_LINES:
            self._skipped += len(lines)
            return
        n = min(int(self._tokens), len(lines))
        if n and self._skipped:
            self._not_shown(self._skipped)
            self._skipped = 0
        for ln in lines[:n]:
            self.on_line(_text(ln))
        self._tokens -= n
        self._skipping = n < len(lines)
        self._skipped += len(lines) - n

    def _not_shown(self, count: int) -> None:
        assert self.on_line is not None
        where = f" (full output in {self.log_path})" if self.log_path is not None else ""
        self.on_line(f"fbuild: ... {count} lines not shown{where}")

    # -- out ------------------------------------------------------------------------
    def kept(self) -> list[str]:
        """The tail, at most KEEP_LINES lines and KEEP_BYTES, after one line
        saying how many earlier lines are only in the log file."""
        kept: list[str] = []
        size = 0
        for raw in reversed(self._tail):
            size += len(raw) + 1
            if size > KEEP_BYTES:
                break
            kept.append(_text(raw))
        kept.reverse()
        dropped = self.lines - len(kept)
        if dropped > 0:
            where = f" (full output in {self.log_path})" if self.log_path is not None else ""
            kept.insert(0, f"fbuild: ... {dropped} earlier lines not kept{where}")
        return kept


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace").rstrip("\r")
