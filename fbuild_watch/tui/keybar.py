"""The key bar: the app's shown bindings, wrapped between keys (never inside
one), so every key stays on screen in a narrow pane where Textual's Footer
cuts them off."""

from __future__ import annotations

from rich.cells import cell_len
from rich.text import Text
from textual.binding import Binding
from textual.geometry import Size
from textual.widget import Widget

KEY_NAMES = {"slash": "/"}
GAP = "  "


class KeyBar(Widget):
    DEFAULT_CSS = """
    KeyBar {
        height: auto; max-height: 4; background: $footer-background; padding: 0 1;
    }
    """

    def _keys(self) -> list[tuple[str, str]]:
        return [
            (KEY_NAMES.get(b.key, b.key), b.description)
            for b in self.app.BINDINGS
            if isinstance(b, Binding) and b.show
        ]

    def _lines(self, width: int) -> list[list[tuple[str, str]]]:
        lines: list[list[tuple[str, str]]] = [[]]
        used = 0
        for key, what in self._keys():
            size = cell_len(f"{key} {what}")
            if lines[-1] and used + len(GAP) + size > width:
                lines.append([])
                used = 0
            used += (len(GAP) if lines[-1] else 0) + size
            lines[-1].append((key, what))
        return lines

    def get_content_height(self, container: Size, viewport: Size, width: int) -> int:
        return len(self._lines(width))

    def render(self) -> Text:
        out = Text()
        for i, line in enumerate(self._lines(self.content_size.width)):
            if i:
                out.append("\n")
            for j, (key, what) in enumerate(line):
                out.append(GAP if j else "")
                out.append(key, style="bold")
                out.append(f" {what}")
        return out
