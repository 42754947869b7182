"""ESP-IDF partition table binary (the 0xC00 bytes at 0x8000)."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from itertools import pairwise

from fbuild_watch.errors import ImageError

ENTRY = struct.Struct("<2sBBLL16sL")
ENTRY_MAGIC = b"\xaa\x50"
MD5_MAGIC = b"\xeb\xeb"
TABLE_MAX = 0xC00
APP_TYPE = 0x00
DATA_TYPE = 0x01
APP_ALIGN = 0x10000

_APP_SUBTYPES = {0x00: "factory", 0x20: "test", **{0x10 + i: f"ota_{i}" for i in range(16)}}
_DATA_SUBTYPES = {
    0x00: "ota",
    0x01: "phy",
    0x02: "nvs",
    0x03: "coredump",
    0x04: "nvs_keys",
    0x05: "efuse",
    0x06: "undefined",
    0x80: "esphttpd",
    0x81: "fat",
    0x82: "spiffs",
    0x83: "littlefs",
}


@dataclass(frozen=True)
class Partition:
    label: str
    type: int
    subtype: int
    offset: int
    size: int
    flags: int

    @property
    def end(self) -> int:
        return self.offset + self.size

    @property
    def is_app(self) -> bool:
        return self.type == APP_TYPE

    @property
    def type_name(self) -> str:
        return {APP_TYPE: "app", DATA_TYPE: "data"}.get(self.type, f"0x{self.type:02x}")

    @property
    def subtype_name(self) -> str:
        names = _APP_SUBTYPES if self.is_app else _DATA_SUBTYPES if self.type == DATA_TYPE else {}
        return names.get(self.subtype, f"0x{self.subtype:02x}")

    def as_dict(self) -> dict[str, object]:
        return {
            "label": self.label,
            "type": self.type_name,
            "subtype": self.subtype_name,
            "offset": self.offset,
            "size": self.size,
            "encrypted": bool(self.flags & 1),
        }


@dataclass(frozen=True)
class PartitionTable:
    partitions: tuple[Partition, ...]
    has_md5: bool

    def app_partitions(self) -> list[Partition]:
        return [p for p in self.partitions if p.is_app]

    def boot_app(self) -> Partition | None:
        """What the second-stage bootloader picks with no otadata: factory, else
        the first OTA slot (ESP-IDF's bootloader_utility order)."""
        apps = self.app_partitions()
        for p in apps:
            if p.subtype == 0x00:
                return p
        ota = sorted((p for p in apps if 0x10 <= p.subtype <= 0x1F), key=lambda p: p.subtype)
        if ota:
            return ota[0]
        return apps[0] if apps else None

    def find_at(self, offset: int) -> Partition | None:
        for p in self.partitions:
            if p.offset == offset:
                return p
        return None


def parse_partition_table(data: bytes, *, flash_size: int | None = None) -> PartitionTable:
    """Parse and validate; raises ImageError with the problem."""
    if len(data) < ENTRY.size:
        raise ImageError(f"partition table too short ({len(data)} bytes)")
    parts: list[Partition] = []
    has_md5 = False
    pos = 0
    limit = min(len(data), TABLE_MAX)
    while pos + ENTRY.size <= limit:
        raw = data[pos : pos + ENTRY.size]
        if raw[:2] == MD5_MAGIC:
            want = raw[16:32]
            got = hashlib.md5(data[:pos]).digest()
            if want != got:
                raise ImageError(
                    f"partition table MD5 entry {want.hex()} does not match {got.hex()}"
                )
            has_md5 = True
            pos += ENTRY.size
            continue
        if raw == b"\xff" * ENTRY.size:
            break
        magic, ptype, subtype, offset, size, label_raw, flags = ENTRY.unpack(raw)
        if magic != ENTRY_MAGIC:
            raise ImageError(f"bad partition entry magic {magic.hex()} at table offset 0x{pos:x}")
        label = label_raw.split(b"\0", 1)[0].decode("utf-8", "replace")
        parts.append(Partition(label, ptype, subtype, offset, size, flags))
        pos += ENTRY.size
    else:  # no end marker: only acceptable for a table file trimmed short
        if limit == TABLE_MAX:
            raise ImageError("partition table has no end marker within 0xC00 bytes")
    if not parts:
        raise ImageError("partition table has no entries")

    ordered = sorted(parts, key=lambda p: p.offset)
    for p in ordered:
        if p.size == 0:
            raise ImageError(f"partition '{p.label}' has size 0")
        if p.is_app and p.offset % APP_ALIGN:
            raise ImageError(f"app partition '{p.label}' at 0x{p.offset:x} is not 64 KiB aligned")
        if flash_size is not None and p.end > flash_size:
            raise ImageError(
                f"partition '{p.label}' (0x{p.offset:x}+0x{p.size:x}) ends past the "
                f"{flash_size >> 20} MB flash"
            )
    for a, b in pairwise(ordered):
        if b.offset < a.end:
            raise ImageError(
                f"partitions '{a.label}' (0x{a.offset:x}..0x{a.end:x}) and "
                f"'{b.label}' (0x{b.offset:x}..0x{b.end:x}) overlap"
            )
    return PartitionTable(tuple(parts), has_md5)


def build_partition_table(parts: list[Partition]) -> bytes:
    """Binary table with MD5 entry, padded with 0xFF to 0xC00 (for the example
    build, the virtual board and tests)."""
    body = b"".join(
        ENTRY.pack(
            ENTRY_MAGIC,
            p.type,
            p.subtype,
            p.offset,
            p.size,
            p.label.encode()[:16].ljust(16, b"\0"),
            p.flags,
        )
        for p in parts
    )
    body += MD5_MAGIC + b"\xff" * 14 + hashlib.md5(body).digest()
    return body.ljust(TABLE_MAX, b"\xff")
