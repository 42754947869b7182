"""What the TUI needs of a session: the whole surface, so a test can give
the app a fake one (as harlequin's app is given its adapter)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from fbuild_watch.events import Event, OnSerial


class BoardView(Protocol):
    @property
    def label(self) -> str: ...

    @property
    def url(self) -> str: ...

    @property
    def log_failed(self) -> str | None: ...


class SessionAPI(Protocol):
    @property
    def boards(self) -> Sequence[BoardView]: ...

    @property
    def project_name(self) -> str: ...

    @property
    def print_filter(self) -> str | None:
        """The filter to start with (--print-filter, the project's)."""

    @property
    def timestamps(self) -> bool:
        """Start with timestamps on (--timestamps, PlatformIO's `time`)."""

    @property
    def timestamp_format(self) -> str: ...

    @property
    def log_path(self) -> Path | None:
        """The log file every byte goes to (`--log-file`, `l`), if any."""

    def listen(
        self,
        on_event: Callable[[Event], None],
        on_serial: OnSerial | None = None,
    ) -> None:
        """Events on the app's event loop; serial lines on any thread."""

    async def run(self) -> None:
        """The watch loop, until it stops."""

    def open_boards(self) -> None:
        """Monitor only: start reading the boards."""

    def command(self, name: str) -> None: ...

    def send(self, text: str, board: str | None = None) -> None:
        """A line to the app's console, with the monitor's end of line."""

    def quit(self) -> str:
        """ "done", "finishing" (a deploy first) or "aborting"."""

    def stop(self) -> None: ...

    def close(self) -> None: ...

    def failure(self) -> str | None:
        """Why the run failed (exit status 1), or None."""

    def set_log_file(self, path: Path | None) -> None: ...

    def log_dir(self) -> Path: ...
