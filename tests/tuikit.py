"""The TUI under test: the real app given a session, with what it was told
and asked recorded beside it (no test hooks in the app itself)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fbuild_watch.events import Event
from fbuild_watch.session import SessionOptions, open_session
from fbuild_watch.tui.app import WatchApp
from fbuild_watch.tui.session_api import SessionAPI


class RecordingApp(WatchApp):
    def __init__(self, session: SessionAPI, *, monitor_only: bool = False) -> None:
        super().__init__(session, monitor_only=monitor_only)
        self.events_seen: list[Event] = []
        self.commands_seen: list[str] = []
        session.listen(self.events_seen.append)
        command = session.command

        def recorded(name: str) -> None:
            self.commands_seen.append(name)
            command(name)

        session.command = recorded  # type: ignore[method-assign]


def tui_app(opts: SessionOptions, *, monitor_only: bool = False) -> RecordingApp:
    return RecordingApp(open_session(opts, monitor_only=monitor_only), monitor_only=monitor_only)


# -- a fake session: the TUI alone, fast and deterministic ------------------------


@dataclass
class FakeBoard:
    label: str
    url: str
    log_failed: str | None = None


class FakeSession:
    """Everything `SessionAPI` asks, no loop and no boards: a test emits the
    events and lines it wants the app to show."""

    def __init__(
        self,
        boards: tuple[str, ...] = ("demo",),
        project: str = "blink-c3",
        *,
        print_filter: str | None = None,
        timestamps: bool = False,
    ) -> None:
        self.boards = [FakeBoard(b, f"sim://{b}") for b in boards]
        self.print_filter = print_filter
        self.timestamps = timestamps
        self.timestamp_format = "%H:%M:%S.%3f"
        self.sent: list[tuple[str, str | None]] = []
        self.project_name = project
        self.log_path: Path | None = None
        self.commands: list[str] = []
        self.fail: str | None = None
        self.deploying = False
        self._listeners: list[tuple[Callable[[Event], None], Callable[..., None] | None]] = []
        self._stopped: asyncio.Event | None = None

    def listen(
        self,
        on_event: Callable[[Event], None],
        on_serial: Callable[[str, str, float, list[str]], None] | None = None,
    ) -> None:
        self._listeners.append((on_event, on_serial))

    def emit(self, ev: Event) -> None:
        for on_event, _ in self._listeners:
            on_event(ev)

    def serial(self, board: str, lines: list[str], t: float = 0.0) -> None:
        for _, on_serial in self._listeners:
            if on_serial is not None:
                on_serial(board, f"sim://{board}", t, lines)

    async def run(self) -> None:
        if self._stopped is None:
            self._stopped = asyncio.Event()
        await self._stopped.wait()

    def open_boards(self) -> None:
        pass

    def command(self, name: str) -> None:
        self.commands.append(name)

    def send(self, text: str, board: str | None = None) -> None:
        self.sent.append((text, board))

    def quit(self) -> str:
        if self.deploying:
            return "finishing"
        self.stop()
        return "done"

    def stop(self) -> None:
        if self._stopped is None:  # before run() started: it returns at once
            self._stopped = asyncio.Event()
        self._stopped.set()

    def close(self) -> None:
        pass

    def failure(self) -> str | None:
        return self.fail

    def set_log_file(self, path: Path | None) -> None:
        self.log_path = path

    def log_dir(self) -> Path:
        return Path("/nonexistent/logs")
