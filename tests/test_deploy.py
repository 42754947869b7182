"""The deploy ladder against virtual boards: every rung, every way trust is
lost, recovery from an interrupted write, and refusing unvalidated input."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from esptool.loader import ESPLoader

from fbuild_watch.build import detect_backend, run_build
from fbuild_watch.deploy import BoardDeployer, BoardWorker, FlashCache, describe
from fbuild_watch.events import Event
from fbuild_watch.image.layout import ValidatedLayout
from fbuild_watch.image.linkkey import link_key
from fbuild_watch.session import MultiDeployer, SessionOptions, WatchSession
from fbuild_watch.sim.board import VirtualBoard
from fbuild_watch.sim.regs import ChipIdentity
from tests.examplekit import copy_example
from tests.simkit import new_board


@dataclass
class Builds:
    v1: ValidatedLayout
    v2: ValidatedLayout  # one-line edit of v1 (the version string)
    project: Path


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> Builds:
    project = copy_example(tmp_path_factory.mktemp("dep") / "blink-c3")
    backend = detect_backend(project)
    r1 = run_build(backend)
    assert r1.ok and r1.layout
    version = project / "src" / "version.h"
    version.write_text(version.read_text().replace('"1.0.0"', '"1.0.1"'))
    r2 = run_build(backend)
    assert r2.ok and r2.layout
    version.write_text(version.read_text().replace('"1.0.1"', '"1.0.0"'))
    return Builds(r1.layout, r2.layout, project)


@dataclass
class Rig:
    board: VirtualBoard
    conn: BoardWorker
    dep: BoardDeployer
    data: bytearray = field(default_factory=bytearray)
    marks: list[int] = field(default_factory=list)

    def log_since(self, mark: int) -> str:
        return bytes(self.data[mark:]).decode(errors="replace")

    def wait_for(self, text: str, since: int, timeout: float = 5) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = self.log_since(since)
            if text in out:
                return out
            time.sleep(0.01)
        raise AssertionError(f"{text!r} not in log:\n{self.log_since(since)[-1500:]}")


def rig(
    tmp_path: Path,
    *,
    usb_jtag: bool = False,
    cache: FlashCache | None = None,
    board: VirtualBoard | None = None,
) -> Rig:
    board = board or new_board(usb_jtag=usb_jtag)
    url = f"sim://{board.name}" + ("?usb=jtag" if usb_jtag else "")
    data = bytearray()
    lock = threading.Lock()

    def on_data(d: bytes, _t: float) -> None:
        with lock:
            data.extend(d)

    conn = BoardWorker(describe(url), on_data=on_data)
    conn.open()
    dep = BoardDeployer(conn, cache=cache or FlashCache(tmp_path / "cache"), baud=460800)
    return Rig(board, conn, dep, data)


def flash_holds(board: VirtualBoard, layout: ValidatedLayout) -> bool:
    return all(board.flash.read(r.offset, r.size) == r.data for r in layout.layout.regions)


def test_every_rung(builds: Builds, tmp_path: Path) -> None:
    r = rig(tmp_path)
    # first deploy of the session to an erased board: verify-probe writes everything
    mark = len(r.data)
    o = r.dep.deploy(builds.v1)
    assert o.ok and o.kind == "verify-probe", o.error
    assert o.regions_written == ["bootloader", "partition-table", "app"]
    assert flash_holds(r.board, builds.v1)
    assert o.wire_bytes > 0 and o.resets >= 2 and o.identity == "58:cf:79:a1:b2:c3"
    assert {"connect", "write", "reset", "first_boot_byte"} <= set(o.phases)
    # the boot log is captured from its first byte after the reset
    out = r.wait_for("blink-c3 version 1.0.0", mark)
    after_reset = (
        out[out.rindex("waiting for download") :] if "waiting for download" in out else out
    )
    assert "ESP-ROM:esp32c3-api1-20210207" in after_reset

    # identical image: no serial traffic, no reset, the app keeps running
    before = r.board.stats()
    o = r.dep.deploy(builds.v1)
    assert o.kind == "trust-skip" and o.wire_bytes == 0 and o.resets == 0
    assert o.summary() == "skipped: board already runs this image"
    after = r.board.stats()
    assert (
        after["bytes_from_host"] == before["bytes_from_host"]
        and after["resets"] == before["resets"]
    )

    # one-line edit: only the sectors that differ
    mark = len(r.data)
    md5s = r.board.counters.commands["SPI_FLASH_MD5"]
    o = r.dep.deploy(builds.v2)
    assert o.kind == "sector-delta", o.error
    total = sum(-(-x.size // 4096) for x in builds.v2.layout.regions)
    assert 1 <= o.sectors_written <= 3 < total
    # verified by esptool's MD5 of each written run; no MD5 of the whole region
    # (the rest of it is what trust says: reading it back would cost ~0.11 s)
    runs = sum("Hash of data verified" in line for line in o.log)
    assert runs >= 1 and r.board.counters.commands["SPI_FLASH_MD5"] - md5s == runs, o.log
    assert o.regions_written == ["app"]
    assert flash_holds(r.board, builds.v2)
    r.wait_for("blink-c3 version 1.0.1", mark)

    # full flash on request
    o = r.dep.deploy(builds.v2, full=True)
    assert o.kind == "full" and o.sectors_written == total
    assert r.dep.deploy(builds.v2).kind == "trust-skip"
    r.conn.close()


def test_verify_probe_on_board_holding_previous_build(builds: Builds, tmp_path: Path) -> None:
    board = new_board()
    for reg in builds.v1.layout.regions:
        board.flash.erase(reg.offset, reg.size)
        board.flash.program(reg.offset, reg.data)
    r = rig(tmp_path, board=board)  # new session, empty cache
    o = r.dep.deploy(builds.v2)
    assert o.kind == "verify-probe"
    assert o.regions_skipped == ["bootloader", "partition-table"]
    assert 1 <= o.sectors_written <= 3
    assert flash_holds(board, builds.v2)
    r.conn.close()


def next_session(builds: Builds, tmp_path: Path) -> Rig:
    """A session wrote v1 (and the cache) and ended; the next one begins on
    the same board with nothing trusted."""
    cache = FlashCache(tmp_path / "cache")
    first = rig(tmp_path, cache=cache)
    assert first.dep.deploy(builds.v1).ok
    first.conn.close()
    return rig(tmp_path, cache=cache, board=first.board)


def test_cached_layout_is_confirmed_then_used_as_diff_base(builds: Builds, tmp_path: Path) -> None:
    # a new session (no trust) on the same board: one MD5 per region confirms the cache
    second = next_session(builds, tmp_path)
    counts = second.board.counters.commands
    md5_before, runs_before = counts["SPI_FLASH_MD5"], counts["FLASH_DEFL_BEGIN"]
    o = second.dep.deploy(builds.v2)
    assert o.kind == "verify-probe" and o.ok, (o.error, o.log[-5:])
    assert any("cached last layout confirmed" in line for line in o.log)
    assert 1 <= o.sectors_written <= 3
    verifies = counts["FLASH_DEFL_BEGIN"] - runs_before  # esptool's MD5, one per written run
    probes = counts["SPI_FLASH_MD5"] - md5_before - verifies
    # one MD5 per region; the app's first sector (is an image there at all?),
    # and its one MD5 both confirms the cache and rules out the new image
    assert probes == 3 + 1
    second.conn.close()


def test_cached_layout_is_confirmed_while_connected_ahead(builds: Builds, tmp_path: Path) -> None:
    """The first deploy of a session, connected ahead during the build: the
    cached last layout is confirmed then (before the image exists), so the
    deploy itself asks the board nothing before it writes."""
    second = next_session(builds, tmp_path)
    counts = second.board.counters.commands
    assert second.dep.connect_ahead()
    md5_before, runs_before = counts["SPI_FLASH_MD5"], counts["FLASH_DEFL_BEGIN"]
    o = second.dep.deploy(builds.v2)
    assert o.kind == "verify-probe" and o.ok, (o.error, o.log[-5:])
    assert "verify_ahead" in o.phases
    assert any("3 of 3 regions of the cached last layout confirmed" in line for line in o.log)
    verifies = counts["FLASH_DEFL_BEGIN"] - runs_before
    assert counts["SPI_FLASH_MD5"] - md5_before == verifies  # esptool's own checks only
    assert 1 <= o.sectors_written <= 3
    assert flash_holds(second.board, builds.v2)
    second.conn.close()


def test_unplug_clears_trust(builds: Builds, tmp_path: Path) -> None:
    r = rig(tmp_path)
    assert r.dep.deploy(builds.v1).ok
    r.board.unplug()
    r.board.replug()  # back before the reader even noticed: the deploy must still see it
    o = r.dep.deploy(builds.v1)
    assert o.kind == "verify-probe" and o.sectors_written == 0
    assert r.dep.trust.trusted is not None  # re-established by the verified probe
    r.conn.close()


def test_swapped_board_with_another_mac(builds: Builds, tmp_path: Path) -> None:
    r = rig(tmp_path)
    assert r.dep.deploy(builds.v1).identity == "58:cf:79:a1:b2:c3"
    r.board.unplug()
    r.board.set_identity(ChipIdentity(mac=bytes.fromhex("58cf79000002")))
    r.board.replug()
    o = r.dep.deploy(builds.v1)
    assert o.kind == "verify-probe" and o.identity == "58:cf:79:00:00:02"
    r.conn.close()


def test_interrupted_write_reports_failed_and_recovers(builds: Builds, tmp_path: Path) -> None:
    r = rig(tmp_path)
    assert r.dep.deploy(builds.v1).ok
    r.board.faults.drop_on_command = "FLASH_DEFL_DATA"  # unplug in the middle of the write
    o = r.dep.deploy(builds.v2, full=True)
    assert o.kind == "failed" and o.error
    assert o.flash_state is not None and "partially written" in o.flash_state
    assert r.dep.trust.trusted is None
    r.board.replug()
    o = r.dep.deploy(builds.v2)
    assert o.kind == "verify-probe" and o.ok, o.error
    assert flash_holds(r.board, builds.v2)
    r.conn.close()


def test_after_a_failed_write_the_flash_is_attached_as_esptool_does(
    builds: Builds, tmp_path: Path
) -> None:
    """Later deploys of a session skip esptool's full flash attach (XMC
    check, SFDP, flash reset: register commands); after a failed one the
    next does it all again, since an app can leave the flash in a state the
    ROM cannot use and esptool's flash reset is what clears it."""
    r = rig(tmp_path)
    assert r.dep.deploy(builds.v1).ok
    full_attach = r.board.counters.commands["WRITE_REG"]
    assert full_attach > 0
    assert r.dep.deploy(builds.v2).ok
    assert r.board.counters.commands["WRITE_REG"] == full_attach  # the session's shortcut
    r.board.faults.drop_on_command = "FLASH_DEFL_DATA"
    assert not r.dep.deploy(builds.v1, full=True).ok
    r.board.replug()
    before = r.board.counters.commands["WRITE_REG"]
    assert r.dep.deploy(builds.v1).ok
    assert r.board.counters.commands["WRITE_REG"] - before == full_attach
    assert flash_holds(r.board, builds.v1)
    r.conn.close()


@pytest.mark.parametrize("usb_jtag", [False, True])
def test_the_stub_goes_up_at_the_flashing_baud_on_a_c3(
    builds: Builds, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, usb_jtag: bool
) -> None:
    """A C3's stub keeps the UART divider the ROM set, so the ROM changes
    baud first and the stub's 6 KiB go up at 460800, not 115200 as esptool
    sends them (~0.4 s); over USB-Serial/JTAG the baud means nothing and
    esptool's order stays. Connected ahead at the flashing baud, nothing
    changes back."""
    at: list[int] = []
    run_stub = ESPLoader.run_stub

    def recording(self: ESPLoader, *args: object, **kwargs: object) -> object:
        at.append(self._port.baudrate)
        return run_stub(self, *args, **kwargs)

    monkeypatch.setattr(ESPLoader, "run_stub", recording)
    r = rig(tmp_path, usb_jtag=usb_jtag)
    r.dep.stub = True
    assert r.dep.deploy(builds.v1, full=True).ok
    assert r.dep.connect_ahead()
    changes = r.board.counters.commands["CHANGE_BAUDRATE"]
    assert r.dep.deploy(builds.v2, full=True).ok
    assert flash_holds(r.board, builds.v2)
    expected = 115200 if usb_jtag else 460800
    assert at == [expected, expected]
    if not usb_jtag:
        assert r.board.counters.commands["CHANGE_BAUDRATE"] == changes  # raised ahead, kept
    r.conn.close()


def test_usb_jtag_own_reset_reenumerates_and_keeps_trust(builds: Builds, tmp_path: Path) -> None:
    r = rig(tmp_path, usb_jtag=True)
    states: list[str] = []
    r.conn.on_state = lambda s, _m: states.append(s)
    mark = len(r.data)
    o = r.dep.deploy(builds.v1)
    assert o.ok, o.error
    # the log resumes after the re-enumeration (what the chip sent while the
    # USB device was gone is lost, as on hardware)
    r.wait_for("blink: counter", mark)
    assert "waiting" in states and states[-1] == "connected"
    assert len(r.conn.disconnects) >= 1
    assert r.dep.deploy(builds.v1).kind == "trust-skip"
    o = r.dep.deploy(builds.v2)
    assert o.kind == "sector-delta", o.error
    r.conn.close()


def test_unvalidated_or_corrupt_layout_is_never_written(builds: Builds, tmp_path: Path) -> None:
    r = rig(tmp_path)
    with pytest.raises(TypeError, match="ValidatedLayout"):
        r.dep.deploy(builds.v1.layout)  # type: ignore[arg-type]
    r.conn.close()

    from fbuild_watch.cli import main

    project = copy_example(tmp_path / "corrupt")
    assert run_build(detect_backend(project)).ok
    app = project / "build" / "blink-c3.bin"
    data = bytearray(app.read_bytes())
    data[100] ^= 0xFF
    app.write_bytes(data)
    board = new_board()
    before = board.stats()["bytes_from_host"]
    assert main(["deploy", str(project), "--port", f"sim://{board.name}"]) == 1
    assert board.stats()["bytes_from_host"] == before  # not a byte sent


def test_cli_deploy_two_boards_in_parallel(
    builds: Builds,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import json

    from fbuild_watch.cli import main

    monkeypatch.setenv("FBUILD_CACHE_DIR", str(tmp_path / "cache"))
    project = copy_example(tmp_path / "two")
    assert run_build(detect_backend(project)).ok
    a, b = new_board(), new_board()
    assert (
        main(
            [
                "deploy",
                str(project),
                "--port",
                f"sim://{a.name}",
                "--port",
                f"sim://{b.name}",
                "--json",
            ]
        )
        == 0
    )
    outcomes = json.loads(capsys.readouterr().out)
    assert [o["kind"] for o in outcomes] == ["verify-probe", "verify-probe"]
    assert {o["port"] for o in outcomes} == {f"sim://{a.name}", f"sim://{b.name}"}
    # at the same time, not one after the other (esptool's log is captured
    # per thread; a process-wide lock once serialised every board's deploy)
    (s1, e1), (s2, e2) = (o["write_window"] for o in outcomes)
    assert max(s1, s2) < min(e1, e2), outcomes


# -- connecting ahead (the build is still making the image) ---------------------
def held_in_bootloader(builds: Builds, tmp_path: Path) -> Rig:
    """A board running v1 (trusted), then taken into its bootloader ahead of a deploy."""
    r = rig(tmp_path)
    assert r.dep.deploy(builds.v1).ok
    assert r.dep.connect_ahead()
    return r


def test_prepared_connection_is_used_by_the_next_deploy(builds: Builds, tmp_path: Path) -> None:
    r = rig(tmp_path)
    assert r.dep.deploy(builds.v1).ok
    syncs, resets = r.board.counters.commands["SYNC"], r.board.counters.resets
    assert r.dep.connect_ahead()
    assert r.board.counters.download_boots >= 1
    assert r.board.counters.commands["SYNC"] == syncs + 1
    mark = len(r.data)
    o = r.dep.deploy(builds.v2)
    assert o.ok and o.kind == "sector-delta", o.error
    # no second bootloader entry: one reset into the ROM (ahead) + the hard reset
    assert r.board.counters.commands["SYNC"] == syncs + 1
    assert r.board.counters.resets == resets + 2 and o.resets == 2
    assert {"connect", "setup", "connect_ahead", "write", "reset"} <= set(o.phases)
    assert o.wire_bytes > 0 and flash_holds(r.board, builds.v2)
    r.wait_for("blink-c3 version 1.0.1", mark)
    r.conn.close()


def test_release_returns_to_the_app_and_keeps_trust(builds: Builds, tmp_path: Path) -> None:
    r = held_in_bootloader(builds, tmp_path)
    boots = r.board.counters.app_boots
    mark = len(r.data)
    r.dep.back_to_app()  # e.g. the build failed after linking
    r.wait_for("blink-c3 version 1.0.0", mark)
    assert r.board.counters.app_boots == boots + 1 and flash_holds(r.board, builds.v1)
    # our own reset: the board still holds what the session wrote
    before = r.board.stats()["bytes_from_host"]
    o = r.dep.deploy(builds.v1)
    assert o.kind == "trust-skip" and o.resets == 0
    assert r.board.stats()["bytes_from_host"] == before
    r.dep.back_to_app()  # nothing held: no reset
    assert r.board.counters.app_boots == boots + 1
    r.conn.close()


def test_prepared_then_identical_image_resets_into_the_app(builds: Builds, tmp_path: Path) -> None:
    r = held_in_bootloader(builds, tmp_path)
    mark = len(r.data)
    o = r.dep.deploy(builds.v1)
    assert o.kind == "trust-skip" and o.resets == 2  # into the ROM ahead, back into the app
    assert o.summary() == "skipped: board already holds this image (it was reset)"
    assert any("connected ahead" in line for line in o.log)
    r.wait_for("blink-c3 version 1.0.0", mark)
    r.conn.close()


def test_prepared_connection_lost_to_an_unplug(builds: Builds, tmp_path: Path) -> None:
    r = held_in_bootloader(builds, tmp_path)
    r.board.unplug()
    r.board.replug()
    # the held connection is stale (and trust is gone): connect afresh, probe
    o = r.dep.deploy(builds.v2)
    assert o.ok and o.kind == "verify-probe", o.error
    assert flash_holds(r.board, builds.v2)
    r.conn.close()


def test_prepared_rom_connection_can_still_take_the_stub(builds: Builds, tmp_path: Path) -> None:
    r = rig(tmp_path)
    assert r.dep.deploy(builds.v1).ok
    r.dep.stub = True  # as the cost model picks for a large delta
    assert r.dep.connect_ahead()
    uploads = r.board.counters.stub_uploads
    o = r.dep.deploy(builds.v2)
    assert o.ok and o.stub_used, o.error
    assert r.board.counters.stub_uploads == uploads + 1 and flash_holds(r.board, builds.v2)
    r.conn.close()


def test_reset_key_while_prepared(builds: Builds, tmp_path: Path) -> None:
    r = held_in_bootloader(builds, tmp_path)
    mark = len(r.data)
    r.dep.reset()
    r.wait_for("blink-c3 version 1.0.0", mark)
    assert r.dep.deploy(builds.v1).kind == "trust-skip"
    r.conn.close()


def test_session_connects_ahead_only_when_the_loadable_bytes_differ(
    builds: Builds, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FBUILD_CACHE_DIR", str(tmp_path / "cache"))
    board = new_board()
    events: list[Event] = []
    session = WatchSession(
        SessionOptions(project=builds.project, ports=[f"sim://{board.name}"]),
        events.append,
        lambda *_a: None,
    )
    session.setup()
    # the ELF on disk is v2's (the fixture built v2 last)
    elf = builds.v2.layout.elf
    assert elf is not None
    key = link_key(elf)
    assert key is not None

    async def go() -> None:
        session.open_boards()
        deployer = MultiDeployer(session)
        assert await deployer.deploy(builds.v2, full=False, app_only=False)
        syncs = board.counters.commands["SYNC"]
        # the same loadable bytes as what the board holds: no early reset
        await deployer.connect_ahead(key)
        assert board.counters.commands["SYNC"] == syncs
        assert not any(e.type == "connected_ahead" for e in events)
        # other loadable bytes: into the bootloader now, the deploy takes it over
        await deployer.connect_ahead("another build")
        ahead = [e for e in events if e.type == "connected_ahead"]
        assert len(ahead) == 1 and ahead[0].data["ok"]
        assert await deployer.deploy(builds.v1, full=False, app_only=False)
        done = [e for e in events if e.type == "deploy_finished"][-1]
        assert done.data["kind"] == "sector-delta" and "connect_ahead" in done.data["phases_ms"]
        assert board.counters.commands["SYNC"] == syncs + 1
        await deployer.back_to_app()  # nothing held any more: no reset
        assert flash_holds(board, builds.v1)
        # no key yet (an object changed, not linked): the trusted board connects too
        await deployer.connect_ahead(None)
        assert len([e for e in events if e.type == "connected_ahead"]) == 2
        assert board.counters.commands["SYNC"] == syncs + 2
        boots = board.counters.app_boots
        await deployer.back_to_app()  # the build failed after all: back into the app
        for _ in range(500):  # the board boots on its own thread
            if board.counters.app_boots > boots:
                break
            await asyncio.sleep(0.01)
        assert board.counters.app_boots == boots + 1 and flash_holds(board, builds.v1)

    try:
        asyncio.run(go())
    finally:
        session.close()


def test_an_idle_board_sleeps_instead_of_spinning(builds: Builds, tmp_path: Path) -> None:
    """The example's tick wait (delay_until) polls SYSTIMER (latch, then read): the virtual
    board must turn that into real sleeps, or every idle board burns a host
    core and slows the very builds the loop is timing."""
    r = rig(tmp_path)
    assert r.dep.deploy(builds.v1).ok
    mark = len(r.data)
    r.wait_for("counter 1", mark)
    cpu = r.board._cpu
    assert cpu is not None
    naps = cpu.naps
    r.wait_for("counter 2", mark)  # one 500 ms delay_ms later
    assert cpu.naps - naps > 100
    r.conn.close()
