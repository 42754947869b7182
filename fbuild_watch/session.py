"""A watch session: the loop, the boards (port owner + deployer + monitor)
and the event stream the views render. No UI here.

Serial lines do not go through the asyncio loop: reader threads hand them to
`on_serial` in batches (views make that thread-safe: the TUI queues them, the
line views queue them for their stdout writer), so a flood never delays keys
or builds.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fbuild_watch.boardports import HeldPorts, hold_ports
from fbuild_watch.build.backends import Backend, detect_backend
from fbuild_watch.crash.coredump import CoreDumpReport
from fbuild_watch.crash.frames import AddressNote
from fbuild_watch.crash.rom import rom_scripts
from fbuild_watch.decode import Crash, CrashDetector
from fbuild_watch.deploy.engine import BoardDeployer
from fbuild_watch.deploy.outcome import DeployKind, DeployOutcome
from fbuild_watch.deploy.ports import (
    PortInfo,
    board_ports,
)
from fbuild_watch.deploy.progress import WriteProgress
from fbuild_watch.deploy.trust import FlashCache, SessionTrust
from fbuild_watch.deploy.worker import BoardWorker
from fbuild_watch.errors import ConfigError, FbuildError, RuntimeFailure, UsageError
from fbuild_watch.events import (
    BoardRef,
    BoardReset,
    BuildFinished,
    Command,
    ConnectedAhead,
    CoreDumpDecoded,
    CrashDecoded,
    DeployFinished,
    DeployProgress,
    DeployStarted,
    Event,
    Failed,
    Note,
    OnSerial,
    PortChanged,
    PortState,
    SessionStarted,
    Warned,
)
from fbuild_watch.failures import DebugLog, Supervisor
from fbuild_watch.fsutil import user_cache_root
from fbuild_watch.image.layout import BOOTLOADER, ValidatedLayout
from fbuild_watch.image.linkkey import link_key
from fbuild_watch.image.settings import (
    DEFAULT_FLASH_BAUD,
    FlashSettings,
    MonitorSettings,
    ResolvedFlash,
    ResolvedMonitor,
    environ_flash,
    resolve_flash,
    resolve_monitor,
)
from fbuild_watch.logfilter import compile_filter
from fbuild_watch.logtime import check_format
from fbuild_watch.loop import WatchLoop
from fbuild_watch.monitor import LineSplitter, LogFile
from fbuild_watch.plugins import load_port_schemes
from fbuild_watch.project_lock import ProjectLock
from fbuild_watch.watch import Watcher, WatchOptions, WatchSet
from fbuild_watch.watch.watcher import state_path_for

# Lines the ROM and the 2nd stage bootloader print: not yet "the new firmware".
_BOOT_NOISE = re.compile(
    r"^(ESP-ROM:|Build:|rst:0x|Saved PC:|boot_comm|SPIWP:|mode:|clock div|load:0x|entry 0x|"
    r"waiting for download|"
    r"[IWE] \(\d+\) (boot|boot\.esp32\w*|esp_image|cpu_start|heap_init|spi_flash|app_init"
    r"|efuse_init)\b|$)"
)


@dataclass
class SessionOptions:
    project: Path
    ports: list[str] = field(default_factory=list)
    baud: int | None = None  # None: [board] baud, ESPBAUD or 460800
    monitor_baud: int | None = None  # None: the project's, else 115200
    on_busy: str = "queue"
    trust: bool = True
    quiet_ms: int | None = None
    poll: bool = False
    log_file: Path | None = None
    elf: Path | None = None
    fqbn: str | None = None
    build_on_start: bool | None = None  # None: only when the sources changed
    print_filter: str | None = None  # None: the project's (PlatformIO monitor_filters, ...)
    timestamps: bool = False
    timestamp_format: str | None = None
    eol: str | None = None  # CR, LF, CRLF; None: the project's, else CRLF
    reset_on_attach: bool = False  # `fbuild monitor` without --no-reset
    # `fbuild watch` without --no-reset: when the first build fails (so no
    # deploy resets the board), reset it for its boot log, as on attach
    reset_if_no_deploy: bool = False
    wait_place: float | None = None  # labgrid: wait this long for a held place


class BoardSession:
    """One board: its connection (the monitor), deployer, splitter, crash decoder."""

    def __init__(self, info: PortInfo, label: str, session: WatchSession) -> None:
        self.info = info
        self.label = label
        self.session = session
        self.splitter = LineSplitter()
        # panics and core dumps are collected on the worker thread, decoded
        # on a decoding thread
        self.crash = CrashDetector(
            on_crash=self._on_crash,
            on_coredump=self._on_coredump,
            on_warning=self._on_decode_warning,
            on_reply=self._reply,
            coredump_dir=session.coredump_dir(),
        )
        self.log_file: LogFile | None = None
        self.first_line_after: float | None = None  # set at a deploy's reset
        self.first_app_line_at: float | None = None
        # The last deploy did not complete (failed, or the board was away):
        # when the port comes back, the last good build is deployed again.
        self.needs_deploy = False
        # (image hash, link key of its ELF) of what the last deploy left on the board
        self.held_link: tuple[str, str | None] | None = None
        self.ever_connected = False  # `monitor --timeout`: a port that never opened fails
        self.conn = BoardWorker(
            info,
            baud=session.monitor.baud,
            on_data=self._on_data,
            on_state=self._on_state,
            on_pause=self._on_pause,
        )
        cache = FlashCache() if session.opts.trust else None
        self.deployer = BoardDeployer(
            self.conn,
            baud=session.opts.baud or DEFAULT_FLASH_BAUD,  # until a build's settings say
            trust=SessionTrust(enabled=session.opts.trust),
            cache=cache,
            on_progress=self._on_progress,
        )

    @property
    def url(self) -> str:
        return self.info.url

    @property
    def log_failed(self) -> str | None:
        """Why the log file was turned off (disk full, ...), if it was."""
        return self.log_file.failed if self.log_file is not None else None

    def needs_link(self, key: str | None) -> bool:
        """Will a deploy of the ELF with this link key talk to the board?
        Yes unless the board is trusted to hold an image of an ELF with the
        same loadable bytes (then it most likely trust-skips). None: an
        object the last image was linked from changed, so yes."""
        if self.conn.port is None:
            return False
        trusted = self.deployer.effective_trust()
        if trusted is None or key is None:
            return True  # nothing trusted (the deploy probes the board), or a new image
        return self.held_link != (trusted.image_hash, key)

    def _on_state(self, state: str, message: str) -> None:
        self.session.emit_threadsafe(
            PortChanged(
                board=self.label, port=self.info.url, state=PortState(state), message=message
            )
        )
        if state != "connected":
            self.crash.flush()  # the output stopped: decode what was collected
        if state == "connected":
            self.ever_connected = True
        if state == "connected" and self.needs_deploy:
            self.session.board_back_threadsafe()

    def _on_progress(self, p: WriteProgress) -> None:
        """A write in progress (on the worker thread, <= 10 a second)."""
        self.session.emit_threadsafe(
            DeployProgress(
                board=self.label,
                port=self.info.url,
                bytes_done=p.bytes_done,
                bytes_total=p.bytes_total,
                sectors_done=p.sectors_done,
                sectors_total=p.sectors_total,
            )
        )

    def _on_pause(self) -> None:
        # A line cut off by a deploy ends here; glued to the boot log that
        # follows it would read as the new firmware's first line.
        lines = self.crash.take(self.splitter.flush())
        if lines:
            self.session.on_serial(self.label, self.info.url, time.time(), lines)

    def _reply(self, data: bytes) -> None:
        """What the monitor answers the board (Enter at a core dump's
        prompt), in order with the worker's other jobs."""
        self.conn.write(data)

    def _on_data(self, data: bytes, t: float) -> None:
        if self.log_file is not None:
            self.log_file.write(data)
        try:
            self._lines(data, t)
        except Exception as exc:  # the reader goes on; the failure is said
            self.session.failed(f"monitor of {self.label}", exc)

    def _lines(self, data: bytes, t: float) -> None:
        # a core dump's base64 body is collapsed out (one `coredump` event)
        lines = self.crash.take(self.splitter.feed(data))
        if not lines:
            return
        now = time.monotonic()
        notes = [self.crash.addresses(line) for line in lines]
        self.session.on_serial(self.label, self.info.url, t, lines, notes)
        # after the lines went to the views: a cycle's end must not be
        # rendered before the line that ended it
        if self.first_line_after is not None:
            for line in lines:
                if not _BOOT_NOISE.match(line):
                    self.first_app_line_at = now
                    self.first_line_after = None
                    self.session.first_line_seen(now)
                    break

    def _on_coredump(self, report: CoreDumpReport) -> None:
        """A decoded core dump (on the decoding thread)."""
        self.session.emit_threadsafe(
            CoreDumpDecoded(board=self.label, port=self.info.url, coredump=report)
        )

    def _on_decode_warning(self, message: str) -> None:
        self.session.emit_threadsafe(Warned(message=f"{self.label}: {message}"))

    def _on_crash(self, crash: Crash) -> None:
        """A decoded panic (on the decoding thread)."""
        self.session.emit_threadsafe(
            CrashDecoded(board=self.label, port=self.info.url, crash=crash)
        )


class MultiDeployer:
    """The loop's Deployer: one build to every board, in parallel."""

    def __init__(self, session: WatchSession) -> None:
        self.session = session
        self._ahead: list[BoardSession] = []  # boards connected ahead, not yet deployed

    async def deploy(self, layout: ValidatedLayout, *, full: bool, app_only: bool) -> bool:
        boards = self.session.boards
        emit = self.session.emit
        for b in boards:
            emit(DeployStarted(board=b.label, port=b.info.url, full=full, app_only=app_only))

        # decode (and check the app's ELF SHA-256 against) the new ELF from
        # the new firmware's first boot line on
        self.session.update_symbolizer(layout)

        flash = self.session.flash_settings(layout)

        def run(b: BoardSession) -> DeployOutcome:
            b.first_app_line_at = None
            b.first_line_after = time.monotonic()
            return b.deployer.deploy(layout, full=full, app_only=app_only, flash=flash)

        # each on its board's own worker thread: truly in parallel
        results = await asyncio.gather(
            *(asyncio.wrap_future(b.conn.submit(functools.partial(run, b))) for b in boards),
            return_exceptions=True,
        )
        self._ahead = []
        elf = layout.layout.elf
        key = await asyncio.to_thread(link_key, elf) if elf is not None else None
        ok = True
        for b, o in zip(boards, results, strict=True):
            if isinstance(o, BaseException):
                # the deployer reports its own failures as outcomes; this is a
                # bug in it: said, trust dropped, redeployed when it can be
                if not isinstance(o, Exception):
                    raise o
                self.session.failed(f"deploy to {b.label}", o)
                b.deployer.trust.clear("the deploy failed unexpectedly")
                b.first_line_after = None
                b.needs_deploy, b.held_link, ok = True, None, False
                continue
            if o.kind == DeployKind.TRUST_SKIP or not o.ok:
                b.first_line_after = None  # no new firmware is going to print
            ok &= o.ok
            b.needs_deploy = not o.ok
            b.held_link = (layout.image_hash, key) if o.ok else None
            emit(DeployFinished(board=b.label, port=b.info.url, outcome=o))
        self.session.update_symbolizer(layout)
        return ok

    async def first_app_line(self, timeout: float = 5.0) -> float | None:
        """Monotonic time of the first line of the new firmware (any board),
        or None when no board is going to print one (or not in `timeout`)."""
        times = [b.first_app_line_at for b in self.session.boards if b.first_app_line_at]
        if times:
            return min(times)
        if not any(b.first_line_after for b in self.session.boards):
            return None
        seen = self.session.first_line_waiter()
        times = [b.first_app_line_at for b in self.session.boards if b.first_app_line_at]
        if times:  # printed while the waiter was being set up
            return min(times)
        try:
            return await asyncio.wait_for(seen, timeout)
        except TimeoutError:
            return None

    async def connect_ahead(self, link_key: str | None) -> None:
        boards = [b for b in self.session.boards if b.needs_link(link_key)]
        if not boards:
            return
        self._ahead = boards

        def connect(b: BoardSession) -> tuple[bool, float]:
            t0 = time.monotonic()
            return b.deployer.connect_ahead(), time.monotonic() - t0

        results = await asyncio.gather(
            *(asyncio.wrap_future(b.conn.submit(functools.partial(connect, b))) for b in boards)
        )
        for b, (ok, took) in zip(boards, results, strict=True):
            self.session.emit(
                ConnectedAhead(
                    board=b.label, port=b.info.url, ok=ok, duration_ms=round(took * 1000, 1)
                )
            )

    async def back_to_app(self) -> None:
        boards, self._ahead = self._ahead, []
        await asyncio.gather(
            *(asyncio.wrap_future(b.conn.submit(b.deployer.back_to_app)) for b in boards)
        )

    def abort(self) -> None:
        for b in self.session.boards:
            b.deployer.abort()

    async def reset(self) -> None:
        for b in self.session.boards:
            try:
                await asyncio.wrap_future(b.conn.submit(b.deployer.reset))
                self.session.emit(BoardReset(board=b.label, port=b.info.url))
            except Exception as exc:
                self.session.emit(Failed(message=f"{b.info.url}: reset failed: {exc}"))


OnEvent = Callable[[Event], None]


class WatchSession:
    """The loop and the boards of one `fbuild watch` or `fbuild monitor`.
    Views `listen()` to it: events on the event loop, serial lines on the
    boards' worker threads (views make those thread-safe)."""

    def __init__(
        self,
        opts: SessionOptions,
        emit: OnEvent | None = None,
        on_serial: OnSerial | None = None,
        *,
        on_setup_line: Callable[[str], None] | None = None,
    ) -> None:
        self.opts = opts
        # lines set-up shows while it waits (for a labgrid place), before any
        # view has opened: the CLI prints them; else they are notes
        self._on_setup_line = on_setup_line or (lambda m: self.emit(Note(message=m)))
        self._listeners: list[tuple[OnEvent, OnSerial | None]] = []
        self._log_path: Path | None = opts.log_file
        if emit is not None:
            self.listen(emit, on_serial)
        self.loop: WatchLoop | None = None
        self.boards: list[BoardSession] = []
        self.backend: Backend | None = None
        self._aio: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._quit_requested = False
        self.project_lock: ProjectLock | None = None
        self._missing_elves: set[Path] = set()
        self._first_line: asyncio.Future[float] | None = None
        self._first_build_pending = True  # for reset_if_no_deploy
        self._held: HeldPorts | None = None  # labgrid places held for the session
        self._startup_warnings: list[str] = []
        self._said: set[str] = set()  # flash-settings warnings already shown
        self.monitor = resolve_monitor(MonitorSettings())
        # failures of parts outside the loop (reader threads, deploys); the
        # loop's own are in `loop.problems`
        self.supervisor = Supervisor(self._on_failure)

    def _on_failure(self, part: str, message: str) -> None:
        self.emit_threadsafe(Failed(part=part, message=message))

    def failed(self, part: str, exc: Exception) -> None:
        self.supervisor.failed(part, exc)

    def failure(self) -> str | None:
        """Why this run counts as failed (exit status 1), or None: a part of
        the loop stopped, the last build failed, or a board's last deploy
        did not complete (LOOP.md, "Failure model")."""
        loop = self.loop
        if loop is not None and loop.fatal:
            return loop.fatal
        if loop is not None and loop.last_build_ok is False:
            return "the last build failed"
        failed = [b.label for b in self.boards if b.needs_deploy]
        if failed:
            return f"the last deploy to {', '.join(failed)} did not complete"
        return None

    def first_line_waiter(self) -> asyncio.Future[float]:
        """Resolved (on the event loop) with the time of the next first line
        of new firmware on any board."""
        if self._first_line is None or self._first_line.done():
            self._first_line = asyncio.get_running_loop().create_future()
        return self._first_line

    def first_line_seen(self, at: float) -> None:
        """From a board's worker thread."""
        aio, fut = self._aio, self._first_line
        if aio is not None and fut is not None and aio.is_running():
            aio.call_soon_threadsafe(_resolve, fut, at)

    # -- events ------------------------------------------------------------------
    def listen(self, on_event: OnEvent, on_serial: OnSerial | None = None) -> None:
        self._listeners.append((on_event, on_serial))

    def emit(self, ev: Event) -> None:
        for on_event, _ in self._listeners:
            on_event(ev)
        if isinstance(ev, BuildFinished) and not ev.stale and self._first_build_pending:
            self._first_build_pending = False
            if not ev.result.ok and not ev.result.cancelled and self.opts.reset_if_no_deploy:
                self._reset_for_boot_log("reset at start")

    def on_serial(
        self,
        board: str,
        port: str,
        t: float,
        lines: list[str],
        notes: Sequence[Sequence[AddressNote]] = (),
    ) -> None:
        for _, on_serial in self._listeners:
            if on_serial is not None:
                on_serial(board, port, t, lines, notes)

    @property
    def project_name(self) -> str:
        project = self.backend.project_dir if self.backend is not None else self.opts.project
        return project.resolve().name

    def log_dir(self) -> Path:
        """Where `l` (log to a file) writes: the build's output directory."""
        if self.backend is not None:
            with contextlib.suppress(FbuildError):
                dirs = self.backend.output_dirs()
                if dirs:
                    return dirs[0] / ".fbuild" / "logs"
        return Path.cwd() / ".fbuild" / "logs"

    def emit_threadsafe(self, ev: Event) -> None:
        aio = self._aio
        if aio is not None and aio.is_running():
            aio.call_soon_threadsafe(self.emit, ev)
        else:
            self.emit(ev)

    def update_symbolizer(self, layout: ValidatedLayout | None) -> None:
        """Point crash decoding at the ELF of what the boards now run."""
        elf = self.opts.elf or (layout.layout.elf if layout else None)
        backend = self.loop.backend if self.loop is not None else self.backend  # reloaded
        if elf is None and backend is not None:
            with contextlib.suppress(FbuildError):  # a broken config: the build says so
                elf = backend.elf_path()
        if elf is not None and layout is not None and not elf.is_file():
            if elf not in self._missing_elves:  # said once per path
                self._missing_elves.add(elf)
                self.emit(Warned(message=f"{elf}: ELF not found; crashes will not be decoded"))
            elf = None
        # indexed now, in the background, cached under the project's .fbuild/
        # (`fbuild monitor --elf`, no project: the user cache dir; the index is
        # keyed by the ELF's SHA-256, so a cache shared by projects is sound)
        project = self.backend.project_dir if self.backend is not None else self.opts.project
        if layout is not None:
            cache: Path | None = project / ".fbuild" / "symbols"
        else:
            cache = user_cache_root() / "symbols" if self.opts.elf is not None else None
        boot = _bootloader_elf(layout)
        scripts = _rom_scripts(layout)
        for b in self.boards:
            b.crash.set_elf(elf, cache, bootloader_elf=boot, rom_scripts=scripts)

    def coredump_dir(self) -> Path | None:
        """Where UART core dumps are saved: the project's `.fbuild/`; none
        for `fbuild monitor` without a project (nothing outside a project
        is written)."""
        if self.backend is None:
            return None
        return self.backend.project_dir / ".fbuild" / "coredumps"

    # -- set-up -----------------------------------------------------------------
    def setup(self, *, monitor_only: bool = False) -> None:
        """Everything that can fail with a clear error before the loop starts.
        `monitor_only`: just the boards (no project, no builds)."""
        load_port_schemes()
        if monitor_only:
            self.monitor = self._resolve_monitor(None)
            infos = board_ports(self.opts.ports)
            labels = _labels([i.url for i in infos])
            infos = self._hold_places(infos)
            self.boards = [
                BoardSession(info, label, self) for info, label in zip(infos, labels, strict=True)
            ]
            if self.opts.elf is not None and not self.opts.elf.is_file():
                raise ConfigError("--elf: no such file", source=self.opts.elf)
            self.set_log_file(self.opts.log_file)
            self.update_symbolizer(None)
            return
        self.backend = backend = detect_backend(self.opts.project, fqbn=self.opts.fqbn)
        cfg = backend.config
        infos = board_ports(self.opts.ports, cfg.port if cfg else ())
        if self.opts.elf is not None and not self.opts.elf.is_file():
            raise ConfigError("--elf: no such file", source=self.opts.elf)
        environ_flash(os.environ)  # a bad ESPBAUD: an error at start
        self.monitor = self._resolve_monitor(backend)
        labels = _labels([i.url for i in infos])
        infos = self._hold_places(infos)
        self.boards = [
            BoardSession(info, label, self) for info, label in zip(infos, labels, strict=True)
        ]
        self.set_log_file(self.opts.log_file)
        ws = WatchSet(backend.project_dir, backend.ignore_rules(), paths=backend.watch_paths())
        quiet = self.opts.quiet_ms or (
            cfg.debounce_ms if cfg and cfg.debounce_ms is not None else 30
        )
        watcher = Watcher(
            ws,
            WatchOptions(quiet_ms=quiet, force_polling=self.opts.poll),
            on_note=lambda m: self.emit_threadsafe(Note(message=m)),
        )
        state_file = state_path_for(backend.output_dirs(), backend.project_dir)
        self.supervisor.log = DebugLog(state_file.parent / "debug.log")
        self.loop = WatchLoop(
            backend,
            ws,
            watcher,
            self.emit,
            deployer=MultiDeployer(self),
            on_busy=self.opts.on_busy,
            state_file=state_file,
            debug_log=self.supervisor.log,
        )
        self.update_symbolizer(None)
        lock = ProjectLock(backend.project_dir)
        warning = lock.acquire()  # a second watcher on this project fails here
        self.project_lock = lock
        if warning is not None:
            self.emit(Warned(message=warning))

    def _resolve_monitor(self, backend: Backend | None) -> ResolvedMonitor:
        """The monitor's settings: command line, fbuild.toml, the build
        system's files (ESP-IDF's console baud, PlatformIO's monitor_*), the
        environment, defaults; each setting says where it came from."""
        o = self.opts
        given = {
            "baud": o.monitor_baud,
            "print_filter": o.print_filter,
            "eol": o.eol,
            "timestamps": True if o.timestamps else None,
        }
        origins = {
            "baud": "--monitor-baud",
            "print_filter": "--print-filter",
            "eol": "--eol",
            "timestamps": "--timestamps",
        }
        cli = MonitorSettings(
            **{k: v for k, v in given.items() if v is not None},  # type: ignore[arg-type]
            origins=tuple((k, origins[k]) for k, v in given.items() if v is not None),
        )
        build = MonitorSettings()
        if backend is not None:
            try:
                build = backend.monitor_settings()
            except FbuildError as exc:  # the build says the same; the monitor goes on
                self._startup_warnings.append(f"{exc}; monitoring with the defaults")
        cfg = backend.config if backend is not None else None
        resolved = resolve_monitor(build, cli=cli, config=cfg.monitor_layer() if cfg else None)
        self._startup_warnings += resolved.warnings
        if resolved.print_filter:
            try:
                compile_filter(resolved.print_filter)
            except ValueError as exc:
                where = resolved.origins.get("print_filter", "--print-filter")
                raise UsageError(f"{where}: {exc}") from None
        if o.timestamp_format is not None:
            try:
                check_format(o.timestamp_format)
            except ValueError as exc:
                raise UsageError(f"--timestamp-format: {exc}") from None
        return resolved

    def flash_settings(self, layout: ValidatedLayout) -> ResolvedFlash:
        """This build's flashing settings (flasher_args.json and the like can
        change while watching): --baud, fbuild.toml, the build's files, the
        environment. Their warnings are said once each."""
        o = self.opts
        cli = FlashSettings(baud=o.baud, origins=(("baud", "--baud"),)) if o.baud else None
        backend = self.loop.backend if self.loop is not None else self.backend
        cfg = backend.config if backend is not None else None
        flash = resolve_flash(layout.settings, cli=cli, config=cfg.flash_layer() if cfg else None)
        for warning in flash.warnings:
            if warning not in self._said:
                self._said.add(warning)
                self.emit(Warned(message=warning))
        return flash

    @property
    def print_filter(self) -> str | None:
        return self.monitor.print_filter

    @property
    def timestamps(self) -> bool:
        return self.monitor.timestamps

    @property
    def timestamp_format(self) -> str:
        return self.opts.timestamp_format or DEFAULT_TIMESTAMP_FORMAT

    def _hold_places(self, infos: list[PortInfo]) -> list[PortInfo]:
        """labgrid places: acquired now and held for the session."""
        self._held = hold_ports(
            infos,
            on_note=self._on_setup_line,
            # at close too, when the loop may be gone: straight to the views
            on_warning=lambda m: self.emit(Warned(message=m)),
            wait_place=self.opts.wait_place,
            on_lost=self._place_lost,
        )
        return self._held.infos

    def _place_lost(self, place: str, serial_url: str | None, why: str) -> None:
        """From the lease's thread: someone else may have the board now, so
        nothing this session believes about it holds."""
        message = f"{place}: labgrid place lost ({why}); not deploying to it any more"

        def on_loop() -> None:
            for b in self.boards:
                if b.info.url == serial_url:
                    b.deployer.trust.clear(message)
                    b.needs_deploy = False
                    b.conn.close()
            self.supervisor.failed(f"labgrid place {place}", RuntimeFailure(message))

        aio = self._aio
        if aio is not None and aio.is_running():
            aio.call_soon_threadsafe(on_loop)
        else:
            on_loop()

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    def set_log_file(self, path: Path | None) -> None:
        self._log_path = path
        for b in self.boards:
            if b.log_file is not None:
                b.log_file.close()
                b.log_file = None
        if path is not None:
            for b in self.boards:
                b.log_file = LogFile(
                    path
                    if len(self.boards) == 1
                    else path.with_name(f"{path.stem}-{b.label}{path.suffix}"),
                    # a full disk: one warning, the file is turned off, the monitor goes on
                    on_error=lambda m: self.emit_threadsafe(Warned(message=m)),
                )

    # -- running -----------------------------------------------------------------
    def open_boards(self) -> None:
        """Start every board's monitor, from the event loop that views run on
        (events from reader threads are handed to it). A missing board may
        come later: watching and building go on meanwhile."""
        self._aio = asyncio.get_running_loop()
        for message in self._startup_warnings:
            self.emit(Warned(message=message))
        self._startup_warnings = []
        for b in self.boards:
            b.conn.open(wait=True)
        if self.opts.reset_on_attach:
            self._reset_for_boot_log("reset on attach")

    def _reset_for_boot_log(self, what: str) -> None:
        """As esp-idf-monitor: the boot log from its first line (a port
        without modem lines, raw TCP, cannot reset the board: left alone)."""
        for b in self.boards:
            if b.conn.port is not None and not b.info.url.startswith("socket://"):

                def reset(b: BoardSession = b) -> None:
                    b.deployer.reset()
                    self.emit_threadsafe(BoardReset(board=b.label, port=b.info.url))

                self._background_job(b, reset, what)

    async def run(self) -> None:
        assert self.loop is not None
        self.open_boards()
        self.emit(
            SessionStarted(
                project=str(self.opts.project),
                boards=tuple(BoardRef(b.label, b.info.url) for b in self.boards),
                monitor=self.monitor.as_dict(),
            )
        )
        self.supervisor.install_thread_hook()
        try:
            await self.loop.run(startup_build=self.opts.build_on_start)
        finally:
            self.supervisor.remove_thread_hook()
            self.close()

    def command(self, name: str) -> None:
        """A key or stdin line. Board-level commands (send, bootloader, and
        reset without a loop) are the session's; the rest the loop's."""
        name = name.strip()
        if name == Command.SEND or name.startswith(f"{Command.SEND} "):
            self.send(name[len(Command.SEND) + 1 :])
        elif name == Command.BOOTLOADER:
            for b in self.boards:
                self._background_job(b, functools.partial(self._hold, b), "hold in the bootloader")
        elif self.loop is not None:
            self.loop.command(name)
        elif name == Command.RESET:
            for b in self.boards:
                self._background_job(b, b.deployer.reset, "reset")
        elif name != Command.QUIT:
            self.emit(Failed(message=f"{name!r} needs a project (fbuild watch)"))

    def send(self, text: str, board: str | None = None) -> None:
        """A line to the app's console (every board, or the one named), with
        the monitor's end of line (`--eol`, the project's, else CRLF)."""
        data = text.encode() + EOL_BYTES[self.monitor.eol or DEFAULT_EOL]
        for b in self.boards:
            if board is None or b.label == board:
                self._said_if_failed(b, b.conn.write(data), "not sent")

    def _said_if_failed(self, b: BoardSession, fut: Future[Any], what: str) -> None:
        def done(f: Future[Any]) -> None:
            exc = f.exception()
            if exc is not None:
                self.emit_threadsafe(Failed(message=f"{b.info.url}: {what}: {exc}"))

        fut.add_done_callback(done)

    def _hold(self, b: BoardSession) -> None:
        """Ctrl+T Ctrl+P: the board in its ROM bootloader (download mode),
        held until `r` (or a deploy) takes it back into the app."""
        if not b.deployer.connect_ahead():
            raise RuntimeFailure("the board did not enter its bootloader")
        self.emit_threadsafe(
            Note(message=f"{b.label}: held in its ROM bootloader; r resets it into the app")
        )

    def _background_job(self, b: BoardSession, job: Callable[[], object], what: str) -> None:
        """A board job nobody waits for: its failure is said."""
        self._said_if_failed(b, b.conn.submit(job), f"{what} failed")

    def board_back_threadsafe(self) -> None:
        """From a board's worker: a board that missed a deploy is back."""
        aio, loop = self._aio, self.loop
        if aio is not None and aio.is_running() and loop is not None:
            aio.call_soon_threadsafe(loop.board_back)

    def command_threadsafe(self, name: str) -> None:
        aio = self._aio
        if aio is not None and aio.is_running():
            aio.call_soon_threadsafe(self.command, name)

    @property
    def deploying(self) -> bool:
        return self.loop is not None and self.loop.deploying

    def stop(self) -> None:
        """Quit; a deploy in progress is finished first."""
        if self.loop is not None:
            self.loop.stop()

    def abort(self) -> None:
        """Quit now, interrupting a deploy in progress (it reports `failed`
        and what is on flash)."""
        if self.loop is not None:
            self.loop.abort()

    def quit(self) -> str:
        """A user's quit (key, Ctrl+C, signal, `quit` command), for every view:
        the first one stops, finishing a deploy in progress; another one while
        that deploy runs aborts it. Returns "done" (nothing left to wait for),
        "finishing" or "aborting"."""
        again, self._quit_requested = self._quit_requested, True
        if not self.deploying:
            self.stop()
            return "done"
        if again:
            self.abort()
            return "aborting"
        self.stop()
        return "finishing"

    def close(self) -> None:
        for b in self.boards:
            with contextlib.suppress(Exception):
                b.conn.close()
            if b.log_file is not None:
                b.log_file.close()
        if self.project_lock is not None:
            self.project_lock.release()
            self.project_lock = None
        if self._held is not None:  # labgrid places: given back (on Ctrl+C and SIGTERM too)
            self._held.release()


def _bootloader_elf(layout: ValidatedLayout | None) -> Path | None:
    """ESP-IDF builds the bootloader's ELF beside its image."""
    if layout is None:
        return None
    for r in layout.layout.regions:
        if r.name == BOOTLOADER and r.source is not None:
            elf = r.source.with_suffix(".elf")
            if elf.is_file():
                return elf
    return None


def _rom_scripts(layout: ValidatedLayout | None) -> list[Path]:
    """ESP-IDF's ROM linker scripts name ROM functions in backtraces."""
    idf = os.environ.get("IDF_PATH")
    if layout is None or not idf:
        return []
    return rom_scripts(Path(idf), layout.layout.chip)


def open_session(
    opts: SessionOptions,
    *,
    monitor_only: bool = False,
    on_event: OnEvent | None = None,
    on_serial: OnSerial | None = None,
    on_setup_line: Callable[[str], None] | None = None,
) -> WatchSession:
    """A session set up for `watch` (or `monitor`): everything that can fail
    with a clear error has, before any view opens."""
    session = WatchSession(opts, on_event, on_serial, on_setup_line=on_setup_line)
    session.setup(monitor_only=monitor_only)
    return session


DEFAULT_TIMESTAMP_FORMAT = "%H:%M:%S.%3f"  # the monitor's own; --timestamp-format changes it
EOL_BYTES = {"CR": b"\r", "LF": b"\n", "CRLF": b"\r\n"}
DEFAULT_EOL = "CRLF"  # esp-idf-monitor's


def _resolve(fut: asyncio.Future[float], value: float) -> None:
    if not fut.done():
        fut.set_result(value)


def _labels(urls: list[str]) -> list[str]:
    """Short board names for tabs and line prefixes."""
    out = []
    for u in urls:
        name = u.split("://", 1)[-1].split("?", 1)[0].rstrip("/")
        out.append(name.rsplit("/", 1)[-1] or u)
    return out
