"""The status line: project, loop state, progress and each board, plus a
second line of phase times, modes and failed parts. Reactive: the app sets
fields from session events and the line redraws itself."""

from __future__ import annotations

from dataclasses import dataclass, replace

from rich.markup import escape
from rich.text import Text
from textual.reactive import reactive
from textual.widget import Widget

from fbuild_watch.events import PortState


@dataclass(frozen=True)
class BoardStatus:
    label: str
    url: str
    port: PortState = PortState.CLOSED
    outcome: str = "-"  # the last deploy's summary, its progress, or why it waits


def progress_bar(done: int | None, total: int | None, width: int = 10) -> str:
    """A text progress bar; "..." when the total is unknown."""
    if done is None or not total:
        return "..."
    filled = min(width, done * width // total)
    return "[" + "#" * filled + "-" * (width - filled) + f"] {done * 100 // total}%"


class StatusLine(Widget):
    DEFAULT_CSS = "StatusLine { height: auto; }"

    project: reactive[str] = reactive("")
    state: reactive[str] = reactive("starting")
    progress: reactive[str] = reactive("")  # the build's
    boards: reactive[tuple[BoardStatus, ...]] = reactive(())
    timings: reactive[str] = reactive("")
    modes: reactive[tuple[str, ...]] = reactive(())  # timestamps, muted, filtered, log file
    problems: reactive[tuple[str, ...]] = reactive(())  # failed parts stay on screen

    def board(self, label: str) -> BoardStatus | None:
        return next((b for b in self.boards if b.label == label), None)

    def set_board(self, label: str, **changes: object) -> None:
        self.boards = tuple(
            replace(b, **changes) if b.label == label else b  # type: ignore[arg-type]
            for b in self.boards
        )

    def render(self) -> Text:
        boards = "  ".join(
            f"[b]{escape(b.label)}[/b] {escape(b.url)} ({b.port}): {escape(b.outcome)}"
            for b in self.boards
        )
        line2 = self.timings + ("   " + ", ".join(self.modes) if self.modes else "")
        if self.problems:
            line2 = "[b red]" + escape("; ".join(self.problems)) + "[/]  " + escape(line2)
        else:
            line2 = escape(line2)
        progress = " " + self.progress if self.progress else ""
        return Text.from_markup(
            f"[b]{escape(self.project)}[/b]  {escape(self.state)}{escape(progress)}"
            f"   {boards}\n{line2}"
        )
