"""ROM/stub protocol corner cases, fault injection, USB-Serial/JTAG, timing."""

from __future__ import annotations

import struct
import threading

import pytest
import serial
from esptool.cmds import detect_chip, reset_chip, run_stub, write_flash
from esptool.util import FatalError

import fbuild_watch.sim as sim
from fbuild_watch.sim.board import BoardState
from fbuild_watch.sim.rom_loader import (
    ERR_BAD_CHECKSUM,
    ERR_FAILED_TO_ACT,
    ERR_FLASH_WRITE,
    ERR_INVALID_MESSAGE,
    FLASH_BEGIN,
    FLASH_DATA,
)
from fbuild_watch.sim.slip import SlipDecoder, encode
from tests.fwkit import Build
from tests.simkit import new_board, open_port, preload, read_until


def _rom(board_kwargs: dict[str, object] | None = None):  # type: ignore[no-untyped-def]
    board = new_board(**(board_kwargs or {}))
    port = open_port(board)
    esp = detect_chip(port, 115200, "default-reset")
    return board, port, esp


def _status(esp, op: int, data: bytes, chk: int = 0) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    _val, body = esp.command(op, data, chk)
    return body[-4], body[-3]  # ROM: 4 status bytes, [status, error, 0, 0]


def test_slip_roundtrip_and_noise() -> None:
    payload = bytes(range(256)) + b"\xc0\xdb\xc0"
    dec = SlipDecoder()
    assert dec.feed(b"noise" + encode(payload) + b"\xc0\xc0" + encode(b"x")) == [payload, b"x"]


def test_rom_error_codes() -> None:
    _board, _port, esp = _rom()
    assert not esp.IS_STUB
    # FLASH_DATA before FLASH_BEGIN: failed to act
    block = b"\x11" * 0x400
    hdr = struct.pack("<IIII", len(block), 0, 0, 0)
    assert _status(esp, FLASH_DATA, hdr + block, esp.checksum(block)) == (1, ERR_FAILED_TO_ACT)
    assert _status(esp, FLASH_BEGIN, struct.pack("<IIIII", 0x1000, 4, 0x400, 0x10000, 0)) == (0, 0)
    # bad checksum
    assert _status(esp, FLASH_DATA, hdr + block, esp.checksum(block) ^ 1) == (1, ERR_BAD_CHECKSUM)
    # bad sequence number
    bad_seq = struct.pack("<IIII", len(block), 3, 0, 0)
    assert _status(esp, FLASH_DATA, bad_seq + block, esp.checksum(block)) == (
        1,
        ERR_INVALID_MESSAGE,
    )
    # length field that disagrees with the data
    short = struct.pack("<IIII", len(block) + 1, 0, 0, 0)
    assert _status(esp, FLASH_DATA, short + block, esp.checksum(block)) == (1, ERR_INVALID_MESSAGE)
    # a good block goes through
    assert _status(esp, FLASH_DATA, hdr + block, esp.checksum(block)) == (0, 0)
    # past the end of the 4 MB flash
    assert _status(esp, FLASH_BEGIN, struct.pack("<IIIII", 0x2000, 8, 0x400, 0x3FF000, 0)) == (
        1,
        ERR_FAILED_TO_ACT,
    )
    # unknown command: invalid message (esptool's UnsupportedCommandError)
    assert _status(esp, 0x55, b"") == (1, ERR_INVALID_MESSAGE)
    # stub-only command on the ROM
    assert _status(esp, 0xD0, b"") == (1, ERR_INVALID_MESSAGE)


def test_rom_write_past_flash_end_during_data() -> None:
    board, _port, esp = _rom()
    # the ROM checks the range at FLASH_BEGIN; the stub writes lazily: check the stub path
    esp = run_stub(esp)
    assert esp.IS_STUB
    assert board.counters.stub_uploads == 1
    with pytest.raises(FatalError):
        esp.flash_begin(0x2000, 0x3FF000)
    assert board.state is BoardState.DOWNLOAD
    assert ERR_FLASH_WRITE == 0x08


def test_stub_resident_sync_returns_zero() -> None:
    board, port, esp = _rom()
    esp = run_stub(esp)
    again = detect_chip(port, 115200, "no-reset")
    assert again.sync_stub_detected
    assert board.counters.stub_uploads == 1


def test_counters_and_modelled_time_are_the_same_for_both_timings(firmware: Build) -> None:
    results = []
    for timing in (sim.INSTANT, sim.REALISTIC):
        board = new_board(timing=timing)
        port = open_port(board)
        esp = run_stub(detect_chip(port, 115200, "default-reset"))
        before = board.stats()
        write_flash(esp, [(0x10000, firmware.app_bin.read_bytes())])
        after = board.stats()
        results.append(
            {k: after[k] - before[k] for k in after if isinstance(after[k], int | float)}
        )  # type: ignore[operator]
        port.close()
    fast, real = results
    for key in ("sectors_erased", "bytes_programmed", "bytes_from_host", "bytes_to_host"):
        assert fast[key] == real[key], key
    assert fast["sectors_erased"] == 17  # 65664 bytes -> 17 sectors
    assert float(real["modelled_s"]) == pytest.approx(float(fast["modelled_s"]), rel=0.05)
    assert float(fast["modelled_s"]) > 17 * 0.045  # at least the erase time


def test_fault_drop_link_mid_write(firmware: Build) -> None:
    board = new_board()
    port = open_port(board)
    esp = run_stub(detect_chip(port, 115200, "default-reset"))
    board.faults.drop_after_bytes = 300
    with pytest.raises((serial.SerialException, FatalError, OSError)):
        write_flash(esp, [(0x10000, firmware.app_bin.read_bytes())])
    assert not board.present and board.state is BoardState.OFF
    board.replug()
    assert board.present


def test_fault_corrupt_response_is_detected() -> None:
    board = new_board()
    port = open_port(board)
    esp = run_stub(detect_chip(port, 115200, "default-reset"))
    good = esp.flash_md5sum(0x0, 0x1000)
    board.faults.corrupt_frames = 1
    # a damaged MD5 reply has no checksum to catch it: the caller's compare must
    assert esp.flash_md5sum(0x0, 0x1000) != good
    assert esp.flash_md5sum(0x0, 0x1000) == good


def test_fault_stall_times_out() -> None:
    board = new_board()
    port = open_port(board)
    esp = detect_chip(port, 115200, "default-reset")
    board.faults.stall = True
    with pytest.raises(FatalError, match="[Tt]imed out|stream stopped"):
        esp.read_reg(0x60008844)


def test_fault_refuse_download_mode(firmware: Build) -> None:
    board = new_board()
    preload(board, firmware)
    board.faults.refuse_download = True
    port = open_port(board)
    with pytest.raises(FatalError, match="Wrong boot mode detected"):
        # attempts 1-2 are esptool's ioctl-based reset, impossible on a sim:// port
        detect_chip(port, 115200, "default-reset", connect_attempts=3)


def test_spontaneous_reset_interrupts_app(firmware: Build) -> None:
    board = new_board()
    preload(board, firmware)
    port = open_port(board)
    board.reset()
    read_until(port, r"fw-test 1\.0\.0 up")
    board.reset("sw_sys")
    read_until(port, r"rst:0x3 \(RTC_SW_SYS_RST\).*fw-test 1\.0\.0 up")


def test_swapped_board_reports_other_mac() -> None:
    from fbuild_watch.sim.regs import ChipIdentity

    board, port, esp = _rom()
    first = esp.read_mac()
    board.set_identity(ChipIdentity(mac=bytes.fromhex("58cf79000002")))
    esp2 = detect_chip(port, 115200, "default-reset")
    assert esp2.read_mac() != first
    assert esp2.read_mac() == (0x58, 0xCF, 0x79, 0x00, 0x00, 0x02)


def test_usb_jtag_reset_and_reenumeration(firmware: Build) -> None:
    board = new_board(usb_jtag=True)
    preload(board, firmware)
    port = open_port(board)
    esp = detect_chip(port, 115200, "usb-reset")
    assert board.counters.download_boots == 1
    esp = run_stub(esp)
    gone = threading.Event()
    board.listeners.append(lambda s: gone.set() if s == "app" else None)
    reset_chip(esp, "hard-reset")
    assert gone.wait(5)
    # the USB device re-enumerated: the old port object is dead ...
    with pytest.raises(serial.SerialException):
        for _ in range(100):
            port.read(1)
    # ... and a new open finds the board again, running the app
    port = None
    for _ in range(200):
        try:
            port = open_port(board)
            break
        except serial.SerialException:
            board_present = threading.Event()
            board_present.wait(0.01)
    assert port is not None
    assert board.state is BoardState.APP
