"""Every event the loop can emit, against the `--json` schema in README.md."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

from fbuild_watch.build.runner import BuildResult
from fbuild_watch.crash.coredump import CoreDumpReport
from fbuild_watch.crash.frames import AddressNote, Frame
from fbuild_watch.crash.report import PanicCollector, PanicReport
from fbuild_watch.decode import decode_report
from fbuild_watch.deploy.outcome import DeployOutcome
from fbuild_watch.events import (
    BoardRef,
    BoardReset,
    BuildFinished,
    BuildOutput,
    BuildProgress,
    BuildSkipped,
    BuildStarted,
    ConnectedAhead,
    CoreDumpDecoded,
    CrashDecoded,
    CycleFinished,
    DeployFinished,
    DeployProgress,
    DeployStarted,
    Event,
    Exited,
    Failed,
    FilesChanged,
    LoopStarted,
    LoopStopped,
    Note,
    Paused,
    PortChanged,
    PortState,
    Resumed,
    SessionStarted,
    StartupScan,
    Warned,
    event_classes,
    output_dropped_json,
    serial_line_json,
)
from fbuild_watch.monitor import CONTINUES, LinePiece
from fbuild_watch.views.lines import LineView, human

README = Path(__file__).resolve().parent.parent / "README.md"
BOARD = {"board": "demo", "port": "sim://demo"}


def readme_schema() -> dict[str, set[str]]:
    """type -> field names, from the README's "JSON events" table."""
    text = README.read_text()
    table = text[text.index("### JSON events") :]
    table = table[: table.index("\n\n", table.index("|---|"))]
    schema: dict[str, set[str]] = {}
    rows = [r for r in table.splitlines() if r.startswith("|")]
    for row in rows[2:]:  # after the header and |---|
        types_cell, fields_cell = (c.strip() for c in row.strip("|").split("|"))
        # "diagnostics (list of {file, ...})" -> diagnostics
        names = re.sub(r"\([^)]*\)", "", fields_cell)
        fields = {n.strip() for n in names.split(",") if n.strip()}
        for t in re.findall(r"`([a-z_]+)`", types_cell):
            schema[t] = fields
    return schema


def a_crash() -> CrashDecoded:
    reports: list[PanicReport] = []
    collector = PanicCollector(reports.append)
    for line in (
        "Guru Meditation Error: Core  0 panic'ed (Illegal instruction). Exception was unhandled.",
        "Core  0 register dump:",
        "MEPC    : 0x42000054  RA      : 0x42000050  SP      : 0x3fc8e0b0  GP      : 0x3fc8a000",
        "",
    ):
        collector.feed(line)
    collector.finish()
    assert reports, "the panic was not recognised"
    return CrashDecoded(**BOARD, crash=decode_report(reports[0], None))


def samples() -> list[Event]:
    result = BuildResult(ok=True, duration_s=1.5, exit_code=0, output=[], diagnostics=[])
    outcome = DeployOutcome(port="sim://demo", kind="sector-delta", write_window=(1.0, 2.0))
    return [
        SessionStarted(project="p", boards=(BoardRef("demo", "sim://demo"),)),
        LoopStarted(project="p", backend="command"),
        StartupScan(files=3, scan_ms=1.0, changed_since_last_build=None),
        FilesChanged(generation=1, paths=["src/a.c"], count=1),
        BuildSkipped(reason="r", fingerprint="f", files=3, scan_ms=1.0, image_hash="h"),
        BuildStarted(generation=1, reason="changed", changed=["src/a.c"], count=1),
        BuildOutput(line="[1/2] cc a.c"),
        BuildProgress(done=1, total=2, elapsed_ms=10.0),
        BuildFinished(result=result, generation=1, stale=False),
        DeployStarted(**BOARD, full=False, app_only=False),
        ConnectedAhead(**BOARD, ok=True, duration_ms=5.0),
        DeployProgress(**BOARD, bytes_done=4096, bytes_total=8192, sectors_done=1, sectors_total=2),
        DeployFinished(**BOARD, outcome=outcome),
        CycleFinished(generation=1, ok=True, timings_ms={"build": 1.0}, save_to_first_log_ms=2.0),
        PortChanged(**BOARD, state=PortState.WAITING, message="port disappeared"),
        BoardReset(**BOARD),
        a_crash(),
        CoreDumpDecoded(**BOARD, coredump=CoreDumpReport(lines=12, chip="esp32c3")),
        Paused(),
        Resumed(),
        Note(message="n"),
        Warned(message="w"),
        Failed(message="e", part="file watcher"),
        LoopStopped(watcher={}),
        Exited(ok=False, error="the last build failed", exit_code=1),
    ]


def test_every_event_class_has_a_sample() -> None:
    assert {type(e) for e in samples()} == set(event_classes())


def test_every_event_matches_the_readme_schema() -> None:
    schema = readme_schema()
    for ev in samples():
        out: dict[str, Any] = json.loads(json.dumps(ev.to_json()))
        assert out["type"] == ev.type and isinstance(out["t"], float)
        assert ev.type in schema, f"{ev.type} is not in README.md's JSON events table"
        assert set(out) - {"type", "t"} == schema[ev.type], ev.type


def test_optional_part_of_an_error() -> None:
    assert "part" not in Failed(message="unknown command 'x'").to_json()


def test_serial_line_matches_the_schema() -> None:
    frame = Frame(address=0x42000054, function="app_main", file="main.c", line=3, source="log")
    note = AddressNote(0x42000054, (frame,))
    line = serial_line_json("demo", "sim://demo", "at 0x42000054", 1.0, [note])
    assert set(line) - {"type", "t"} == readme_schema()["serial_line"] - {"partial"}
    assert line["addresses"][0]["function"] == "app_main"
    assert "addresses" not in serial_line_json("demo", "sim://demo", "hello", 1.0)
    piece = serial_line_json("demo", "sim://demo", "x" * 10, 1.0, [note], partial=True)
    assert set(piece) - {"type", "t"} == readme_schema()["serial_line"]
    assert piece["partial"] is True and "partial" not in line


def test_output_dropped_matches_the_schema() -> None:
    assert set(output_dropped_json(3, 1.0)) - {"type", "t"} == readme_schema()["output_dropped"]


def test_a_line_too_long_to_keep_whole_is_marked_in_every_view() -> None:
    out = io.StringIO()
    view = LineView(json_mode=True, out=out)
    view.on_serial("demo", "sim://demo", 1.0, [LinePiece("a" * 5), "bc"])
    docs = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [(d["text"], d.get("partial")) for d in docs] == [("aaaaa", True), ("bc", None)]
    out = io.StringIO()
    LineView(json_mode=False, out=out).on_serial("demo", "sim://demo", 1.0, [LinePiece("a"), "b"])
    assert out.getvalue().splitlines() == ["[demo] a" + CONTINUES, "[demo] b"]


def test_every_state_name_is_a_string_in_json() -> None:
    ev = PortChanged(**BOARD, state=PortState.CONNECTED, message="")
    assert json.loads(json.dumps(ev.to_json()))["state"] == "connected"


def test_human_lines_from_typed_events() -> None:
    assert human(BuildProgress(done=3, total=10, elapsed_ms=1500.0)) == "build: [3/10] 1.5 s"
    assert human(PortChanged(**BOARD, state=PortState.CONNECTED, message="")) == (
        "[demo] connected to sim://demo"
    )
    assert human(Failed(message="boom", part="x")) == "error: boom"
    crash = human(a_crash())
    assert crash is not None and crash.startswith("[demo] crash: Illegal instruction")


def test_a_failed_build_with_no_error_found_shows_its_last_lines() -> None:
    result = BuildResult(
        ok=False, duration_s=1.0, exit_code=2, output=[f"l{i}" for i in range(30)],
        diagnostics=[], error="x",
    )  # fmt: skip
    text = human(BuildFinished(result=result, generation=1, stale=False))
    assert text is not None and text.splitlines()[-1] == "  l29"
    assert "  l9" not in text.splitlines() and "  l10" in text.splitlines()  # the last 20
