"""Builds under control (issue 18, "Builds"): `[build] timeout`, Ctrl+C on
`fbuild build`, a background process left holding the build's stdout, and a
flood of output (bounded in memory, whole in the log file, diagnostics still
found, the views responsive)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from textual.app import App, ComposeResult

from fbuild_watch.build import BuildResult, BuildRun, detect_backend, run_build
from fbuild_watch.build.output import KEEP_LINES
from fbuild_watch.config import load_config
from fbuild_watch.errors import ConfigError
from fbuild_watch.session import SessionOptions
from fbuild_watch.tui.widgets import BuildLog
from tests.clikit import FBUILD, watch_json
from tests.simkit import new_board
from tests.tuikit import tui_app

# A child that outlives its parent's interest: it prints its pid, then sleeps.
SPAWN = (
    "import subprocess, sys, time\n"
    "p = subprocess.Popen(['sleep', '1000'])\n"
    "print('child', p.pid, flush=True)\n"
)
FLOOD_LINES = 1_000_000  # 50 MB of 'x' * 49


def flood_script(lines: int) -> str:
    """Numbered lines between an error at the start and one at the end."""
    return (
        "import sys\n"
        "w = sys.stdout.write\n"
        "w('src/early.c:1:2: error: first of the flood\\n')\n"
        f"for i in range({lines}):\n"
        "    w('%07d ' % i + 'x' * 41 + '\\n')\n"
        "w('src/main.c:3:5: error: last of the flood\\n')\n"
    )


def make_project(root: Path, script: str, extra: str = "") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "src").mkdir(exist_ok=True)
    (root / "src" / "main.c").write_text("int main(void) { return 0; }\n")
    (root / "fbuild.toml").write_text(
        f"[build]\ncommand = {json.dumps([sys.executable, '-c', script])}\n"
        f'flasher_args = "build/flasher_args.json"\n{extra}'
        '[watch]\npaths = ["src"]\n'
    )
    return root


def collect(lines: list[str], pids: list[int]) -> Callable[[str], None]:
    """An `on_line` that notes the child's pid as soon as it is printed (so
    the fixture can kill it even if the test fails while the build hangs)."""

    def on_line(line: str) -> None:
        lines.append(line)
        m = re.fullmatch(r"child (\d+)", line)
        if m:
            pids.append(int(m[1]))

    return on_line


def child_pid(lines: list[str]) -> int:
    for line in lines:
        m = re.fullmatch(r"child (\d+)", line)
        if m:
            return int(m[1])
    raise AssertionError(f"no child pid in {lines[-5:]}")


def gone(pid: int, timeout: float = 5.0) -> bool:
    """True once `pid` has exited (a zombie waiting for init counts)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return True
        if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return True
        time.sleep(0.01)
    return False


@pytest.fixture
def pids() -> Iterator[list[int]]:
    """Children a test makes; whatever a failing test left is killed."""
    made: list[int] = []
    yield made
    for pid in made:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def run_in_thread(run: BuildRun, timeout: float) -> BuildResult:
    """The build, or a failure (not a hung test) when it does not end."""
    box: list[BuildResult] = []
    t = threading.Thread(target=lambda: box.append(run.run()), daemon=True)
    t.start()
    t.join(timeout)
    if not box:
        run.cancel()
        raise AssertionError(f"the build did not end within {timeout} s")
    return box[0]


def test_timeout_ends_the_group_and_says_so(tmp_path: Path, pids: list[int]) -> None:
    project = make_project(tmp_path / "p", SPAWN + "time.sleep(1000)\n", extra="timeout = 0.5\n")
    lines: list[str] = []
    t0 = time.monotonic()
    result = run_in_thread(BuildRun(detect_backend(project), collect(lines, pids)), 10)
    assert pids == [child_pid(lines)]
    assert not result.ok and result.timed_out and not result.cancelled
    assert result.error == "build timed out after 0.5 s"
    assert 0.5 <= time.monotonic() - t0 < 4
    assert gone(pids[0])  # the whole group, not only the main process
    assert result.as_dict()["timed_out"] is True


def test_timeout_key_is_validated(tmp_path: Path) -> None:
    toml = tmp_path / "fbuild.toml"
    toml.write_text('[build]\ncommand = ["make"]\ntimeout = 90\n')
    assert load_config(toml).build_timeout_s == 90.0
    toml.write_text('[build]\ncommand = ["make"]\n')
    assert load_config(toml).build_timeout_s is None  # the default: no limit
    for bad in ("0", "-1", '"60"', "true", "nan"):
        toml.write_text(f'[build]\ncommand = ["make"]\ntimeout = {bad}\n')
        with pytest.raises(ConfigError, match=r"\[build\] timeout must be"):
            load_config(toml)


def test_ctrl_c_on_fbuild_build_ends_the_build(tmp_path: Path, pids: list[int]) -> None:
    project = make_project(tmp_path / "p", SPAWN + "time.sleep(1000)\n")
    proc = subprocess.Popen(
        [*FBUILD, "build", str(project)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        pids.append(child_pid([proc.stdout.readline().strip()]))
        proc.send_signal(signal.SIGINT)  # what the terminal's Ctrl+C sends fbuild
        assert proc.wait(timeout=10) == 130
        assert gone(pids[0]), "Ctrl+C left the build's child running"
        assert proc.stderr is not None
        assert "fbuild: error: build interrupted" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_background_process_holding_stdout_does_not_hold_the_build(
    tmp_path: Path, pids: list[int]
) -> None:
    project = make_project(tmp_path / "p", SPAWN + "print('main done', flush=True)\n")
    lines: list[str] = []
    t0 = time.monotonic()
    result = run_in_thread(BuildRun(detect_backend(project), collect(lines, pids)), 10)
    assert pids == [child_pid(lines)]
    assert time.monotonic() - t0 < 4
    assert result.exit_code == 0 and not result.cancelled  # the main process's status
    assert "main done" in result.output
    assert result.error is not None and "flasher_args.json" in result.error  # no outputs made
    assert gone(pids[0])


def test_watch_is_not_held_by_a_background_process(tmp_path: Path, pids: list[int]) -> None:
    project = make_project(tmp_path / "p", SPAWN)
    env = {**os.environ, "FBUILD_CACHE_DIR": str(tmp_path / "cache")}
    ev = watch_json(project, "sim://bg?timing=instant&flash=", env)
    try:
        out = ev.expect(lambda e: e["type"] == "build_output" and e["line"].startswith("child"))
        pids.append(child_pid([out["line"]]))
        ev.expect(lambda e: e["type"] == "build_finished", timeout=5)
        assert gone(pids[0])
        t0 = time.monotonic()
        ev.proc.send_signal(signal.SIGTERM)
        ev.proc.wait(timeout=10)
        assert time.monotonic() - t0 < 5
    finally:
        ev.kill()


def test_flood_is_bounded_whole_in_the_log_and_its_errors_found(tmp_path: Path) -> None:
    n = 300_000
    project = make_project(tmp_path / "p", flood_script(n))
    shown: list[str] = []
    t0 = time.monotonic()
    result = run_build(detect_backend(project), shown.append)
    elapsed = time.monotonic() - t0
    total = n + 2
    last = f"{n - 1:07d} " + "x" * 41
    # memory: a bounded tail, after a line that says where the rest is
    assert result.output_lines == total
    assert len(result.output) == KEEP_LINES + 1
    assert result.output[-2:] == [last, "src/main.c:3:5: error: last of the flood"]
    log = project / ".fbuild" / "build.log"
    assert result.log == log and str(log) in result.output[0]
    # the log file: every byte, the tail intact
    first, end = "src/early.c:1:2: error: first of the flood\n", result.output[-1] + "\n"
    assert log.stat().st_size == len(first) + n * len(last + "\n") + len(end)
    with log.open("rb") as f:
        f.seek(-len(last + "\n" + end), os.SEEK_END)
        assert f.read().decode().splitlines() == result.output[-2:]
    # the view: the first lines, a bounded sample, and the end
    assert len(shown) < 500 + 250 * (elapsed + 1)
    assert shown[0] == "src/early.c:1:2: error: first of the flood"
    assert shown[-2:] == result.output[-2:]
    assert any(re.fullmatch(rf"fbuild: \.\.\. \d+ lines not shown \(full output in {log}\)", s)
               for s in shown)  # fmt: skip
    # diagnostics: the early error and the last one
    assert [(d.file, d.line, d.message) for d in result.diagnostics] == [
        ("src/early.c", 1, "first of the flood"),
        ("src/main.c", 3, "last of the flood"),
    ]


def test_unwritable_log_is_one_warning_and_nothing_outside(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", "print('hello')\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (project / ".fbuild").symlink_to(outside)  # must not lead the log out of the project
    result = run_build(detect_backend(project))
    assert list(outside.iterdir()) == []
    warnings = [ln for ln in result.output if ln.startswith("fbuild: warning: cannot write")]
    assert len(warnings) == 1 and "build.log" in warnings[0]
    assert "hello" in result.output and result.log is None and result.exit_code == 0


def _vm_hwm_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_watch_json_through_a_50_mb_build_log(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", flood_script(FLOOD_LINES))
    env = {**os.environ, "FBUILD_CACHE_DIR": str(tmp_path / "cache")}
    ev = watch_json(project, "sim://flood?timing=instant&flash=", env)
    try:
        done = ev.expect(lambda e: e["type"] == "build_finished", timeout=60)
        peak = _vm_hwm_mb(ev.proc.pid)
        assert peak < 200, f"fbuild watch --json peaked at {peak:.0f} MB"
        assert done["output_lines"] == FLOOD_LINES + 2
        assert [d["message"] for d in done["diagnostics"]] == [
            "first of the flood",
            "last of the flood",
        ]
        shown = [e for e in ev.seen if e["type"] == "build_output"]
        assert len(shown) < 20_000 and shown[-1]["line"].endswith("last of the flood")
        t0 = time.monotonic()
        ev.send("quit")
        ev.proc.wait(timeout=10)
        assert time.monotonic() - t0 < 3
    finally:
        ev.kill()


async def test_tui_quits_at_once_during_a_flood(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("FBUILD_CACHE_DIR", str(tmp_path / "cache"))
    project = make_project(tmp_path / "p", flood_script(FLOOD_LINES))
    board = new_board()
    app = tui_app(SessionOptions(project=project, ports=[f"sim://{board.name}"]))
    async with app.run_test(size=(120, 40)) as pilot:
        while not any(e.type == "build_output" for e in app.events_seen):
            await pilot.pause(0.01)
        await pilot.pause(0.5)  # in the middle of the flood
        t0 = time.monotonic()
        await pilot.press("q")
        while app.is_running and time.monotonic() - t0 < 10:
            await asyncio.sleep(0.01)
        took = time.monotonic() - t0
    assert took < 1.5, f"q took {took:.1f} s during a flood"
    assert not any(e.type == "build_finished" and e.data["ok"] for e in app.events_seen)


class _Pane(App[None]):
    def compose(self) -> ComposeResult:
        yield BuildLog(id="build", max_lines=100)


async def test_build_pane_is_bounded_and_batched(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from textual.widgets import Log

    writes: list[int] = []
    real = Log.write_lines

    def counting(self: Log, lines, scroll_end=None):  # type: ignore[no-untyped-def]
        lines = list(lines)
        writes.append(len(lines))
        return real(self, lines, scroll_end)

    monkeypatch.setattr(Log, "write_lines", counting)
    app = _Pane()
    async with app.run_test() as pilot:
        pane = app.query_one(BuildLog)
        for i in range(5000):
            pane.write_line(f"line {i}")
        pane.write_line("y" * 100_000)
        await pilot.pause(0.2)
        assert len(writes) <= 2  # one per frame, not one per line
        assert len(pane.lines) == 100
        assert pane.lines[-2] == "line 4999"
        assert len(pane.lines[-1]) < 1100  # a huge line is cut
        pane.clear()
        pane.write_lines(["a", "b"])
        pane.flush()
        assert list(pane.lines) == ["a", "b"]


def test_output_caps_bytes_and_long_lines(tmp_path: Path) -> None:
    from fbuild_watch.build.output import KEEP_BYTES, MAX_LINE, BuildOutput

    log = tmp_path / ".fbuild" / "build.log"
    shown: list[str] = []
    out = BuildOutput(log, shown.append, project_dir=tmp_path)
    out.feed(b"a" * (10 << 20))  # one 10 MB line, in one piece and no newline yet
    out.feed(b"b" * 1000 + b"\r\n")
    for i in range(1500):  # 1.5 MB of 1000-byte lines
        out.feed(b"%04d" % i + b"c" * 996 + b"\n")
    out.feed(b"no newline at the end")
    out.close()
    kept = out.kept()
    assert sum(len(s) + 1 for s in kept[1:]) <= KEEP_BYTES < 1500 * 1001
    assert kept[0].startswith("fbuild: ... ") and str(log) in kept[0]
    assert kept[-1] == "no newline at the end" and kept[-2].startswith("1499")
    assert out.lines == 1502
    assert shown[0] == "a" * MAX_LINE + " [...]"  # cut for memory; whole in the log
    assert log.stat().st_size == (10 << 20) + 1002 + 1500 * 1001 + 21
