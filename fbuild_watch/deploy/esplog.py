"""Capture esptool's console output instead of letting it print."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

from esp_pylib.logger import EspLog
from esptool.logger import TemplateLogger, log

_lock = threading.Lock()


class _Capture(TemplateLogger):  # type: ignore[misc]
    def __init__(self, sink: Callable[[str], None]) -> None:
        self.sink = sink

    def print(self, *args: Any, **kwargs: Any) -> None:
        text = " ".join(str(a) for a in args).strip()
        if text:
            self.sink(text)

    def note(self, message: str) -> None:
        self.sink(f"note: {message}")

    def warning(self, message: str) -> None:
        self.sink(f"warning: {message}")

    def error(self, message: str) -> None:
        self.sink(f"error: {message}")

    def stage(self, finish: bool = False) -> None:
        pass

    def progress_bar(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set_verbosity(self, verbosity: str) -> None:
        pass


@contextlib.contextmanager
def captured(sink: Callable[[str], None]) -> Iterator[None]:
    """Route esptool's log to `sink` for the duration (one deploy at a time
    per process talks through esptool's global logger)."""
    with _lock:
        previous = EspLog.instance
        log.set_logger(_Capture(sink))
        try:
            yield
        finally:
            EspLog.instance = previous
