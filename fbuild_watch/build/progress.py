"""How far a build is: ninja's `[N/M]` status lines (ESP-IDF, PlatformIO's
CMake projects), else only the time it has run."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable

# ninja's default NINJA_STATUS "[%f/%t] "; idf.py passes it through
_NINJA = re.compile(r"^\s*\[(\d+)/(\d+)\]\s")


def ninja_progress(line: str) -> tuple[int, int] | None:
    m = _NINJA.match(line)
    if m is None:
        return None
    done, total = int(m.group(1)), int(m.group(2))
    return (done, total) if 0 <= done <= total and total > 0 else None


class BuildProgressTracker:
    """Fed every build output line (on the build's reader thread); says
    `(done, total, elapsed_s)` at most `rate_hz` times a second, and on
    `tick()` (a timer: a build that prints nothing still shows its time)."""

    def __init__(
        self,
        report: Callable[[int | None, int | None, float], None],
        *,
        rate_hz: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.report = report
        self.interval = 1.0 / rate_hz
        self.clock = clock
        self.start = clock()
        self.done: int | None = None
        self.total: int | None = None
        self._said_at = float("-inf")
        self._lock = threading.Lock()

    def line(self, text: str) -> None:
        step = ninja_progress(text)
        if step is None:
            return
        with self._lock:
            self.done, self.total = step
            now = self.clock()
            if now - self._said_at < self.interval and step[0] != step[1]:
                return
            self._said_at = now
        self.report(step[0], step[1], now - self.start)

    def tick(self) -> None:
        with self._lock:
            now = self.clock()
            self._said_at = now
            done, total = self.done, self.total
        self.report(done, total, now - self.start)
