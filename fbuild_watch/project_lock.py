"""One `fbuild watch` per project.

Two watchers on one project race each other's builds (one can report a
build "ok, not stale" while the other's output is on disk) and deploy stale
firmware. `fbuild watch` therefore holds an advisory lock on
`<project>/.fbuild/watch.lock` for its lifetime; a second `watch`, and
`fbuild build` / `fbuild deploy` on the same project, refuse with the
holder's pid. The lock is `flock`: the kernel drops it when the process
dies (also on SIGKILL), so a stale file never blocks anyone.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path

from fbuild_watch.errors import RuntimeFailure

LOCK_NAME = "watch.lock"


def lock_path(project_dir: Path) -> Path:
    return Path(project_dir).resolve() / ".fbuild" / LOCK_NAME


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        if text.isdigit():
            return f" (pid {int(text)})"
    return ""


class ProjectLock:
    """Held by `fbuild watch` from set-up to exit."""

    def __init__(self, project_dir: Path) -> None:
        self.path = lock_path(project_dir)
        self._fd: int | None = None

    def acquire(self) -> str | None:
        """Take the lock, or raise RuntimeFailure if another watcher has it.
        Returns a warning when no lock can be made (a read-only project):
        watching still works, unguarded."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            return f"{self.path}: cannot create the project lock ({exc.strerror or exc})"
        for attempt in range(5):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                # `refuse_if_watched` holds a shared lock for a moment
                if attempt < 4:
                    time.sleep(0.01)
                    continue
                holder = _holder(fd)
                os.close(fd)
                raise RuntimeFailure(
                    f"fbuild watch is already running on this project{holder}",
                    source=self.path.parent.parent,
                ) from None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return None

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing drops the flock

    def __enter__(self) -> ProjectLock:
        self.acquire()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.release()


def refuse_if_watched(project_dir: Path, what: str) -> None:
    """`fbuild build` / `deploy`: refuse while a watcher owns the project
    (its builds and its port would race ours)."""
    path = lock_path(project_dir)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return  # no lock file: nobody watches (or it cannot be read: nothing to guard)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        raise RuntimeFailure(
            f"fbuild watch is running on this project{holder}; to {what}, use its keys "
            "(b rebuild, f full flash) or quit it first",
            source=path.parent.parent,
        ) from None
    finally:
        os.close(fd)
