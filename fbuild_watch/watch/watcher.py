"""Filesystem events (watchfiles) -> debounced, verified change sets.

Debounce is a quiet period: a batch of changes is released once no new
event arrived for `quiet_ms`, or after `max_wait_ms` so a continuous stream
still builds. While `.git/index.lock` exists (a checkout or rebase in
progress) nothing is released, so a branch switch yields one build.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import watchfiles

from fbuild_watch.watch.state import ChangeSet, WatchSet

log = logging.getLogger(__name__)
_TRACE = bool(os.environ.get("FBUILD_WATCH_TRACE"))
COOKIE_PREFIX = ".fbuild-cookie-"  # events and releases to stderr, for debugging


@dataclass(frozen=True)
class WatchOptions:
    quiet_ms: int = 30
    max_wait_ms: int = 1000
    idle_rescan_s: float = 180.0  # heals silent misses (kernel queue overflow, watch limit)
    # prove the event source is alive (Watchman's cookie files) and sweep the
    # tree's stats for anything it missed, while idle
    cookie_every_s: float = 5.0
    force_polling: bool = False
    poll_interval_ms: int = 250


@dataclass
class WatchStats:
    batches: int = 0
    raw_events: int = 0  # every event watchfiles reported, ignored ones included
    events: int = 0
    releases: int = 0
    touch_only: int = 0
    rescans: int = 0
    healed: int = 0  # changes found by an idle rescan that events missed
    lock_waits: int = 0
    watcher_errors: int = 0
    cookies: int = 0  # liveness probes that came back
    restarts: int = 0  # event sources restarted because a probe did not come back
    mode: str = "events"


class Watcher:
    def __init__(
        self,
        watch_set: WatchSet,
        options: WatchOptions | None = None,
        *,
        on_note: Callable[[str], None] | None = None,
    ) -> None:
        self.ws = watch_set
        self.opts = options or WatchOptions()
        self.stats = WatchStats(mode="polling" if self.opts.force_polling else "events")
        self.on_note = on_note or log.info
        self._kick = asyncio.Event()
        self._stop = asyncio.Event()
        self._rescan_needed = False
        self._paused = False
        self._source_task: asyncio.Task[None] | None = None
        self._cookie_seen = asyncio.Event()
        self._next_sweep = 0.0
        self._aio: asyncio.AbstractEventLoop | None = None
        self._cookie_n = 0
        self._first_event_at: float | None = None  # of the batch not yet released
        self._releasing = False  # between a kick and handing its change set on

    @property
    def idle(self) -> bool:
        """Nothing seen that is not yet handed on (quiet points in tests and
        the soak; call after `probe()` so the OS has delivered its events)."""
        return not self._releasing and not self._kick.is_set() and not self.ws.has_pending

    # -- control --------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()
        self._kick.set()

    def pause(self, paused: bool) -> None:
        """Paused: events are still recorded, nothing is released."""
        self._paused = paused
        if not paused:
            self._kick.set()

    def restart_polling(self) -> None:
        """After `changes()` ended by an unexpected error: the next
        `changes()` polls (the event source may be what broke) and starts
        with a full rescan, so nothing changed meanwhile is missed."""
        self.opts = dataclasses.replace(self.opts, force_polling=True)
        self.stats.mode = "polling"
        self.stats.restarts += 1
        self._source_task = None
        self._stop.clear()
        self.request_rescan()

    def request_rescan(self) -> None:
        self._rescan_needed = True
        self._kick.set()

    # -- event source -----------------------------------------------------------
    def _filter(self, change: watchfiles.Change, path: str) -> bool:
        self.stats.raw_events += 1
        if COOKIE_PREFIX in path:  # called on the watcher thread
            self._loop_call(self._cookie_seen.set)
            return False
        # an ignore file's edit changes what is watched even when the file
        # itself is ignored (a `.gitignore` listing itself, .git/info/exclude)
        ign = self.ws.ignore
        keep = not ign.ignored_abs(path) or ign.is_rules_file_abs(path)
        if _TRACE:
            print(
                f"watch {time.monotonic():.4f} {change.name} {path} keep={keep}",
                file=sys.stderr,
                flush=True,
            )
        return keep

    def _absorb(self, batch: set[tuple[watchfiles.Change, str]]) -> None:
        self.stats.batches += 1
        self.stats.events += len(batch)
        self._saw_change()
        files: list[str] = []
        dirs: list[str] = []
        for change, path in batch:
            if self.ws.ignore.is_rules_file_abs(path):
                self._rescan_needed = True  # the rules themselves changed
            if change == watchfiles.Change.added and os.path.isdir(path):
                dirs.append(path)  # files created right after it may have no events
            elif change == watchfiles.Change.deleted and not os.path.exists(path):
                dirs.append(path)  # maybe a directory renamed away: drop its files
                files.append(path)
            else:
                files.append(path)
        self.ws.mark(files, dirs=dirs)
        self._kick.set()

    async def _events(self) -> None:
        """watchfiles' Rust watcher on a thread of its own; batches are handed
        to the event loop. (Not `awatch`: a dedicated thread keeps the event
        source independent of the loop's executors and task groups.)"""
        roots = [str(self.ws.root / p) if p else str(self.ws.root) for p in self.ws.paths]
        roots = [r for r in roots if os.path.exists(r)] or [str(self.ws.root)]
        if _TRACE:
            print(f"watch {time.monotonic():.4f} start {roots}", file=sys.stderr, flush=True)
        loop = asyncio.get_running_loop()
        stop = threading.Event()
        failed: asyncio.Future[BaseException | None] = loop.create_future()

        def finish(exc: BaseException | None) -> None:
            if not failed.done():
                failed.set_result(exc)

        def post(fn: Callable[..., object], *args: object) -> bool:
            try:
                loop.call_soon_threadsafe(fn, *args)
                return True
            except RuntimeError:  # the loop is closed: we are shutting down
                stop.set()
                return False

        def run() -> None:
            try:
                for batch in watchfiles.watch(
                    *roots,
                    watch_filter=self._filter,
                    debounce=max(self.opts.quiet_ms, 50),
                    step=2,  # ms: the quiet period starts sooner; +0.6% of a core idle vs 5
                    stop_event=stop,
                    rust_timeout=1000,
                    yield_on_timeout=False,
                    force_polling=False,
                    raise_interrupt=False,
                ):
                    if not post(self._absorb, batch):
                        return
            except BaseException as exc:  # watcher died (watch limit, fs gone, ...)
                post(finish, exc)
                return
            post(finish, None)

        thread = threading.Thread(target=run, name="fbuild-watch", daemon=True)
        thread.start()
        try:
            exc = await failed
        finally:
            stop.set()
        if exc is None or self._stop.is_set():
            return
        self.stats.watcher_errors += 1
        self.on_note(f"file watcher error ({exc}); rescanning and falling back to polling")
        self.stats.mode = "polling"
        self._rescan_needed = True
        self._kick.set()
        await self._poll()

    async def _poll(self) -> None:
        """Polling mode: compare st_mtime_ns + size (never whole seconds)."""
        interval = self.opts.poll_interval_ms / 1000
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), interval)
            if self._stop.is_set():
                return
            dirty = await asyncio.to_thread(self.ws.stat_diff)
            if await self._rules_changed(dirty):
                self._saw_change()
                self._rescan_needed = True
                self._kick.set()
            if dirty:
                self._saw_change()
                self.ws.mark(dirty)
                self._kick.set()

    async def _rules_changed(self, dirty: list[str]) -> bool:
        """Without events: did what is ignored change? (a new or edited
        ignore file among the changed files, or one read before that changed
        on disk, wherever it is: info/exclude, core.excludesFile)"""
        ign = self.ws.ignore
        if any(ign.is_rules_file_abs(p) for p in dirty):
            return True
        return await asyncio.to_thread(ign.reload_changed)

    def _saw_change(self) -> None:
        """Stamp the first sign of the pending change (events, a poll or a
        sweep): the loop measures save -> first log line from it."""
        if self._first_event_at is None:
            self._first_event_at = time.monotonic()

    def _loop_call(self, fn: Callable[[], object]) -> None:
        if self._aio is not None:
            with contextlib.suppress(RuntimeError):  # loop closed: shutting down
                self._aio.call_soon_threadsafe(fn)

    def _start_source(self) -> None:
        self._aio = asyncio.get_running_loop()
        if self._source_task is None:
            coro = self._poll() if self.opts.force_polling else self._events()
            self._source_task = asyncio.ensure_future(coro)

    # -- releases ---------------------------------------------------------------
    async def _quiet(self) -> None:
        start = time.monotonic()
        cap = self.opts.max_wait_ms / 1000
        while True:
            self._kick.clear()
            remaining = cap - (time.monotonic() - start)
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(self._kick.wait(), min(self.opts.quiet_ms / 1000, remaining))
            except TimeoutError:
                return
            if self._stop.is_set():
                return

    async def _git_settled(self) -> None:
        lock = self.ws.root / ".git" / "index.lock"
        if not lock.exists():
            return
        self.stats.lock_waits += 1
        while lock.exists() and not self._stop.is_set():
            await asyncio.sleep(0.05)
        await self._quiet()

    async def probe(self, timeout: float = 2.0) -> bool:
        """Write a cookie file in a watched directory and wait for its event
        (as Watchman does). A watcher that stays deaf is restarted and the
        tree rescanned, so no change can go unnoticed for long."""
        if self.stats.mode != "events" or self._source_task is None:
            return True
        dirs = [self.ws.root / p if p else self.ws.root for p in self.ws.paths]
        target = next((d for d in dirs if d.is_dir()), None)
        if target is None:
            return True
        self._cookie_seen.clear()
        if await self._cookie_seen_within(target, timeout):
            self.stats.cookies += 1
            return True
        self.stats.restarts += 1
        self.on_note("the file watcher did not see its probe file; restarting it and rescanning")
        task, self._source_task = self._source_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._start_source()
        self.request_rescan()
        return False

    async def _cookie_seen_within(self, target: str | os.PathLike[str], timeout: float) -> bool:
        """A cookie written before the source has placed its watches is never
        seen: it is written again, at growing intervals (no fixed wait for
        the source to be ready), until one is seen or `timeout` passes.
        Unwritable directory: nothing to prove with, so True."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        wait = 0.05
        while True:
            self._cookie_n += 1
            cookie = os.path.join(target, f"{COOKIE_PREFIX}{os.getpid()}-{self._cookie_n}")
            try:
                with open(cookie, "wb"):
                    pass
            except OSError:
                return True
            try:
                left = deadline - loop.time()
                await asyncio.wait_for(self._cookie_seen.wait(), max(0.0, min(wait, left)))
                return True
            except TimeoutError:
                if loop.time() >= deadline:
                    return False
                wait *= 2
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(cookie)

    async def changes(self) -> AsyncIterator[ChangeSet]:
        """Yields each real content change set, after the quiet period."""
        self._start_source()
        try:
            idle_since = time.monotonic()
            while not self._stop.is_set():
                wait = min(self.opts.idle_rescan_s, self.opts.cookie_every_s)
                self._releasing = False
                try:
                    await asyncio.wait_for(self._kick.wait(), wait)
                    self._releasing = True
                except TimeoutError:
                    if time.monotonic() - idle_since < self.opts.idle_rescan_s:
                        await self.probe()
                        await self._sweep()
                        continue
                    idle_since = time.monotonic()
                    healed = await self._rescan()
                    if healed:
                        self.stats.healed += len(healed.paths)
                        self.on_note(
                            f"idle rescan found {len(healed.paths)} change(s) the events missed"
                        )
                        yield healed
                    continue
                if self._stop.is_set():
                    break
                idle_since = time.monotonic()
                await self._quiet()
                await self._git_settled()
                if self._paused:
                    continue
                if self._rescan_needed:
                    cs = await self._rescan()
                else:
                    cs = await asyncio.to_thread(self.ws.refresh)
                if _TRACE:
                    print(
                        f"watch {time.monotonic():.4f} refresh -> changed={sorted(cs.changed)} "
                        f"touched={sorted(cs.touched)}",
                        file=sys.stderr,
                        flush=True,
                    )
                if cs:
                    self.stats.releases += 1
                    cs.first_event_at, self._first_event_at = self._first_event_at, None
                    yield cs
                else:
                    self._first_event_at = None
                    if cs.touched:
                        self.stats.touch_only += 1
        finally:
            self._stop.set()
            if self._source_task is not None:
                self._source_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await self._source_task

    async def _sweep(self) -> None:
        """Idle safety net between full rescans: compare every watched file's
        (mtime_ns, size, inode) with the watch set, without hashing. On
        small trees it runs at every probe; on large ones rarely enough to
        stay near 1 % of a core."""
        now = time.monotonic()
        if now < self._next_sweep:
            return
        t0 = time.monotonic()
        dirty = await asyncio.to_thread(self.ws.stat_diff)
        cost = time.monotonic() - t0
        self._next_sweep = time.monotonic() + max(self.opts.cookie_every_s, 100 * cost)
        if await self._rules_changed(dirty):
            self.on_note("the ignore rules changed; rescanning")
            self._saw_change()
            self._rescan_needed = True
            self._kick.set()
        if dirty:
            self.stats.healed += len(dirty)
            self.on_note(f"a periodic check found {len(dirty)} change(s) the file events missed")
            self._saw_change()
            self.ws.mark(dirty)
            self._kick.set()

    async def _rescan(self) -> ChangeSet:
        self._rescan_needed = False
        self.stats.rescans += 1
        if self.ws.ignore.use_ignore_files:
            self.ws.ignore.load_ignore_files(self.ws.root)
        return await asyncio.to_thread(self.ws.scan)


def state_path_for(output_dirs: list[Path], project_dir: Path) -> Path:
    """Where the watch state lives: next to the build outputs."""
    base = output_dirs[0] if output_dirs else project_dir
    return base / ".fbuild" / "watch-state.json"
