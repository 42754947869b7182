"""Quitting while a deploy runs: the deploy is finished first; quitting again
interrupts it, and the outcome says what is on flash. Also the Ctrl+T chords."""

from __future__ import annotations

import io
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from fbuild_watch.session import SessionOptions
from fbuild_watch.sim.board import VirtualBoard
from fbuild_watch.views.lines import LineMode
from tests.simkit import new_board
from tests.test_tui import events, example_project, log_text, status, wait_until, watch_app
from tests.tuikit import RecordingApp


def _held_board() -> VirtualBoard:
    """An erased board whose loader stops at the first data block of a write,
    so the first deploy is caught half way (after the erase)."""
    board = new_board()
    board.faults.hold_on_command = "FLASH_DEFL_DATA"
    return board


def _wait(cond: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


async def _until_exit(app: RecordingApp, timeout: float = 30.0) -> None:
    import asyncio

    deadline = time.monotonic() + timeout
    while app.return_code is None:
        assert time.monotonic() < deadline, "the app did not exit"
        await asyncio.sleep(0.02)


async def test_tui_quit_finishes_the_deploy_first(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    project = example_project(tmp_path, monkeypatch)
    board = _held_board()
    app = watch_app(project, board)
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_until(pilot, board.faults.held.is_set, timeout=60)
        await pilot.press("ctrl+c")
        await wait_until(pilot, lambda: "quitting after the deploy" in status(app))
        assert app.return_code is None  # still running: the deploy is not cut off
        assert not events(app, "deploy_finished")
        board.faults.release.set()
        await _until_exit(app)
    done = events(app, "deploy_finished")
    assert len(done) == 1 and done[0].data["kind"] == "verify-probe"
    assert done[0].data["flash_state"] == "verified"
    assert app.exit_report and "verify-probe: wrote" in app.exit_report[0]
    assert app.return_value == 130  # Ctrl+C, as in the line modes


async def test_tui_second_quit_aborts_and_reports_the_flash(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    project = example_project(tmp_path, monkeypatch)
    board = _held_board()
    app = watch_app(project, board)
    try:
        async with app.run_test(size=(140, 40)) as pilot:
            await wait_until(pilot, board.faults.held.is_set, timeout=60)
            await pilot.press("q")
            await wait_until(pilot, lambda: "quitting after the deploy" in status(app))
            await pilot.press("q")
            await _until_exit(app)
    finally:
        board.faults.release.set()
    (done,) = events(app, "deploy_finished")
    assert done.data["kind"] == "failed" and done.data["error"] == "aborted by the user"
    assert done.data["flash_state"].startswith("partially written")
    assert "partially written" in app.exit_report[0]
    # the run failed: the board is left half written
    assert app.return_value == 1
    assert app.exit_report[-1].startswith("fbuild: error: the last deploy to")
    assert app.session.boards[0].deployer.trust.trusted is None


def _run_line_mode(project: Path, board: VirtualBoard, signals: int) -> int:
    """`fbuild watch --json` in this process; SIGINT `signals` times once the
    deploy is caught half way."""
    lm = LineMode(SessionOptions(project=project, ports=[f"sim://{board.name}"]), json_mode=True)

    def interrupt() -> None:
        _wait(board.faults.held.is_set)
        os.kill(os.getpid(), signal.SIGINT)
        _wait(lambda: lm._done is not None and lm._done.is_set())
        if signals > 1:
            os.kill(os.getpid(), signal.SIGINT)
            _wait(lambda: not lm.session.deploying)
        board.faults.release.set()

    helper = threading.Thread(target=interrupt, daemon=True)
    helper.start()
    try:
        code = lm.run()
    finally:
        board.faults.release.set()
    helper.join(5)
    return code


@pytest.mark.parametrize("signals", [1, 2])
def test_line_mode_ctrl_c_during_a_deploy(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    signals: int,
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    project = example_project(tmp_path, monkeypatch)
    board = _held_board()
    code = _run_line_mode(project, board, signals)
    out = [
        json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")
    ]
    types = [e["type"] for e in out]
    assert code == 130
    note = types.index("note")
    assert "quitting after the deploy" in out[note]["message"]
    (done,) = [e for e in out if e["type"] == "deploy_finished"]
    assert types.index("deploy_finished") > note  # reported, after the quit
    if signals == 1:
        assert done["kind"] == "verify-probe" and done["flash_state"] == "verified"
    else:
        assert done["kind"] == "failed" and done["error"] == "aborted by the user"
        assert str(done["flash_state"]).startswith("partially written")
    assert "loop_stopped" in types[types.index("deploy_finished") :]


async def test_ctrl_t_chords(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """esp-idf-monitor's Ctrl+T Ctrl+R (reset) and Ctrl+T Ctrl+F (full flash)."""
    project = example_project(tmp_path, monkeypatch)
    board = new_board()
    app = watch_app(project, board)
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_until(pilot, lambda: "blink-c3 version 1.0.0" in log_text(app, board.name))
        deploys = len(events(app, "deploy_finished"))

        # Ctrl+R alone is not a command
        resets = board.counters.resets
        await pilot.press("ctrl+r")
        await pilot.pause(0.2)
        assert board.counters.resets == resets

        banners = log_text(app, board.name).count("ESP-ROM:esp32c3")
        await pilot.press("ctrl+t", "ctrl+r")
        await wait_until(
            pilot, lambda: log_text(app, board.name).count("ESP-ROM:esp32c3") > banners
        )
        assert events(app, "reset")

        await pilot.press("ctrl+t", "ctrl+f")
        await wait_until(pilot, lambda: len(events(app, "deploy_finished")) > deploys)
        assert events(app, "deploy_finished")[-1].data["kind"] == "full"
        await pilot.press("q")
