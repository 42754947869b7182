"""Connecting ahead: while a build runs, the moment the boards can be taken
into their bootloaders because the image is known to change (LOOP.md,
"Connecting ahead of the image").

Two signs, whichever comes first: a compiled object whose code or data
differ from what the last image was linked from, or a linked ELF whose
loadable bytes (its link key) changed. The deploy then takes the held
connections over; if no deploy follows, `back_to_app` resets the boards
into their (unchanged) apps.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from fbuild_watch.build.objects import ObjectWatch
from fbuild_watch.image.linkkey import file_stamp, link_key

# How often the ELF and the objects are looked at while a build runs (a stat
# each): the connect can start within this of the link.
LINK_POLL_S = 0.003


class Boards(Protocol):
    """What connecting ahead asks of the deployer."""

    async def connect_ahead(self, link_key: str | None) -> None:
        """The build linked an ELF whose loadable bytes hash to `link_key`
        (None: it compiled an object that changes what the last image was
        linked from, and has not linked yet): connect ahead to every board
        that will need the serial link."""

    async def back_to_app(self) -> None:
        """No deploy follows `connect_ahead`: boards return to their apps."""


Background = Callable[[Awaitable[None], str], "asyncio.Future[None]"]


class ConnectAhead:
    """One per loop. `start` when a build starts, `settle` when it is over,
    `back_to_app` when no deploy follows, `refresh` after each cycle."""

    def __init__(self, boards: Boards, background: Background) -> None:
        """`background(coro, part)` runs a supervised task (its failure is
        reported as that part's, never lost)."""
        self.boards = boards
        self.background = background
        self._objects: ObjectWatch | None = None
        self._objects_refresh: asyncio.Future[None] | None = None
        self._task: asyncio.Future[None] | None = None
        self._connecting = False

    def start(
        self,
        elf: Path,
        build: asyncio.Future[Any],
        timings: dict[str, float],
        build_start: float,
    ) -> None:
        """Watch this build (`build` is its future) for the first sign the
        image changes. `timings` gets "compiled" or "linked", then
        "connected_ahead" (seconds from `build_start`)."""
        before = file_stamp(elf)  # before the build can touch it
        objects = self._objects_of(elf)
        self._task = self.background(
            self._watch(elf, before, build, (timings, build_start), objects), "link watch"
        )

    def prime(self, elf: Path) -> None:
        """At start: summarise the objects the last build left on disk, so
        the first edit's compile can be compared with them."""
        self._objects_of(elf)
        self.refresh()

    def _objects_of(self, elf: Path) -> ObjectWatch:
        if self._objects is None or self._objects.elf != elf:
            self._objects = ObjectWatch(elf.parent, elf)
        return self._objects

    async def _watch(
        self,
        elf: Path,
        before: tuple[int, int, int] | None,
        build: asyncio.Future[Any],
        clock: tuple[dict[str, float], float],
        objects: ObjectWatch,
    ) -> None:
        timings, build_start = clock
        if self._objects_refresh is not None:  # what the last build left, first
            with contextlib.suppress(Exception):
                await asyncio.shield(self._objects_refresh)
        watch = objects.start()
        while not build.done():
            await asyncio.sleep(LINK_POLL_S)
            rewritten = watch.poll()
            changes = bool(rewritten) and await asyncio.to_thread(watch.image_changes, rewritten)
            if changes:
                if build.done():
                    return
                timings["compiled"] = time.monotonic() - build_start
                await self._connect(None, timings, build_start)
                return
            stamp = file_stamp(elf)
            if stamp is None or stamp == before:
                continue
            before = stamp
            key = await asyncio.to_thread(link_key, elf)
            if key is None or build.done():
                continue  # not all written yet, or too late to gain anything
            timings["linked"] = time.monotonic() - build_start
            await self._connect(key, timings, build_start)
            return

    async def _connect(self, key: str | None, timings: dict[str, float], start: float) -> None:
        self._connecting = True
        try:
            await self.boards.connect_ahead(key)
        finally:
            self._connecting = False
        timings["connected_ahead"] = time.monotonic() - start

    async def settle(self) -> None:
        """The build is over: a connect in progress is waited for (the deploy
        takes it over); a watch that saw nothing yet stops."""
        task, self._task = self._task, None
        if task is None or task.done():
            return
        if self._connecting:
            with contextlib.suppress(Exception):
                await asyncio.shield(task)
        else:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def back_to_app(self) -> None:
        """No deploy follows (the build failed after linking, or it is
        superseded): no board stays in its bootloader."""
        with contextlib.suppress(Exception):
            await self.boards.back_to_app()

    def refresh(self) -> None:
        """Summarise the objects of the build just made, in the background,
        after the cycle (off the deploy's path); one refresh after another."""
        watch, prev = self._objects, self._objects_refresh
        if watch is None:
            return

        async def refresh() -> None:
            if prev is not None:
                with contextlib.suppress(Exception):
                    await prev
            await asyncio.to_thread(watch.refresh)

        # a failure here only costs the next edit its head start, but is said
        self._objects_refresh = self.background(refresh(), "object summaries")
