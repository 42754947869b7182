"""Pilot tests of the TUI against virtual boards."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest

from fbuild_watch.events import Event
from fbuild_watch.session import SessionOptions
from fbuild_watch.sim.board import VirtualBoard
from fbuild_watch.tui.status import StatusLine
from fbuild_watch.tui.widgets import SerialLog
from tests.examplekit import copy_example
from tests.simkit import new_board
from tests.tuikit import RecordingApp, tui_app


async def wait_until(pilot, cond: Callable[[], bool], timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    import time

    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await pilot.pause(0.02)


def events(
    app: RecordingApp, type_: str, pred: Callable[[Event], bool] = lambda e: True
) -> list[Event]:
    return [e for e in app.events_seen if e.type == type_ and pred(e)]


def log_text(app: RecordingApp, board: str) -> str:
    return "\n".join(app.query_one(f"#log-{board}", SerialLog).lines)


def status(app: RecordingApp) -> str:
    return str(app.query_one("#status", StatusLine).render())


def example_project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str = "blink-c3"
) -> Path:
    """A private copy of the example, with a private verified-layout cache."""
    monkeypatch.setenv("FBUILD_CACHE_DIR", str(tmp_path / "cache"))
    return copy_example(tmp_path / name)


def watch_app(project: Path, board: VirtualBoard) -> RecordingApp:
    return tui_app(SessionOptions(project=project, ports=[f"sim://{board.name}"]))


async def test_edit_build_deploy_and_keys(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    project = example_project(tmp_path, monkeypatch)
    board = new_board()
    app = watch_app(project, board)
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_until(pilot, lambda: "blink-c3 version 1.0.0" in log_text(app, board.name))
        first = events(app, "deploy_finished")[0]
        assert first.data["kind"] == "verify-probe"
        assert "verify-probe: wrote" in status(app)

        version = project / "src" / "version.h"
        version.write_text(version.read_text().replace('"1.0.0"', '"1.0.1"'))
        await wait_until(pilot, lambda: "blink-c3 version 1.0.1" in log_text(app, board.name))
        delta = events(app, "deploy_finished")[-1]
        assert delta.data["kind"] == "sector-delta" and delta.data["sectors_written"] <= 3
        await wait_until(pilot, lambda: "sector-delta: wrote" in status(app))
        await wait_until(
            pilot,
            lambda: bool(
                events(app, "cycle_finished", lambda e: e.data.get("save_to_first_log_ms"))
            ),
        )

        # f: full flash
        n = len(events(app, "deploy_finished"))
        await pilot.press("f")
        await wait_until(pilot, lambda: len(events(app, "deploy_finished")) > n)
        assert events(app, "deploy_finished")[-1].data["kind"] == "full"

        # r: reset, the boot banner appears again
        banners = log_text(app, board.name).count("ESP-ROM:esp32c3")
        await pilot.press("r")
        await wait_until(
            pilot, lambda: log_text(app, board.name).count("ESP-ROM:esp32c3") > banners
        )

        # t: timestamps on the pane
        await pilot.press("t")
        await wait_until(
            pilot,
            lambda: (
                re.search(r"^\d\d:\d\d:\d\d\.\d{3} ", log_text(app, board.name), re.M) is not None
            ),
        )
        await pilot.press("t")

        # /: filter; letters typed there are not commands
        deploys = len(events(app, "deploy_finished"))
        await pilot.press("slash")
        for ch in "blink":  # an esp-idf-monitor print filter: the tag `blink`, every level
            await pilot.press(ch)
        await pilot.press("enter")
        await pilot.pause(0.1)
        assert len(events(app, "deploy_finished")) == deploys  # the 'b', 'l', ... went into the box
        lines = app.query_one(f"#log-{board.name}", SerialLog).lines
        assert lines and all(" blink: " in ln for ln in lines)

        # unplug: waiting for the board; the log resumes after re-plug
        board.unplug()
        await wait_until(pilot, lambda: "waiting for the board" in status(app))
        seen = log_text(app, board.name).count("counter")
        board.replug()
        await wait_until(pilot, lambda: log_text(app, board.name).count("counter") > seen + 1)
        await pilot.press("q")


async def test_crash_is_decoded_to_main_c(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    project = example_project(tmp_path, monkeypatch, "crash")
    toml = project / "fbuild.toml"
    toml.write_text(toml.read_text().replace('command = ["make"]', 'command = ["make", "CRASH=1"]'))
    board = new_board()
    app = watch_app(project, board)
    async with app.run_test(size=(140, 40)) as pilot:
        await wait_until(pilot, lambda: bool(events(app, "crash")))
        crash = events(app, "crash")[0]
        assert crash.data["reason"] == "Store access fault"
        frames = crash.data["frames"]
        assert frames[0]["function"] == "store_sample" and frames[0]["file"].endswith("main.c")
        assert any(f["function"] == "main" for f in frames)
        await wait_until(
            pilot, lambda: "=> crash decoded: Store access fault" in log_text(app, board.name)
        )
        text = log_text(app, board.name)
        assert "store_sample at src/main.c:" in text
        # the decode reads under the panic it decodes, not above it
        assert text.index("Guru Meditation Error") < text.index("=> crash decoded")
        await pilot.press("q")


async def test_scroll_back_keeps_position_and_loses_nothing(tmp_path: Path) -> None:
    board = new_board()
    board.unplug()  # quiet: the lines below are the only ones
    app = tui_app(
        SessionOptions(project=tmp_path, ports=[f"sim://{board.name}"]), monitor_only=True
    )
    async with app.run_test(size=(100, 30)) as pilot:
        log = app.query_one(f"#log-{board.name}", SerialLog)
        app._on_serial(board.name, "sim://x", 0.0, [f"line {i}" for i in range(200)])
        await wait_until(pilot, lambda: log.line_count >= 200 and log.is_vertical_scroll_end)
        log.focus()
        await pilot.press("pageup")
        await pilot.pause(0.05)
        held = log.scroll_y
        assert not log.auto_scroll
        app._on_serial(board.name, "sim://x", 0.0, [f"more {i}" for i in range(100)])
        await wait_until(pilot, lambda: log.line_count >= 300)
        await pilot.pause(0.1)
        assert log.scroll_y == held  # new lines did not yank the view away
        await pilot.press("end")
        await wait_until(pilot, lambda: log.is_vertical_scroll_end and log.auto_scroll)
        assert log.lines[-1] == "more 99"
        await pilot.press("q")
