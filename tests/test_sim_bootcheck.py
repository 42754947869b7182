"""The modelled 2nd stage bootloader refuses what ESP-IDF's refuses, with its
messages (esp_image_format.c, bootloader_common_loader.c): chip id, chip
revision range, load addresses over the bootloader's own RAM, checksum, hash."""

from __future__ import annotations

import hashlib
import re
import struct
from pathlib import Path

import pytest

from fbuild_watch.sim import boot
from fbuild_watch.sim.board import BoardState
from fbuild_watch.sim.regs import ChipIdentity
from tests.fwkit import Build, elf2image
from tests.simkit import new_board, open_port, preload, read_until

REFUSED = r"Factory app partition is not bootable\r\n.*No bootable app partitions"


def _boot_with_app(firmware: Build, app: bytes, identity: ChipIdentity | None = None) -> str:
    board = new_board(identity=identity)
    preload(board, firmware)
    board.flash.erase(0x10000, len(app))
    board.flash.program(0x10000, app)
    port = open_port(board)
    board.reset()
    out = read_until(port, REFUSED + r"|fw-test 1\.0\.0 up").decode()
    assert board.state is not BoardState.APP or "fw-test" in out
    return out


def _checksum_end(image: bytes) -> int:
    """Offset just past the checksum byte (segments, then pad to 16 bytes)."""
    pos = 24
    for _ in range(image[1]):
        pos += 8 + struct.unpack_from("<I", image, pos + 4)[0]
    return (pos + 16) & ~15


def _rehash(image: bytearray) -> bytes:
    """Recompute the appended SHA-256 after editing the image's headers."""
    end = _checksum_end(bytes(image))
    image[end : end + 32] = hashlib.sha256(image[:end]).digest()
    return bytes(image)


def _app_with(firmware: Build, tmp_path: Path, *extra: str) -> bytes:
    out = tmp_path / "app.bin"
    return elf2image(firmware.app_elf, out, "--elf-sha256-offset", "0xb0", *extra).read_bytes()


def test_good_app_boots_and_segment_kinds(firmware: Build) -> None:
    out = _boot_with_app(firmware, firmware.app_bin.read_bytes())
    assert "fw-test 1.0.0 up" in out
    # esptool's padding segment (load address 0) is neither loaded nor mapped
    assert re.search(
        r"esp_image: segment \d: paddr=\w+ vaddr=00000000 size=\w+ \( *\d+\) \r\n", out
    )
    assert "I (30) boot: chip revision: v0.4" in out


def test_min_chip_revision_refused(firmware: Build, tmp_path: Path) -> None:
    app = _app_with(firmware, tmp_path, "--min-rev-full", "255")
    out = _boot_with_app(firmware, app)
    assert re.search(
        r"E \(\d+\) boot_comm: chip revision check failed\. Required >= v2\.55, found v0\.4\.", out
    )
    assert "fw-test" not in out


def test_min_chip_revision_met_by_a_newer_chip(firmware: Build, tmp_path: Path) -> None:
    app = _app_with(firmware, tmp_path, "--min-rev-full", "3")
    out = _boot_with_app(firmware, app, identity=ChipIdentity(minor_rev=4))
    assert "fw-test 1.0.0 up" in out
    out = _boot_with_app(firmware, app, identity=ChipIdentity(minor_rev=2))
    assert "Required >= v0.3, found v0.2." in out


def test_max_chip_revision_refused(firmware: Build, tmp_path: Path) -> None:
    app = _app_with(firmware, tmp_path, "--max-rev-full", "3")
    out = _boot_with_app(firmware, app)
    assert re.search(
        r"boot_comm: chip revision check failed\. Required <= v0\.3, found v0\.4\.", out
    )


def test_chip_id_mismatch_refused(firmware: Build) -> None:
    app = bytearray(firmware.app_bin.read_bytes())
    app[12:14] = struct.pack("<H", 13)  # esp32c6's chip id
    out = _boot_with_app(firmware, _rehash(app))
    assert re.search(r"E \(\d+\) boot_comm: mismatch chip ID, expected 5, found 13\r\n", out)
    assert re.search(REFUSED, out, re.S)


def _padding_segment(image: bytes) -> int:
    """File offset of the header of esptool's padding segment (address 0)."""
    pos = 24
    for _ in range(image[1]):
        addr, length = struct.unpack_from("<II", image, pos)
        if addr == 0:
            return pos
        pos += 8 + length
    raise AssertionError("no padding segment")


@pytest.mark.parametrize(
    ("load_addr", "reason"),
    [
        (0x3FCD0000, "overlaps bootloader stack"),
        (0x403CE000, "overlaps loader IRAM"),
        (0x3FCB0000, None),  # below what the bootloader uses (its IRAM aliases too): fine
        (0x3FCC0000, "overlaps loader IRAM"),  # DRAM alias of the loader's IRAM
        (0x600C0000, "bad load address range"),
    ],
)
def test_segment_over_bootloader_memory_refused(
    firmware: Build, load_addr: int, reason: str | None
) -> None:
    app = bytearray(firmware.app_bin.read_bytes())
    hdr = _padding_segment(bytes(app))
    length = struct.unpack_from("<I", app, hdr + 4)[0]
    struct.pack_into("<I", app, hdr, load_addr)
    out = _boot_with_app(firmware, _rehash(app))
    if reason is None:
        assert "fw-test 1.0.0 up" in out
        return
    n = re.search(rf"segment (\d): paddr=\w+ vaddr={load_addr:08x}", out)
    assert n is not None
    assert (
        f"esp_image: Segment {n.group(1)} 0x{load_addr:08x}-0x{load_addr + length:08x} "
        f"invalid: {reason}\r\n"
    ) in out
    assert re.search(REFUSED, out, re.S)


def test_checksum_failure_message(firmware: Build) -> None:
    app = bytearray(firmware.app_bin.read_bytes())
    end = _checksum_end(bytes(app))
    app[end - 1] ^= 0x5A
    stored = app[end - 1]
    out = _boot_with_app(firmware, _rehash(app))
    calc = stored ^ 0x5A
    assert f"esp_image: Checksum failed. Calculated 0x{calc:x} read 0x{stored:x}\r\n" in out


def test_hash_failure_message(firmware: Build) -> None:
    app = bytearray(firmware.app_bin.read_bytes())
    app[_checksum_end(bytes(app)) + 31] ^= 0x01  # the appended digest itself
    out = _boot_with_app(firmware, bytes(app))
    assert re.search(r"E \(\d+\) esp_image: Image hash failed - image is corrupt\r\n", out)
    assert re.search(REFUSED, out, re.S)


def test_load_address_rules() -> None:
    problem = boot.load_address_problem
    assert problem(0x3FC88000, 0x3FC90000) is None  # app DRAM
    assert problem(0x40380000, 0x40390000) is None  # app IRAM
    assert problem(0x50000000, 0x50000100) is None  # RTC fast memory
    # IRAM whose DRAM alias is the bootloader's stack
    assert problem(0x403D8000, 0x403D9000) == "overlaps bootloader stack"
    assert problem(0x3FCD9000, 0x3FCDA000) == "overlaps bootloader stack"
    assert problem(0x3FC70000, 0x3FC80100) == "bad load address range"
    # the bootloader's static data, below the stack's 32 KiB headroom
    assert problem(0x3FCD5800, 0x3FCD6000) == "overlaps bootloader data"
