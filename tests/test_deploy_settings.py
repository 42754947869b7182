"""The deploy obeys the project's flashing settings (issue #16): before and
after resets, no stub, encrypted regions refused; and the chip and its
revision are checked before the first byte is written. Real esptool against
virtual boards."""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fbuild_watch.deploy import BoardDeployer, BoardWorker, describe
from fbuild_watch.deploy.outcome import DeployOutcome
from fbuild_watch.image import (
    APP,
    BOOTLOADER,
    PARTITION_TABLE,
    FlashLayout,
    Region,
    load_flasher_args,
)
from fbuild_watch.image.chips import chips
from fbuild_watch.image.layout import ValidatedLayout
from fbuild_watch.image.settings import FlashSettings, ResolvedFlash, resolve_flash
from fbuild_watch.sim.board import BoardState, VirtualBoard
from fbuild_watch.sim.regs import ChipIdentity
from tests.fwkit import Build
from tests.projectkit import app_image, make_image, partition_table
from tests.simkit import new_board

FROM = "flasher_args.json extra_esptool_args"
DATA_AT = 0x200000  # a data region beyond the app partition's use


def settings(**values: object) -> ResolvedFlash:
    """Resolved settings as a build's flasher_args.json would give them."""
    origins = tuple((name, f"{FROM}.{name}") for name in values)
    build = FlashSettings(**values, origins=origins)  # type: ignore[arg-type]
    return resolve_flash(build, environ={})


def with_data(layout: ValidatedLayout, data: bytes, **flash: object) -> ValidatedLayout:
    """`layout` plus a data region (bytes the app does not care about)."""
    lay = layout.layout
    return FlashLayout(
        lay.chip,
        (*lay.regions, Region("data", DATA_AT, data)),
        source=lay.source,
        settings=FlashSettings(**flash),  # type: ignore[arg-type]
    ).validate()


@dataclass
class Rig:
    board: VirtualBoard
    conn: BoardWorker
    dep: BoardDeployer
    data: bytearray = field(default_factory=bytearray)

    def since(self, mark: int) -> str:
        return bytes(self.data[mark:]).decode(errors="replace")

    def wait_for(self, text: str, since: int, timeout: float = 5) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.since(since):
                return self.since(since)
            time.sleep(0.01)
        raise AssertionError(f"{text!r} not in the log:\n{self.since(since)[-1500:]}")

    def state_after_quiet(self) -> BoardState:
        """The board's state once it has stopped talking (a boot would print)."""
        mark = len(self.data)
        self.wait_quiet(mark)
        return self.board.state

    def wait_quiet(self, mark: int, quiet: float = 0.3) -> None:
        last = len(self.data)
        seen = time.monotonic()
        while time.monotonic() - seen < quiet:
            time.sleep(0.02)
            if len(self.data) != last:
                last, seen = len(self.data), time.monotonic()


def rig(board: VirtualBoard | None = None, **kwargs: object) -> Rig:
    board = board or new_board()
    data = bytearray()
    lock = threading.Lock()

    def on_data(d: bytes, _t: float) -> None:
        with lock:
            data.extend(d)

    conn = BoardWorker(describe(f"sim://{board.name}"), on_data=on_data)
    conn.open()
    dep = BoardDeployer(conn, **kwargs)  # type: ignore[arg-type]
    return Rig(board, conn, dep, data)


@pytest.fixture
def fw(firmware: Build) -> ValidatedLayout:
    return load_flasher_args(firmware.flasher_args).validate()


def flash_holds(board: VirtualBoard, layout: ValidatedLayout) -> bool:
    return all(board.flash.read(r.offset, r.size) == r.data for r in layout.layout.regions)


def writes(board: VirtualBoard) -> int:
    c = board.counters.commands
    return c["FLASH_BEGIN"] + c["FLASH_DEFL_BEGIN"]


# -- after ---------------------------------------------------------------------------
def test_after_no_reset_leaves_the_board_in_its_rom_loader(fw: ValidatedLayout) -> None:
    r = rig(flash=settings(after="no-reset", stub=False))
    mark = len(r.data)
    out = r.dep.deploy(fw)
    assert out.ok, out.error
    assert out.reset_after == "no-reset" and out.resets == 1  # only the one into the loader
    assert out.summary().endswith(
        f"; the board stays in its ROM loader (after = no-reset (from {FROM}.after)): "
        "the app starts when the board is reset"
    )
    assert out.as_dict()["reset_after"] == "no-reset"
    assert r.state_after_quiet() is BoardState.DOWNLOAD
    assert r.board.counters.app_boots == 0 and "fw-test" not in r.since(mark)
    assert flash_holds(r.board, fw)
    # the next deploy finds it there: synced without a reset, and left there again
    resets = r.board.counters.resets
    out = r.dep.deploy(with_data(fw, os.urandom(8192)))
    assert out.ok and out.kind == "sector-delta", out.error
    assert r.board.counters.resets == resets and out.resets == 0
    assert r.state_after_quiet() is BoardState.DOWNLOAD
    # connecting ahead of the next one keeps it in the loader when no deploy follows
    assert r.dep.connect_ahead()
    r.dep.back_to_app()
    assert r.state_after_quiet() is BoardState.DOWNLOAD and r.board.counters.app_boots == 0
    r.conn.close()


def test_after_no_reset_stub_then_before_no_reset_no_sync(fw: ValidatedLayout) -> None:
    """esptool's pair: leave the stub running, then talk to it without a
    reset or a sync (no second upload)."""
    r = rig(flash=settings(after="no-reset-stub"), stub=True)
    out = r.dep.deploy(fw)
    assert out.ok and out.stub_used and out.reset_after == "no-reset-stub", out.error
    assert "stays in its flasher stub" in out.summary()
    assert r.state_after_quiet() is BoardState.DOWNLOAD
    syncs = r.board.counters.commands["SYNC"]
    uploads = r.board.counters.stub_uploads
    r.dep.flash = settings(before="no-reset-no-sync", after="no-reset-stub")
    out = r.dep.deploy(with_data(fw, os.urandom(8192)))
    assert out.ok and out.stub_used, out.error
    assert r.board.counters.commands["SYNC"] == syncs
    assert r.board.counters.stub_uploads == uploads
    r.conn.close()


def test_after_watchdog_reset_boots_the_app_through_the_rtc_watchdog(
    fw: ValidatedLayout,
) -> None:
    r = rig(flash=settings(after="watchdog-reset"))
    mark = len(r.data)
    out = r.dep.deploy(fw)
    assert out.ok and out.reset_after == "watchdog-reset", out.error
    log = r.wait_for("fw-test 1.0.0 up", mark)
    assert "RTCWDT_RTC_RST" in log
    r.conn.close()


def test_after_soft_reset_keeps_to_the_rom(fw: ValidatedLayout) -> None:
    """esptool soft-resets from the ROM only ("only supported on ESP8266"
    with a stub), so the cost model must not pick the stub for it."""
    r = rig(flash=settings(after="soft-reset"))
    ends = r.board.counters.commands["FLASH_END"]
    out = r.dep.deploy(with_data(fw, os.urandom(256 * 1024)))  # the stub's size
    assert out.ok and not out.stub_used and out.reset_after == "soft-reset", out.error
    assert r.board.counters.stub_uploads == 0
    assert r.board.counters.commands["FLASH_END"] > ends  # esptool's "run user code"
    r.conn.close()


# -- stub -----------------------------------------------------------------------------
def test_no_stub_is_honoured_at_every_size(fw: ValidatedLayout) -> None:
    big = with_data(fw, os.urandom(256 * 1024))
    allowed = rig()
    out = allowed.dep.deploy(big)
    assert out.ok and out.stub_used, out.error  # what the cost model picks at this size
    assert out.estimate_s is not None and out.estimate_s > 0
    allowed.conn.close()
    for forced in (None, True):  # not even the benchmarks' forcing overrides the project
        r = rig(flash=settings(stub=False), stub=forced)
        out = r.dep.deploy(big)
        assert out.ok and not out.stub_used, out.error
        assert r.board.counters.stub_uploads == 0 and flash_holds(r.board, big)
        assert out.as_dict()["estimate_ms"] > 0
        r.conn.close()


def test_the_baud_comes_from_the_settings(fw: ValidatedLayout) -> None:
    r = rig(flash=settings(baud=921600), baud=460800)
    out = r.dep.deploy(fw)
    assert out.ok, out.error
    assert r.board.counters.commands["CHANGE_BAUDRATE"] == 1
    assert r.dep.link_baud == 921600
    r.conn.close()


# -- before ---------------------------------------------------------------------------
def test_before_no_reset_never_resets_the_board(fw: ValidatedLayout, firmware: Build) -> None:
    running = rig(flash=settings(before="no-reset"))
    out = running.dep.deploy(fw)
    assert not out.ok and out.flash_state == "unchanged: nothing was written"
    assert out.error is not None and out.error.endswith(
        f"; before = no-reset (from {FROM}.before) does not reset it: "
        "put the board in download mode"
    )
    assert running.board.counters.resets == 1  # its power-on only
    assert not running.dep.connect_ahead()  # it cannot be taken there either
    running.conn.close()

    waiting = rig(new_board(start="download"), flash=settings(before="no-reset"))
    out = waiting.dep.deploy(fw)
    assert out.ok and out.reset_after == "hard-reset", out.error
    assert out.resets == 1 and flash_holds(waiting.board, fw)
    waiting.conn.close()


def test_before_usb_reset_uses_the_usb_jtag_sequence(fw: ValidatedLayout) -> None:
    uart = rig(flash=settings(before="usb-reset"))  # a UART bridge's port: the project decides
    assert [type(s).__name__ for s in uart.dep._strategies(None)] == ["USBJTAGSerialReset"]
    uart.conn.close()
    r = rig(new_board(usb_jtag=True), flash=settings(before="usb-reset"))
    out = r.dep.deploy(fw)
    assert out.ok and out.resets == 2, out.error  # into the loader at once, back into the app
    r.conn.close()


# -- encryption -----------------------------------------------------------------------
def test_encrypted_regions_are_refused_before_anything_is_sent(fw: ValidatedLayout) -> None:
    r = rig()
    assert r.dep.deploy(fw).ok
    sent = r.board.stats()["bytes_from_host"]
    secret = FlashLayout(
        fw.layout.chip,
        fw.layout.regions,
        source=fw.layout.source,
        settings=FlashSettings(encrypted=frozenset({0x10000})),
    ).validate()
    out = r.dep.deploy(secret)
    assert not out.ok and out.flash_state == "unchanged: nothing was written"
    assert out.error == (
        f"{fw.layout.source}: app must be written encrypted (flash encryption is on in this "
        "build) and fbuild does not write encrypted flash; flash with `idf.py encrypted-flash` "
        "(nothing was written)"
    )
    assert r.board.stats()["bytes_from_host"] == sent
    # settings from elsewhere (fbuild.toml) mark it too
    out = r.dep.deploy(
        with_data(fw, b"\x00" * 4096), flash=settings(encrypted=frozenset({DATA_AT}))
    )
    assert not out.ok and "data must be written encrypted" in (out.error or "")
    # nothing was written: trust holds
    r.dep.flash = None
    assert r.dep.deploy(fw).kind == "trust-skip"
    r.conn.close()


# -- chip and revision ----------------------------------------------------------------
def foreign(chip: str) -> ValidatedLayout:
    """A layout for another chip (valid images, a partition table)."""
    regions = (
        Region(BOOTLOADER, chips()[chip].bootloader_offset, make_image(chip)),
        Region(PARTITION_TABLE, 0x8000, partition_table([0x10000])),
        Region(APP, 0x10000, app_image(chip, "other")),
    )
    return FlashLayout(chip, regions, source=Path("/p/build/flasher_args.json")).validate()


def refused(r: Rig, layout: ValidatedLayout, fw: ValidatedLayout) -> DeployOutcome:
    """Deploy `layout` to a board trusted to run `fw`: refused with nothing
    written, the app running again, trust kept."""
    begins = writes(r.board)
    mark = len(r.data)
    out = r.dep.deploy(layout)
    assert not out.ok
    assert out.flash_state == "unchanged: nothing was written", out.flash_state
    assert writes(r.board) == begins and flash_holds(r.board, fw)
    r.wait_for("fw-test 1.0.0 up", mark)  # back in its app
    again = r.dep.deploy(fw)
    assert again.kind == "trust-skip", again.summary()
    return out


def test_a_layout_for_another_chip_is_refused_with_nothing_written(
    fw: ValidatedLayout,
) -> None:
    """esptool used to refuse it half way, and the outcome said "partially
    written" though nothing was."""
    r = rig()
    assert r.dep.deploy(fw).ok
    out = refused(r, foreign("esp32s3"), fw)
    assert out.error == (
        "/p/build/flasher_args.json: the layout is for ESP32-S3 (esp32s3) but the board is an "
        "ESP32-C3; nothing was written"
    )
    # also when the board was taken into its loader ahead of the deploy
    assert r.dep.connect_ahead()
    refused(r, foreign("esp32s3"), fw)
    r.conn.close()


@pytest.mark.parametrize(
    ("identity", "app_rev", "problem"),
    [
        (ChipIdentity(), (5, 0xFFFF),
         "app@0x10000: the app needs chip revision >= v0.5 but the board is v0.4"),
        (ChipIdentity(major_rev=1, minor_rev=1), (0, 99),
         "app@0x10000: the app supports chip revisions up to v0.99 but the board is v1.1"),
    ],
)  # fmt: skip
def test_an_image_for_another_revision_is_refused(
    fw: ValidatedLayout, identity: ChipIdentity, app_rev: tuple[int, int], problem: str
) -> None:
    r = rig(new_board(identity=identity))
    assert r.dep.deploy(fw).ok
    layout = FlashLayout(
        "esp32c3",
        (*fw.layout.regions[:2], Region(APP, 0x10000, app_image("esp32c3", "rev",
                                                             min_rev_full=app_rev[0],
                                                             max_rev_full=app_rev[1]))),
    ).validate()  # fmt: skip
    out = refused(r, layout, fw)
    assert out.error is not None and out.error.startswith(problem), out.error
    r.conn.close()
