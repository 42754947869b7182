"""Line timestamps in a strftime format, as esp-idf-monitor's
`--timestamp-format` (default "%Y-%m-%d %H:%M:%S", local time), plus `%3f`:
milliseconds (Python's `%f` is microseconds)."""

from __future__ import annotations

import datetime
import re

DEFAULT_FORMAT = "%Y-%m-%d %H:%M:%S"  # esp-idf-monitor's default
_OURS = re.compile(r"%(%|3f)")


def format_timestamp(t: float, fmt: str = DEFAULT_FORMAT) -> str:
    """`t` (seconds since the epoch, as time.time()) in local time."""
    when = datetime.datetime.fromtimestamp(t)
    ms = f"{when.microsecond // 1000:03d}"
    # %3f before strftime sees it; %% stays %% for strftime to turn into %
    return when.strftime(_OURS.sub(lambda m: ms if m.group(1) == "3f" else "%%", fmt))


def check_format(fmt: str) -> str:
    """`fmt` if it formats a time; ValueError with one line otherwise."""
    if not fmt:
        raise ValueError("empty timestamp format")
    try:
        format_timestamp(0.0, fmt)
    except (ValueError, OverflowError, OSError) as exc:
        raise ValueError(f"bad timestamp format {fmt!r}: {exc}") from None
    return fmt


__all__ = ["DEFAULT_FORMAT", "check_format", "format_timestamp"]
