"""Chip facts the image model needs: image chip ids and default offsets.

Taken from esptool's own target classes so a new esptool release brings its
new chips with it.
"""

from __future__ import annotations

from dataclasses import dataclass

from esptool.targets import CHIP_DEFS

from fbuild_watch.errors import ConfigError


@dataclass(frozen=True)
class Chip:
    name: str  # esptool's lowercase name, e.g. "esp32c3"
    image_chip_id: int
    bootloader_offset: int


CHIPS: dict[str, Chip] = {
    name: Chip(name, cls.IMAGE_CHIP_ID, cls.BOOTLOADER_FLASH_OFFSET)
    for name, cls in CHIP_DEFS.items()
    if name != "esp8266"  # no extended header, no chip id: not supported
}

CHIP_BY_ID: dict[int, Chip] = {c.image_chip_id: c for c in CHIPS.values()}

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
        return CHIPS[key]
    except KeyError:
        known = ", ".join(sorted(CHIPS))
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
