"""Widgets: the serial log pane and the status line."""

from __future__ import annotations

from rich.cells import cell_len
from rich.style import Style
from rich.text import Text
from textual import events
from textual.strip import Strip
from textual.widgets import Log, Static

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


class StatusLine(Static):
    pass
