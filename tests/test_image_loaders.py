"""Layout loaders, hashes and sector digests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from fbuild_watch.errors import ImageError
from fbuild_watch.image import (
    APP,
    BOOTLOADER,
    OTADATA,
    PARTITION_TABLE,
    FlashLayout,
    Region,
    load_arduino_dir,
    load_flasher_args,
    load_idedata,
    load_layout,
    load_pairs,
)
from tests.fwkit import Build


def test_flasher_args(firmware: Build) -> None:
    layout = load_flasher_args(firmware.flasher_args)
    assert layout.chip == "esp32c3"
    assert layout.flash_size == 4 << 20
    assert layout.flash_mode == "dio"
    assert [(r.name, r.offset) for r in layout.regions] == [
        (BOOTLOADER, 0),
        (PARTITION_TABLE, 0x8000),
        (APP, 0x10000),
    ]
    assert layout.region(APP).data == firmware.app_bin.read_bytes()  # type: ignore[union-attr]


def test_flasher_args_chip_from_images_when_absent(fw_copy: Build) -> None:
    doc = json.loads(fw_copy.flasher_args.read_text())
    del doc["extra_esptool_args"]
    doc["flash_settings"]["flash_size"] = "detect"
    fw_copy.flasher_args.write_text(json.dumps(doc))
    layout = load_flasher_args(fw_copy.flasher_args)
    assert layout.chip == "esp32c3"
    assert layout.flash_size is None


def test_idedata(firmware: Build, tmp_path: Path) -> None:
    env = tmp_path / ".pio" / "build" / "esp32-c3-devkitm-1"
    env.mkdir(parents=True)
    shutil.copy(firmware.app_elf, env / "firmware.elf")
    shutil.copy(firmware.app_bin, env / "firmware.bin")
    shutil.copy(firmware.bootloader_bin, env / "bootloader.bin")
    shutil.copy(firmware.partitions_bin, env / "partitions.bin")
    (env / "idedata.json").write_text(
        json.dumps(
            {
                "prog_path": str(env / "firmware.elf"),
                "extra": {
                    "application_offset": "0x10000",
                    "flash_images": [
                        {"offset": "0x0000", "path": str(env / "bootloader.bin")},
                        {"offset": "0x8000", "path": str(env / "partitions.bin")},
                    ],
                },
            }
        )
    )
    layout = load_layout(tmp_path)  # project dir -> .pio/build/*/idedata.json
    assert layout.chip == "esp32c3"
    assert layout.elf == env / "firmware.elf"
    assert [(r.name, r.offset) for r in layout.regions] == [
        (BOOTLOADER, 0),
        (PARTITION_TABLE, 0x8000),
        (APP, 0x10000),
    ]
    layout.validate()
    assert load_idedata(env / "idedata.json").image_hash == layout.image_hash


def test_arduino_dir(firmware: Build, tmp_path: Path) -> None:
    shutil.copy(firmware.app_bin, tmp_path / "Blink.ino.bin")
    shutil.copy(firmware.app_elf, tmp_path / "Blink.ino.elf")
    shutil.copy(firmware.bootloader_bin, tmp_path / "Blink.ino.bootloader.bin")
    shutil.copy(firmware.partitions_bin, tmp_path / "Blink.ino.partitions.bin")
    (tmp_path / "boot_app0.bin").write_bytes(b"\xff" * 0x1000)
    (tmp_path / "Blink.ino.merged.bin").write_bytes(b"\x00")  # ignored
    layout = load_arduino_dir(tmp_path)
    assert [(r.name, r.offset) for r in layout.regions] == [
        (BOOTLOADER, 0),
        (PARTITION_TABLE, 0x8000),
        (OTADATA, 0xE000),
        (APP, 0x10000),
    ]
    assert layout.elf == tmp_path / "Blink.ino.elf"
    assert load_layout(tmp_path).image_hash == layout.image_hash


def test_arduino_dir_needs_one_app(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"expected one \*.ino.bin, found none"):
        load_arduino_dir(tmp_path)


def test_pairs(firmware: Build) -> None:
    layout = load_pairs(
        [
            (0x10000, firmware.app_bin),
            (0x0, firmware.bootloader_bin),
            (0x8000, firmware.partitions_bin),
        ]
    )
    assert [r.name for r in layout.regions] == [BOOTLOADER, PARTITION_TABLE, APP]
    assert layout.image_hash == load_flasher_args(firmware.flasher_args).image_hash


def test_no_layout_found(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="no flash layout found"):
        load_layout(tmp_path)


def test_image_hash_definition() -> None:
    import hashlib
    import struct

    a = Region("a", 0x1000, b"\x01\x02")
    b = Region("b", 0x0, b"\x03")
    layout = FlashLayout("esp32c3", (a, b))
    h = hashlib.sha256()
    for r in (b, a):  # offset order
        h.update(struct.pack("<IQ", r.offset, len(r.data)) + r.data)
    assert layout.image_hash == h.hexdigest()
    # same bytes from elsewhere -> same hash; moved region -> different hash
    assert FlashLayout("esp32c3", (b, a)).image_hash == layout.image_hash
    moved = FlashLayout("esp32c3", (Region("a", 0x2000, b"\x01\x02"), b))
    assert moved.image_hash != layout.image_hash


def test_sector_digests_pad_with_erased_bytes() -> None:
    data = b"\x11" * 0x1000 + b"\x22" * 10
    layout = FlashLayout("esp32c3", (Region("x", 0x20000, data),))
    digests = layout.sector_digests
    assert sorted(digests) == [0x20000, 0x21000]
    padded = FlashLayout("esp32c3", (Region("x", 0x20000, data + b"\xff" * (0x1000 - 10)),))
    assert padded.sector_digests == digests  # what the flash holds after the write
    changed = FlashLayout("esp32c3", (Region("x", 0x20000, b"\x11" * 0x1000 + b"\x23" * 10),))
    diff = [a for a in digests if digests[a] != changed.sector_digests[a]]
    assert diff == [0x21000]


def test_unknown_chip_is_config_error() -> None:
    from fbuild_watch.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown chip 'esp99'"):
        FlashLayout("esp99", ())
