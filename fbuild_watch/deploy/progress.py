"""A write's progress in flash bytes and sectors, from esptool's per-file
progress bars, at most `rate_hz` reports a second."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

SECTOR = 4096


@dataclass(frozen=True)
class WriteProgress:
    bytes_done: int
    bytes_total: int
    sectors_done: int
    sectors_total: int


class WriteTracker:
    """Feed it esptool's (done, total) for the file being written; files
    come in the order given (one per run). esptool counts compressed bytes:
    each file's fraction is applied to its flash bytes."""

    def __init__(
        self,
        sizes: Sequence[int],
        report: Callable[[WriteProgress], None],
        *,
        rate_hz: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.sizes = list(sizes)
        self.total = sum(self.sizes)
        self.sectors_total = sum(-(-n // SECTOR) for n in self.sizes)
        self.report = report
        self.interval = 1.0 / rate_hz
        self.clock = clock
        self._file = -1
        self._last: tuple[int, int] = (0, 0)  # (done, total) of the current file
        self._before = 0  # flash bytes of the files already written
        self._sectors_before = 0
        self._said_at = float("-inf")
        self._said: WriteProgress | None = None

    def __call__(self, done: int, total: int) -> None:
        last_done, last_total = self._last
        if self._file < 0 or done < last_done or (last_total and last_done >= last_total):
            if 0 <= self._file < len(self.sizes):
                self._before += self.sizes[self._file]
                self._sectors_before += -(-self.sizes[self._file] // SECTOR)
            self._file += 1
        self._last = (done, total)
        size = self.sizes[self._file] if self._file < len(self.sizes) else 0
        part = size * done // total if total else size
        flash_done = min(self.total, self._before + part)
        sectors = -(-part // SECTOR) if part == size else part // SECTOR
        now = self.clock()
        if flash_done < self.total and now - self._said_at < self.interval:
            return  # the last one is always said
        self._said_at = now
        self._say(flash_done, min(self.sectors_total, self._sectors_before + sectors))

    def _say(self, flash_done: int, sectors_done: int) -> None:
        p = WriteProgress(flash_done, self.total, sectors_done, self.sectors_total)
        if p != self._said:
            self._said = p
            self.report(p)
