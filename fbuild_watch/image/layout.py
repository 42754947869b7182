"""The flash layout: what is going to be written where, and whether it is safe.

A `FlashLayout` holds the bytes of every region in memory, read once when the
layout is loaded, so that what is validated is exactly what gets flashed even
if the build rewrites its output files afterwards. `validate()` is the only
way to obtain a `ValidatedLayout`, and deploy code accepts nothing else.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from itertools import pairwise
from pathlib import Path

from fbuild_watch.errors import ImageError
from fbuild_watch.image.chips import (
    SECTOR_SIZE,
    format_size,
    normalize_chip,
)
from fbuild_watch.image.esp_image import EspImage, parse_image
from fbuild_watch.image.partitions import PartitionTable, parse_partition_table
from fbuild_watch.image.settings import FlashSettings

BOOTLOADER = "bootloader"
PARTITION_TABLE = "partition-table"
OTADATA = "otadata"
APP = "app"
_IMAGE_KINDS = (BOOTLOADER, APP)


@dataclass(frozen=True)
class Region:
    """One contiguous write: a name, a flash offset and the exact bytes."""

    name: str
    offset: int
    data: bytes = field(repr=False)
    source: Path | None = None

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def end(self) -> int:
        return self.offset + len(self.data)

    @property
    def where(self) -> str:
        """How errors name this region: its file when it came from one."""
        return str(self.source) if self.source else f"{self.name}@0x{self.offset:x}"

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    def sectors(self) -> Iterator[tuple[int, bytes]]:
        """(flash address, 4 KiB of content) as the sector reads after the
        write: the ROM and stub erase whole sectors and pad with 0xFF."""
        for start in range(0, len(self.data), SECTOR_SIZE):
            chunk = self.data[start : start + SECTOR_SIZE]
            yield self.offset + start, chunk.ljust(SECTOR_SIZE, b"\xff")


def sector_digest(sector: bytes) -> bytes:
    # blake2b-128: the list is compared, never trusted across processes, and
    # blake2b is the fastest hash in hashlib on 4 KiB blocks.
    return hashlib.blake2b(sector, digest_size=16).digest()


@dataclass(frozen=True)
class FlashLayout:
    chip: str
    regions: tuple[Region, ...]
    flash_mode: str | None = None
    flash_size: int | None = None  # bytes; None = "detect"/"keep"
    flash_freq: str | None = None
    source: Path | None = None  # the file or directory it was loaded from
    elf: Path | None = None
    # What the build system says about flashing (reset modes, stub, baud,
    # port, encrypted regions...): its layer of the settings, see
    # image/settings.py. Not part of image_hash: the bytes are the image.
    settings: FlashSettings = field(default_factory=FlashSettings)

    def __post_init__(self) -> None:
        object.__setattr__(self, "chip", normalize_chip(self.chip).name)
        object.__setattr__(self, "regions", tuple(sorted(self.regions, key=lambda r: r.offset)))

    def region(self, name: str) -> Region | None:
        for r in self.regions:
            if r.name == name:
                return r
        return None

    @cached_property
    def image_hash(self) -> str:
        """SHA-256 over (offset u32 LE, length u64 LE, bytes) per region in
        offset order: identical builds give identical hashes."""
        h = hashlib.sha256()
        for r in self.regions:
            h.update(struct.pack("<IQ", r.offset, len(r.data)))
            h.update(r.data)
        return h.hexdigest()

    @cached_property
    def sector_digests(self) -> dict[int, bytes]:
        """Flash address of each 4 KiB sector the layout writes -> digest."""
        return {addr: sector_digest(sec) for r in self.regions for addr, sec in r.sectors()}

    @property
    def total_size(self) -> int:
        return sum(r.size for r in self.regions)

    def validate(self) -> ValidatedLayout:
        """Every rule that makes a layout unsafe to flash; raises ImageError
        naming the region's file (or name@offset) and the problem."""
        chip = normalize_chip(self.chip)
        _check_geometry(self.regions, self.flash_size)

        images: dict[str, EspImage] = {}
        for r in self.regions:
            if r.name in _IMAGE_KINDS or r.name.startswith(APP + ":"):
                try:
                    images[r.name] = parse_image(r.data, expect_chip_id=chip.image_chip_id)
                except ImageError as exc:
                    raise ImageError(exc.problem, source=r.where) from None

        table: PartitionTable | None = None
        pt = self.region(PARTITION_TABLE)
        if pt is not None:
            try:
                table = parse_partition_table(pt.data, flash_size=self.flash_size)
            except ImageError as exc:
                raise ImageError(exc.problem, source=pt.where) from None
            for r in self.regions:
                if r.name != APP and not r.name.startswith(APP + ":"):
                    continue
                part = table.find_at(r.offset)
                if part is None or not part.is_app:
                    raise ImageError(
                        f"app at 0x{r.offset:x} does not start at an app partition "
                        f"(app partitions: {_describe_apps(table)})",
                        source=r.where,
                    )
                if r.size > part.size:
                    raise ImageError(
                        f"app is {r.size} bytes, larger than partition '{part.label}' "
                        f"({part.size} bytes)",
                        source=r.where,
                    )
        return ValidatedLayout(self, images, table)


@dataclass(frozen=True)
class ValidatedLayout:
    """A layout that passed `FlashLayout.validate()`; the deploy path takes
    only this type, so nothing unvalidated can reach a board."""

    layout: FlashLayout
    images: dict[str, EspImage]
    partition_table: PartitionTable | None

    @property
    def image_hash(self) -> str:
        return self.layout.image_hash

    @property
    def app_image(self) -> EspImage | None:
        return self.images.get(APP)

    @property
    def settings(self) -> FlashSettings:
        return self.layout.settings

    def encrypted_regions(self) -> list[Region]:
        """Regions the build marks to be written encrypted (never in plaintext)."""
        return [r for r in self.layout.regions if r.offset in self.layout.settings.encrypted]


def _describe_apps(table: PartitionTable) -> str:
    apps = table.app_partitions()
    return ", ".join(f"'{p.label}' at 0x{p.offset:x}" for p in apps) or "none"


def _check_geometry(regions: Iterable[Region], flash_size: int | None) -> None:
    ordered = sorted(regions, key=lambda r: r.offset)
    for r in ordered:
        if r.size == 0:
            raise ImageError("region is empty", source=r.where)
        if r.offset % SECTOR_SIZE:
            raise ImageError(
                f"offset 0x{r.offset:x} is not aligned to a 4 KiB flash sector", source=r.where
            )
        if flash_size is not None and r.end > flash_size:
            raise ImageError(
                f"region 0x{r.offset:x}..0x{r.end:x} extends past the "
                f"{format_size(flash_size)} flash",
                source=r.where,
            )
    for a, b in pairwise(ordered):
        if b.offset < a.end:
            raise ImageError(
                f"overlaps {a.name} (0x{a.offset:x}..0x{a.end:x}) with {b.name} at 0x{b.offset:x}",
                source=b.where,
            )
