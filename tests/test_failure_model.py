"""The failure model (LOOP.md, "Failure model"): an unexpected exception in
any part of the loop is an `error` event naming the part, a trace in the
debug log and a state the views show; the part recovers (the worker goes on
with the next change, the watcher falls back to polling) or the loop ends
with the failure. Nothing stops silently."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from fbuild_watch.build.runner import BuildRun
from fbuild_watch.failures import DebugLog, Supervisor
from fbuild_watch.watch import state as watch_state
from fbuild_watch.watch.state import WatchSet
from tests.fwkit import Build
from tests.loopkit import FakeDeployer, LoopRun, make_project


def _edit(project: Path, n: int) -> None:
    (project / "src" / "main.c").write_text(f"int main(void) {{ return {n}; }}\n")


async def _ready(run: LoopRun) -> None:
    """The watcher's first probe came back: edits from now on are seen."""
    w = run.loop.watcher
    assert w is not None
    await run.until(lambda: w.stats.cookies > 0 or w.stats.mode != "events", 10)


async def test_an_unexpected_build_exception_is_an_error_and_the_next_change_builds(
    tmp_path: Path, firmware: Build, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = make_project(tmp_path / "p", firmware)
    real_run = BuildRun.run
    calls = {"n": 0}

    def flaky(self: BuildRun) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(30, "Read-only file system", "/cache/blob")
        return real_run(self)

    monkeypatch.setattr(BuildRun, "run", flaky)
    deployer = FakeDeployer()
    run = LoopRun(project, deployer=deployer)
    run.loop.supervisor.log = DebugLog(tmp_path / "debug.log")
    await run.start(startup_build=True)
    err = await run.expect("error")
    assert err.data["part"] == "build"
    assert "Read-only file system" in err.data["message"]
    finished = await run.expect("build_finished")
    assert not finished.data["ok"] and "Read-only file system" in finished.data["error"]
    assert run.loop.problems["build"]
    assert "OSError" in (tmp_path / "debug.log").read_text()  # the trace, for a bug report
    await _ready(run)
    _edit(project, 2)
    ok = await run.expect("build_finished")
    assert ok.data["ok"]
    await run.expect("cycle_finished")
    assert len(deployer.deploys) == 1
    await run.stop()
    assert run.loop.fatal is None


class ExplodingDeployer(FakeDeployer):
    def __init__(self) -> None:
        super().__init__()
        self.explode = True

    async def deploy(self, layout: Any, *, full: bool, app_only: bool) -> bool:
        if self.explode:
            self.explode = False
            raise RuntimeError("deployer bug")
        return await super().deploy(layout, full=full, app_only=app_only)


async def test_a_deployer_exception_does_not_end_the_worker(
    tmp_path: Path, firmware: Build
) -> None:
    project = make_project(tmp_path / "p", firmware)
    deployer = ExplodingDeployer()
    run = LoopRun(project, deployer=deployer)
    await run.start(startup_build=True)
    err = await run.expect("error")
    assert err.data["part"] == "build worker"
    assert "RuntimeError: deployer bug" in err.data["message"]
    await _ready(run)
    _edit(project, 3)
    await run.expect("cycle_finished")
    assert len(deployer.deploys) == 1  # the worker went on
    await run.stop()


async def test_a_failing_watcher_is_reported_and_falls_back_to_polling(
    tmp_path: Path, firmware: Build, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = make_project(tmp_path / "p", firmware)
    run = LoopRun(project, deployer=FakeDeployer())
    await run.start(startup_build=True)
    await run.expect("cycle_finished")
    await _ready(run)
    real_refresh = WatchSet.refresh
    calls = {"n": 0}

    def broken_once(self: WatchSet) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("watch set bug")
        return real_refresh(self)

    monkeypatch.setattr(WatchSet, "refresh", broken_once)
    _edit(project, 4)
    err = await run.expect("error")
    assert err.data["part"] == "file watcher"
    await run.expect("note", lambda e: "polling" in e.data["message"])
    w = run.loop.watcher
    assert w is not None and w.stats.mode == "polling"
    # the restart rescans, so the edit that met the failure still builds
    built = await run.expect("build_finished")
    assert built.data["ok"]
    _edit(project, 5)
    again = await run.expect("build_finished", timeout=10)
    assert again.data["ok"]
    await run.stop()


async def test_a_watcher_that_keeps_failing_ends_the_loop_with_the_failure(
    tmp_path: Path, firmware: Build, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = make_project(tmp_path / "p", firmware)
    run = LoopRun(project, deployer=FakeDeployer())
    await run.start(startup_build=True)
    await run.expect("cycle_finished")

    def always_broken(self: WatchSet, previous: Any = None) -> Any:
        raise RuntimeError("scan bug")

    monkeypatch.setattr(WatchSet, "scan", always_broken)
    w = run.loop.watcher
    assert w is not None
    w.request_rescan()
    assert run.task is not None
    await asyncio.wait_for(run.task, 20)  # the loop ended by itself
    assert run.loop.fatal is not None and "file watcher stopped" in run.loop.fatal
    errors = [e.data["message"] for e in run.events if e.type == "error"]
    assert errors[0].startswith("file watcher failed: RuntimeError: scan bug")
    assert errors[-1] == "file watcher stopped: RuntimeError: scan bug"
    assert len(errors) == 2  # the same failure is said once, then the end


async def test_an_unreadable_file_in_a_rescan_is_a_warning_not_a_dead_watcher(
    tmp_path: Path, firmware: Build, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = make_project(tmp_path / "p", firmware)
    secret = project / "src" / "secret.h"
    secret.write_text("#define X 1\n")
    run = LoopRun(project, deployer=FakeDeployer())
    await run.start(startup_build=True)
    await run.expect("cycle_finished")
    await _ready(run)
    real_digest = watch_state.file_digest

    def digest(path: Any) -> bytes:
        if Path(path).name == "secret.h":  # root reads everything: the OS error is injected
            raise PermissionError(13, "Permission denied", str(path))
        return real_digest(path)

    monkeypatch.setattr(watch_state, "file_digest", digest)
    secret.write_text("#define X 2\n")  # an event for the unreadable file
    warn = await run.expect("warning", lambda e: "secret.h" in e.data["message"])
    assert "Permission denied" in warn.data["message"]
    await run.expect("build_finished")  # an unreadable file is a change the build reports
    _edit(project, 6)  # and later edits still build
    nxt = await run.expect("build_started", lambda e: "src/main.c" in e.data["changed"])
    assert nxt
    await run.stop()
    assert not [e for e in run.events if e.type == "error"]


async def test_object_summary_failure_is_reported(
    tmp_path: Path, firmware: Build, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fbuild_watch.build.objects import ObjectWatch

    def broken(self: ObjectWatch) -> None:
        raise ValueError("summary bug")

    monkeypatch.setattr(ObjectWatch, "refresh", broken)
    project = make_project(tmp_path / "p", firmware, link=True)
    run = LoopRun(project, deployer=FakeDeployer())
    await run.start(startup_build=True)
    err = await run.expect("error", lambda e: e.data["part"] == "object summaries")
    assert "summary bug" in err.data["message"]
    await run.stop()


async def test_watch_build_at_start_scans_the_tree_first(tmp_path: Path, firmware: Build) -> None:
    """`fbuild watch --build` with saved state: the first build knows the
    project's files (and so its `.lnk` pointers) like any other."""
    project = make_project(tmp_path / "p", firmware)
    (project / "src" / "asset.bin.lnk").write_text("{}")
    first = LoopRun(project, deployer=FakeDeployer())
    await first.start(startup_build=True)
    await first.expect("cycle_finished")
    await first.stop()
    second = LoopRun(project, deployer=FakeDeployer())
    await second.start(startup_build=True)
    await second.expect("build_started")
    assert "src/asset.bin.lnk" in second.loop.ws.pointers()
    assert len(second.loop.ws) >= 2
    await second.stop()


def test_a_thread_that_dies_is_reported_with_its_trace(tmp_path: Path) -> None:
    seen: list[tuple[str, str]] = []
    sup = Supervisor(lambda part, msg: seen.append((part, msg)), DebugLog(tmp_path / "d.log"))
    sup.install_thread_hook()
    try:

        def boom() -> None:
            raise KeyError("reader state")

        t = threading.Thread(target=boom, name="fbuild-reader-x")
        t.start()
        t.join()
    finally:
        sup.remove_thread_hook()
    assert seen and seen[0][0] == "thread fbuild-reader-x"
    assert "KeyError" in seen[0][1] and str(tmp_path / "d.log") in seen[0][1]
    assert (
        "def boom" in (tmp_path / "d.log").read_text() or "boom" in (tmp_path / "d.log").read_text()
    )


def test_a_repeated_failure_is_said_once() -> None:
    seen: list[str] = []
    sup = Supervisor(lambda _p, msg: seen.append(msg))
    for _ in range(1000):
        sup.failed("monitor of a", ValueError("bad byte"))
    sup.failed("monitor of a", ValueError("another"))
    assert seen == [
        "monitor of a failed: ValueError: bad byte",
        "monitor of a failed: ValueError: another",
    ]
    assert sup.repeats["monitor of a"] == 999


def test_an_unwritable_debug_log_does_not_stop_reporting(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    seen: list[str] = []
    sup = Supervisor(lambda _p, msg: seen.append(msg), DebugLog(blocker / "debug.log"))
    sup.failed("build", RuntimeError("x"))
    assert seen == ["build failed: RuntimeError: x"]  # no trace path promised
    assert sup.log.broken is not None


async def test_an_edited_fbuild_toml_applies_to_the_next_build(
    tmp_path: Path, firmware: Build
) -> None:
    """Editing the build settings while watching is never silently ignored:
    they apply from the next build, and a broken file is said."""
    project = make_project(tmp_path / "p", firmware)
    toml = project / "fbuild.toml"
    toml.write_text(toml.read_text().replace('paths = ["src"]', 'paths = ["src", "fbuild.toml"]'))
    run = LoopRun(project, deployer=FakeDeployer())
    run.loop.ws.paths.append("fbuild.toml")
    await run.start(startup_build=True)
    await run.expect("cycle_finished")
    await _ready(run)
    toml.write_text(toml.read_text().replace("env = { ", 'env = { MARK = "1", '))
    await run.expect("note", lambda e: "build settings reloaded" in e.data["message"])
    await run.expect("build_finished")
    assert run.loop.backend.config is not None and run.loop.backend.config.env["MARK"] == "1"
    # the port and the monitor are the session's: said, not silently kept
    toml.write_text(toml.read_text() + '\n[monitor]\nbaud = 74880\n[board]\nport = ["sim://x"]\n')
    warn = await run.expect("warning")
    assert warn.data["message"].startswith(
        "fbuild.toml: [board] port, [monitor] changed; restart fbuild watch to apply"
    )
    await run.expect("build_finished")
    toml.write_text("[build]\ncommand = 'not a list'\n")
    warn = await run.expect("warning")
    assert (
        "fbuild.toml" in warn.data["message"]
        and "previous build settings stay" in (warn.data["message"])
    )
    await run.stop()
