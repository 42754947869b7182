"""The exit-status contract (README, "Exit status"), one test per row, and
one watcher per project. 0 ok, 1 runtime failure, 2 usage or
configuration, 130 interrupted; the same in the TUI and the line modes;
--json prints a JSON object on failure too."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fbuild_watch.errors import RuntimeFailure
from fbuild_watch.project_lock import ProjectLock, refuse_if_watched
from fbuild_watch.session import SessionOptions
from tests.clikit import FBUILD, run_fbuild
from tests.tuikit import tui_app

MEMORY_BOARD = "sim://{name}?flash=&timing=instant"


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "FBUILD_CACHE_DIR": str((cwd or Path.cwd()) / ".cache-test")}
    return run_fbuild(*args, env=env)


def failing_project(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "src").mkdir()
    (root / "src" / "main.c").write_text("int main;\n")
    (root / "fbuild.toml").write_text(
        f'[build]\ncommand = ["{sys.executable}", "-c", "import sys; '
        "print('src/main.c:1:1: error: no'); sys.exit(1)\"]\n"
        'flasher_args = "build/flasher_args.json"\n[watch]\npaths = ["src"]\n'
    )
    return root


def test_every_build_failed_is_exit_1_in_plain_and_json(tmp_path: Path) -> None:
    project = failing_project(tmp_path / "p")
    for mode in ("--plain", "--json"):
        res = run(
            "watch",
            str(project),
            mode,
            "--timeout",
            "3",
            "--port",
            MEMORY_BOARD.format(name=f"ec-{mode[2:]}"),
            cwd=tmp_path,
        )
        assert res.returncode == 1, res.stderr
        assert "fbuild: error: the last build failed" in res.stderr
        if mode == "--json":
            last = json.loads(res.stdout.strip().splitlines()[-1])
            assert last == {
                "type": "exit",
                "t": last["t"],
                "ok": False,
                "error": "the last build failed",
                "exit_code": 1,
            }


def test_monitor_timeout_when_the_port_never_opened_is_exit_1(tmp_path: Path) -> None:
    res = run(
        "monitor", "--plain", "--timeout", "0.5", "--port", str(tmp_path / "ttyNONE"), cwd=tmp_path
    )
    assert res.returncode == 1, res.stderr
    assert "the port never opened" in res.stderr


def test_monitor_timeout_on_a_working_port_is_exit_0(tmp_path: Path) -> None:
    res = run(
        "monitor",
        "--plain",
        "--timeout",
        "0.5",
        "--port",
        MEMORY_BOARD.format(name="ec-mon"),
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr


def test_sigint_is_130_in_line_mode(tmp_path: Path) -> None:
    project = failing_project(tmp_path / "p")
    proc = subprocess.Popen(
        [*FBUILD, "watch", str(project), "--json", "--port", MEMORY_BOARD.format(name="ec-int")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.PIPE,
        text=True,
        env={**os.environ, "FBUILD_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert proc.stdout is not None
    for line in proc.stdout:  # running: its session has started
        if json.loads(line)["type"] == "session_started":
            break
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=20) == 130


async def test_ctrl_c_in_the_tui_is_130_like_the_line_modes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FBUILD_CACHE_DIR", str(tmp_path / "cache"))
    project = failing_project(tmp_path / "p")
    app = tui_app(SessionOptions(project=project, ports=[MEMORY_BOARD.format(name="ec-tui")]))
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.pause(0.1)
        await pilot.press("ctrl+c")
        await pilot.pause(0.1)
    assert app.return_value == 130


async def test_quitting_the_tui_after_a_failed_build_is_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FBUILD_CACHE_DIR", str(tmp_path / "cache"))
    project = failing_project(tmp_path / "p")
    app = tui_app(SessionOptions(project=project, ports=[MEMORY_BOARD.format(name="ec-tui2")]))
    async with app.run_test(size=(120, 30)) as pilot:
        for _ in range(200):
            if any(e.type == "build_finished" for e in app.events_seen):
                break
            await pilot.pause(0.05)
        await pilot.press("q")
        await pilot.pause(0.1)
    assert app.return_value == 1
    assert app.exit_report == ["fbuild: error: the last build failed"]


def test_configuration_error_is_2_and_json_failure_is_an_object(tmp_path: Path) -> None:
    project = tmp_path / "p"
    project.mkdir()
    (project / "fbuild.toml").write_text("[build]\ncommand = ['true']\ncolour = 1\n")
    res = run("deploy", str(project), "--json", "--port", "sim://x?flash=", cwd=tmp_path)
    assert res.returncode == 2
    doc = json.loads(res.stdout)
    assert doc["ok"] is False and doc["exit_code"] == 2 and "colour" in doc["error"]


def test_deploy_without_build_output_says_to_build_first(tmp_path: Path) -> None:
    project = tmp_path / "p"
    project.mkdir()
    (project / "fbuild.toml").write_text(
        "[build]\ncommand = ['true']\nflasher_args = 'build/flasher_args.json'\n"
    )
    res = run("deploy", str(project), "--json", "--port", "sim://x?flash=", cwd=tmp_path)
    assert res.returncode == 1
    assert "run `fbuild build` first" in json.loads(res.stdout)["error"]
    assert "flasher_args.json" in res.stderr


def test_image_info_json_failure_is_an_object(tmp_path: Path) -> None:
    res = run("image", "info", "--json", str(tmp_path / "missing.json"), cwd=tmp_path)
    assert res.returncode == 1
    assert json.loads(res.stdout)["ok"] is False


def test_a_missing_elf_is_named(tmp_path: Path) -> None:
    project = failing_project(tmp_path / "p")
    res = run(
        "watch",
        str(project),
        "--plain",
        "--elf",
        str(tmp_path / "nope.elf"),
        "--port",
        "sim://x?flash=",
        cwd=tmp_path,
    )
    assert res.returncode == 2
    assert "nope.elf: --elf: no such file" in res.stderr


# -- one watcher per project ----------------------------------------------------------
def test_a_second_watcher_and_build_and_deploy_are_refused(tmp_path: Path) -> None:
    project = failing_project(tmp_path / "p")
    lock = ProjectLock(project)
    assert lock.acquire() is None
    try:
        with pytest.raises(RuntimeFailure, match=rf"already running.*\(pid {os.getpid()}\)"):
            ProjectLock(project).acquire()
        for cmd in (
            ["build", str(project)],
            ["deploy", str(project), "--port", "sim://x?flash="],
            ["watch", str(project), "--plain", "--timeout", "1", "--port", "sim://x?flash="],
        ):
            res = run(*cmd, cwd=tmp_path)
            assert res.returncode == 1, (cmd, res.stderr)
            assert f"fbuild watch is {'already ' if cmd[0] == 'watch' else ''}running" in (
                res.stderr
            )
            assert f"(pid {os.getpid()})" in res.stderr
    finally:
        lock.release()
    refuse_if_watched(project, "build")  # released: nobody is refused


def test_the_lock_dies_with_its_process(tmp_path: Path) -> None:
    project = failing_project(tmp_path / "p")
    code = (
        "import sys, time; from pathlib import Path; "
        "from fbuild_watch.project_lock import ProjectLock; "
        f"ProjectLock(Path({str(project)!r})).acquire(); print('held', flush=True); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    with pytest.raises(RuntimeFailure, match=f"pid {proc.pid}"):
        refuse_if_watched(project, "build")
    proc.kill()  # SIGKILL: no clean-up ran
    proc.wait()
    refuse_if_watched(project, "build")
    lock = ProjectLock(project)
    assert lock.acquire() is None
    lock.release()
