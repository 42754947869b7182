"""Board text made safe for a terminal: SGR colours only.

Whatever a board prints reaches the user's terminal through the line views
and the TUI. Beyond colours, a terminal obeys sequences that set the title
(OSC 0/2), write the clipboard (OSC 52), reset it (ESC c), move the cursor,
or are taken as strings (DCS, APC, PM, SOS). All of those are removed here;
SGR colours (`ESC [ ... m`), TAB and line feed are kept. The log file keeps
the raw bytes: it is the byte-exact record.

Fast: one compiled-regex scan finds nothing to do in plain text (the
common case in a flood); coloured lines cost one `re.sub`.
"""

from __future__ import annotations

import re

# Anything a terminal may act on: ESC, C0 controls but TAB and LF, DEL, C1.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
# Only SGR sequences and harmless characters: the common coloured log line.
_SGR = re.compile("\x1b\\[[0-9;:]*m")
_SEQUENCE = re.compile(
    # (a cheap first test at every position: the engine skips plain text fast)
    "(?=[\x00-\x08\x0b-\x1f\x7f-\x9f])(?:"
    # 1: SGR colours, kept on request
    "(\x1b\\[[0-9;:]*m)"
    # any other CSI (cursor, erase, modes, reports), also its C1 form
    "|(?:\x1b\\[|\x9b)[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]"
    # OSC, DCS, SOS, PM, APC strings, to BEL or ST; unterminated: to the
    # end of the line (the rest of it would be the string's payload)
    "|(?:\x1b[\\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x9c\n]*?(?:\x07|\x1b\\\\|\x9c|(?=\n)|\\Z)"
    # other escape sequences: ESC c (reset), ESC 7, ESC ( B, ESC # 8, ...
    "|\x1b[\x20-\x2f]*[\x30-\x7e]"
    # what is left: a lone ESC, C0 controls but TAB and LF, DEL, C1
    "|[\x00-\x08\x0b-\x1f\x7f-\x9f])"
)


def terminal_safe(text: str, *, keep_sgr: bool = True) -> str:
    """`text` without terminal control sequences, SGR colours kept (or
    removed too with keep_sgr=False). Newlines and tabs are kept, so a
    chunk of lines can be cleaned in one call."""
    if _UNSAFE.search(text) is None:
        return text
    if _UNSAFE.search(_SGR.sub("", text)) is None:  # colours only: the usual log line
        return text if keep_sgr else _SGR.sub("", text)
    return _SEQUENCE.sub(r"\1" if keep_sgr else "", text)


def terminal_safe_lines(lines: list[str], *, keep_sgr: bool = True) -> list[str]:
    """The same for a batch of lines (without newlines), in one scan."""
    if not lines:
        return lines
    joined = "\n".join(lines)
    if _UNSAFE.search(joined) is None or (
        keep_sgr and _UNSAFE.search(_SGR.sub("", joined)) is None
    ):
        return lines
    return [terminal_safe(line, keep_sgr=keep_sgr) for line in lines]
