"""Typing to the board, and esp-idf-monitor's habits, on a virtual board."""

from __future__ import annotations

import asyncio
from pathlib import Path

from fbuild_watch.events import Event, PortChanged, PortState
from fbuild_watch.session import SessionOptions, open_session
from fbuild_watch.sim.board import VirtualBoard
from tests.simkit import new_board


async def monitor(board: VirtualBoard, tmp_path: Path, **opts: object):  # type: ignore[no-untyped-def]
    events: list[Event] = []
    lines: list[str] = []
    connected = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_event(ev: Event) -> None:
        events.append(ev)
        if isinstance(ev, PortChanged) and ev.state == PortState.CONNECTED:
            connected.set()

    def on_serial(board: str, port: str, t: float, got: list[str], notes: object = ()) -> None:
        loop.call_soon_threadsafe(lines.extend, got)

    session = open_session(
        SessionOptions(project=tmp_path, ports=[f"sim://{board.name}"], **opts),  # type: ignore[arg-type]
        monitor_only=True,
        on_event=on_event,
        on_serial=on_serial,
    )
    session.open_boards()
    await asyncio.wait_for(connected.wait(), 10)
    return session, events, lines


async def until(cond, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


async def test_send_writes_the_line_and_its_end_of_line(tmp_path: Path) -> None:
    board = new_board()
    session, _events, _lines = await monitor(board, tmp_path, eol="CRLF")
    try:
        before = board.counters.bytes_from_host
        session.command("send hello")
        await until(lambda: board.counters.bytes_from_host == before + len(b"hello\r\n"))
        session.send("x", board="no-such-board")  # to no board: nothing sent
        session.send("ok")
        await until(lambda: board.counters.bytes_from_host == before + 7 + len(b"ok\r\n"))
    finally:
        session.close()


async def test_monitor_resets_the_board_on_attach_like_esp_idf_monitor(tmp_path: Path) -> None:
    board = new_board()
    session, _events, lines = await monitor(board, tmp_path)  # no firmware: it says so, again
    await until(lambda: any("invalid header" in ln for ln in lines))
    session.close()
    resets = board.counters.resets
    session, events, lines = await monitor(board, tmp_path, reset_on_attach=True)
    try:
        # attached to a running board: reset, so the boot log is seen from its first line
        await until(lambda: any(ln.startswith("ESP-ROM:esp32c3") for ln in lines))
        assert board.counters.resets > resets
        assert not [e for e in events if e.type == "error"]
    finally:
        session.close()
