"""Real build outputs of public projects (tests/data/projects/, see each
README) made loadable: the JSON and text files are the projects' own; the
binaries they name are synthesized here (valid ESP images for the right chip,
a partition table with an app partition where each app goes, erased OTA
data), since the bytes of someone else's firmware are not needed to check
offsets, files, chips and settings."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import struct
from pathlib import Path, PurePosixPath, PureWindowsPath

from fbuild_watch.image.chips import chips, normalize_chip
from fbuild_watch.image.esp_image import APP_DESC_MAGIC
from fbuild_watch.image.partitions import Partition, build_partition_table

PROJECTS = Path(__file__).parent / "data" / "projects"


def app_desc(project: str, version: str = "1.0", idf: str = "v5.3") -> bytes:
    """esp_app_desc_t as ESP-IDF lays it out (256 bytes)."""
    head = struct.pack(
        "<II8s32s32s16s16s32s32s",
        APP_DESC_MAGIC, 0, b"", version.encode(), project.encode(),
        b"12:00:00", b"Jan  1 2026", idf.encode(), hashlib.sha256(project.encode()).digest(),
    )  # fmt: skip
    return head.ljust(256, b"\0")


def make_image(
    chip: str,
    segments: list[tuple[int, bytes]] | None = None,
    *,
    min_rev_full: int = 0,
    max_rev_full: int = 0xFFFF,
    entry: int = 0x40380000,
) -> bytes:
    """A valid ESP image (esp_image_header_t, extended header, segments,
    checksum, appended SHA-256) for `chip`."""
    info = normalize_chip(chip)
    segs = segments or [(0x40380000, b"\x13\x00\x00\x00" * 16)]
    out = bytearray(struct.pack("<BBBBI", 0xE9, len(segs), 2, 0x20, entry))
    # wp_pin, drive settings, chip id, min_rev, min/max_rev_full, reserved, hash_appended
    out += struct.pack("<B3sHBHH4sB", 0xEE, b"\0\0\0", info.image_chip_id, min_rev_full // 100,
                       min_rev_full, max_rev_full, b"\0" * 4, 1)  # fmt: skip
    checksum = 0xEF
    for addr, raw in segs:
        data = raw.ljust((len(raw) + 3) & ~3, b"\0")
        out += struct.pack("<II", addr, len(data)) + data
        for b in data:
            checksum ^= b
    pad = 15 - (len(out) % 16)
    out += b"\0" * pad + bytes([checksum])
    out += hashlib.sha256(out).digest()
    return bytes(out)


def drom_start(chip: str) -> int:
    lo, _hi = chips()[normalize_chip(chip).name].drom_ranges[0]
    return lo


def app_image(chip: str, project: str = "fixture", **kwargs: int) -> bytes:
    """An app whose first DROM segment starts with its descriptor."""
    drom = drom_start(chip) + 0x20
    return make_image(chip, [(drom, app_desc(project)), (0x40380000, b"\x13" * 64)], **kwargs)


def partition_table(app_offsets: list[int], flash_size: int = 4 << 20) -> bytes:
    parts = [Partition("nvs", 1, 2, 0x9000, 0x4000, 0)]
    for i, off in enumerate(sorted(app_offsets)):
        size = min(0x100000, flash_size - off)
        subtype = 0 if i == 0 and len(app_offsets) == 1 else 0x10 + i
        parts.append(Partition("factory" if subtype == 0 else f"ota_{i}", 0, subtype, off, size, 0))
    return build_partition_table(parts)


def _file_for(rel: str, base: Path) -> Path:
    windows = "\\" in rel or re.match(r"^[A-Za-z]:", rel) is not None
    name = (PureWindowsPath(rel) if windows else PurePosixPath(rel)).name
    path = Path(rel)
    if windows or path.is_absolute():
        return base / name  # where fbuild looks for a file built on another machine
    return base / path


def _kind(name: str) -> str:
    low = name.lower()
    if "bootloader" in low:
        return "bootloader"
    if "partition" in low:
        return "partition-table"
    if low in ("boot_app0.bin", "ota_data_initial.bin"):
        return "otadata"
    if low.endswith((".ino.bin", "firmware.bin")):
        return "app"
    return "other"


def synthesize(
    files: list[tuple[int, Path, str]], chip: str, *, flash_size: int = 4 << 20, **rev: int
) -> None:
    """Write each (offset, path, kind) a layout names."""
    apps = [off for off, _p, kind in files if kind == "app"]
    for _off, path, kind in files:
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "bootloader":
            path.write_bytes(make_image(chip, [(0x40380400, b"\x13" * 64)], **rev))
        elif kind == "app":
            path.write_bytes(app_image(chip, path.stem, **rev))
        elif kind == "partition-table":
            path.write_bytes(partition_table(apps, flash_size))
        else:
            path.write_bytes(b"\xff" * 0x2000)


def materialize(name: str, dest: Path, *, chip: str | None = None, **rev: int) -> Path:
    """Copy fixture `name` to `dest` and write the binaries its layout
    files name; returns `dest`."""
    shutil.copytree(PROJECTS / name, dest, ignore=shutil.ignore_patterns("README.md"))
    for fa in dest.rglob("flasher_args.json"):
        doc = json.loads(fa.read_text())
        named = {v["offset"]: k for k, v in doc.items() if isinstance(v, dict) and "offset" in v}
        c = chip or doc["extra_esptool_args"]["chip"]
        size = doc.get("flash_settings", {}).get("flash_size", "4MB")
        flash = int(size[:-2]) << 20 if size.endswith("MB") else 4 << 20
        files = []
        for off_text, rel in doc["flash_files"].items():
            kind = named.get(off_text, "other").replace("partition_table", "partition-table")
            files.append((int(off_text, 16), fa.parent / rel, kind))
        synthesize(files, c, flash_size=flash, **rev)
    for idedata in dest.rglob("idedata.json"):
        doc = json.loads(idedata.read_text())
        extra = doc["extra"]
        files = [
            (
                int(i["offset"], 16),
                _file_for(i["path"], idedata.parent),
                _kind(Path(i["path"]).name),
            )
            for i in extra["flash_images"]
        ]
        prog = _file_for(doc["prog_path"], idedata.parent)
        files.append(
            (int(extra.get("application_offset", "0x10000"), 16), prog.with_suffix(".bin"), "app")
        )
        synthesize(files, chip or _chip_of(idedata), **rev)
    for flash_args in dest.rglob("flash_args"):
        if (flash_args.parent / "flasher_args.json").exists():
            continue  # ESP-IDF's: its flasher_args.json made the files
        tokens = flash_args.read_text().split()
        pairs = [(int(t, 16), tokens[i + 1]) for i, t in enumerate(tokens) if t.startswith("0x")]
        files = [(off, flash_args.parent / rel, _kind(rel)) for off, rel in pairs]
        synthesize(files, chip or _chip_of(flash_args), **rev)
    return dest


def _chip_of(path: Path) -> str:
    """The chip of a PlatformIO env or an Arduino export, from its name."""
    text = str(path).lower()
    for name in sorted(chips(), key=len, reverse=True):
        if name in text.replace("-", ""):
            return name
    return "esp32"


def expected_command(name: str, which: str = "expected-esptool.txt") -> list[str]:
    """The last non-comment line of a fixture's expected esptool command."""
    lines = [
        ln for ln in (PROJECTS / name / which).read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]  # fmt: skip
    return lines[-1].split()
