"""Widgets: the serial log pane and the status line."""

from __future__ import annotations

from rich.cells import cell_len
from rich.style import Style
from rich.text import Text
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
    """

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
