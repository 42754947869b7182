"""The failure model's plumbing: an unexpected exception anywhere in the
loop becomes one line the user sees and a trace in a debug log, never a
silent stop (LOOP.md, "Failure model").

`Supervisor.failed(part, exc)` is the one way in: asyncio tasks are watched
with `watch(task, part)`, threads report through `threading.excepthook`
(installed by the session for its lifetime). The views get an `error`
event naming the part; the trace goes to `<project>/.fbuild/debug.log`
(bounded, inside the project; if it cannot be written the trace is dropped
with one warning, it never stops the loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

DEBUG_LOG_MAX = 1 << 20  # bytes; the previous file is kept as debug.log.1
REPEAT_QUIET_S = 10.0  # the same failure of the same part is said once per this


def one_line(exc: BaseException) -> str:
    """`TypeName: message` on one line (a message can span lines)."""
    text = " ".join(str(exc).split())
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


class DebugLog:
    """Append-only trace file; opened per write (rare: failures only)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.broken: str | None = None  # why traces are not written
        self._lock = threading.Lock()

    def write(self, title: str, exc: BaseException | None) -> None:
        if self.path is None or self.broken is not None:
            return
        body = "".join(traceback.format_exception(exc)) if exc is not None else ""
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        text = f"--- {stamp} pid {os.getpid()} {title}\n{body}"
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(OSError):
                    if self.path.stat().st_size > DEBUG_LOG_MAX:
                        self.path.replace(self.path.with_name(self.path.name + ".1"))
                with self.path.open("a", encoding="utf-8", errors="replace") as f:
                    f.write(text)
            except OSError as e:
                self.broken = f"cannot write {self.path}: {e.strerror or e}"


class Supervisor:
    """Turns unexpected exceptions of named parts into `on_error(part,
    message, trace_path)` calls. Thread-safe: `on_error` is called on the
    thread that failed; the caller hands it to its event loop."""

    def __init__(
        self,
        on_error: Callable[[str, str], None],
        debug_log: DebugLog | None = None,
    ) -> None:
        self.on_error = on_error
        self.log = debug_log or DebugLog(None)
        self.failures: dict[str, str] = {}  # part -> last message
        self.repeats: dict[str, int] = {}  # part -> failures not said again
        self._last: dict[str, tuple[str, float]] = {}
        self._prev_hook: Callable[[threading.ExceptHookArgs], object] | None = None

    def failed(self, part: str, exc: BaseException) -> str:
        message = one_line(exc)
        now = time.monotonic()
        repeat = self._last.get(part)
        self._last[part] = (message, now)
        if repeat is not None and repeat[0] == message and now - repeat[1] < REPEAT_QUIET_S:
            # the same failure again and again (a bug hit on every serial
            # chunk): said once, not thousands of times
            self.repeats[part] = self.repeats.get(part, 0) + 1
            return message
        self.failures[part] = message
        self.log.write(part, exc)
        where = f" (trace in {self.log.path})" if self.log.path and not self.log.broken else ""
        self.on_error(part, f"{part} failed: {message}{where}")
        return message

    def watch(self, task: asyncio.Future[Any], part: str) -> None:
        """Report the task's exception (not its cancellation) when it ends."""

        def done(t: asyncio.Future[Any]) -> None:
            if t.cancelled():
                return
            exc = t.exception()
            if exc is not None:
                self.failed(part, exc)

        task.add_done_callback(done)

    # -- threads ---------------------------------------------------------------
    def install_thread_hook(self) -> None:
        """Any thread of ours that dies of an exception is reported (reader
        threads, the file watcher's thread, workers)."""
        if self._prev_hook is not None:
            return
        self._prev_hook = threading.excepthook

        def hook(args: threading.ExceptHookArgs) -> None:
            if args.exc_type is SystemExit or args.exc_value is None:
                return
            name = args.thread.name if args.thread is not None else "thread"
            self.failed(f"thread {name}", _with_tb(args.exc_value, args.exc_traceback))

        threading.excepthook = hook

    def remove_thread_hook(self) -> None:
        if self._prev_hook is not None:
            threading.excepthook = self._prev_hook
            self._prev_hook = None


def _with_tb(exc: BaseException, tb: TracebackType | None) -> BaseException:
    if exc.__traceback__ is None and tb is not None:
        return exc.with_traceback(tb)
    return exc
