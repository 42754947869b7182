"""GCC/Clang diagnostics out of build output."""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# file:line:col: severity: message   (column optional, as GCC may omit it)
_DIAG = re.compile(
    r"^(?P<file>(?:[A-Za-z]:)?[^:\s][^:]*?):(?P<line>\d+):(?:(?P<col>\d+):)?\s*"
    r"(?P<sev>fatal error|error|warning|note):\s*(?P<msg>.*)$"
)
# linker and driver errors without a location: "ld.lld: error: ..."
_TOOL = re.compile(
    r"^(?P<tool>[\w.+-]*(?:ld|lld|ld\.lld|collect2|cc|gcc|clang|zig)):\s*"
    r"(?P<sev>error|warning):\s*(?P<msg>.*)$"
)


@dataclass(frozen=True)
class Diagnostic:
    file: str | None
    line: int | None
    column: int | None
    severity: str  # "error", "warning", "note"
    message: str

    def format(self) -> str:
        """The compiler's own form, which editors and terminals link."""
        if self.file is None:
            return f"{self.severity}: {self.message}"
        loc = f"{self.file}:{self.line}"
        if self.column is not None:
            loc += f":{self.column}"
        return f"{loc}: {self.severity}: {self.message}"

    def as_dict(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "severity": self.severity,
            "message": self.message,
        }


def parse_line(text: str) -> Diagnostic | None:
    line = _ANSI.sub("", text).rstrip("\r\n")
    if len(line) > 4096:  # a pathological line is not a diagnostic
        return None
    m = _DIAG.match(line)
    if m:
        sev = "error" if m["sev"] == "fatal error" else m["sev"]
        return Diagnostic(
            m["file"], int(m["line"]), int(m["col"]) if m["col"] else None, sev, m["msg"].strip()
        )
    m = _TOOL.match(line)
    if m:
        return Diagnostic(None, None, None, m["sev"], f"{m['tool']}: {m['msg'].strip()}")
    return None


class DiagnosticCollector:
    """Diagnostics found while the output streams by, bounded: the first
    `limit` and the last `tail` after those (a flood of warnings must not
    grow without end, and GCC's errors usually come last)."""

    def __init__(self, limit: int = 500, tail: int = 100) -> None:
        self.limit = limit
        self._first: list[Diagnostic] = []
        self._seen: set[Diagnostic] = set()
        self._last: deque[Diagnostic] = deque(maxlen=tail)

    def feed(self, text: str) -> None:
        d = parse_line(text)
        if d is None or d in self._seen:  # make prints some twice
            return
        if len(self._first) < self.limit:
            self._first.append(d)
            self._seen.add(d)
        elif not self._last or self._last[-1] != d:
            self._last.append(d)

    def result(self) -> list[Diagnostic]:
        out = list(self._first)
        seen = set(self._seen)
        for d in self._last:
            if d not in seen:
                seen.add(d)
                out.append(d)
        return out


def parse_output(lines: list[str]) -> list[Diagnostic]:
    collector = DiagnosticCollector()
    for text in lines:
        collector.feed(text)
    return collector.result()
