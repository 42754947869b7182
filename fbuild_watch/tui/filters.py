"""Log pane filters: substring, /regex/, or ESP-IDF `tag:level` specs."""

from __future__ import annotations

import re
from collections.abc import Callable

from fbuild_watch.monitor import IDF_LINE, strip_ansi

LEVELS = "NEWIDV"  # N(one) < E < W < I < D < V, as esp-idf-monitor's --print_filter


def compile_filter(spec: str) -> Callable[[str], bool] | None:
    """None for an empty spec; raises ValueError with a message for a bad one."""
    spec = spec.strip()
    if not spec:
        return None
    if len(spec) >= 2 and spec.startswith("/") and spec.endswith("/"):
        try:
            rx = re.compile(spec[1:-1])
        except re.error as exc:
            raise ValueError(f"bad regex: {exc}") from None
        return lambda line: rx.search(strip_ansi(line)) is not None
    words = spec.split()
    if all(re.fullmatch(r"[^:\s]+:[NEWIDV*]", w) for w in words):
        rules = {w.rsplit(":", 1)[0]: w.rsplit(":", 1)[1] for w in words}
        default = rules.pop("*", "V" if not rules else "N")

        def by_level(line: str) -> bool:
            m = IDF_LINE.match(line)
            if not m:
                return default != "N"  # non-log lines (boot banner, prints) follow the default
            level, tag = m.group(1), m.group(3)
            limit = rules.get(tag, default)
            if limit == "*":
                limit = "V"
            return LEVELS.index(level) <= LEVELS.index(limit)

        return by_level
    needle = spec.lower()
    return lambda line: needle in strip_ansi(line).lower()
