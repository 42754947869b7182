"""Every validation rule of the flash image model fires on a real image."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest

from fbuild_watch.errors import ImageError
from fbuild_watch.image import (
    APP,
    FlashLayout,
    Partition,
    Region,
    load_flasher_args,
    parse_image,
    parse_partition_table,
)
from fbuild_watch.image.partitions import build_partition_table
from tests.fwkit import DEFAULT_PARTITIONS, Build


def _layout(build: Build) -> FlashLayout:
    return load_flasher_args(build.flasher_args)


def _rehash(img: bytearray) -> bytearray:
    """Fix the appended SHA-256 after a deliberate edit (to isolate a rule)."""
    parsed_len = len(img) - 32
    img[parsed_len:] = hashlib.sha256(bytes(img[:parsed_len])).digest()
    return img


def test_real_build_validates(firmware: Build) -> None:
    v = _layout(firmware).validate()
    assert v.app_image is not None
    assert v.app_image.chip_id == 5
    assert v.app_image.app_desc is not None
    assert v.app_image.app_desc.project_name == "fw-test"
    assert v.partition_table is not None
    assert [p.label for p in v.partition_table.partitions] == ["nvs", "phy_init", "factory"]


def test_error_is_one_line_naming_the_file(fw_copy: Build) -> None:
    data = bytearray(fw_copy.app_bin.read_bytes())
    data[0] = 0x00
    fw_copy.app_bin.write_bytes(data)
    with pytest.raises(ImageError) as exc:
        _layout(fw_copy).validate()
    text = str(exc.value)
    assert "\n" not in text
    assert text.startswith(str(fw_copy.app_bin))
    assert "bad magic byte 0x00" in text


def test_bytes_are_snapshotted_at_load(fw_copy: Build) -> None:
    layout = _layout(fw_copy)
    fw_copy.app_bin.write_bytes(b"\x00" * 100)  # the build rewrites the file later
    validated = layout.validate()  # still the bytes that were read
    assert validated.layout.region(APP) is not None
    assert validated.layout.region(APP).data[0] == 0xE9  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b.__setitem__(1, 0), "bad segment count 0"),
        (lambda b: b.__setitem__(1, 17), "bad segment count 17"),
        (lambda b: b.__setitem__(23, 7), "bad hash_appended"),
    ],
)
def test_header_rules(firmware: Build, mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    data = bytearray(firmware.app_bin.read_bytes())
    mutate(data)
    with pytest.raises(ImageError, match=message):
        parse_image(bytes(data))


def test_segment_length_past_data(firmware: Build) -> None:
    data = bytearray(firmware.app_bin.read_bytes())
    struct.pack_into("<I", data, 24 + 4, 0x7FFFFF)  # first segment's length
    with pytest.raises(ImageError, match="runs past the end|truncated"):
        parse_image(bytes(data))


def test_truncated_image(firmware: Build) -> None:
    data = firmware.app_bin.read_bytes()
    for cut in (10, 30, len(data) // 2, len(data) - 10):
        with pytest.raises(ImageError):
            parse_image(data[:cut])


def test_bad_checksum_byte(firmware: Build) -> None:
    data = bytearray(firmware.app_bin.read_bytes())
    data[-33] ^= 0xFF  # checksum byte sits right before the digest
    _rehash(data)
    with pytest.raises(ImageError, match="bad checksum byte"):
        parse_image(bytes(data))


def test_wrong_appended_sha256(firmware: Build) -> None:
    data = bytearray(firmware.app_bin.read_bytes())
    data[-1] ^= 0x01
    with pytest.raises(ImageError, match="appended SHA-256 does not match"):
        parse_image(bytes(data))


def test_segment_data_flip_caught(firmware: Build) -> None:
    data = bytearray(firmware.app_bin.read_bytes())
    data[0x30] ^= 0x10  # inside the first segment
    with pytest.raises(ImageError, match="checksum|SHA-256"):
        parse_image(bytes(data))


def test_wrong_chip(firmware: Build) -> None:
    with pytest.raises(ImageError, match="image is for esp32c3, not esp32s3"):
        parse_image(firmware.app_bin.read_bytes(), expect_chip_id=9)
    layout = _layout(firmware)
    wrong = FlashLayout("esp32s3", layout.regions, flash_size=4 << 20)
    with pytest.raises(ImageError, match=r"bootloader.bin: image is for esp32c3, not esp32s3"):
        wrong.validate()


def test_regions_overlap(firmware: Build) -> None:
    layout = _layout(firmware)
    app = layout.region(APP)
    assert app is not None
    extra = Region("extra", 0x8000 + 0x1000 * 0, b"\x00" * 0x10, Path("x.bin"))
    # the partition table covers 0x8000..0x8C00; a region at 0x8000 overlaps it
    bad = FlashLayout("esp32c3", (*layout.regions, extra))
    with pytest.raises(ImageError, match="overlaps"):
        bad.validate()


def test_region_past_flash_size(firmware: Build) -> None:
    layout = _layout(firmware)
    big = Region("data", 0x3FF000, b"\x00" * 0x2000, Path("big.bin"))
    bad = FlashLayout("esp32c3", (*layout.regions, big), flash_size=4 << 20)
    with pytest.raises(
        ImageError, match=r"big.bin: region 0x3ff000..0x401000 extends past the 4MB"
    ):
        bad.validate()


def test_unaligned_region(firmware: Build) -> None:
    bad = FlashLayout("esp32c3", (Region("data", 0x300010, b"\x00" * 16, Path("d.bin")),))
    with pytest.raises(ImageError, match="not aligned to a 4 KiB"):
        bad.validate()


def test_partition_table_bad_magic(fw_copy: Build) -> None:
    data = bytearray(fw_copy.partitions_bin.read_bytes())
    data[32] = 0x12  # second entry's magic
    fw_copy.partitions_bin.write_bytes(data)
    with pytest.raises(ImageError, match=r"partition-table.bin: bad partition entry magic"):
        _layout(fw_copy).validate()


def test_partition_table_bad_md5(fw_copy: Build) -> None:
    data = bytearray(fw_copy.partitions_bin.read_bytes())
    data[3 * 32 + 20] ^= 0xFF  # inside the MD5 entry's digest
    fw_copy.partitions_bin.write_bytes(data)
    with pytest.raises(ImageError, match="MD5 entry"):
        _layout(fw_copy).validate()


def test_partition_table_content_change_caught_by_md5(fw_copy: Build) -> None:
    data = bytearray(fw_copy.partitions_bin.read_bytes())
    data[3 * 32 - 20] ^= 0x01  # the factory partition's size, table MD5 stale
    fw_copy.partitions_bin.write_bytes(data)
    with pytest.raises(ImageError, match="MD5"):
        _layout(fw_copy).validate()


def test_overlapping_partitions() -> None:
    table = build_partition_table(
        [
            Partition("nvs", 1, 2, 0x9000, 0x8000, 0),
            Partition("factory", 0, 0, 0x10000, 0x100000, 0),
        ]
    )
    with pytest.raises(ImageError, match="'nvs' .* and 'factory' .* overlap"):
        parse_partition_table(table)


def test_partition_past_flash() -> None:
    table = build_partition_table([Partition("factory", 0, 0, 0x10000, 0x400000, 0)])
    with pytest.raises(ImageError, match="ends past the 4 MB flash"):
        parse_partition_table(table, flash_size=4 << 20)


def test_app_not_at_app_partition(fw_copy: Build) -> None:
    parts = [*DEFAULT_PARTITIONS[:2], Partition("factory", 0, 0, 0x20000, 0x100000, 0)]
    fw_copy.partitions_bin.write_bytes(build_partition_table(parts))
    with pytest.raises(
        ImageError,
        match=r"app.bin: app at 0x10000 does not start at an app partition \(app partitions: 'factory' at 0x20000\)",
    ):
        _layout(fw_copy).validate()


def test_app_larger_than_partition(fw_copy: Build) -> None:
    parts = [*DEFAULT_PARTITIONS[:2], Partition("factory", 0, 0, 0x10000, 0x10000, 0)]
    fw_copy.partitions_bin.write_bytes(build_partition_table(parts))
    with pytest.raises(ImageError, match="larger than partition 'factory' \\(65536 bytes\\)"):
        _layout(fw_copy).validate()


def test_missing_file_named(fw_copy: Build) -> None:
    fw_copy.app_bin.unlink()
    with pytest.raises(ImageError, match=r"app.bin: app file is missing"):
        _layout(fw_copy)


def test_malformed_flasher_args(fw_copy: Build) -> None:
    fw_copy.flasher_args.write_text("{ not json")
    with pytest.raises(ImageError, match=r"flasher_args.json: malformed JSON at line 1"):
        _layout(fw_copy)
    fw_copy.flasher_args.write_text(json.dumps({"flash_files": {"zz": "app.bin"}}))
    with pytest.raises(ImageError, match="bad flash offset 'zz'"):
        _layout(fw_copy)
