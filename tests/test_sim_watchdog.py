"""The virtual C3's watchdogs reset it as a real one's do: RTC WDT, TG0/TG1
MWDT and the super watchdog, each with the reset reason the ROM prints, and
esptool's `--after watchdog-reset` boots the board out of its loader."""

from __future__ import annotations

import re
import time

import esptool
import pytest
import serial

from fbuild_watch.sim import watchdog
from fbuild_watch.sim.board import BoardState, VirtualBoard
from fbuild_watch.sim.watchdog import Watchdogs
from tests.fwkit import FW_DIR, Build, build_firmware
from tests.simkit import new_board, open_port, preload, read_until

BANNER_FLASH = r"rst:{},boot:0xc \(SPI_FAST_FLASH_BOOT\)"


@pytest.fixture(scope="module")
def wdt_build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    return build_firmware(tmp_path_factory.mktemp("wdt") / "b", app_source=FW_DIR / "wdt.c")


def _running(build: Build) -> tuple[VirtualBoard, serial.SerialBase]:
    board = new_board()
    preload(board, build)
    port = open_port(board)
    board.reset()
    read_until(port, r"wdt-test ready\r\n")
    return board, port


@pytest.mark.parametrize(
    ("cmd", "armed", "reason", "warns"),
    [
        ("h", "tg0 armed", r"0x7 \(TG0WDT_SYS_RST\)", True),
        ("c", "tg1 armed", r"0x11 \(TG1WDT_CPU_RST\)", True),
        ("r", "rwdt armed", r"0x9 \(RTCWDT_SYS_RST\)", True),
        ("s", "swd not fed", r"0x12 \(SUPER_WDT_RST\)", False),
    ],
    ids=["tg0-system", "tg1-cpu", "rtc-system", "super"],
)
def test_unfed_watchdog_resets_with_its_reason(
    wdt_build: Build, cmd: str, armed: str, reason: str, warns: bool
) -> None:
    board, port = _running(wdt_build)
    port.write(cmd.encode())
    read_until(port, armed)
    t0 = time.monotonic()
    out = read_until(port, BANNER_FLASH.format(reason) + r".*wdt-test ready", timeout=5).decode()
    waited = time.monotonic() - t0
    # MWDT/RWDT stage 0 after 200 ms, the super watchdog after about a second
    assert waited >= (0.8 if cmd == "s" else 0.15)
    assert ("boot.esp32c3: PRO CPU has been reset by WDT." in out) is warns
    assert board.state is BoardState.APP


def test_fed_watchdog_does_not_fire(wdt_build: Build) -> None:
    board, port = _running(wdt_build)
    resets = board.counters.resets
    port.write(b"f")
    read_until(port, r"fed and stopped", timeout=5)  # 1 s of feeding a 200 ms watchdog
    time.sleep(0.4)  # past the stopped watchdog's timeout: nothing may fire now
    assert b"rst:" not in port.read(4096)
    assert board.counters.resets == resets


def test_locked_registers_ignore_writes(wdt_build: Build) -> None:
    """ESP-IDF's bootloader locks the watchdog registers; a write without the
    key changes nothing."""
    board, port = _running(wdt_build)
    port.write(b"l")
    read_until(port, r"locked write ignored")
    assert board.regs.watchdogs.tg[0].config0 == 0


def test_bootloader_rtc_wdt_resets_an_app_that_leaves_it_on(
    wdt_build: Build, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ESP-IDF's bootloader leaves the RTC WDT armed (9 s; shortened here) for
    the app's start-up to disable: an app that does not is reset."""
    monkeypatch.setattr(watchdog, "BOOTLOADER_WDT_MS", 300)
    _board, port = _running(wdt_build)
    read_until(port, BANNER_FLASH.format(r"0x10 \(RTCWDT_RTC_RST\)") + r".*wdt-test ready")
    # an app that disables it, as ESP-IDF's start-up code does, keeps running
    port.write(b"d")
    read_until(port, r"rwdt disabled")
    time.sleep(0.6)
    assert b"rst:" not in port.read(4096)


def test_bootloader_arms_rtc_wdt_for_nine_seconds(wdt_build: Build) -> None:
    board, _port = _running(wdt_build)  # an app that leaves the RTC WDT alone
    deadline = board.regs.watchdogs.next_deadline()
    assert deadline is not None and deadline[1] == "rtcwdt_rtc"
    assert 8.0 < deadline[0] - time.monotonic() <= 9.0


def test_esptool_watchdog_reset_leaves_the_loader(capsys: pytest.CaptureFixture[str]) -> None:
    """esptool's own TestReset.test_watchdog_reset: erase the bootloader, reset
    with the RTC WDT; the chip boots from flash and finds an invalid header."""
    board = new_board(start="download")
    esptool.main(
        [
            "--chip",
            "esp32c3",
            "--port",
            f"sim://{board.name}",
            "--after",
            "watchdog-reset",
            "erase-region",
            "0x0",
            "0x4000",
        ]
    )
    assert "Hard resetting with a watchdog..." in capsys.readouterr().out
    port = open_port(board)
    read_until(port, r"invalid header")
    assert board.tx_record is not None
    assert (
        b"rst:0x10 (RTCWDT_RTC_RST),boot:0xc (SPI_FAST_FLASH_BOOT)\r\ninvalid header"
        in board.tx_record
    )


def test_esptool_watchdog_reset_boots_the_app(firmware: Build) -> None:
    board = new_board(start="download")
    preload(board, firmware)
    esptool.main(
        [
            "--chip",
            "esp32c3",
            "--port",
            f"sim://{board.name}",
            "--after",
            "watchdog-reset",
            "chip-id",
        ]
    )
    # the reset came during esptool's wait with its port open; the app is up
    booted = rb"rst:0x10 \(RTCWDT_RTC_RST\),boot:0xc .*fw-test 1\.0\.0 up"
    deadline = time.monotonic() + 5
    while not re.search(booted, bytes(board.tx_record or b""), re.S):
        assert time.monotonic() < deadline, "the app did not boot after the watchdog reset"
        time.sleep(0.01)
    assert board.state is BoardState.APP


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_register_model_stages_keys_and_feeds() -> None:
    clock = _Clock()
    w = Watchdogs(clock)
    assert w.next_deadline() is None  # after reset: all off, super WDT auto-fed
    # esptool's watchdog_reset() values: stage 0 = 5 with CHIP_RESET_EN, 2000 ticks
    w.write(watchdog.RWDT_WPROTECT, watchdog.WDT_WKEY)
    w.write(watchdog.RWDT_CONFIG1, 2000)
    w.write(watchdog.RWDT_CONFIG0, (1 << 31) | (5 << 28) | (1 << 8) | 2)
    w.write(watchdog.RWDT_WPROTECT, 0)
    at, reason = w.next_deadline() or (0.0, "")
    assert reason == "rtcwdt_rtc"
    assert at - clock.t == pytest.approx(4000 / watchdog.SLOW_CLK_HZ)  # stage 0 counts twice
    clock.t += 0.02
    assert w.expired() is None
    clock.t += 0.02
    assert w.expired() == "rtcwdt_rtc"
    # locked: a feed without the key is ignored; with the key it restarts the count
    w.write(watchdog.RWDT_FEED, 1 << 31)
    assert w.expired() == "rtcwdt_rtc"
    w.write(watchdog.RWDT_WPROTECT, watchdog.WDT_WKEY)
    w.write(watchdog.RWDT_FEED, 1 << 31)
    assert w.expired() is None
    # an interrupt stage passes; the next stage's reset counts from the feed
    base = watchdog.TIMG_BASES[0]
    w.chip_reset()
    w.write(base + watchdog.TIMG_WDTCONFIG1, 80 << 16)  # 1 MHz
    w.write(base + watchdog.TIMG_WDTCONFIG2, 1000)
    w.write(base + watchdog.TIMG_WDTCONFIG2 + 4, 2000)
    w.write(base + watchdog.TIMG_WDTCONFIG0, (1 << 31) | (1 << 29) | (2 << 27))
    at, reason = w.next_deadline() or (0.0, "")
    assert reason == "tg0wdt_cpu"
    assert at - clock.t == pytest.approx(0.003)
