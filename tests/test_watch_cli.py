"""`fbuild watch` as users run it: JSON lines driven through stdin, and the
TUI in a real pseudo-terminal whose screen is read back with a VT emulator."""

from __future__ import annotations

import os
import pty
import select
import time
from collections.abc import Callable
from pathlib import Path

import pyte

from tests.clikit import FBUILD, watch_json
from tests.examplekit import copy_example


def test_json_mode_with_stdin_commands(tmp_path: Path) -> None:
    project = copy_example(tmp_path / "blink-c3")
    env = {**os.environ, "FBUILD_CACHE_DIR": str(tmp_path / "cache"), "FBUILD_WATCH_TRACE": "1"}
    ev = watch_json(project, "sim://j?timing=instant&flash=", env)
    proc = ev.proc
    try:
        ev.expect(lambda e: e["type"] == "build_started")
        built = ev.expect(lambda e: e["type"] == "build_finished")
        assert (
            built["ok"] and isinstance(built["duration_ms"], float) and built["diagnostics"] == []
        )
        built_at = ev.index(lambda e: e["type"] == "build_finished")
        dep = ev.expect(lambda e: e["type"] == "deploy_finished")
        assert dep["port"].startswith("sim://j") and dep["kind"] == "verify-probe"
        # the write was reported as it went, up to every byte written
        progress = [e for e in ev.seen if e["type"] == "deploy_progress"]
        assert progress and progress[-1]["bytes_done"] == progress[-1]["bytes_total"]
        assert progress[-1]["bytes_total"] == dep["flash_bytes_written"]
        assert progress[-1]["sectors_done"] == progress[-1]["sectors_total"] > 0
        assert {
            "sectors_written",
            "flash_bytes_written",
            "wire_bytes",
            "duration_ms",
            "phases_ms",
        } <= set(dep)
        # the boot log may reach stdout before deploy_finished does
        line = ev.expect(
            lambda e: e["type"] == "serial_line" and "blink-c3 version 1.0.0" in e["text"],
            since=built_at,
        )
        assert line["port"].startswith("sim://j") and isinstance(line["t"], float)

        version = project / "src" / "version.h"
        version.write_text(version.read_text().replace('"1.0.0"', '"1.0.2"'))
        cyc = ev.expect(lambda e: e["type"] == "cycle_finished" and e.get("save_to_first_log_ms"))
        assert cyc["save_to_first_log_ms"] > 0
        assert any(e["type"] == "serial_line" and "1.0.2" in e["text"] for e in ev.seen)

        ev.send("full-flash")
        full = ev.expect(lambda e: e["type"] == "deploy_finished")
        assert full["kind"] == "full"
        ev.send("reset")
        # a reset can land mid-line: the banner then follows a partial line
        ev.expect(lambda e: e["type"] == "serial_line" and "ESP-ROM:esp32c3" in e["text"])
        ev.send("bogus")
        err = ev.expect(lambda e: e["type"] == "error")
        assert "unknown command 'bogus'" in err["message"]

        # a broken build: diagnostics, nothing deployed, the board keeps running
        main_c = project / "src" / "main.c"
        main_c.write_text(main_c.read_text().replace("led_init();", "led_init()"))
        bad = ev.expect(lambda e: e["type"] == "build_finished")
        assert not bad["ok"] and bad["diagnostics"][0]["file"] == "src/main.c"
        ev.expect(lambda e: e["type"] == "serial_line" and "counter" in e["text"])

        ev.send("quit")
        # the session ends with its last build failed: exit status 1, said last
        assert proc.wait(timeout=20) == 1
        end = ev.expect(lambda e: e["type"] == "exit")
        assert end["ok"] is False and end["error"] == "the last build failed"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_tui_in_a_real_terminal(tmp_path: Path) -> None:
    project = copy_example(tmp_path / "blink-c3")
    cols, rows = 120, 36
    env = {**os.environ, "FBUILD_CACHE_DIR": str(tmp_path / "cache"), "TERM": "xterm-256color",
           "COLUMNS": str(cols), "LINES": str(rows)}  # fmt: skip
    pid, fd = pty.fork()
    if pid == 0:  # child: the real thing, on a pty
        import fcntl
        import struct
        import termios

        fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        os.execvpe(
            FBUILD[0],
            [*FBUILD, "watch", str(project), "--port", "sim://tty?timing=instant&flash="],
            env,
        )
    screen = pyte.Screen(cols, rows)
    stream = pyte.ByteStream(screen)

    def pump(until: Callable[[str], bool], timeout: float = 40) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r, _, _ = select.select([fd], [], [], 0.1)
            if r:
                try:
                    stream.feed(os.read(fd, 65536))
                except OSError:
                    break
            text = "\n".join(screen.display)
            if until(text):
                return text
        raise AssertionError("screen never matched:\n" + "\n".join(screen.display))

    try:
        text = pump(lambda s: "blink-c3 version 1.0.0" in s and "verify-probe: wrote" in s)
        top = screen.display[0]
        assert (
            "blink-c3" in top and "tty" in top and "verify-probe: wrote" in top
        )  # the status line
        assert "f full flash" in text and "q quit" in text  # the footer lists the keys
        pump(lambda s: "counter 1 led on" in s)
        os.write(fd, b"q")
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    finally:
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(fd)


def test_a_failed_first_build_still_shows_the_boot_log(tmp_path: Path) -> None:
    """No deploy resets the board when the first build fails: it is reset
    for its boot log, as esp-idf-monitor resets on attach."""
    project = copy_example(tmp_path / "blink-c3")
    main_c = project / "src" / "main.c"
    main_c.write_text(main_c.read_text() + "\nthis does not compile\n")
    env = {**os.environ, "FBUILD_CACHE_DIR": str(tmp_path / "cache")}
    ev = watch_json(project, "sim://noreset?timing=instant&flash=", env)
    try:
        built = ev.expect(lambda e: e["type"] == "build_finished")
        assert not built["ok"]
        ev.expect(lambda e: e["type"] == "reset")
        ev.expect(lambda e: e["type"] == "serial_line" and "ESP-ROM" in e["text"])
        assert not any(e["type"] == "deploy_started" for e in ev.seen)
        ev.send("quit")
        assert ev.proc.wait(timeout=30) == 1  # the last build failed
    finally:
        ev.kill()
