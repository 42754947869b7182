"""A log file that cannot be written (a full disk: /dev/full gives ENOSPC
for real) is one warning and is turned off; the monitor shows every line."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from fbuild_watch.events import Event
from fbuild_watch.session import SessionOptions, WatchSession
from tests.simkit import new_board

FULL = Path("/dev/full")


def test_monitor_with_log_file_on_a_full_disk() -> None:
    res = subprocess.run(
        [sys.executable, "-m", "fbuild_watch", "monitor", "--port", "sim://lf?timing=instant&flash=",
         "--plain", "--log-file", str(FULL), "--until", "invalid header", "--timeout", "20"],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stderr == ""  # no traceback, while running or at exit
    warnings = [ln for ln in res.stdout.splitlines() if ln.startswith("warning:")]
    assert warnings == [
        "warning: log file /dev/full: cannot write: No space left on device; not logging to it"
    ]
    assert "[lf] invalid header: 0xffffffff" in res.stdout


def _flood_through_session(log_file: Path, n: int) -> tuple[list[str], list[Event], WatchSession]:
    """`n` numbered lines from a virtual board's UART through a monitor-only
    session; returns the flood lines the view got and the warnings."""
    board = new_board()
    events: list[Event] = []
    got: list[str] = []

    async def main() -> WatchSession:
        done = asyncio.Event()
        aio = asyncio.get_running_loop()

        def on_serial(_b: str, _p: str, _t: float, lines: list[str], _notes: object = ()) -> None:
            got.extend(ln for ln in lines if ln.startswith("flood "))
            if got and got[-1] == f"flood {n - 1}":
                aio.call_soon_threadsafe(done.set)

        opts = SessionOptions(Path(), ports=[f"sim://{board.name}"], log_file=log_file)
        session = WatchSession(opts, events.append, on_serial)
        session.setup(monitor_only=True)
        session.open_boards()
        try:
            block = 500
            for start in range(0, n, block):  # the board's UART, in bursts
                board._emit_text(
                    "".join(f"flood {i}\r\n" for i in range(start, min(start + block, n)))
                )
            await asyncio.wait_for(done.wait(), 30)
            await asyncio.sleep(0)  # events handed over by the reader thread
        finally:
            session.close()
        return session

    session = asyncio.run(main())
    return got, [e for e in events if e.type == "warning"], session


def test_full_disk_log_file_during_a_flood_is_one_warning_and_every_line_shown() -> None:
    n = 20_000  # ~250 kB
    got, warnings, session = _flood_through_session(FULL, n)
    assert got == [f"flood {i}" for i in range(n)]
    assert [w.data["message"] for w in warnings] == [
        "log file /dev/full: cannot write: No space left on device; not logging to it"
    ]
    log_file = session.boards[0].log_file
    assert log_file is not None and log_file.failed is not None


def test_unopenable_log_file_is_one_warning(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    got, warnings, _ = _flood_through_session(blocker / "mon.log", 100)
    assert len(got) == 100
    assert [w.data["message"] for w in warnings] == [
        f"log file {blocker}/mon.log: cannot create its directory {blocker}: File exists;"
        " not logging to it"
    ]


def test_a_writable_log_file_keeps_every_byte(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "mon.log"
    got, warnings, _ = _flood_through_session(path, 2000)
    assert len(got) == 2000 and warnings == []
    text = path.read_bytes().decode()
    assert "".join(f"flood {i}\r\n" for i in range(2000)) in text
