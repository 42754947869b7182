"""The line views' stdout: a writer thread behind a bounded queue, so the
board's reader thread (and the event loop) never wait for whoever reads
stdout (an editor plugin, a paused `less`, a slow SSH link). A reader that
stalls the serial port's reader loses board bytes in the OS's buffer
(~4 KiB on a tty) without anyone being told.

Serial lines beyond the bound are dropped and counted; once the writer has
caught up it writes one line saying how many (the log file has them all).
Events are never dropped: they are few, and a consumer needs them (a
deploy's outcome, the exit). A closed stdout (EPIPE: `| head`) or one that
cannot be written is reported once through `on_gone`.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import os
import select
import stat
import threading
from collections.abc import Callable
from typing import TextIO

MAX_PENDING = 16 << 20  # characters queued for stdout (about bytes: JSON is ASCII)
BATCH = 256 << 10  # characters per write: the queue's room comes back as it goes
READER_CHECK_S = 1.0  # while idle, how often a pipe is checked for a reader


class StdoutGone(Exception):
    """Stdout cannot be written any more; `broken_pipe`: its reader closed
    it (EPIPE), which is not an error for a Unix tool."""

    def __init__(self, exc: BaseException) -> None:
        super().__init__(str(exc))
        self.broken_pipe = isinstance(exc, BrokenPipeError) or (
            isinstance(exc, OSError) and exc.errno == errno.EPIPE
        )


class OutputQueue:
    """`put()` never blocks on the stream. Until `start()` (and after
    `close()`) text is written at once on the caller's thread, as a plain
    in-memory view needs."""

    def __init__(
        self,
        out: TextIO,
        notice: Callable[[int], str],
        *,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.out = out
        self._notice = notice  # the line that says N serial lines were dropped
        self.max_pending = max_pending
        self.on_gone: Callable[[StdoutGone], None] | None = None
        self.gone: StdoutGone | None = None
        self._cond = threading.Condition()
        self._queue: collections.deque[str] = collections.deque()
        self._pending = 0  # characters queued or being written
        self._dropped = 0  # serial lines dropped since the last notice
        self._stopping = False
        self._running = False  # the writer thread takes what is queued
        self._thread: threading.Thread | None = None
        self._inline = threading.Lock()  # writes before start()
        self._fd = _fileno(out)
        self._pipe = self._fd is not None and _is_pipe(self._fd)
        self._encoding = getattr(out, "encoding", None) or "utf-8"

    def start(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.out.flush()  # what was printed before goes first
        self._running = True
        self._thread = threading.Thread(target=self._run, name="stdout-writer", daemon=True)
        self._thread.start()

    def put(self, text: str, *, lines: int = 1, droppable: bool = False) -> None:
        """Queue `text` (a newline is added). `droppable` text (board lines)
        is dropped, and its `lines` counted, while the queue is full, and
        from then on until the writer has caught up, so a gap is one gap
        with one notice, not lines missing here and there."""
        with self._cond:
            if self.gone is not None:
                return
            inline = not self._running
            if not inline:
                size = len(text) + 1
                if droppable and (self._dropped or self._pending + size > self.max_pending):
                    self._dropped += lines
                    return
                self._queue.append(text)
                self._pending += size
                self._cond.notify()
        if inline:
            with self._inline:
                self._write(text)

    def close(self) -> None:
        """Write everything accepted (and a last notice), then stop the
        writer. Waits as long as the reader of stdout takes; a second Ctrl+C
        interrupts the wait (the writer thread is a daemon)."""
        thread = self._thread
        if thread is None:
            return
        with self._cond:
            self._stopping = True
            self._cond.notify()
        thread.join()
        self._thread = None
        self._stopping = False

    def _run(self) -> None:
        try:
            self._drain()
        finally:
            with self._cond:
                self._running = False

    def _drain(self) -> None:
        while True:
            with self._cond:
                reader_gone = False
                while not self._queue and not self._dropped and not self._stopping:
                    # a pipe's reader can leave while we have nothing to
                    # write (`| grep -m1 X` has its line, the board is
                    # quiet): the session must not hold the port until
                    # the next line fails
                    if self._pipe and _no_reader(self._fd):
                        reader_gone = True
                        break
                    self._cond.wait(READER_CHECK_S if self._pipe else None)
                if reader_gone:
                    text, size = None, 0
                elif self._queue:
                    batch, size = [], 0
                    while self._queue and size < BATCH:
                        item = self._queue.popleft()
                        batch.append(item)
                        size += len(item) + 1
                    text = "\n".join(batch)
                elif self._dropped:  # caught up: say what was not shown, then show lines again
                    text, size = self._notice(self._dropped), 0
                    self._dropped = 0
                else:
                    return  # stopping, and everything is written
            if text is None:
                self._gone(BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE)))
                return
            ok = self._write(text)
            with self._cond:
                self._pending -= size
                if not ok:  # nobody reads it any more
                    self._queue.clear()
                    self._pending = self._dropped = 0
                    return

    def _write(self, text: str) -> bool:
        if self.gone is not None:
            return False
        try:
            if self._fd is None:
                self.out.write(text + "\n")
                self.out.flush()
            else:  # not through the TextIO: a blocked write holds no lock of its buffer
                data = memoryview((text + "\n").encode(self._encoding, "replace"))
                while data:
                    data = data[os.write(self._fd, data) :]
        except (OSError, ValueError) as exc:  # ValueError: the stream was closed
            self._gone(exc)
            return False
        return True

    def _gone(self, exc: BaseException) -> None:
        self.gone = gone = StdoutGone(exc)
        if self._fd is not None:
            # later writes (a print, the interpreter's flush at exit) go
            # nowhere instead of failing with a traceback
            with contextlib.suppress(OSError):
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, self._fd)
                os.close(null)
        if self.on_gone is not None:
            self.on_gone(gone)


def _fileno(out: TextIO) -> int | None:
    try:
        return out.fileno()
    except (AttributeError, OSError, ValueError):  # StringIO, pytest's capture: no fd
        return None


def _is_pipe(fd: int) -> bool:
    try:
        return stat.S_ISFIFO(os.fstat(fd).st_mode) and hasattr(select, "poll")
    except OSError:
        return False


def _no_reader(fd: int | None) -> bool:
    """A pipe whose read end is closed reports POLLERR on its write end."""
    if fd is None:
        return False
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    try:
        return any(ev & select.POLLERR for _, ev in poller.poll(0))
    except OSError:
        return False
