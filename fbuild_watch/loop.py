"""The loop: a state machine from file changes to builds to deploys.

It takes events (files changed, build finished, commands) and emits `Event`s
that views subscribe to. It owns no UI. Changes during a build either queue
one follow-up build (default) or cancel and restart the build; a build whose
sources changed while it ran is reported `stale` and never deployed. A
deploy in progress is never interrupted, not even by quitting (unless the
user quits twice: `abort`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from fbuild_watch.build.backends import Backend, detect_backend
from fbuild_watch.build.progress import BuildProgressTracker
from fbuild_watch.build.runner import BuildResult, BuildRun
from fbuild_watch.connect_ahead import Boards, ConnectAhead
from fbuild_watch.errors import FbuildError, RuntimeFailure
from fbuild_watch.events import (
    BuildFinished,
    BuildOutput,
    BuildProgress,
    BuildSkipped,
    BuildStarted,
    Command,
    CycleFinished,
    Event,
    Failed,
    FilesChanged,
    LoopStarted,
    LoopState,
    LoopStopped,
    Note,
    Paused,
    Resumed,
    StartupScan,
    Warned,
)
from fbuild_watch.failures import DebugLog, Supervisor
from fbuild_watch.image.layout import ValidatedLayout
from fbuild_watch.watch.state import WatchSet
from fbuild_watch.watch.watcher import Watcher, state_path_for

Emit = Callable[[Event], None]

# The file watcher is restarted (in polling mode) after an unexpected error;
# this many failures within WATCHER_FAILURE_WINDOW_S end the loop instead.
WATCHER_MAX_FAILURES = 3
WATCHER_FAILURE_WINDOW_S = 60.0
BUILD_TICK_S = 1.0  # a build_progress event at least this often while building


async def _tick_until(build: asyncio.Future[Any], progress: BuildProgressTracker) -> None:
    """Once a second while the build runs: its elapsed time (and ninja's
    count, if any), so a long build is never a silent wait."""
    while not build.done():
        await asyncio.sleep(BUILD_TICK_S)
        if not build.done():
            progress.tick()


class Deployer(Boards, Protocol):
    """Deploys a validated layout to every board; emits its own events.
    (`connect_ahead` and `back_to_app`: see connect_ahead.Boards.)"""

    async def deploy(self, layout: ValidatedLayout, *, full: bool, app_only: bool) -> bool: ...

    async def reset(self) -> None: ...

    async def first_app_line(self, timeout: float = 5.0) -> float | None:
        """Monotonic time of the first line the new firmware printed on any
        board after the last deploy; None if none is coming (or not in time)."""

    def abort(self) -> None:
        """Interrupt deploys in progress (they then report `failed`)."""


@dataclass(frozen=True)
class DeployRequest:
    """A deploy asked for without a build: a key, or a board that is back."""

    full: bool = False
    app_only: bool = False


@dataclass
class Cycle:
    """Phase timings of one change -> build -> deploy cycle (seconds)."""

    generation: int
    change_at: float | None = None  # monotonic time of the change release
    build_start: float | None = None
    build_end: float | None = None
    deploy_end: float | None = None
    timings: dict[str, float] = field(default_factory=dict)


def fixed_settings(backend: Backend) -> dict[str, object]:
    """The settings a running session cannot change: the ports it holds,
    the monitor it runs, what it watches (README, "Watching")."""
    out: dict[str, object] = {}
    cfg = backend.config
    if cfg is not None:
        out["[board] port"] = cfg.port
        out["[watch]"] = (cfg.watch_paths, cfg.watch_ignore, cfg.debounce_ms)
        out["[monitor]"] = cfg.monitor_baud
    with contextlib.suppress(FbuildError):  # a broken file: the build says it
        monitor = backend.monitor_settings()
        out["the monitor settings"] = dataclasses.replace(monitor, warnings=(), origins=())
    return out


class WatchLoop:
    def __init__(
        self,
        backend: Backend,
        watch_set: WatchSet,
        watcher: Watcher | None,
        emit: Emit,
        *,
        deployer: Deployer | None = None,
        on_busy: str = "queue",
        state_file: Path | None = None,
        debug_log: DebugLog | None = None,
    ) -> None:
        if on_busy not in ("queue", "restart"):
            raise ValueError(f"on_busy must be 'queue' or 'restart', got {on_busy!r}")
        self.backend = backend
        self.ws = watch_set
        self.watcher = watcher
        self.emit = emit
        self.deployer = deployer
        self.on_busy = on_busy
        self.state_file = state_file or state_path_for(backend.output_dirs(), backend.project_dir)
        self.supervisor = Supervisor(self._report_failure, debug_log)
        self.state = LoopState.IDLE
        # part -> one line, for every part of the loop that stopped or failed
        # unexpectedly (the views show it; see LOOP.md, "Failure model")
        self.problems: dict[str, str] = {}
        self.fatal: str | None = None  # the loop ended because of this
        self.last_build_ok: bool | None = None
        self._state_save_warned = False
        self.generation = 0  # bumped by every real change set
        self.built_generation = -1  # generation of the last finished, non-stale build
        self.paused = False
        self.history: list[Cycle] = []
        self.last_layout: ValidatedLayout | None = None
        self._pending_changes: set[str] = set()
        self._forced: str | None = None  # "rebuild"
        self._deploy_request: DeployRequest | None = None
        self._change_at: float | None = None
        self._wake = asyncio.Event()
        self._quit = asyncio.Event()
        self._build_run: BuildRun | None = None
        self._bg_tasks: set[asyncio.Future[None]] = set()
        self._saves: set[asyncio.Future[None]] = set()  # state writes in flight
        self._worker_waiting = False
        self._probe_task: asyncio.Future[None] | None = None
        self._deploy_fut: asyncio.Future[bool] | None = None
        self._aio: asyncio.AbstractEventLoop | None = None
        self._aio_thread: int | None = None
        self._watcher_failures: list[float] = []
        # boards taken into their bootloaders while the build makes the image
        self.ahead = ConnectAhead(deployer, self._background) if deployer is not None else None
        # what the session took at start and keeps: an edit to it says "restart"
        self._fixed_settings = fixed_settings(backend)
        self._restart_said: list[str] = []

    def _report_failure(self, part: str, message: str) -> None:
        """Called on whatever thread failed; handled on the loop's."""
        aio = self._aio
        if aio is not None and threading.get_ident() != self._aio_thread and not aio.is_closed():
            aio.call_soon_threadsafe(self._report_failure, part, message)
            return
        self.problems[part] = message
        self.emit(Failed(part=part, message=message))

    def _background(self, coro: Awaitable[None], part: str) -> asyncio.Future[None]:
        """A supervised background task: its exception is reported, never lost."""
        task = asyncio.ensure_future(coro)
        self._bg_tasks.add(task)
        task.add_done_callback(self._bg_tasks.discard)
        self.supervisor.watch(task, part)
        return task

    @property
    def deploying(self) -> bool:
        return self._deploy_fut is not None and not self._deploy_fut.done()

    @property
    def idle(self) -> bool:
        """No build, deploy or reset running or requested (quiet points)."""
        return (
            self._worker_waiting
            and not self._wake.is_set()
            and not self._needs_build()
            and self._deploy_request is None
            and not any(not t.done() for t in self._bg_tasks if t is not self._probe_task)
        )

    # -- inputs ----------------------------------------------------------------
    def files_changed(self, paths: set[str], *, at: float | None = None) -> None:
        """`at`: monotonic time of the first file event behind this change."""
        self.generation += 1
        self._pending_changes |= paths
        if self._change_at is None:
            self._change_at = at if at is not None else time.monotonic()
        self.emit(
            FilesChanged(generation=self.generation, paths=sorted(paths)[:50], count=len(paths))
        )
        if (
            self.state == LoopState.BUILDING
            and self.on_busy == "restart"
            and self._build_run is not None
        ):
            self._build_run.cancel()
        self._wake.set()

    def command(self, name: str) -> None:
        """A user's command (keys, stdin lines): see `events.Command`."""
        name = name.strip()
        if name == Command.QUIT:
            self._quit.set()
            self._wake.set()
        elif name == Command.REBUILD:
            self._forced = "rebuild"
            self._wake.set()
        elif name in (Command.FULL_FLASH, Command.APP_FLASH):
            self._deploy_request = DeployRequest(
                full=name == Command.FULL_FLASH, app_only=name == Command.APP_FLASH
            )
            self._wake.set()
        elif name == Command.PAUSE:
            self.paused = not self.paused
            if self.watcher is not None:
                self.watcher.pause(self.paused)
            self.emit(Paused() if self.paused else Resumed())
        elif name == Command.RESET:
            if self.deployer is not None:
                self._background(self.deployer.reset(), "reset")
        else:
            self.emit(Failed(message=f"unknown command {name!r}"))

    def board_back(self) -> None:
        """A board that missed the last deploy is back: the last good build
        is deployed (boards that hold it already trust-skip, at no cost)."""
        if self._deploy_request is None and self.last_layout is not None:
            self.emit(Note(message="a board is back: deploying the last build"))
            self._deploy_request = DeployRequest()
            self._wake.set()

    # -- start-up ------------------------------------------------------------------
    def startup_scan(self, *, may_skip: bool = True) -> bool:
        """Scan the tree against the persisted state; True if a build is needed.
        `may_skip`: the last build may be reused when nothing changed since."""
        dropped: list[str] = []  # entries of a hostile or damaged state file
        loaded = WatchSet.load_state(self.state_file, warnings=dropped)
        for message in dropped:
            self.emit(Warned(message=message))
        previous, build_fp = loaded if loaded else (None, None)
        t0 = time.monotonic()
        try:
            changes = self.ws.scan(previous)
        except OSError as exc:  # the project itself is unreadable: nothing to watch
            where = exc.filename or self.backend.project_dir
            raise RuntimeFailure(
                f"cannot scan the project: {exc.strerror or exc}", source=where
            ) from None
        scan_ms = (time.monotonic() - t0) * 1000
        self._note_unreadable()
        if may_skip and build_fp is not None and build_fp == self._fingerprint():
            try:
                self.last_layout = self.backend.load_layout().validate()
            except FbuildError:
                self.last_layout = None
            if self.last_layout is not None:
                self.built_generation = self.generation
                self.emit(
                    BuildSkipped(
                        reason="sources unchanged since the last successful build",
                        fingerprint=build_fp,
                        files=len(self.ws),
                        scan_ms=round(scan_ms, 1),
                        image_hash=self.last_layout.image_hash,
                    )
                )
                return False
        self.emit(
            StartupScan(
                files=len(self.ws),
                scan_ms=round(scan_ms, 1),
                changed_since_last_build=len(changes.paths) if previous else None,
            )
        )
        return True

    # -- the worker ----------------------------------------------------------------
    def _needs_build(self) -> bool:
        return self._forced is not None or self.generation > self.built_generation

    async def _build(self) -> tuple[BuildResult, int, Cycle]:
        gen = self.generation
        cycle = Cycle(gen, change_at=self._change_at)
        self._change_at = None
        reason = self._forced or "changed"
        self._forced = None
        changed = sorted(self._pending_changes)
        self._pending_changes.clear()
        self.state = LoopState.BUILDING
        cycle.build_start = time.monotonic()
        if cycle.change_at is not None:
            cycle.timings["change_to_build_start"] = cycle.build_start - cycle.change_at
        self.emit(
            BuildStarted(generation=gen, reason=reason, changed=changed[:50], count=len(changed))
        )
        loop = asyncio.get_running_loop()

        def on_progress(done: int | None, total: int | None, elapsed_s: float) -> None:
            ev = BuildProgress(done=done, total=total, elapsed_ms=round(elapsed_s * 1000, 1))
            loop.call_soon_threadsafe(self.emit, ev)

        progress = BuildProgressTracker(on_progress)

        def on_line(line: str) -> None:
            loop.call_soon_threadsafe(self.emit, BuildOutput(line=line))
            progress.line(line)

        settings = self._settings_files() & set(changed)
        if settings:
            self._reload_config(sorted(settings))
        # with the settings files this backend was made from (a malformed
        # fbuild.toml it could not load is never recorded as built)
        fingerprint = self._fingerprint()
        run = BuildRun(self.backend, on_line, pointers=self.ws.pointers)
        self._build_run = run
        elf = self._elf_path() if self.ahead is not None else None
        build = asyncio.ensure_future(asyncio.to_thread(run.run))
        if self.ahead is not None and elf is not None:
            self.ahead.start(elf, build, cycle.timings, cycle.build_start)
        ticker = self._background(_tick_until(build, progress), "build progress")
        try:
            result = await build
        except Exception as exc:  # a bug or an OS error the build run did not expect
            message = self.supervisor.failed("build", exc)
            result = BuildResult(
                False, time.monotonic() - cycle.build_start, None, [], [], error=message
            )
        finally:
            self._build_run = None
            ticker.cancel()
        cycle.build_end = time.monotonic()
        if self.ahead is not None:
            await self.ahead.settle()
        cycle.timings["build"] = result.duration_s
        stale = self.generation != gen
        self.emit(BuildFinished(result=result, generation=gen, stale=stale))
        if result.ok and not stale:
            self.built_generation = gen
            self.last_layout = result.layout
            # Off the hot path: on a large tree the state is megabytes of JSON,
            # and the deploy should not wait for it.
            save = asyncio.ensure_future(asyncio.to_thread(self._save_state, fingerprint))
            self.supervisor.watch(save, "state save")
            self._saves.add(save)
            save.add_done_callback(self._saves.discard)
        elif not result.ok and not result.cancelled and not stale:
            self.built_generation = gen  # a failed build is not retried until something changes
        if not result.cancelled and not stale:
            self.last_build_ok = result.ok
        return result, gen, cycle

    def _settings_files(self) -> set[str]:
        """Project-relative paths of the files the build's settings come
        from (fbuild.toml, platformio.ini, sdkconfig, sketch.yaml, ...)."""
        root = self.backend.project_dir
        out = set()
        for path in self.backend.config_files():
            with contextlib.suppress(ValueError):
                out.add(path.relative_to(root).as_posix())
        return out

    def _fingerprint(self) -> str:
        return self.ws.fingerprint_with(self.backend.settings_digests())

    def _reload_config(self, names: list[str]) -> None:
        """A settings file was edited: the build settings (command, env,
        layout, ELF, timeout, flashing and monitor settings the build system
        writes down) apply from this build on. A broken file keeps the old
        settings until it is fixed (the build says what is wrong)."""
        what = ", ".join(names)
        try:
            backend = detect_backend(self.backend.project_dir)
        except FbuildError as exc:
            self.emit(Warned(message=f"{exc}; the previous build settings stay"))
            return
        if type(backend) is not type(self.backend):
            message = f"{what} changed the kind of project; restart to switch"
            self.emit(Warned(message=message))
            return
        self.backend = backend
        self.emit(Note(message=f"{what} changed: build settings reloaded"))
        now = fixed_settings(backend)
        differ = [k for k in sorted(self._fixed_settings.keys() | now.keys())
                  if self._fixed_settings.get(k) != now.get(k)]  # fmt: skip
        if differ and differ != self._restart_said:
            self.emit(
                Warned(
                    message=f"{what}: {', '.join(differ)} changed; restart fbuild watch to apply "
                    "(this session keeps the settings it started with)"
                )
            )
        self._restart_said = differ

    def _elf_path(self) -> Path | None:
        try:
            return self.backend.elf_path()
        except FbuildError:  # e.g. a malformed platformio.ini: the build will say so
            return None

    def _save_state(self, build_fingerprint: str) -> None:
        """The saved state only spares the next start a build: a failure to
        write it is one warning, then silence (it is retried each build)."""
        try:
            self.ws.save_state(self.state_file, build_fingerprint=build_fingerprint)
        except OSError as exc:
            if not self._state_save_warned:
                self._state_save_warned = True
                self._emit_threadsafe(
                    Warned(
                        message=f"{self.state_file}: cannot save the watch state "
                        f"({exc.strerror or exc}); the next start rebuilds"
                    )
                )

    def _emit_threadsafe(self, ev: Event) -> None:
        aio = self._aio
        if aio is not None and not aio.is_closed():
            aio.call_soon_threadsafe(self.emit, ev)

    def _note_unreadable(self) -> None:
        """Files the watch set could not read are watched (a later edit that
        makes them readable builds) and said once each."""
        for rel, why in self.ws.take_unreadable():
            self.emit(Warned(message=f"{rel}: cannot read ({why}); still watched"))
        for line in self.ws.ignore.take_warnings():  # an ignore file it could not read
            self.emit(Warned(message=line))

    async def _deploy(
        self, layout: ValidatedLayout, cycle: Cycle | None, *, full: bool, app_only: bool
    ) -> None:
        if self.deployer is None:
            return
        self.state = LoopState.DEPLOYING
        t0 = time.monotonic()
        # Shielded: quitting never cancels a deploy half way; `run` waits for
        # it (or `abort` interrupts it, and it reports what is on flash).
        fut = self._deploy_fut = asyncio.ensure_future(
            self.deployer.deploy(layout, full=full, app_only=app_only)
        )
        await asyncio.shield(fut)
        self.state = LoopState.MONITORING
        if cycle is not None:
            cycle.deploy_end = time.monotonic()
            cycle.timings["deploy"] = cycle.deploy_end - t0
            if cycle.change_at is not None:
                seen = await self.deployer.first_app_line()
                if seen is not None:
                    # several boards: the first app may print before the last
                    # deploy ends (0 then, never negative)
                    cycle.timings["deploy_to_first_log"] = max(0.0, seen - cycle.deploy_end)
                    cycle.timings["save_to_first_log"] = seen - cycle.change_at

    async def _worker(self) -> None:
        """Builds and deploys, one at a time. An unexpected exception in one
        cycle is reported and the worker goes on with the next change: it
        never ends silently."""
        while not self._quit.is_set():
            self._worker_waiting = True
            await self._wake.wait()
            self._worker_waiting = False
            self._wake.clear()
            while not self._quit.is_set():
                try:
                    more = await self._work_once()
                except Exception as exc:
                    self.supervisor.failed("build worker", exc)
                    self.state = LoopState.IDLE if self.deployer is None else LoopState.MONITORING
                    more = False
                if not more:
                    break

    async def _work_once(self) -> bool:
        """One build (and its deploy), or one requested deploy. False: nothing to do."""
        if self._needs_build() and not self.paused:
            result, gen, cycle = await self._build()
            self.history.append(cycle)
            del self.history[:-50]
            if result.ok and self.generation == gen and result.layout is not None:
                req = self._deploy_request or DeployRequest()
                self._deploy_request = None
                await self._deploy(result.layout, cycle, full=req.full, app_only=req.app_only)
            elif (
                not self._needs_build() and self._deploy_request is None and self.ahead is not None
            ):
                # failed (or superseded) after linking: nothing to write, so
                # no board stays in its bootloader
                await self.ahead.back_to_app()
            self.emit(
                CycleFinished(
                    generation=gen,
                    ok=result.ok,
                    timings_ms={k: round(v * 1000, 1) for k, v in cycle.timings.items()},
                    save_to_first_log_ms=(
                        round(cycle.timings["save_to_first_log"] * 1000, 1)
                        if "save_to_first_log" in cycle.timings
                        else None
                    ),
                )
            )
            self.state = LoopState.IDLE if self.deployer is None else LoopState.MONITORING
            if self.ahead is not None:
                self.ahead.refresh()
            return True
        if self._deploy_request is not None and self.last_layout is not None:
            req = self._deploy_request
            self._deploy_request = None
            await self._deploy(self.last_layout, None, full=req.full, app_only=req.app_only)
            return True
        return False

    async def _consume_changes(self) -> None:
        """Hands the watcher's change sets to the loop. If the watcher fails
        unexpectedly it is reported, the tree rescanned and the watcher
        restarted in polling mode (events may be what broke); failing
        again and again ends the loop with an error."""
        assert self.watcher is not None
        watcher = self.watcher

        async def first_probe() -> None:
            await watcher.probe()  # retries until the source's watches are placed

        self._probe_task = self._background(first_probe(), "file watcher probe")
        while not self._quit.is_set():
            try:
                async for changes in watcher.changes():
                    self._note_unreadable()
                    self.files_changed(changes.paths, at=changes.first_event_at)
                return
            except Exception as exc:
                message = self.supervisor.failed("file watcher", exc)
                now = time.monotonic()
                self._watcher_failures = [
                    t for t in self._watcher_failures if now - t < WATCHER_FAILURE_WINDOW_S
                ] + [now]
                if len(self._watcher_failures) >= WATCHER_MAX_FAILURES:
                    self.fatal = f"file watcher stopped: {message}"
                    self.problems["file watcher"] = self.fatal
                    self.emit(Failed(part="file watcher", message=self.fatal))
                    self.stop()
                    return
                self.emit(Note(message="file watcher restarted in polling mode after an error"))
                watcher.restart_polling()

    async def _supervised(self, coro: Awaitable[None], part: str) -> None:
        """A part the loop cannot run without: if it ends by an unexpected
        exception, that is reported and the loop ends with it (non-zero exit)."""
        try:
            await coro
        except Exception as exc:
            message = self.supervisor.failed(part, exc)
            self.fatal = f"{part} stopped: {message}"
            self.problems[part] = self.fatal
            self.stop()

    async def run(
        self,
        *,
        startup_build: bool | None = None,
        ready: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Run until `quit`. `startup_build=None`: build only if needed."""
        project = str(self.backend.project_dir)
        self._aio = asyncio.get_running_loop()
        self._aio_thread = threading.get_ident()
        self.emit(LoopStarted(project=project, backend=self.backend.kind))
        # Always scanned: the watch set (and its `.lnk` pointers, which the
        # first build resolves) comes from this scan, even with --build.
        changed = self.startup_scan(may_skip=startup_build is None)
        need = changed if startup_build is None else startup_build
        if need:
            self._forced = "startup"
        elif self.last_layout is not None and self.deployer is not None:
            self._deploy_request = DeployRequest()
        elf = self._elf_path() if self.ahead is not None else None
        if self.ahead is not None and elf is not None:
            self.ahead.prime(elf)  # what the objects on disk hold, for the first edit
        self._wake.set()
        tasks = [asyncio.ensure_future(self._supervised(self._worker(), "build worker"))]
        if self.watcher is not None:
            tasks.append(
                asyncio.ensure_future(self._supervised(self._consume_changes(), "file watcher"))
            )
        if ready is not None:
            await ready()
        try:
            await self._quit.wait()
        finally:
            if self._build_run is not None:
                self._build_run.cancel()
            if self.watcher is not None:
                self.watcher.stop()
            for t in tasks:
                t.cancel()
            for t in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            if self.deploying:
                assert self._deploy_fut is not None
                self.emit(
                    Note(
                        message="quitting after the deploy in progress; quit again to "
                        "abort it (the flash is then partially written)"
                    )
                )
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._deploy_fut)
            if self.ahead is not None:
                await self.ahead.settle()
                await self.ahead.back_to_app()
            if self._saves:  # the next start relies on the saved state
                await asyncio.gather(*self._saves, return_exceptions=True)
            stats = vars(self.watcher.stats) if self.watcher is not None else {}
            self.emit(LoopStopped(watcher=dict(stats)))

    def stop(self) -> None:
        """Quit: a deploy in progress is finished first (see `abort`)."""
        self._quit.set()
        self._wake.set()

    def abort(self) -> None:
        """Quit now: a deploy in progress is interrupted and reports what is
        on flash (`failed`, partially written); trust is cleared."""
        self.stop()
        if self.deploying and self.deployer is not None:
            self.deployer.abort()
