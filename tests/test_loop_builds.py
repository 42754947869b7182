"""The loop's build scheduling: queue/restart, stale results, start-up skip."""

from __future__ import annotations

from pathlib import Path

from fbuild_watch.image.linkkey import link_key
from tests.fwkit import Build, zig_link, zig_object
from tests.loopkit import FakeDeployer, LoopRun, make_project


async def _wait_watch_ready(run: LoopRun, project: Path) -> None:
    """Prove the watcher is live: an ignored-file event must reach its filter."""
    w = run.loop.watcher
    assert w is not None
    probe = project / "src" / "probe.tmp"
    for _ in range(400):
        before = w.stats.raw_events
        probe.write_text("x")
        try:
            await run.until(lambda b=before: w.stats.raw_events > b, 0.05)  # type: ignore[misc]
            break
        except TimeoutError:
            continue
    probe.unlink()


async def test_change_during_build_gives_one_follow_up_and_no_stale_deploy(
    tmp_path: Path, firmware: Build
) -> None:
    gate = tmp_path / "gate"
    project = make_project(tmp_path / "p", firmware, gate=gate)
    deployer = FakeDeployer()
    run = LoopRun(project, deployer=deployer)
    await run.start(startup_build=True)
    await run.expect("build_output", lambda e: e.data["line"] == "waiting for gate")
    await _wait_watch_ready(run, project)
    (project / "src" / "main.c").write_text("int main(void) { return 1; }\n")
    await run.expect("files_changed")
    gate.write_text("go")
    first = await run.expect("build_finished")
    assert first.data["ok"] and first.data["stale"]
    second_start = await run.expect("build_started")
    assert second_start.data["changed"] == ["src/main.c"]
    await run.expect("build_output", lambda e: e.data["line"] == "waiting for gate")
    gate.write_text("go")
    second = await run.expect("build_finished")
    assert second.data["ok"] and not second.data["stale"]
    await run.expect("cycle_finished", lambda e: e.data["generation"] == second.data["generation"])
    assert len(deployer.deploys) == 1  # the stale result was never deployed
    assert deployer.deploys[0][0] == second.data["image_hash"]
    assert run.types().count("build_started") == 2
    await run.stop()


async def test_no_phase_is_negative_when_one_board_prints_before_another_is_written(
    tmp_path: Path, firmware: Build
) -> None:
    project = make_project(tmp_path / "p", firmware)
    deployer = FakeDeployer()
    deployer.line_during_deploy = 0.2  # the first board's app is up 0.2 s before the last
    run = LoopRun(project, deployer=deployer)
    await run.start(startup_build=True)
    await run.expect("cycle_finished")
    await _wait_watch_ready(run, project)
    (project / "src" / "main.c").write_text("int main(void) { return 2; }\n")
    cycle = await run.expect(
        "cycle_finished", lambda e: "save_to_first_log" in e.data["timings_ms"]
    )
    timings = cycle.data["timings_ms"]
    assert all(v >= 0 for v in timings.values()), timings
    assert timings["deploy_to_first_log"] == 0  # during the deploy, not after it
    await run.stop()


async def test_restart_policy_cancels_the_running_build(tmp_path: Path, firmware: Build) -> None:
    gate = tmp_path / "gate"
    project = make_project(tmp_path / "p", firmware, gate=gate)
    run = LoopRun(project, deployer=FakeDeployer(), on_busy="restart")
    await run.start(startup_build=True)
    await run.expect("build_output", lambda e: e.data["line"] == "waiting for gate")
    await _wait_watch_ready(run, project)
    (project / "src" / "main.c").write_text("int main(void) { return 2; }\n")
    cancelled = await run.expect("build_finished")
    assert cancelled.data["cancelled"] and not cancelled.data["ok"]
    await run.expect("build_started")
    await run.expect("build_output", lambda e: e.data["line"] == "waiting for gate")
    gate.write_text("go")
    done = await run.expect("build_finished")
    assert done.data["ok"] and not done.data["stale"]
    await run.stop()


async def test_failed_build_is_not_deployed(tmp_path: Path, firmware: Build) -> None:
    project = make_project(tmp_path / "p", firmware)
    (project / "src" / "broken").write_text("")
    deployer = FakeDeployer()
    run = LoopRun(project, deployer=deployer, watch=False)
    await run.start(startup_build=True)
    ev = await run.expect("build_finished")
    assert not ev.data["ok"]
    assert ev.data["diagnostics"][0]["file"] == "src/main.c"
    await run.expect("cycle_finished")
    assert deployer.deploys == []
    await run.stop()


async def test_persisted_fingerprint_skips_startup_build(tmp_path: Path, firmware: Build) -> None:
    project = make_project(tmp_path / "p", firmware)
    first = LoopRun(project, deployer=FakeDeployer(), watch=False)
    await first.start()  # no state yet: builds
    await first.expect("build_finished", lambda e: e.data["ok"])
    await first.expect("cycle_finished")
    await first.stop()
    assert (project / "build" / "count").read_text() == "1"

    deployer = FakeDeployer()
    second = LoopRun(project, deployer=deployer, watch=False)
    await second.start()
    skipped = await second.expect("build_skipped")
    assert skipped.data["reason"].startswith("sources unchanged")
    await second.stop()
    assert "build_started" not in second.types()
    assert (project / "build" / "count").read_text() == "1"
    assert len(deployer.deploys) == 1  # still deployed: the ladder decides what to send

    # a file changed while the tool was not running: detected at start-up
    (project / "src" / "main.c").write_text("int main(void) { return 9; }\n")
    third = LoopRun(project, deployer=FakeDeployer(), watch=False)
    await third.start()
    scan = await third.expect("startup_scan")
    assert scan.data["changed_since_last_build"] == 1
    await third.expect("build_finished", lambda e: e.data["ok"])
    await third.stop()
    assert (project / "build" / "count").read_text() == "2"


async def test_commands_rebuild_and_unknown(tmp_path: Path, firmware: Build) -> None:
    project = make_project(tmp_path / "p", firmware)
    deployer = FakeDeployer()
    run = LoopRun(project, deployer=deployer, watch=False)
    await run.start(startup_build=True)
    await run.expect("cycle_finished")
    run.loop.command("rebuild")
    ev = await run.expect("build_started")
    assert ev.data["reason"] == "rebuild"
    await run.expect("cycle_finished")
    run.loop.command("full-flash")
    run.loop.command("bogus")
    err = await run.expect("error")
    assert "unknown command 'bogus'" in err.data["message"]
    await run.stop()
    assert deployer.deploys[-1][1] is True  # the full-flash request reached the deployer


async def test_boards_are_connected_ahead_once_the_elf_is_linked(
    tmp_path: Path, firmware: Build
) -> None:
    gate = tmp_path / "gate"
    project = make_project(tmp_path / "p", firmware, gate=gate, link=True)
    deployer = FakeDeployer()
    run = LoopRun(project, deployer=deployer)
    await run.start(startup_build=True)
    # the ELF is there, the image is not (the build waits at its gate)
    await run.until(lambda: bool(deployer.prepared))
    assert deployer.prepared == [link_key(project / "build" / "app.elf")]
    assert "build_finished" not in run.types()
    gate.write_text("go")
    cyc = await run.expect("cycle_finished")
    assert {"linked", "connected_ahead"} <= set(cyc.data["timings_ms"])
    assert len(deployer.deploys) == 1 and deployer.releases == 0

    # a build that fails after linking: nothing is deployed, the boards are released
    await _wait_watch_ready(run, project)
    (project / "src" / "broken").write_text("x")
    await run.until(lambda: len(deployer.prepared) == 2)
    gate.write_text("go")
    bad = await run.expect("build_finished")
    assert not bad.data["ok"]
    await run.until(lambda: deployer.releases == 1)
    assert len(deployer.deploys) == 1
    await run.stop()


OBJ_SOURCE = """\
volatile int sink;
void _start(void) { for (;;) { sink = 3; } }
"""


async def test_boards_are_connected_ahead_once_a_changed_object_is_compiled(
    tmp_path: Path, firmware: Build
) -> None:
    objs = tmp_path / "objs"
    objs.mkdir()
    base = zig_object(OBJ_SOURCE, objs / "base.o")
    edited = zig_object(OBJ_SOURCE.replace("= 3", "= 5"), objs / "edited.o")
    gate = tmp_path / "gate"
    project = make_project(
        tmp_path / "p", firmware, gate=gate, link=True, elf=zig_link(base, objs / "app.elf")
    )
    (project / "src" / "obj").write_text(str(base))
    gate.write_text("go")  # the start-up build does not wait
    deployer = FakeDeployer()
    run = LoopRun(project, deployer=deployer)
    await run.start(startup_build=True)
    await run.expect("cycle_finished")
    await run.until(lambda: run.loop.idle)  # the objects it built are summarised
    before = len(deployer.prepared)

    await _wait_watch_ready(run, project)
    (project / "src" / "obj").write_text(str(edited))
    # the object is rewritten; the ELF is not (the build waits at its gate)
    await run.until(lambda: len(deployer.prepared) > before)
    assert deployer.prepared[before:] == [None]
    assert run.types().count("build_finished") == 1
    gate.write_text("go")
    cyc = await run.expect("cycle_finished")
    assert {"compiled", "connected_ahead"} <= set(cyc.data["timings_ms"])
    assert "linked" not in cyc.data["timings_ms"]  # one trigger per build
    assert len(deployer.prepared) == before + 1
    await run.stop()


async def test_ninja_counts_become_build_progress_events(tmp_path: Path, firmware: Build) -> None:
    """ESP-IDF and PlatformIO's CMake builds print ninja's `[N/M]`: the views
    get how far the build is, the last count always."""
    project = make_project(tmp_path / "p", firmware)
    build_py = project / "build.py"
    steps = "".join(
        f'print("[{i}/40] Building C object x{i}.o", flush=True)\n' for i in range(1, 41)
    )
    build_py.write_text(steps + build_py.read_text())
    run = LoopRun(project, deployer=FakeDeployer())
    await run.start(startup_build=True)
    await run.expect("build_finished")
    counts = [(e.data["done"], e.data["total"]) for e in run.events if e.type == "build_progress"]
    assert counts and counts[-1] == (40, 40), counts
    assert len(counts) < 40  # at most 10 a second: not one per line
    await run.stop()
