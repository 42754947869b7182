"""Can this layout go onto this board? Checked before the first byte is written.

Pure functions over a `ValidatedLayout` and what esptool found on the board:
the chip (the ROM refuses a bootloader for another chip, and esptool finds
out half way), the chip revision against each image header's
`min_chip_rev_full` / `max_chip_rev_full` (as ESP-IDF's bootloader checks
them: the bootloader image against its minimum, each app against both), and
flash encryption (an encrypted region is never written in plaintext). Each
returns None or one line saying what is wrong; nothing has been written then.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fbuild_watch.errors import FbuildError
from fbuild_watch.image.chips import chips, normalize_chip
from fbuild_watch.image.esp_image import EspImage
from fbuild_watch.image.layout import APP, BOOTLOADER, Region, ValidatedLayout


@dataclass(frozen=True)
class BoardFacts:
    """What esptool found on the board (see `board_facts`)."""

    chip: str  # esptool's name ("esp32c3") or CHIP_NAME ("ESP32-C3")
    revision: tuple[int, int] | None = None  # (major, minor); None: not readable
    flash_encryption: bool | None = None  # None: not known
    # eFuse DISABLE_WAFER_VERSION_MAJOR: the bootloader skips the maximum check
    ignore_max_revision: bool = False

    @property
    def revision_full(self) -> int | None:
        return None if self.revision is None else self.revision[0] * 100 + self.revision[1]


def _rev(full: int) -> str:
    return f"v{full // 100}.{full % 100}"


def _where(layout: ValidatedLayout) -> str:
    src = layout.layout.source
    return str(src) if src is not None else "the layout"


def check_board(layout: ValidatedLayout, board: BoardFacts) -> str | None:
    """None if every image may run on `board`; else one line (chip first,
    then each image's revision limits, as ESP-IDF's bootloader checks)."""
    want = layout.layout.chip
    try:
        have = normalize_chip(board.chip).name
    except FbuildError:
        have = board.chip
    if have != want:
        pretty = chips()[want].pretty_name if want in chips() else want
        got = chips()[have].pretty_name if have in chips() else board.chip
        return (
            f"{_where(layout)}: the layout is for {pretty} ({want}) but the board is an "
            f"{got}; nothing was written"
        )
    rev = board.revision_full
    if rev is None:
        return None
    for name, image in sorted(layout.images.items()):
        region = layout.layout.region(name)
        problem = _revision_problem(name, image, rev, board.ignore_max_revision)
        if problem is not None:
            where = region.where if region is not None else name
            return f"{where}: {problem}; nothing was written"
    return None


def _revision_problem(name: str, image: EspImage, rev: int, ignore_max: bool) -> str | None:
    is_app = name == APP or name.startswith(APP + ":")
    if name != BOOTLOADER and not is_app:
        return None
    what = "the bootloader" if name == BOOTLOADER else "the app"
    if image.min_rev_full > rev:
        return (
            f"{what} needs chip revision >= {_rev(image.min_rev_full)} but the board is "
            f"{_rev(rev)} (ESP-IDF's bootloader would refuse to boot it)"
        )
    # the maximum applies to apps only, and not when the eFuse says to skip it
    if is_app and image.max_rev_set and rev > image.max_rev_full and not ignore_max:
        return (
            f"{what} supports chip revisions up to {_rev(image.max_rev_full)} but the board is "
            f"{_rev(rev)} (ESP-IDF's bootloader would refuse to boot it)"
        )
    return None


def check_encryption(
    layout: ValidatedLayout,
    *,
    can_encrypt: bool,
    board_encrypted: bool | None = None,
    encrypted: frozenset[int] | None = None,
) -> str | None:
    """Regions the build marks encrypted (`"encrypted": "true"` in
    flasher_args.json, development-mode flash encryption) are never written
    in plaintext: None when the deploy can write them encrypted (what
    esptool `--encrypt-files` does) or there are none; else one line. A board
    whose flash encryption is on (`board_encrypted`) gets nothing in
    plaintext that the build meant encrypted, nor a build made without
    flash encryption. `encrypted`: offsets the resolved settings mark too
    (fbuild.toml, the command line), on top of the layout's."""
    offsets = layout.layout.settings.encrypted | (encrypted or frozenset())
    secret = [r for r in layout.layout.regions if r.offset in offsets]
    if secret and not can_encrypt:
        names = ", ".join(r.name for r in secret)
        return (
            f"{_where(layout)}: {names} must be written encrypted (flash encryption is on in "
            "this build) and fbuild does not write encrypted flash; flash with "
            "`idf.py encrypted-flash` (nothing was written)"
        )
    if board_encrypted and not secret:
        return (
            f"{_where(layout)}: the board has flash encryption enabled but this build marks no "
            "region to be written encrypted: written in plaintext it would not boot "
            "(nothing was written)"
        )
    return None


def plaintext_regions(layout: ValidatedLayout) -> list[Region]:
    """The regions a deploy may write as they are."""
    secret = layout.layout.settings.encrypted
    return [r for r in layout.layout.regions if r.offset not in secret]


def board_facts(esp: Any) -> BoardFacts:
    """BoardFacts from a connected esptool ESPLoader (ROM or stub). What
    cannot be read (secure download mode, a ROM without the register) is
    None: the checks then skip it rather than guess."""
    chip = str(getattr(esp, "CHIP_NAME", "")) or "unknown"
    revision = None
    if not getattr(esp, "secure_download_mode", False):
        try:
            revision = (int(esp.get_major_chip_version()), int(esp.get_minor_chip_version()))
        except Exception:  # esptool raises NotImplementedInROMError, FatalError...
            revision = None
    encrypted = None
    try:
        encrypted = bool(esp.get_flash_encryption_enabled())
    except Exception:
        encrypted = None
    return BoardFacts(chip=chip, revision=revision, flash_encryption=encrypted)


__all__ = ["BoardFacts", "board_facts", "check_board", "check_encryption", "plaintext_regions"]
