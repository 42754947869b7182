"""Capture esptool's console output per thread instead of letting it print.

esptool logs through one process-wide logger. One router is installed in
its place once; each board's deploy registers a sink for its own thread, so
several boards' deploys run at the same time, each with its own log (a
process-wide lock here serialised every board's deploy, see issue #19).
Threads without a sink keep esptool's own output.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

from esp_pylib.logger import EspLog
from esptool.logger import EsptoolLogger, TemplateLogger, log

Sink = Callable[[str], None]
Progress = Callable[[int, int], None]  # (done, total) of the file being written

_install_lock = threading.Lock()
_installed: Any = None  # what EspLog.instance was set to (esptool wraps our router)
_sinks: dict[int, Sink] = {}  # thread ident -> sink; dict ops are atomic under the GIL
_progress: dict[int, Progress] = {}


class _Router(TemplateLogger):  # type: ignore[misc]
    """esptool's logger: to the calling thread's sink, else to the logger
    that was installed before us."""

    def __init__(self, fallback: Any) -> None:
        self.fallback = fallback

    def _sink(self) -> Sink | None:
        return _sinks.get(threading.get_ident())

    def print(self, *args: Any, **kwargs: Any) -> None:
        sink = self._sink()
        if sink is None:
            self.fallback.print(*args, **kwargs)
            return
        text = " ".join(str(a) for a in args).strip()
        if text:
            sink(text)

    def note(self, message: str) -> None:
        self._say("note", message)

    def warning(self, message: str) -> None:
        self._say("warning", message)

    def error(self, message: str) -> None:
        self._say("error", message)

    def _say(self, kind: str, message: str) -> None:
        sink = self._sink()
        if sink is None:
            getattr(self.fallback, kind)(message)
        else:
            sink(f"{kind}: {message}")

    def stage(self, finish: bool = False) -> None:
        if self._sink() is None:
            self.fallback.stage(finish)

    def progress_bar(self, cur_iter: int, total_iters: int, *args: Any, **kwargs: Any) -> None:
        me = threading.get_ident()
        if me not in _sinks:
            self.fallback.progress_bar(cur_iter, total_iters, *args, **kwargs)
            return
        progress = _progress.get(me)
        if progress is not None:
            progress(cur_iter, total_iters)

    def set_verbosity(self, verbosity: str) -> None:
        self.fallback.set_verbosity(verbosity)

    def __getattr__(self, name: str) -> Any:
        # anything else esptool's own logger offers (called rarely, if at all)
        return getattr(self.fallback, name)


def _install() -> None:
    global _installed
    with _install_lock:
        current = EspLog.instance
        if current is None or current is not _installed:
            # esptool's own logger wraps a TemplateLogger in an adapter
            log.set_logger(_Router(current if current is not None else EsptoolLogger()))
            _installed = EspLog.instance


@contextlib.contextmanager
def captured(sink: Sink, progress: Progress | None = None) -> Iterator[None]:
    """Route esptool's log on this thread to `sink`, and its progress bars
    (bytes of the file being written) to `progress`, for the duration."""
    _install()
    me = threading.get_ident()
    previous = _sinks.get(me), _progress.get(me)
    _sinks[me] = sink
    if progress is not None:
        _progress[me] = progress
    try:
        yield
    finally:
        for table, old in ((_sinks, previous[0]), (_progress, previous[1])):
            if old is None:
                table.pop(me, None)
            else:
                table[me] = old  # type: ignore[assignment]
