"""Log filters: esp-idf-monitor's `--print_filter`, exactly, plus a regex
and a substring search that cannot be mistaken for one.

Which kind a spec is (the whole spec, stripped of outer spaces):

- `/.../`  a regular expression, searched in the line without colour codes;
- `"..."`  a substring, case-insensitive, searched the same way;
- anything else is an esp-idf-monitor print filter, with its rules and its
  error messages (esp_idf_monitor/base/line_matcher.py): space-separated
  `tag:level` items, the level one of N E W I D V * in either case; a bare
  `tag` (or `tag:`) is `tag:V`; `*` is every other tag, by default V when
  the spec is empty and N (hidden) otherwise. A log line is
  `[colour]L [(time) ]tag: ...`; every other line (boot banner, printf) is
  kept only when `*` is above N.

A spec that is wholly `/.../` or `"..."` would, to esp-idf-monitor, be one
tag of that literal name; real ESP-IDF tags never start and end with a
slash or a quote, so nothing is lost.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from fbuild_watch.monitor import strip_ansi

# the print filter's levels; '*' and '' (a bare tag) mean V
LEVELS = {"N": 0, "E": 1, "W": 2, "I": 3, "D": 4, "V": 5, "*": 5, "": 5}
_LOG_LEVEL = {"E": 1, "W": 2, "I": 3, "D": 4, "V": 5}
# esp-idf-monitor's own pattern, unchanged (ANSI colour, level, optional
# timestamp in any format, tag)
IDF_LOG = re.compile(
    r"^(?:\033\[[01];?\d+m?)?"  # ANSI color
    r"([EWIDV]) "  # log level
    r"(?:\([^)]+\) )?"  # optional timestamp
    r"([^:]+): "  # tag
)


@dataclass(frozen=True)
class PrintFilter:
    """An esp-idf-monitor `--print_filter`: tag -> highest level shown."""

    rules: dict[str, int]

    @classmethod
    def parse(cls, spec: str) -> PrintFilter:
        """Raises ValueError with esp-idf-monitor's message for a bad item."""
        rules: dict[str, int] = {}
        items = spec.split()
        if not items:
            rules["*"] = LEVELS["V"]  # an empty filter shows everything
        for item in items:
            parts = item.split(":")
            if len(parts) == 1:
                level = LEVELS["V"]  # a bare tag: all its levels
            elif len(parts) == 2:
                if not parts[0]:
                    raise ValueError(f"No tag specified in filter {item}")
                try:
                    level = LEVELS[parts[1].upper()]
                except KeyError:
                    raise ValueError(f"Unknown warning level in filter {item}") from None
            else:
                raise ValueError(f'Missing ":" in filter {item}')
            rules[parts[0]] = level
        return cls(rules)

    def __call__(self, line: str) -> bool:
        default = self.rules.get("*", 0)
        m = IDF_LOG.match(line)
        if m is None:
            return default > 0  # not a log line: shown unless '*' is N
        limit = self.rules.get(m.group(2), default)
        return limit >= _LOG_LEVEL[m.group(1)]


def kind_of(spec: str) -> str:
    """ "regex", "text" or "idf": which rule a (non-empty) spec follows."""
    s = spec.strip()
    if len(s) >= 2 and s[0] == s[-1] == "/":
        return "regex"
    if len(s) >= 2 and s[0] == s[-1] == '"':
        return "text"
    return "idf"


def compile_filter(spec: str) -> Callable[[str], bool] | None:
    """None for an empty spec (nothing hidden); raises ValueError with a
    one-line message for a bad one."""
    s = spec.strip()
    if not s:
        return None
    kind = kind_of(s)
    if kind == "regex":
        try:
            rx = re.compile(s[1:-1])
        except re.error as exc:
            raise ValueError(f"bad regex /{s[1:-1]}/: {exc}") from None
        return lambda line: rx.search(strip_ansi(line)) is not None
    if kind == "text":
        needle = s[1:-1].lower()
        return lambda line: needle in strip_ansi(line).lower()
    return PrintFilter.parse(s)


__all__ = ["IDF_LOG", "LEVELS", "PrintFilter", "compile_filter", "kind_of"]
