"""The virtual board boots real firmware, fails like a real chip, and resets
through its modem lines."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import serial
from elftools.elf.elffile import ELFFile

from fbuild_watch import sim
from fbuild_watch.sim.board import BoardState
from tests.fwkit import FW_DIR, Build, build_firmware
from tests.simkit import new_board, open_port, preload, read_until


@pytest.fixture(scope="module")
def crash_build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    return build_firmware(tmp_path_factory.mktemp("crash") / "b", app_source=FW_DIR / "crash.c")


def test_boots_app_and_prints(firmware: Build) -> None:
    board = new_board()
    preload(board, firmware)
    port = open_port(board)
    board.reset()
    out = read_until(port, r"fw-test 1\.0\.0 up").decode()
    assert out.startswith("ESP-ROM:esp32c3-api1-20210207")
    assert "rst:0x1 (POWERON),boot:0xc (SPI_FAST_FLASH_BOOT)" in out
    assert "Loaded app from partition at offset 0x10000" in out
    assert board.state is BoardState.APP


def test_erased_flash_prints_invalid_header_repeatedly() -> None:
    board = new_board()
    port = open_port(board)
    board.reset()
    out = read_until(port, r"(invalid header: 0xffffffff\r\n){3}").decode()
    assert "waiting for download" not in out
    assert board.state is BoardState.ROM_STUCK


def test_corrupt_app_fails_sha_verification(firmware: Build) -> None:
    board = new_board()
    preload(board, firmware)
    # flip one byte inside the app's IROM segment, as a bit rot or half write would
    addr = 0x10000 + 0x10020
    board.flash.erase(0x20000, 0x1000)
    data = bytearray(firmware.app_bin.read_bytes()[0x10000:0x11000])
    data[0x30] ^= 0x01
    board.flash.program(0x20000, bytes(data[: min(len(data), 0x1000)]))
    assert addr < 0x21000
    port = open_port(board)
    board.reset()
    out = read_until(port, r"No bootable app partitions").decode()
    assert re.search(
        r"E \(\d+\) esp_image: (Image hash failed - image is corrupt|Checksum failed)", out
    )
    assert "Factory app partition is not bootable" in out
    assert "fw-test" not in out.split("Partition Table")[-1]
    # and it keeps rebooting, like ESP-IDF's bootloader_reset()
    read_until(port, r"rst:0x3 \(RTC_SW_SYS_RST\)")


def test_crash_prints_panic_with_faulting_mepc(crash_build: Build) -> None:
    with crash_build.app_elf.open("rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        fault_addr = symtab.get_symbol_by_name("fault_here")[0]["st_value"]  # type: ignore[union-attr]
    board = new_board()
    preload(board, crash_build)
    port = open_port(board)
    board.reset()
    out = read_until(port, r"Rebooting\.\.\.").decode()
    assert (
        "Guru Meditation Error: Core  0 panic'ed (Store access fault). Exception was unhandled."
        in out
    )
    mepc = int(re.search(r"MEPC    : 0x([0-9a-f]{8})", out).group(1), 16)  # type: ignore[union-attr]
    assert mepc == fault_addr
    assert re.search(r"MCAUSE  : 0x00000007  MTVAL   : 0x00000000", out)
    # crash loop: it reboots with a CPU reset reason and crashes again
    again = read_until(port, r"rst:0xc \(RTC_SW_CPU_RST\).*Guru Meditation", timeout=5).decode()
    assert "about to crash" in again
    assert board.counters.panics >= 2


def test_hard_reset_through_rts(firmware: Build) -> None:
    board = new_board()
    preload(board, firmware)
    port = open_port(board)
    board.reset()
    read_until(port, r"fw-test 1\.0\.0 up")
    boots = board.counters.app_boots
    # esptool's hard reset: RTS asserted (EN low) with DTR released, then released
    port.dtr = False
    port.rts = True
    port.rts = False
    read_until(port, r"rst:0x1 \(POWERON\),boot:0xc.*fw-test 1\.0\.0 up")
    assert board.counters.app_boots == boots + 1


def classic_reset(port: serial.SerialBase) -> None:
    """esptool's ClassicReset: IO0 high + EN low, then IO0 low + EN high,
    then IO0 high."""
    port.dtr = False
    port.rts = True
    port.dtr = True
    port.rts = False
    time.sleep(0.05)  # esptool's reset_delay: IO0 must stay low while EN rises
    port.dtr = False


def test_classic_sequence_enters_download_mode(firmware: Build) -> None:
    board = new_board()
    preload(board, firmware)
    port = open_port(board)
    classic_reset(port)
    out = read_until(port, r"waiting for download").decode()
    assert "boot:0x5 (DOWNLOAD(USB/UART0/1))" in out
    assert board.state is BoardState.DOWNLOAD


def test_reset_mid_boot_restarts_at_once(firmware: Build) -> None:
    """EN pulled low while the bootloader is still loading the app restarts
    the chip at once (a real chip does not finish the boot first): esptool's
    first sync after its reset must find the ROM loader listening."""
    board = new_board(timing=sim.REALISTIC)
    preload(board, firmware)
    port = open_port(board)
    board.reset()
    read_until(port, r"boot:0xc \(SPI_FAST_FLASH_BOOT\)\r\n")  # the bootloader's 0.22 s begin
    classic_reset(port)
    out = read_until(port, r"waiting for download").decode()
    assert "Loaded app" not in out  # the abandoned boot printed nothing more
    assert board.counters.app_boots == 0
    assert board.state is BoardState.DOWNLOAD


def test_second_open_is_busy_and_reopen_works(firmware: Build) -> None:
    board = new_board()
    port = open_port(board)
    with pytest.raises(serial.SerialException, match="Device or resource busy"):
        open_port(board)
    port.close()
    open_port(board).close()


def test_wrong_baud_reads_garbage(firmware: Build) -> None:
    board = new_board()
    preload(board, firmware)
    port = open_port(board, baudrate=921600)
    board.reset()
    data = b""
    for _ in range(20):
        data += port.read(4096)
    assert data and b"ESP-ROM" not in data


def test_flash_persists_atomically(firmware: Build, tmp_path: Path) -> None:
    from fbuild_watch.sim import remove_board

    image = tmp_path / "board.flash"
    board = new_board(flash_path=image)
    preload(board, firmware)
    remove_board(board.name)  # closes and saves
    assert image.stat().st_size == 4 << 20
    assert not list(tmp_path.glob("*.tmp"))
    again = new_board(flash_path=image)
    assert again.flash.read(0x10000, 64) == firmware.app_bin.read_bytes()[:64]
    port = open_port(again)
    again.reset()
    read_until(port, r"fw-test 1\.0\.0 up")


def test_sim_url_options() -> None:
    from fbuild_watch.sim.registry import SimUrlError, parse_url

    opts = parse_url("sim://x?flash=&timing=instant&usb=jtag&boot=download&mac=58:cf:79:00:00:01")
    assert (
        opts.flash is None
        and opts.timing == "instant"
        and opts.usb_jtag
        and opts.start == "download"
    )
    assert opts.mac == bytes.fromhex("58cf79000001")
    assert parse_url("sim://y").flash is not None  # persisted by default
    for bad in ("sim://x?timing=slow", "sim://x?colour=red", "sim://x?mac=12", "sim://"):
        with pytest.raises(SimUrlError):
            parse_url(bad)


def test_unplug_and_replug(firmware: Build) -> None:
    board = new_board()
    preload(board, firmware)
    port = open_port(board)
    board.reset()
    read_until(port, r"fw-test 1\.0\.0 up")
    board.unplug()
    with pytest.raises(serial.SerialException):
        port.read(10)
    with pytest.raises(serial.SerialException, match="No such file"):
        open_port(board)
    board.replug()
    port = open_port(board)
    read_until(port, r"rst:0x1 \(POWERON\).*fw-test 1\.0\.0 up")
