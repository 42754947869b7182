"""Drive a Watcher over a temp tree and await what it reports."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from fbuild_watch.watch import ChangeSet, IgnoreRules, Watcher, WatchOptions, WatchSet


class Harness:
    def __init__(self, watcher: Watcher) -> None:
        self.watcher = watcher
        self.releases: asyncio.Queue[ChangeSet] = asyncio.Queue()

    @property
    def ws(self) -> WatchSet:
        return self.watcher.ws

    async def next(self, timeout: float = 5.0) -> ChangeSet:
        return await asyncio.wait_for(self.releases.get(), timeout)

    async def until(self, cond: Callable[[], bool], timeout: float = 5.0) -> None:
        """Await a condition on the watcher's own counters (an event, not a guess)."""

        async def poll() -> None:
            while not cond():
                await asyncio.sleep(0.005)

        await asyncio.wait_for(poll(), timeout)

    async def settled_without_release(self, batches_before: int, timeout: float = 5.0) -> None:
        """The watcher saw new events and finished processing them (released
        nothing or only touch-only changes)."""
        s = self.watcher.stats
        await self.until(lambda: s.batches > batches_before, timeout)
        await self.until(lambda: not self.ws.has_pending, timeout)
        assert self.releases.empty(), self.releases.get_nowait()


@contextlib.asynccontextmanager
async def watching(
    root: Path,
    *,
    outputs: list[Path] | None = None,
    patterns: list[str] | None = None,
    options: WatchOptions | None = None,
) -> AsyncIterator[Harness]:
    ws = WatchSet(root, IgnoreRules(root, output_dirs=outputs, patterns=patterns))
    ws.scan()
    watcher = Watcher(ws, options or WatchOptions(quiet_ms=30))
    h = Harness(watcher)

    async def consume() -> None:
        async for cs in watcher.changes():
            await h.releases.put(cs)

    task = asyncio.ensure_future(consume())
    # the watcher is live once watchfiles has placed its watches: prove it
    # (polling needs no watches: its first scan is the baseline)
    probe = root / ".fbuild-probe.tmp"  # editor-temp pattern: ignored, but an event
    for _ in range(0 if watcher.opts.force_polling else 200):
        probe.write_text("x")
        try:
            await asyncio.wait_for(_batch_seen(watcher), 0.05)
            break
        except TimeoutError:
            continue
    probe.unlink(missing_ok=True)
    try:
        yield h
    finally:
        watcher.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _batch_seen(watcher: Watcher) -> None:
    start = watcher.stats.raw_events
    while watcher.stats.raw_events == start:
        await asyncio.sleep(0.002)
