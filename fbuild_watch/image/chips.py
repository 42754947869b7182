"""Chip facts the image model needs: image chip ids and default offsets.

Taken from esptool's own target classes so a new esptool release brings its
new chips with it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from fbuild_watch.errors import ConfigError


@dataclass(frozen=True)
class Chip:
    name: str  # esptool's lowercase name, e.g. "esp32c3"
    image_chip_id: int
    bootloader_offset: int
    # Address windows the chip maps flash data (rodata) into, from esptool's
    # MEMORY_MAP: the app descriptor is the start of the first segment loaded
    # into one of them (what `esptool image-info` reads).
    drom_ranges: tuple[tuple[int, int], ...] = ()
    pretty_name: str = ""  # esptool's CHIP_NAME, e.g. "ESP32-C3"

    def in_drom(self, addr: int) -> bool:
        return any(lo <= addr < hi for lo, hi in self.drom_ranges)


def _drom_ranges(cls: type) -> tuple[tuple[int, int], ...]:
    return tuple((lo, hi) for lo, hi, kind in cls.MEMORY_MAP if kind == "DROM")  # type: ignore[attr-defined]


@functools.cache
def chips() -> dict[str, Chip]:
    """Every chip esptool knows, by name. Read on first use: esptool's
    targets take ~70 ms to import, which the loop's start should not pay."""
    from esptool.targets import CHIP_DEFS  # noqa: PLC0415

    return {
        name: Chip(
            name,
            cls.IMAGE_CHIP_ID,
            cls.BOOTLOADER_FLASH_OFFSET,
            _drom_ranges(cls),
            cls.CHIP_NAME,
        )
        for name, cls in CHIP_DEFS.items()
        if name != "esp8266"  # no extended header, no chip id: not supported
    }


@functools.cache
def chip_by_id() -> dict[int, Chip]:
    """By the image header's chip id."""
    return {c.image_chip_id: c for c in chips().values()}


# Upper nibble of image header byte 3 (esptool's ESP32ROM.FLASH_SIZES).
FLASH_SIZE_BY_NIBBLE: dict[int, int] = {
    0: 1 << 20,
    1: 2 << 20,
    2: 4 << 20,
    3: 8 << 20,
    4: 16 << 20,
    5: 32 << 20,
    6: 64 << 20,
    7: 128 << 20,
}

PARTITION_TABLE_OFFSET = 0x8000
DEFAULT_APP_OFFSET = 0x10000
OTADATA_OFFSET = 0xE000
SECTOR_SIZE = 0x1000


def normalize_chip(name: str) -> Chip:
    """Accept esptool spellings ("ESP32-C3", "esp32c3") and return the chip."""
    key = name.lower().replace("-", "").replace("_", "")
    try:
        return chips()[key]
    except KeyError:
        known = ", ".join(sorted(chips()))
        raise ConfigError(f"unknown chip {name!r} (known: {known})") from None


def parse_flash_size(text: str) -> int | None:
    """'4MB' -> bytes; 'detect'/'keep' -> None (unknown until the board says)."""
    t = text.strip().upper()
    if t in ("DETECT", "KEEP", ""):
        return None
    units = {"KB": 1 << 10, "MB": 1 << 20}
    for suffix, mult in units.items():
        if t.endswith(suffix) and t[: -len(suffix)].isdigit():
            return int(t[: -len(suffix)]) * mult
    raise ConfigError(f"bad flash size {text!r} (expected e.g. '4MB', 'detect' or 'keep')")


def format_size(n: int) -> str:
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20}MB"
    return f"{n >> 10}KB"
