"""The unmodified esptool drives the virtual board: Python API over sim://
with its default reset, and the CLI in a subprocess over `fbuild sim serve`."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial
from esptool.cmds import attach_flash, detect_chip, reset_chip, run_stub, write_flash

from fbuild_watch.sim.board import BoardState
from tests.fwkit import Build, build_firmware
from tests.simkit import new_board, open_port, read_until


def test_python_api_default_reset_flash_and_boot(firmware: Build) -> None:
    board = new_board()
    port = open_port(board)
    esp = detect_chip(port, 115200, "default-reset")
    assert esp.CHIP_NAME == "ESP32-C3"
    assert esp.read_mac() == tuple(board.identity.mac)
    esp = run_stub(esp)
    assert esp.IS_STUB
    attach_flash(esp)
    files = [
        (0x0, firmware.bootloader_bin.read_bytes()),
        (0x8000, firmware.partitions_bin.read_bytes()),
        (0x10000, firmware.app_bin.read_bytes()),
    ]
    write_flash(esp, files)
    app = firmware.app_bin.read_bytes()
    assert esp.flash_md5sum(0x10000, len(app)) == hashlib.md5(app).hexdigest()
    assert board.counters.stub_uploads == 1
    port.baudrate = 115200
    reset_chip(esp, "hard-reset")
    # the same port object now reads the app's UART output
    out = read_until(port, r"fw-test 1\.0\.0 up").decode()
    assert "rst:0x1 (POWERON),boot:0xc (SPI_FAST_FLASH_BOOT)" in out
    assert board.state is BoardState.APP
    for off, data in files:
        assert board.flash.read(off, len(data)) == data


@pytest.mark.parametrize("stub", [True, False], ids=["stub", "no-stub"])
def test_uncompressed_partial_write_leaves_the_next_sectors(stub: bool) -> None:
    """esptool pads the last FLASH_DATA block with 0xFF to the block size
    (16 KiB for the stub); the stub trims it and the ROM's padding only
    programs 0xFF, so 8 KiB written mid-flash leaves the sectors after it."""
    board = new_board()
    neighbour = bytes(range(256)) * 32  # 8 KiB, non-0xFF
    board.flash.erase(0x52000, len(neighbour))
    board.flash.program(0x52000, neighbour)
    port = open_port(board)
    esp = detect_chip(port, 115200, "default-reset")
    if stub:
        esp = run_stub(esp)
    attach_flash(esp)
    data = hashlib.sha256(b"x").digest() * 256  # 8 KiB, sent uncompressed
    write_flash(esp, [(0x50000, data)], no_compress=True)
    assert board.flash.read(0x50000, len(data)) == data
    assert board.flash.read(0x52000, len(neighbour)) == neighbour
    port.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    """`fbuild sim serve` in its own process; yields its socket:// URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "fbuild_watch", "sim", "serve", "--listen", "127.0.0.1:0",
         "--timing", "instant", "--flash", str(tmp_path / "served.flash")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"(socket://[\d.]+:\d+)", line)
    assert match, line + (proc.stderr.read() if proc.stderr else "")
    yield match.group(1)
    proc.terminate()
    assert proc.wait(timeout=10) == 0
    assert (tmp_path / "served.flash").stat().st_size == 4 << 20


def esptool(url: str, *args: str, stub: bool = True) -> str:
    cmd = [sys.executable, "-m", "esptool", "--chip", "esp32c3", "--port", url]
    if not stub:
        cmd.append("--no-stub")
    res = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


@pytest.fixture(scope="module")
def second_build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    return build_firmware(tmp_path_factory.mktemp("v2") / "b", version="2.0.0")


@pytest.mark.parametrize("stub", [True, False], ids=["stub", "no-stub"])
def test_cli_against_served_board(
    served: str, firmware: Build, second_build: Build, tmp_path: Path, stub: bool
) -> None:
    fw = firmware
    out = esptool(served, "flash-id", stub=stub)
    assert "Manufacturer: c8" in out and "Detected flash size: 4MB" in out
    assert ("Stub flasher running" in out) == stub

    files = [
        "0x0",
        str(fw.bootloader_bin),
        "0x8000",
        str(fw.partitions_bin),
        "0x10000",
        str(fw.app_bin),
    ]
    out = esptool(served, "write-flash", *files, stub=stub)
    assert out.count("Hash of data verified.") == 3
    out = esptool(served, "verify-flash", *files, stub=stub)
    assert out.count("Verification successful") == 3 and "Verification failed" not in out

    # uncompressed write of another version, then read back byte-equal
    out = esptool(
        served, "write-flash", "--no-compress", "0x10000", str(second_build.app_bin), stub=stub
    )
    assert "Hash of data verified." in out
    app2 = second_build.app_bin.read_bytes()
    length = 0x1000 if not stub else len(app2)  # ROM reads 64 bytes per command
    dump = tmp_path / "dump.bin"
    esptool(served, "read-flash", "0x10000", hex(length), str(dump), stub=stub)
    assert dump.read_bytes() == app2[:length]

    # --diff-with: only the sectors that differ from the given old file
    out = esptool(served, "write-flash", "0x10000", str(fw.app_bin),
                  "--diff-with", str(second_build.app_bin), stub=stub)  # fmt: skip
    assert "Hash of data verified." in out
    # the versions differ in the app descriptor (first sector) and the code
    assert re.findall(r"Reflashing 1 changed sector at (0x[0-9a-f]+)", out) == [
        "0x00010000",
        "0x00020000",
    ]
    esptool(served, "verify-flash", "0x10000", str(fw.app_bin), stub=stub)

    if stub:  # ERASE_REGION is a stub command
        esptool(served, "erase-region", "0x20000", "0x1000")
        esptool(served, "read-flash", "0x20000", "0x1000", str(dump))
        assert dump.read_bytes() == b"\xff" * 0x1000


def test_served_board_refuses_second_client(served: str) -> None:
    first = serial.serial_for_url(served, timeout=0.5)
    try:
        res = subprocess.run(
            [sys.executable, "-m", "esptool", "--port", served, "--connect-attempts", "1", "flash-id"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert res.returncode != 0
    finally:
        first.close()
