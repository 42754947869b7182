"""Widgets: the serial log pane and the build pane (the status line: status.py)."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any, Self

from rich.cells import cell_len
from rich.style import Style
from rich.text import Text
from textual import events
from textual.strip import Strip
from textual.timer import Timer
from textual.widgets import Log

from fbuild_watch.monitor import idf_level

LEVEL_STYLES = {
    "E": Style(color="red", bold=True),
    "W": Style(color="yellow"),
    "I": Style(color="green"),
    "D": Style(color="bright_black"),
    "V": Style(color="bright_black"),
}
CRASH_STYLE = Style(color="red", bold=True, reverse=True)


class SerialLog(Log):
    """A `Log` that passes ANSI colours through and colours ESP-IDF levels.

    `Log` stores plain strings and renders only the visible lines, which is
    what keeps a 921,600-baud flood cheap; only the rendering of one line is
    replaced here (pinned to textual 8's `Log`).

    Following the end is the user's choice: scrolling up (wheel, keys) stops
    it so scroll-back is not yanked away by new lines; End, or scrolling back
    down to the last line, resumes it. No line is dropped either way.
    """

    def write_lines(self, lines: Iterable[str], scroll_end: bool | None = None) -> Self:
        # Log drops "" ("".splitlines() is []): a blank line the board printed
        # (ESP-IDF's panic output has them) must stay one
        return super().write_lines([ln or " " for ln in lines], scroll_end)

    def follow(self) -> None:
        """Keep the end in view while following. (`Log` itself scrolls only if
        the view was at the end before a write; a write that lands before the
        first layout would leave it stuck at the top for good.)"""
        if self.auto_scroll and not self.is_vertical_scrollbar_grabbed:
            self.scroll_end(animate=False, immediate=True, x_axis=False)

    def _stop_following(self) -> None:
        self.auto_scroll = False

    def _resume_if_at_end(self) -> None:
        if self.scroll_y >= self.max_scroll_y:
            self.auto_scroll = True

    def _on_mouse_scroll_up(self, event: events.MouseScrollUp) -> None:
        self._stop_following()
        super()._on_mouse_scroll_up(event)

    def _on_mouse_scroll_down(self, event: events.MouseScrollDown) -> None:
        super()._on_mouse_scroll_down(event)
        self.call_after_refresh(self._resume_if_at_end)

    def action_scroll_up(self) -> None:
        self._stop_following()
        super().action_scroll_up()

    def action_page_up(self) -> None:
        self._stop_following()
        super().action_page_up()

    def action_scroll_home(self) -> None:
        self._stop_following()
        super().action_scroll_home()

    def action_scroll_down(self) -> None:
        super().action_scroll_down()
        self.call_after_refresh(self._resume_if_at_end)

    def action_page_down(self) -> None:
        super().action_page_down()
        self.call_after_refresh(self._resume_if_at_end)

    def action_scroll_end(self) -> None:
        self.auto_scroll = True
        super().action_scroll_end()

    def _render_line_strip(self, y: int, rich_style: Style) -> Strip:
        raw = self._lines[y].expandtabs()
        if "\x1b[" in raw:
            text = Text.from_ansi(raw, no_wrap=True)
        else:
            text = Text(raw, no_wrap=True)
            level = idf_level(raw)
            if level in LEVEL_STYLES:
                text.stylize(LEVEL_STYLES[level])
            elif raw.startswith(("Guru Meditation", "  => ")):
                text.stylize(CRASH_STYLE)
        text.stylize_before(rich_style)
        selection = self.text_selection
        if selection is not None and (span := selection.get_span(y - self._clear_y)) is not None:
            start, end = span
            text.stylize(
                self.screen.get_component_rich_style("screen--selection"),
                start,
                len(text) if end == -1 else end,
            )
        return Strip(text.render(self.app.console), cell_len(text.plain))


class BuildLog(Log):
    """The build pane: bounded (`max_lines` lines of at most MAX_CHARS) and
    batched. `Log.write_lines` costs about a millisecond a call (it starts a
    worker thread to measure the width), so lines written one by one are
    collected and written once a frame: a build printing hundreds of lines a
    second leaves the keys responsive."""

    MAX_CHARS = 1000
    FLUSH_S = 1 / 30

    def __init__(self, *, max_lines: int = 2000, **kwargs: Any) -> None:
        super().__init__(max_lines=max_lines, **kwargs)
        self._pending: deque[str] = deque(maxlen=max_lines)
        self._flush_timer: Timer | None = None

    def write_line(self, line: str, scroll_end: bool | None = None) -> Self:
        return self.write_lines([line], scroll_end)

    def write_lines(self, lines: Iterable[str], scroll_end: bool | None = None) -> Self:
        cap = self.MAX_CHARS
        self._pending.extend(ln if len(ln) <= cap else ln[:cap] + " [...]" for ln in lines)
        if self.is_mounted and self._flush_timer is None:
            self._flush_timer = self.set_timer(self.FLUSH_S, self.flush)
        return self

    def on_mount(self) -> None:
        self.flush()  # lines written before the pane was mounted

    def flush(self) -> None:
        """Write what is pending now."""
        if self._flush_timer is not None:
            self._flush_timer.stop()
            self._flush_timer = None
        if self._pending:
            lines = list(self._pending)
            self._pending.clear()
            super().write_lines(lines)

    def clear(self) -> Self:
        self._pending.clear()
        return super().clear()
