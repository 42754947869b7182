"""Terminal control sequences from the board never reach the user's
terminal (title, clipboard, reset, cursor, strings); SGR colours do. The
log file keeps the raw bytes."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fbuild_watch.decode import CrashDetector
from fbuild_watch.termsafe import terminal_safe, terminal_safe_lines
from fbuild_watch.views.lines import LineView
from tests.fwkit import FW_DIR, build_firmware

GREEN = "\x1b[0;32mI (10) hostile: green\x1b[0m"
HOSTILE = {
    "OSC title, BEL": "title \x1b]0;pwned\x07 after",
    "OSC 52 clipboard, ST": "clip \x1b]52;c;cHduZWQ=\x1b\\ after",
    "OSC 8 link": "link \x1b]8;;http://pwned\x1b\\x\x1b]8;;\x1b\\ after",
    "terminal reset": "reset \x1bc after",
    "erase, home, alt screen": "cursor \x1b[2J\x1b[H\x1b[?1049h after",
    "device status report": "dsr \x1b[6n after",
    "DCS string": "dcs \x1bP1$r0m\x1b\\ after",
    "APC, PM, SOS strings": "apc \x1b_pwned\x1b\\\x1b^pwned\x1b\\\x1bXpwned\x1b\\ after",
    "charset, save cursor": "esc \x1b(0\x1b7\x1b#8 after",
    "C1 OSC and CSI": "c1 \x9d0;pwned\x07\x9b2J after",
    "C0 controls": "bell \x07 bs \x08 cr \r ff \x0c after",
    "unterminated OSC": "open \x1b]0;pwned",
    "lone ESC, DEL": "lone \x1b\x7f after",
}


def _no_control(text: str, *, sgr: bool) -> None:
    assert "pwned" not in text
    rest = re.sub(r"\x1b\[[0-9;]*m", "", text) if sgr else text
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", rest), repr(text)


@pytest.mark.parametrize("line", HOSTILE.values(), ids=HOSTILE.keys())
def test_hostile_sequences_are_removed_and_the_text_kept(line: str) -> None:
    safe = terminal_safe(line)
    _no_control(safe, sgr=True)
    word = line.split(" ", 1)[0]
    assert safe.startswith(word + " ")
    if line.endswith(" after"):
        assert safe.endswith(" after")
    coloured = terminal_safe(GREEN + line)
    assert coloured.startswith(GREEN)  # colours kept around the hostile part


def test_colours_and_plain_text_pass_unchanged() -> None:
    line = "I (1) main: tab\there, ünïcödé, \ufffd"
    assert terminal_safe(line) is line  # the fast path: no copy
    assert terminal_safe(GREEN) is GREEN
    assert terminal_safe(GREEN, keep_sgr=False) == "I (10) hostile: green"
    assert (
        terminal_safe("a\x1b[1;38;5;208mb\x1b[38:2:1:2:3mc")
        == "a\x1b[1;38;5;208mb\x1b[38:2:1:2:3mc"
    )


def test_batches() -> None:
    lines = [GREEN, "plain", *HOSTILE.values()]
    assert terminal_safe_lines(lines[:2]) is not None
    assert terminal_safe_lines(lines[:2]) == lines[:2]
    assert terminal_safe_lines(lines) == [terminal_safe(x) for x in lines]
    assert terminal_safe_lines(lines, keep_sgr=False) == [
        terminal_safe(x, keep_sgr=False) for x in lines
    ]
    assert terminal_safe_lines([]) == []


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("tty", [True, False], ids=["terminal", "pipe"])
def test_plain_view(tty: bool) -> None:
    out = _Tty() if tty else io.StringIO()
    view = LineView(json_mode=False, out=out)
    view.on_serial("b", "sim://b", 0.0, [GREEN, *HOSTILE.values()])
    text = out.getvalue()
    _no_control(text, sgr=tty)
    first = text.splitlines()[0]
    if tty:  # colours kept, and reset after the line
        assert first == f"[b] {GREEN}\x1b[0m"
    else:  # a pipe gets plain text, as before
        assert first == "[b] I (10) hostile: green"


def test_json_view_keeps_colours_only() -> None:
    out = io.StringIO()
    LineView(json_mode=True, out=out).on_serial("b", "sim://b", 0.0, [GREEN, *HOSTILE.values()])
    texts = [json.loads(ln)["text"] for ln in out.getvalue().splitlines()]
    assert texts[0] == GREEN
    for text in texts:
        _no_control(text, sgr=True)


def test_crash_reason_is_safe() -> None:
    det = CrashDetector()
    assert (
        det.feed("Guru Meditation Error: Core  0 panic'ed (\x1b]52;c;pwned\x07Oops\x1bc).") is None
    )
    assert det._reason == "Oops"


# -- the real thing: firmware on the virtual board prints them -----------------------
HOSTILE_FW = r"""
int main(void) {
    puts_uart("\033[0;32mI (10) hostile: green\033[0m\r\n");
    puts_uart("title \033]0;pwned\007 after\r\n");
    puts_uart("clip \033]52;c;cHduZWQ=\033\\ after\r\n");
    puts_uart("reset \033c after\r\n");
    puts_uart("cursor \033[2J\033[H\033[?1049h after\r\n");
    puts_uart("dcs \033P1$r0m\033\\ after\r\n");
    puts_uart("c1 \302\2350;pwned\007 after\r\n");
    puts_uart("bell \007 bs \010 after\r\n");
    puts_uart("hostile done\r\n");
    for (;;) {}
}
"""


def _flash_file(tmp_path: Path) -> Path:
    app = FW_DIR.joinpath("app.c").read_text()
    src = tmp_path / "hostile.c"
    src.write_text(
        app[: app.index("int main(void)")] + HOSTILE_FW + app[app.index("__attribute__((naked") :]
    )
    build = build_firmware(tmp_path / "b", app_source=src)
    flash = bytearray(b"\xff" * (4 << 20))
    for off, f in (
        (0, build.bootloader_bin),
        (0x8000, build.partitions_bin),
        (0x10000, build.app_bin),
    ):
        data = f.read_bytes()
        flash[off : off + len(data)] = data
    path = tmp_path / "hostile.flash"
    path.write_bytes(bytes(flash))
    return path


def test_firmware_printing_hostile_sequences_to_plain_on_a_terminal(tmp_path: Path) -> None:
    flash = _flash_file(tmp_path)
    log = tmp_path / "raw.log"
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "fbuild_watch", "monitor", "--plain",
         "--port", f"sim://hx?timing=instant&flash={flash}", "--log-file", str(log),
         "--until", "hostile done", "--timeout", "30"],
        stdout=slave, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed its end
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    os.close(master)
    assert proc.wait(timeout=10) == 0, proc.stderr.read() if proc.stderr else ""
    text = out.decode()
    assert "[hx] hostile done" in text, text
    _no_control(text.replace("\r\n", "\n"), sgr=True)
    lines = text.replace("\r\n", "\n").splitlines()
    assert f"[hx] {GREEN}\x1b[0m" in lines  # SGR colours survive
    for visible in ("title  after", "clip  after", "reset  after", "cursor  after",
                    "dcs  after", "c1  after", "bell  bs  after"):  # fmt: skip
        assert f"[hx] {visible}" in lines, (visible, lines)
    # the log file is the byte-exact record
    raw = log.read_bytes()
    assert b"clip \x1b]52;c;cHduZWQ=\x1b\\ after\r\n" in raw
    assert b"reset \x1bc after\r\n" in raw
