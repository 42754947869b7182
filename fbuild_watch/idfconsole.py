"""What esp-idf-monitor does to a line it shows, besides filtering it:
colours for uncoloured `I`/`W`/`E` log lines (its auto colour), and the
device status query that ESP-IDF's console (linenoise) sends to find out
whether a terminal is listening.
"""

from __future__ import annotations

import re

# ANSI colours esp-idf-monitor adds (output_helpers.py)
RED = "\033[1;31m"
GREEN = "\033[0;32m"
YELLOW = "\033[0;33m"
NORMAL = "\033[0m"
_COLOURS = {"I": GREEN, "W": YELLOW, "E": RED}
# esp-idf-monitor's AUTO_COLOR_REGEX: a line that starts with the level and
# a timestamp of any format (ticks, time, date and time)
AUTO_COLOUR = re.compile(r"^(I|W|E) \([\d:\. -]+\)")
# "ESC [ 5 n": Device Status Report; a terminal answers ESC [ 0 n
STATUS_QUERY = "\x1b[5n"
STATUS_OK = b"\x1b[0n"


def auto_colour(line: str) -> str:
    """`line` (without its line end) as esp-idf-monitor shows it: an
    uncoloured I/W/E log line wrapped in its level's colour; anything else
    unchanged."""
    m = AUTO_COLOUR.match(line)
    if m is None:
        return line
    return f"{_COLOURS[m.group(1)]}{line}{NORMAL}"


def split_status_query(line: str) -> tuple[bool, str]:
    """(whether the line starts with the console's status query, the rest).

    esp-idf-monitor passes the query to its terminal whatever the filter
    (the terminal's answer goes to the board, and the console turns line
    editing on) and filters the rest of the line on its own."""
    if line.startswith(STATUS_QUERY):
        return True, line[len(STATUS_QUERY) :]
    return False, line


__all__ = ["AUTO_COLOUR", "STATUS_OK", "STATUS_QUERY", "auto_colour", "split_status_query"]
