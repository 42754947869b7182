"""Before the first byte is written: the board's chip and revision against
the layout and its image headers, and encrypted regions never in plaintext.
The app descriptor on every chip esptool knows."""

from __future__ import annotations

from pathlib import Path

import pytest
from esptool.cmds import detect_chip
from esptool.targets import CHIP_DEFS

from fbuild_watch.build.backends import detect_backend
from fbuild_watch.deploy.compat import (
    BoardFacts,
    board_facts,
    check_board,
    check_encryption,
    plaintext_regions,
)
from fbuild_watch.image import APP, BOOTLOADER, PARTITION_TABLE, FlashLayout, Region
from fbuild_watch.image.chips import chips
from fbuild_watch.image.esp_image import parse_image
from fbuild_watch.image.layout import ValidatedLayout
from fbuild_watch.image.settings import FlashSettings
from fbuild_watch.sim.regs import ChipIdentity
from tests.projectkit import app_desc, app_image, make_image, materialize, partition_table
from tests.simkit import new_board, open_port


def _layout(chip: str, *, boot_rev: tuple[int, int] = (0, 0xFFFF),
            app_rev: tuple[int, int] = (0, 0xFFFF)) -> ValidatedLayout:  # fmt: skip
    boot = make_image(
        chip, [(0x40380400, b"\x13" * 64)], min_rev_full=boot_rev[0], max_rev_full=boot_rev[1]
    )
    app = app_image(chip, "rev", min_rev_full=app_rev[0], max_rev_full=app_rev[1])
    regions = (
        Region(BOOTLOADER, chips()[chip].bootloader_offset, boot),
        Region(PARTITION_TABLE, 0x8000, partition_table([0x10000])),
        Region(APP, 0x10000, app),
    )
    return FlashLayout(chip, regions, source=Path("/p/build/flasher_args.json")).validate()


def test_a_layout_for_another_chip_is_refused_before_writing() -> None:
    layout = _layout("esp32s3")
    assert check_board(layout, BoardFacts("ESP32-C3", (0, 4))) == (
        "/p/build/flasher_args.json: the layout is for ESP32-S3 (esp32s3) but the board is an "
        "ESP32-C3; nothing was written"
    )
    assert check_board(layout, BoardFacts("esp32s3", (0, 2))) is None


@pytest.mark.parametrize(
    ("boot_rev", "app_rev", "board", "problem"),
    [
        # the esptool test image esp32c3_header_min_rev.bin needs v2.55 ...
        ((0, 0xFFFF), (255, 0xFFFF), (0, 4),
         "app@0x10000: the app needs chip revision >= v2.55 but the board is v0.4"),
        ((3, 0xFFFF), (0, 0xFFFF), (0, 2),
         "bootloader@0x0: the bootloader needs chip revision >= v0.3 but the board is v0.2"),
        ((0, 0xFFFF), (0, 99), (1, 1),
         "app@0x10000: the app supports chip revisions up to v0.99 but the board is v1.1"),
        ((0, 99), (0, 0xFFFF), (1, 1), None),  # the maximum is never checked for bootloaders
        ((0, 0xFFFF), (0, 0), (3, 1), None),  # 0 means no maximum (ESP-IDF's IS_FIELD_SET)
        ((0, 0xFFFF), (4, 199), (0, 4), None),  # exactly the minimum
    ],
)  # fmt: skip
def test_revision_limits_as_the_esp_idf_bootloader_checks_them(
    boot_rev: tuple[int, int], app_rev: tuple[int, int], board: tuple[int, int], problem: str | None
) -> None:
    layout = _layout("esp32c3", boot_rev=boot_rev, app_rev=app_rev)
    found = check_board(layout, BoardFacts("esp32c3", board))
    if problem is None:
        assert found is None
    else:
        assert found is not None and found.startswith(problem), found
        assert found.endswith("; nothing was written") and "\n" not in found


def test_the_maximum_is_skipped_when_the_efuse_says_so() -> None:
    layout = _layout("esp32c3", app_rev=(0, 99))
    assert check_board(layout, BoardFacts("esp32c3", (1, 1), ignore_max_revision=True)) is None
    assert check_board(layout, BoardFacts("esp32c3", None)) is None  # unreadable: not guessed


def test_board_facts_from_esptool_on_the_virtual_board() -> None:
    """What the real esptool reads from the board feeds the check: a v1.1
    board refuses an app built for revisions up to v0.99."""
    board = new_board(identity=ChipIdentity(major_rev=1, minor_rev=1))
    port = open_port(board)
    try:
        esp = detect_chip(port, 115200, "default-reset")
        facts = board_facts(esp)
    finally:
        port.close()
    assert (facts.chip, facts.revision, facts.flash_encryption) == ("ESP32-C3", (1, 1), False)
    problem = check_board(_layout("esp32c3", app_rev=(0, 99)), facts)
    assert problem is not None and "up to v0.99 but the board is v1.1" in problem
    assert check_board(_layout("esp32s3"), facts) is not None


def test_encrypted_regions_are_never_written_in_plaintext(tmp_path: Path) -> None:
    project = materialize("idf-v5.0.2-esp32s3-encrypted", tmp_path / "p")
    layout = detect_backend(project).load_layout().validate()
    problem = check_encryption(layout, can_encrypt=False)
    assert problem == (
        f"{project.resolve() / 'build' / 'flasher_args.json'}: bootloader, partition-table, app "
        "must be written encrypted (flash encryption is on in this build) and fbuild does not "
        "write encrypted flash; flash with `idf.py encrypted-flash` (nothing was written)"
    )
    assert check_encryption(layout, can_encrypt=True) is None
    assert [r.name for r in plaintext_regions(layout)] == ["storage"]
    plain = _layout("esp32s3")
    assert check_encryption(plain, can_encrypt=False) is None
    on = check_encryption(plain, can_encrypt=False, board_encrypted=True)
    assert on is not None and "the board has flash encryption enabled" in on


def test_only_flasher_args_marks_encryption() -> None:
    layout = FlashLayout(
        "esp32c3",
        _layout("esp32c3").layout.regions,
        settings=FlashSettings(encrypted=frozenset({0x10000})),
    ).validate()
    assert [r.name for r in layout.encrypted_regions()] == [APP]


@pytest.mark.parametrize("chip", sorted(chips()))
def test_app_descriptor_on_every_chip(chip: str) -> None:
    """The first segment in the chip's DROM (esptool's MEMORY_MAP) holds
    esp_app_desc_t: S2, C5, C6, P4 and the rest included."""
    desc = parse_image(app_image(chip, f"app-{chip}")).app_desc
    assert desc is not None and desc.project_name == f"app-{chip}"


@pytest.mark.parametrize(
    ("chip", "load_addr"),
    [  # the first segment of real apps (tests/data/projects/*/README.md)
        ("esp32s2", 0x3F000020), ("esp32c6", 0x42060020), ("esp32c5", 0x42170020),
        ("esp32p4", 0x400A0020), ("esp32c3", 0x3C020020),
    ],
)  # fmt: skip
def test_app_descriptor_where_real_builds_put_it(chip: str, load_addr: int) -> None:
    image = make_image(chip, [(load_addr, app_desc("real")), (0x40800000, b"\x13" * 16)])
    desc = parse_image(image).app_desc
    assert desc is not None and desc.project_name == "real"


def test_drom_ranges_are_esptools() -> None:
    for name, chip in chips().items():
        esptool_drom = tuple(
            (lo, hi) for lo, hi, kind in CHIP_DEFS[name].MEMORY_MAP if kind == "DROM"
        )
        assert chip.drom_ranges == esptool_drom and chip.drom_ranges, name
