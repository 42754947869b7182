"""A slow or closed stdout in the line modes (`--json`, `--plain`): the
board's serial reader never waits for whoever reads our output; what does
not fit is dropped, counted and said once; a closed stdout (`| head`,
`| grep -m1`) ends the session cleanly, exit status 141, no traceback.

The board here is a pseudo-terminal, opened by `fbuild monitor` as it
opens a USB-UART's /dev/ttyUSB0: a reader that falls behind fills the tty's
buffer and blocks our writes to it, where a real UART would lose the bytes.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import threading
import time
import tty
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fbuild_watch.events import Note
from fbuild_watch.views.lines import LineView
from fbuild_watch.views.output import MAX_PENDING
from tests.clikit import FBUILD
from tests.examplekit import copy_example
from tests.fwkit import Build
from tests.simkit import sim_process_env

FEED_TIMEOUT_S = 30.0


class Pty:
    """The board's end of a serial port: what we write, the monitor reads."""

    def __init__(self) -> None:
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo or CR/LF translation before the monitor opens it
        self.url = os.ttyname(self._slave)

    def feed(self, data: bytes) -> threading.Event:
        """Write `data` on a thread; the event is set once the monitor has
        taken all of it but what the tty buffers."""
        done = threading.Event()

        def run() -> None:
            view = memoryview(data)
            while view:
                view = view[os.write(self.master, view) :]
            done.set()

        threading.Thread(target=run, daemon=True).start()
        return done

    def close(self) -> None:
        os.close(self.master)
        os.close(self._slave)


class Stdout:
    """A child's stdout, read only when the test says so."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.proc = proc
        self.fd = proc.stdout.fileno()
        self.buf = bytearray()
        self.lines: list[bytes] = []

    def read_until(self, done: Callable[[bytes], bool], timeout: float = 60.0) -> bytes:
        """Read whole lines until one satisfies `done`; that line."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" in self.buf:
                line, _, rest = bytes(self.buf).partition(b"\n")
                self.buf[:] = rest
                self.lines.append(line)
                if done(line):
                    return line
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.fd], [], [], max(left, 0))
            if not ready:
                raise AssertionError(f"not seen in {timeout} s; last: {self.lines[-3:]!r}")
            chunk = os.read(self.fd, 1 << 20)
            if not chunk:
                raise AssertionError(f"stdout ended; last: {self.lines[-3:]!r}")
            self.buf += chunk

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines]


@pytest.fixture
def monitor(tmp_path: Path) -> Iterator[tuple[Pty, subprocess.Popen[bytes], Stdout, Path]]:
    """`fbuild monitor --json --log-file` on a pty, connected, its stdout
    not being read."""
    port = Pty()
    log = tmp_path / "serial.log"
    proc = subprocess.Popen(
        [*FBUILD, "monitor", "--json", "--no-reset", "--port", port.url, "--log-file", str(log)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "FBUILD_CACHE_DIR": str(tmp_path / "cache")},
    )  # fmt: skip
    out = Stdout(proc)
    try:
        # bytes sent before the port is open are dropped by the open
        out.read_until(lambda ln: b'"port_state"' in ln and b'"connected"' in ln)
        yield port, proc, out, log
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        port.close()


def _quit(proc: subprocess.Popen[bytes]) -> tuple[int, str]:
    assert proc.stdin is not None
    proc.stdin.write(b"quit\n")
    proc.stdin.flush()
    _, err = proc.communicate(timeout=30)
    return proc.returncode, err.decode()


def _board_lines(n: int, width: int) -> tuple[list[str], bytes]:
    texts = [f"{i:06d} " + "x" * width for i in range(n)]
    return texts, b"".join(t.encode() + b"\r\n" for t in texts)


def test_a_stalled_stdout_does_not_stall_the_serial_reader(monitor: Any) -> None:
    port, proc, out, log = monitor
    # 2 MB of board lines (3 MB of JSON) while nobody reads stdout: far
    # more than the stdout pipe (64 KiB) and the tty (a few KiB) hold
    texts, data = _board_lines(20_000, 100)
    fed = port.feed(data)
    assert fed.wait(FEED_TIMEOUT_S), (
        "the serial reader stalled behind stdout: the board was not read"
    )
    last = json.dumps(texts[-1]).encode()
    out.read_until(lambda ln: last in ln)  # now read: every line comes, in order
    events = out.events()
    assert [e["text"] for e in events if e["type"] == "serial_line"] == texts
    assert not [e for e in events if e["type"] == "output_dropped"]
    code, err = _quit(proc)
    assert code == 0, err
    assert log.read_bytes() == data  # and the log file has every byte


def test_lines_that_do_not_fit_are_dropped_counted_and_said_once(monitor: Any) -> None:
    port, proc, out, log = monitor
    # ~20 MiB of JSON against the 16 MiB stdout queue, nobody reading
    texts, data = _board_lines(640, 32 << 10)
    assert len(data) > MAX_PENDING + (2 << 20)
    assert port.feed(data).wait(FEED_TIMEOUT_S), "the serial reader stalled behind stdout"
    notice = out.read_until(lambda ln: b'"output_dropped"' in ln)
    # after the gap, lines are shown again
    port.feed(b"after the gap\r\n")
    out.read_until(lambda ln: b'"after the gap"' in ln)
    events = out.events()
    shown = [e for e in events if e["type"] in ("serial_line", "output_dropped")]
    # each notice stands where its lines are missing, and counts them
    expected = iter([*texts, "after the gap"])
    dropped = 0
    for e in shown:
        if e["type"] == "output_dropped":
            assert e["lines"] > 0 and isinstance(e["t"], float)
            assert set(e) == {"type", "t", "lines"}
            for _ in range(e["lines"]):
                next(expected)
            dropped += e["lines"]
        else:
            assert e["text"] == next(expected)
    assert next(expected, None) is None  # every line is shown or counted
    assert sum(e["type"] == "output_dropped" for e in shown) == 1, "one gap, one notice"
    assert dropped >= len(texts) - (MAX_PENDING + (1 << 20)) // (32 << 10)
    assert json.loads(notice)["lines"] == dropped
    code, err = _quit(proc)
    assert code == 0, err
    assert log.read_bytes() == data + b"after the gap\r\n"  # the log file has them all


def _fill(fd: int) -> bytes:
    """Fill a pipe until a write would block; what was written."""
    os.set_blocking(fd, False)
    filler = bytearray()
    try:
        while True:
            filler += b"f" * os.write(fd, b"f" * 4096)
    except BlockingIOError:
        pass
    os.set_blocking(fd, True)
    return bytes(filler)


def test_plain_says_how_many_lines_it_dropped_and_keeps_every_event() -> None:
    r, w = os.pipe()
    out = os.fdopen(w, "w")
    view = LineView(json_mode=False, out=out, max_pending=1000)
    view.start()
    try:
        filler = _fill(w)  # whoever reads stdout has stopped
        for i in range(100):
            view.on_serial("b", "sim://b", 0.0, [f"line {i:03d}"])  # "[b] line 000": 12
        view.on_event(Note(message="deploy finished"))  # an event is never dropped
        got = bytearray()

        def read_until(text: bytes) -> None:
            while text not in got:
                ready, _, _ = select.select([r], [], [], 30)
                assert ready, f"{text!r} never came; got {bytes(got)!r}"
                got.extend(os.read(r, 65536))

        notice = b"--- fbuild: 24 board lines not shown: stdout did not keep up ---\n"
        read_until(notice)
        view.on_serial("b", "sim://b", 0.0, ["after"])  # the writer caught up: shown again
        read_until(b"[b] after\n")
    finally:
        view.close()
        out.close()
        os.close(r)
    assert bytes(got[: len(filler)]) == filler
    lines = got[len(filler) :].decode().splitlines()
    # 1000 characters hold 76 lines of 12 (and their newlines)
    assert lines == [
        *(f"[b] line {i:03d}" for i in range(76)),
        "note: deploy finished",
        notice.decode().strip(),
        "[b] after",
    ]


def piped(cmd: list[str], reader: list[str], env: dict[str, str]) -> tuple[bytes, int, bytes]:
    """`cmd | reader`: what the reader printed, cmd's exit status and stderr."""
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    assert proc.stdout is not None
    read = subprocess.Popen(reader, stdin=proc.stdout, stdout=subprocess.PIPE)
    proc.stdout.close()  # the reader has the only read end
    shown, _ = read.communicate(timeout=60)
    try:
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return shown, proc.returncode, err


def test_watch_json_into_head_ends_the_session_cleanly(tmp_path: Path) -> None:
    project = copy_example(tmp_path / "blink-c3")
    env = {**os.environ, "FBUILD_CACHE_DIR": str(tmp_path / "cache")}
    shown, code, err = piped(
        [*FBUILD, "watch", str(project), "--json", "--port", "sim://bp?timing=instant&flash="],
        ["head", "-3"],
        env,
    )
    first = [json.loads(line) for line in shown.splitlines()]
    assert len(first) == 3 and all("type" in e for e in first)
    # as `yes | head`'s `yes` under `set -o pipefail`: 128 + SIGPIPE
    assert code == 141, err.decode()
    assert err == b""  # no traceback, no "Exception ignored" at exit, no error line


def test_monitor_into_grep_m1_ends_while_the_board_is_quiet(
    tmp_path: Path, firmware: Build
) -> None:
    """`grep -m1` leaves once it has its line; the board then prints nothing
    more, so no write fails: the quiet pipe is noticed all the same."""
    flash = tmp_path / "board.flash"
    image = bytearray(b"\xff" * (4 << 20))
    for off, f in ((0, firmware.bootloader_bin), (0x8000, firmware.partitions_bin),
                   (0x10000, firmware.app_bin)):  # fmt: skip
        data = f.read_bytes()
        image[off : off + len(data)] = data
    flash.write_bytes(bytes(image))
    env = sim_process_env(tmp_path)
    env["SIM_STATS"] = str(tmp_path / "stats.json")
    shown, code, err = piped(
        [*FBUILD, "monitor", "--plain", "--port", f"sim://gm?timing=instant&flash={flash}"],
        ["grep", "-m1", "fw-test 1.0.0 up"],
        env,
    )
    assert shown == b"[gm] fw-test 1.0.0 up\n"
    assert code == 141, err.decode()
    assert err == b""
    # the session closed the port before exiting: a board opened by URL with
    # a flash file is powered off and freed when its last port closes (so it
    # is gone from the boards this process had at exit); it was left running
    # its app, not in its loader (that would be handed on in FLASH.chip)
    assert "gm" not in json.loads((tmp_path / "stats.json").read_text())
    assert not flash.with_name(flash.name + ".chip").exists()
