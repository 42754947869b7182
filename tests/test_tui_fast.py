"""The TUI alone, driven by a fake session: keys, status line, panes, exit
codes (Pilot), and how it looks (snapshots, `pytest --snapshot-update` to
accept a deliberate change; the SVGs are in tests/__snapshots__/)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from textual.pilot import Pilot

from fbuild_watch.build.diagnostics import Diagnostic
from fbuild_watch.build.runner import BuildResult
from fbuild_watch.crash.report import PanicCollector, PanicReport
from fbuild_watch.decode import Crash, Frame
from fbuild_watch.deploy.outcome import DeployOutcome
from fbuild_watch.events import (
    BuildFinished,
    BuildStarted,
    CrashDecoded,
    DeployFinished,
    DeployProgress,
    DeployStarted,
    Failed,
    PortChanged,
    PortState,
)
from fbuild_watch.tui.app import WatchApp
from fbuild_watch.tui.keybar import KeyBar
from fbuild_watch.tui.status import StatusLine
from fbuild_watch.tui.widgets import BuildLog, SerialLog
from tests.tuikit import FakeSession

SIZE = (110, 28)
Snap = Callable[..., bool]


async def until(pilot: Pilot[Any], cond: Callable[[], bool], timeout: float = 10.0) -> None:
    """Events arrive as messages: wait for the app to have handled them."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await pilot.pause(0.01)


def status(app: WatchApp) -> str:
    return str(app.query_one("#status", StatusLine).render())


def failed_build() -> BuildFinished:
    diag = Diagnostic("src/main.c", 12, 5, "error", "'counter' undeclared (first use here)")
    result = BuildResult(
        ok=False,
        duration_s=1.25,
        exit_code=2,
        output=["src/main.c:12:5: error: 'counter' undeclared (first use here)"],
        diagnostics=[diag],
        error="the build command failed (exit code 2)",
    )
    return BuildFinished(result=result, generation=2, stale=False)


def decoded_crash() -> CrashDecoded:
    reports: list[PanicReport] = []
    collector = PanicCollector(reports.append)
    for line in PANIC:
        collector.feed(line)
    collector.finish()
    frames = [
        Frame(address=0x42000054, function="app_main", file="src/main.c", line=31, source="MEPC"),
        Frame(
            address=0x4200010A, function="main_task", file="app_startup.c", line=208, source="RA"
        ),
    ]
    crash = Crash(reports[0], frames=frames)
    return CrashDecoded(board="demo", port="sim://demo", crash=crash)


PANIC = [
    "Guru Meditation Error: Core  0 panic'ed (Illegal instruction). Exception was unhandled.",
    "Core  0 register dump:",
    "MEPC    : 0x42000054  RA      : 0x4200010a  SP      : 0x3fc8e0b0  GP      : 0x3fc8a000",
    "",
]


async def test_keys_are_commands_and_chords_like_idf_monitor() -> None:
    session = FakeSession()
    app = WatchApp(session)
    async with app.run_test(size=SIZE) as pilot:
        for key in "fbrap":
            await pilot.press(key)
        await pilot.press("ctrl+t", "ctrl+f")
        await pilot.press("ctrl+t", "x")  # not a chord: nothing
        assert session.commands == [
            "full-flash",
            "rebuild",
            "reset",
            "app-flash",
            "pause",
            "full-flash",
        ]
        await app.action_quit()
    assert app.return_value == 0


async def test_letters_typed_into_the_filter_box_are_not_commands() -> None:
    session = FakeSession()
    app = WatchApp(session)
    async with app.run_test(size=SIZE) as pilot:
        session.serial("demo", ["I (10) main: counter 1", "I (11) wifi: up", "plain line"])
        await pilot.press("slash", *'"counter"', "enter")
        log = app.query_one("#log-demo", SerialLog)
        await until(pilot, lambda: len(log.lines) == 1)
        assert session.commands == []  # the 'c', 'r', ... went into the box
        assert app.query_one("#log-demo", SerialLog).lines == ["I (10) main: counter 1"]
        await app.action_quit()


async def test_a_regex_and_a_q_can_be_typed_into_the_filter_box() -> None:
    session = FakeSession()
    app = WatchApp(session)
    async with app.run_test(size=SIZE) as pilot:
        session.serial("demo", ["I (10) main: counter 1", "W (11) wifi: q", "E (12) mesh: lost"])
        log = app.query_one("#log-demo", SerialLog)
        await until(pilot, lambda: len(log.lines) == 3)
        await pilot.press("slash", "slash", *"wifi|mesh", "slash", "enter")
        await until(pilot, lambda: len(log.lines) == 2)
        assert log.lines == ["W (11) wifi: q", "E (12) mesh: lost"]
        await pilot.press("slash", "ctrl+a", "ctrl+k", *'"q"', "enter")  # `q` is text here
        await until(pilot, lambda: log.lines == ["W (11) wifi: q"])
        assert app.return_code is None and session.commands == []
        await app.action_quit()


async def test_status_line_and_tab_follow_a_deploy() -> None:
    session = FakeSession()
    app = WatchApp(session)
    async with app.run_test(size=SIZE) as pilot:
        session.emit(
            PortChanged(board="demo", port="sim://demo", state=PortState.CONNECTED, message="")
        )
        session.emit(DeployStarted(board="demo", port="sim://demo", full=False, app_only=False))
        session.emit(
            DeployProgress(
                board="demo",
                port="sim://demo",
                bytes_done=49152,
                bytes_total=65536,
                sectors_done=12,
                sectors_total=16,
            )
        )
        await until(pilot, lambda: "75%" in status(app))
        text = status(app)
        assert "deploying" in text and "(connected)" in text and "[#######---] 75%" in text
        tab = app.query_one("#tabs").get_tab("tab-demo")  # type: ignore[attr-defined]
        assert str(tab.label) == "demo 75%"
        outcome = DeployOutcome(port="sim://demo", kind="sector-delta", sectors_written=3)
        outcome.flash_bytes_written, outcome.duration_s = 12288, 0.4
        session.emit(DeployFinished(board="demo", port="sim://demo", outcome=outcome))
        await until(pilot, lambda: "sector-delta" in status(app))
        assert "sector-delta: wrote 3 sectors (12 KiB) in 0.40 s" in status(app)
        assert "monitoring" in status(app)
        failed = DeployOutcome(port="sim://demo", kind="failed", error="boom")
        session.emit(DeployFinished(board="demo", port="sim://demo", outcome=failed))
        await until(pilot, lambda: "deploy failed" in status(app))
        assert str(tab.label) == "demo"
        await app.action_quit()


async def test_the_decode_stays_under_its_panic_when_t_redraws_the_pane() -> None:
    session = FakeSession()
    app = WatchApp(session)
    async with app.run_test(size=SIZE) as pilot:
        log = app.query_one("#log-demo", SerialLog)
        session.serial("demo", ["I (312) main: blink-c3 version 1.0.0", *PANIC])
        session.emit(decoded_crash())
        await until(pilot, lambda: any("crash decoded" in ln for ln in log.lines))
        before = list(log.lines)
        assert before.index(PANIC[2]) < before.index("  => crash decoded: Illegal instruction")
        await pilot.press("t")  # timestamps: the pane is drawn again from the history
        await until(pilot, lambda: log.lines != before)
        after = [ln.split(" ", 1)[1].strip() for ln in log.lines]  # without the timestamps
        assert after == [ln.strip() for ln in before]
        assert "" in after  # the panic's blank line is a line (Log drops "")
        await app.action_quit()


async def test_timeout_quits_like_q_and_the_log_pane_has_the_keys_at_start() -> None:
    app = WatchApp(FakeSession(), timeout=0.3)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        # PageUp/End scroll the log at once: no Tab first
        assert isinstance(app.focused, SerialLog), app.focused
        await until(pilot, lambda: app.return_code is not None)
    assert app.return_code == 0


async def test_a_failed_part_stays_on_the_status_line_and_the_exit_is_1() -> None:
    session = FakeSession()
    app = WatchApp(session)
    async with app.run_test(size=SIZE) as pilot:
        session.emit(Failed(part="file watcher", message="file watcher failed: boom"))
        await until(pilot, lambda: "file watcher failed: boom" in status(app))
        session.fail = "the last build failed"
        await app.action_quit()
    assert app.return_value == 1
    assert app.exit_report == ["fbuild: error: the last build failed"]


async def test_failed_build_opens_the_build_pane() -> None:
    session = FakeSession()
    app = WatchApp(session)
    async with app.run_test(size=SIZE) as pilot:
        session.emit(BuildStarted(generation=2, reason="changed", changed=["src/main.c"], count=1))
        session.emit(failed_build())
        await until(pilot, lambda: "build failed" in status(app))  # the state word says so
        pane = app.query_one("#build", BuildLog)
        # the pane is filled once a frame
        await until(pilot, lambda: pane.has_class("visible") and len(pane.lines) > 1)
        assert any("src/main.c:12:5: error: 'counter' undeclared" in ln for ln in pane.lines)
        await app.action_quit()


async def test_console_send_box_chords_and_mute() -> None:
    session = FakeSession(boards=("left", "right"))
    app = WatchApp(session)
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("s", *"help", "enter")  # to the board in the active tab
        assert session.sent == [("help", "left")] and session.commands == []
        await pilot.press("escape")
        await pilot.press("ctrl+t", "ctrl+p")  # esp-idf-monitor: hold in the bootloader
        assert session.commands == ["bootloader"]
        await pilot.press("ctrl+t", "ctrl+t")  # Ctrl+T itself, to the board
        assert session.sent[-1] == ("\x14", "left")
        await pilot.press("ctrl+t", "ctrl+y")  # mute: kept, not shown
        session.serial("left", ["I (1) main: hidden"])
        await until(pilot, lambda: "output muted" in status(app))
        await pilot.pause(0.1)
        assert app.query_one("#log-left", SerialLog).lines == []
        await pilot.press("ctrl+t", "ctrl+y")
        session.serial("left", ["I (2) main: shown"])
        log = app.query_one("#log-left", SerialLog)
        await until(pilot, lambda: log.lines == ["I (2) main: shown"])
        await pilot.press("ctrl+t", "ctrl+l")  # log to a file
        await until(pilot, lambda: session.log_path is not None)
        await pilot.press("ctrl+t", "tab")  # Ctrl+T Ctrl+I, as a terminal sends it: timestamps
        await until(pilot, lambda: "timestamps" in status(app))
        await pilot.press("ctrl+t", "ctrl+x")  # esp-idf-monitor's exit chord
    assert app.return_value == 0


async def test_print_filter_and_timestamps_from_the_session() -> None:
    session = FakeSession(print_filter="wifi:W", timestamps=True)
    app = WatchApp(session)
    async with app.run_test(size=SIZE) as pilot:
        session.serial("demo", ["I (1) wifi: up", "W (2) wifi: retry", "E (3) mesh: lost"], t=0.5)
        log = app.query_one("#log-demo", SerialLog)
        await until(pilot, lambda: len(log.lines) == 1)
        assert log.lines[0].endswith(".500 W (2) wifi: retry")
        await app.action_quit()


# -- how it looks -----------------------------------------------------------------
def snapshot_app(
    session: FakeSession, setup: Callable[[FakeSession], None]
) -> tuple[WatchApp, Any]:
    app = WatchApp(session)

    async def before(pilot: Pilot[Any]) -> None:
        setup(session)
        await pilot.pause()
        app.clear_notifications()  # toasts time out: not part of the picture
        await pilot.pause()

    return app, before


def test_snapshot_status_line_and_failed_build(snap_compare: Snap) -> None:
    def setup(s: FakeSession) -> None:
        s.emit(PortChanged(board="demo", port="sim://demo", state=PortState.CONNECTED, message=""))
        s.emit(BuildStarted(generation=2, reason="changed", changed=["src/main.c"], count=1))
        s.emit(failed_build())

    app, before = snapshot_app(FakeSession(), setup)
    assert snap_compare(app, terminal_size=SIZE, run_before=before)


def test_snapshot_decoded_crash(snap_compare: Snap) -> None:
    def setup(s: FakeSession) -> None:
        s.serial("demo", ["I (312) main: blink-c3 version 1.0.0", *PANIC])
        s.emit(decoded_crash())

    app, before = snapshot_app(FakeSession(), setup)
    assert snap_compare(app, terminal_size=SIZE, run_before=before)


def test_snapshot_filter_box(snap_compare: Snap) -> None:
    def setup(s: FakeSession) -> None:
        s.serial("demo", ["I (10) main: counter 1", "W (11) wifi: retry", "E (12) mesh: lost"])

    app, before = snapshot_app(FakeSession(), setup)
    assert snap_compare(app, terminal_size=SIZE, run_before=before, press=["slash", "w", "i"])


async def test_every_key_stays_on_screen_in_a_60_column_pane() -> None:
    app = WatchApp(FakeSession())
    async with app.run_test(size=(60, 24)) as pilot:
        await pilot.pause()
        bar = app.query_one(KeyBar)
        assert bar.region.bottom <= 24 and bar.size.height >= 2  # wrapped, not cut
        shown = " ".join(strip.text.strip() for strip in bar.render_lines(bar.size.region))
        for key, what in (("f", "full flash"), ("/", "filter"), ("s", "send"), ("q", "quit")):
            assert f"{key} {what}" in shown, shown
        await app.action_quit()


def test_snapshot_keys_at_60_columns(snap_compare: Snap) -> None:
    app, before = snapshot_app(FakeSession(), lambda s: None)
    assert snap_compare(app, terminal_size=(60, 20), run_before=before)


def test_snapshot_two_board_tabs(snap_compare: Snap) -> None:
    def setup(s: FakeSession) -> None:
        for b in ("left", "right"):
            s.emit(PortChanged(board=b, port=f"sim://{b}", state=PortState.CONNECTED, message=""))
        s.emit(
            DeployProgress(
                board="right",
                port="sim://right",
                bytes_done=8192,
                bytes_total=65536,
                sectors_done=2,
                sectors_total=16,
            )
        )
        s.serial("left", ["I (312) main: blink-c3 version 1.0.0"])

    app, before = snapshot_app(FakeSession(boards=("left", "right")), setup)
    assert snap_compare(app, terminal_size=SIZE, run_before=before)
