"""What the loop and the session tell the views: one frozen dataclass per
event, and the enums their states are named by.

Every view (TUI, `--plain`, `--json`) renders these and nothing else; mypy
checks each producer against each consumer. `to_json()` gives the `--json`
form, whose field names are a public schema (README.md, "JSON events";
`tests/test_events.py` checks every event class against it).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

if TYPE_CHECKING:  # types only: importing the events must stay cheap
    from fbuild_watch.build.runner import BuildResult
    from fbuild_watch.crash.coredump import CoreDumpReport
    from fbuild_watch.crash.frames import AddressNote
    from fbuild_watch.decode import Crash
    from fbuild_watch.deploy.outcome import DeployOutcome


class LoopState(StrEnum):
    IDLE = "idle"
    BUILDING = "building"
    DEPLOYING = "deploying"
    MONITORING = "monitoring"


class PortState(StrEnum):
    CLOSED = "closed"
    CONNECTED = "connected"
    WAITING = "waiting"  # away (unplugged, busy, not yet there): retried


class Command(StrEnum):
    """What keys and stdin lines ask of the loop."""

    QUIT = "quit"
    REBUILD = "rebuild"
    FULL_FLASH = "full-flash"
    APP_FLASH = "app-flash"
    PAUSE = "pause"
    RESET = "reset"
    SEND = "send"  # "send TEXT": a line to the app's console
    BOOTLOADER = "bootloader"  # hold the board in its ROM loader (Ctrl+T Ctrl+P)


@dataclass(frozen=True, kw_only=True)
class Event:
    type: ClassVar[str] = "event"
    t: float = field(default_factory=time.time)

    def fields(self) -> dict[str, Any]:
        """The payload, by its JSON names (without `type` and `t`)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "t"}

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "t": round(self.t, 6), **self.fields()}

    @property
    def data(self) -> dict[str, Any]:
        """The payload as a dict (tests, generic consumers)."""
        return self.fields()


# -- messages ---------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class Note(Event):
    type: ClassVar[str] = "note"
    message: str


@dataclass(frozen=True, kw_only=True)
class Warned(Event):
    type: ClassVar[str] = "warning"
    message: str


@dataclass(frozen=True, kw_only=True)
class Failed(Event):
    """A failure the user must see: `part` names a part of the loop that
    failed unexpectedly (LOOP.md, "Failure model"); None for a plain error
    such as an unknown command."""

    type: ClassVar[str] = "error"
    message: str
    part: str | None = None

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"message": self.message}
        if self.part is not None:
            out["part"] = self.part
        return out


@dataclass(frozen=True, kw_only=True)
class Exited(Event):
    """The last event of a failed `--json` run."""

    type: ClassVar[str] = "exit"
    ok: bool
    error: str | None
    exit_code: int


# -- the session and the loop -----------------------------------------------------
@dataclass(frozen=True)
class BoardRef:
    board: str
    port: str


@dataclass(frozen=True, kw_only=True)
class SessionStarted(Event):
    type: ClassVar[str] = "session_started"
    project: str
    boards: tuple[BoardRef, ...]
    monitor: dict[str, Any] = field(default_factory=dict)  # each setting: {value, from}

    def fields(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "boards": [{"board": b.board, "port": b.port} for b in self.boards],
            "monitor": self.monitor,
        }


@dataclass(frozen=True, kw_only=True)
class LoopStarted(Event):
    type: ClassVar[str] = "loop_started"
    project: str
    backend: str


@dataclass(frozen=True, kw_only=True)
class LoopStopped(Event):
    type: ClassVar[str] = "loop_stopped"
    watcher: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class Paused(Event):
    type: ClassVar[str] = "paused"


@dataclass(frozen=True, kw_only=True)
class Resumed(Event):
    type: ClassVar[str] = "resumed"


@dataclass(frozen=True, kw_only=True)
class FilesChanged(Event):
    type: ClassVar[str] = "files_changed"
    generation: int
    paths: list[str]  # the first 50
    count: int


@dataclass(frozen=True, kw_only=True)
class StartupScan(Event):
    type: ClassVar[str] = "startup_scan"
    files: int
    scan_ms: float
    changed_since_last_build: int | None


# -- builds -----------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class BuildSkipped(Event):
    type: ClassVar[str] = "build_skipped"
    reason: str
    fingerprint: str
    files: int
    scan_ms: float
    image_hash: str


@dataclass(frozen=True, kw_only=True)
class BuildStarted(Event):
    type: ClassVar[str] = "build_started"
    generation: int
    reason: str
    changed: list[str]  # the first 50
    count: int


@dataclass(frozen=True, kw_only=True)
class BuildOutput(Event):
    type: ClassVar[str] = "build_output"
    line: str


@dataclass(frozen=True, kw_only=True)
class BuildProgress(Event):
    """Where the build system says how far it is (ninja's `[N/M]`); `done`
    and `total` are None when it does not (then only `elapsed_ms`)."""

    type: ClassVar[str] = "build_progress"
    done: int | None
    total: int | None
    elapsed_ms: float


@dataclass(frozen=True, kw_only=True)
class BuildFinished(Event):
    type: ClassVar[str] = "build_finished"
    result: BuildResult
    generation: int
    stale: bool  # sources changed while it ran: not deployed

    def fields(self) -> dict[str, Any]:
        return {**self.result.as_dict(), "generation": self.generation, "stale": self.stale}


@dataclass(frozen=True, kw_only=True)
class CycleFinished(Event):
    type: ClassVar[str] = "cycle_finished"
    generation: int
    ok: bool
    timings_ms: dict[str, float]
    save_to_first_log_ms: float | None


# -- boards -----------------------------------------------------------------------
@dataclass(frozen=True, kw_only=True)
class BoardEvent(Event):
    board: str  # the short name views label the board with
    port: str


@dataclass(frozen=True, kw_only=True)
class PortChanged(BoardEvent):
    type: ClassVar[str] = "port_state"
    state: PortState
    message: str


@dataclass(frozen=True, kw_only=True)
class DeployStarted(BoardEvent):
    type: ClassVar[str] = "deploy_started"
    full: bool
    app_only: bool


@dataclass(frozen=True, kw_only=True)
class DeployProgress(BoardEvent):
    """Bytes and sectors written of the total, at most 10 per second."""

    type: ClassVar[str] = "deploy_progress"
    bytes_done: int
    bytes_total: int
    sectors_done: int
    sectors_total: int


@dataclass(frozen=True, kw_only=True)
class DeployFinished(BoardEvent):
    type: ClassVar[str] = "deploy_finished"
    outcome: DeployOutcome

    def fields(self) -> dict[str, Any]:
        return {"board": self.board, **self.outcome.as_dict()}


@dataclass(frozen=True, kw_only=True)
class ConnectedAhead(BoardEvent):
    type: ClassVar[str] = "connected_ahead"
    ok: bool
    duration_ms: float


@dataclass(frozen=True, kw_only=True)
class BoardReset(BoardEvent):
    type: ClassVar[str] = "reset"


@dataclass(frozen=True, kw_only=True)
class CrashDecoded(BoardEvent):
    type: ClassVar[str] = "crash"
    crash: Crash

    def fields(self) -> dict[str, Any]:
        return {"port": self.port, "board": self.board, **self.crash.as_event_data()}


@dataclass(frozen=True, kw_only=True)
class CoreDumpDecoded(BoardEvent):
    """A core dump printed to the UART: collapsed to this one event, saved
    for esp-coredump, every task's backtrace decoded."""

    type: ClassVar[str] = "coredump"
    coredump: CoreDumpReport

    def fields(self) -> dict[str, Any]:
        return {"port": self.port, "board": self.board, **self.coredump.as_event_data()}


class OnSerial(Protocol):
    """A view's hand for a board's lines, called on the board's worker
    thread: `notes[i]` are the code addresses decoded in `lines[i]` (empty
    when none, or when the caller has none to give)."""

    def __call__(
        self,
        board: str,
        port: str,
        t: float,
        lines: list[str],
        notes: Sequence[Sequence[AddressNote]] = (),
    ) -> None: ...


def serial_line_json(
    board: str,
    port: str,
    text: str,
    t: float,
    notes: Sequence[AddressNote] = (),
    *,
    partial: bool = False,
) -> dict[str, Any]:
    """A board's line in `--json`. Not an `Event`: lines go from the board's
    worker thread straight to the views (a flood must not queue behind the
    loop), but the schema is the same. `addresses`: the code addresses in
    the line, decoded (only when there are some). `partial`: a piece of a
    line too long to keep whole; the next `serial_line` continues it."""
    out: dict[str, Any] = {
        "type": "serial_line",
        "t": round(t, 6),
        "board": board,
        "port": port,
        "text": text,
    }
    if notes:
        out["addresses"] = [n.as_dict() for n in notes]
    if partial:
        out["partial"] = True
    return out


def output_dropped_json(lines: int, t: float) -> dict[str, Any]:
    """`--json`'s word that `lines` board lines (`serial_line`s) were not
    printed because stdout did not keep up with the board; in their place,
    once it has. Not an `Event`: the line view's own writer says it (the
    session knows nothing of stdout)."""
    return {"type": "output_dropped", "t": round(t, 6), "lines": lines}


def event_classes() -> list[type[Event]]:
    """Every concrete event (the schema test walks them)."""
    out: list[type[Event]] = []
    todo: list[type[Event]] = [Event]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if cls.type not in ("event",) and cls is not BoardEvent:
            out.append(cls)
    return sorted(out, key=lambda c: c.type)
