"""Loading a `FlashLayout` from what build systems leave behind.

Every loader reads each file's bytes exactly once, here, so the layout holds
a snapshot that later steps validate and flash.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from fbuild_watch.errors import ImageError
from fbuild_watch.image.chips import (
    CHIP_BY_ID,
    DEFAULT_APP_OFFSET,
    OTADATA_OFFSET,
    PARTITION_TABLE_OFFSET,
    Chip,
    format_size,
    normalize_chip,
    parse_flash_size,
)
from fbuild_watch.image.layout import APP, BOOTLOADER, OTADATA, PARTITION_TABLE, FlashLayout, Region

_FLASHER_ARGS_KINDS = (BOOTLOADER, APP, PARTITION_TABLE, OTADATA)


# No ESP flash image is larger than the flash; when the layout does not say
# how big that is, 16 MiB (the largest flash of most ESP32 modules) caps a
# file before it is read: an image path pointing at /dev/zero or a runaway
# build output is refused, not read until memory runs out.
MAX_IMAGE_BYTES = 16 << 20
MAX_JSON_BYTES = 16 << 20  # a layout description is a few KiB


def read_regular(path: Path, *, what: str, limit: int, why: str | None = None) -> bytes:
    """The bytes of a regular file of at most `limit` bytes, else ImageError
    naming the file and the problem. Opened without blocking (a FIFO would
    wait for a writer) and read at most `limit` + 1 bytes (a file that grows
    while it is read is refused too). `why` names the limit in the error."""
    cap = why or f"{limit} bytes"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ImageError(f"{what} file is missing", source=path) from None
    except OSError as exc:
        raise ImageError(f"cannot read {what} file: {exc.strerror}", source=path) from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ImageError(f"{what} file is not a regular file", source=path)
        if st.st_size > limit:
            raise ImageError(
                f"{what} file is {st.st_size} bytes, larger than {cap}",
                source=path,
            )
        try:
            data = f.read(limit + 1)
        except OSError as exc:
            raise ImageError(f"cannot read {what} file: {exc.strerror}", source=path) from None
    if len(data) > limit:
        raise ImageError(f"{what} file grew past {cap} while it was read", source=path)
    return data


def _read(path: Path, *, what: str, flash_size: int | None = None) -> bytes:
    """An image file, capped at the flash size (MAX_IMAGE_BYTES when unknown)."""
    if flash_size is not None:
        why = f"the {format_size(flash_size)} flash"
    else:
        why = f"{MAX_IMAGE_BYTES >> 20} MiB (the cap while the flash size is unknown)"
    return read_regular(path, what=what, limit=flash_size or MAX_IMAGE_BYTES, why=why)


def _load_json(path: Path) -> Any:
    raw = read_regular(path, what="layout", limit=MAX_JSON_BYTES)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ImageError(f"cannot read: {exc}", source=path) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ImageError(f"malformed JSON at line {exc.lineno}: {exc.msg}", source=path) from None


def _parse_offset(value: object, *, source: Path) -> int:
    try:
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            return int(value, 0)
    except ValueError:
        pass
    raise ImageError(f"bad flash offset {value!r}", source=source)


def _chip_from_images(regions: Iterable[Region]) -> Chip | None:
    """The chip id in the extended header of the first ESP image we find."""
    for r in regions:
        if len(r.data) >= 24 and r.data[0] == 0xE9:
            chip_id = int.from_bytes(r.data[12:14], "little")
            if chip_id in CHIP_BY_ID:
                return CHIP_BY_ID[chip_id]
    return None


def _resolve_chip(chip: str | None, regions: Sequence[Region], source: Path) -> str:
    if chip:
        return normalize_chip(chip).name
    found = _chip_from_images(regions)
    if found is None:
        raise ImageError("cannot tell the chip; pass it explicitly (--chip)", source=source)
    return found.name


def load_flasher_args(path: Path, *, chip: str | None = None) -> FlashLayout:
    """ESP-IDF `build/flasher_args.json`; file paths are relative to it."""
    path = Path(path)
    doc = _load_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("flash_files"), dict):
        raise ImageError("no 'flash_files' object (not an ESP-IDF flasher_args.json?)", source=path)
    base = path.parent
    settings = doc.get("flash_settings") or {}
    flash_size = parse_flash_size(str(settings.get("flash_size", "detect")))
    names: dict[int, str] = {}
    for kind in _FLASHER_ARGS_KINDS:
        entry = doc.get(kind)
        if isinstance(entry, dict) and "offset" in entry:
            names[_parse_offset(entry["offset"], source=path)] = kind
    regions = []
    for off_text, rel in doc["flash_files"].items():
        offset = _parse_offset(off_text, source=path)
        if not isinstance(rel, str):
            raise ImageError(f"flash_files[{off_text!r}] is not a path", source=path)
        file = base / rel
        name = names.get(offset, f"extra@0x{offset:x}")
        regions.append(Region(name, offset, _read(file, what=name, flash_size=flash_size), file))
    extra = doc.get("extra_esptool_args") or {}
    return FlashLayout(
        chip=_resolve_chip(chip or extra.get("chip"), regions, path),
        regions=tuple(regions),
        flash_mode=settings.get("flash_mode"),
        flash_size=flash_size,
        flash_freq=settings.get("flash_freq"),
        source=path,
    )


def _name_for_file(file: Path, offset: int, app_offset: int | None) -> str:
    stem = file.name.lower()
    if offset == app_offset:
        return APP
    if "bootloader" in stem:
        return BOOTLOADER
    if "partition" in stem:
        return PARTITION_TABLE
    if stem == "boot_app0.bin" or "ota_data" in stem:
        return OTADATA
    return f"extra@0x{offset:x}"


def load_idedata(path: Path, *, chip: str | None = None) -> FlashLayout:
    """PlatformIO `idedata.json` (`pio run -t idedata`)."""
    path = Path(path)
    doc = _load_json(path)
    extra = doc.get("extra") if isinstance(doc, dict) else None
    prog = doc.get("prog_path") if isinstance(doc, dict) else None
    if not isinstance(extra, dict) or not isinstance(prog, str):
        raise ImageError("no 'extra' / 'prog_path' (not a PlatformIO idedata.json?)", source=path)
    app_offset = _parse_offset(extra.get("application_offset", DEFAULT_APP_OFFSET), source=path)
    regions: list[Region] = []
    for item in extra.get("flash_images") or []:
        if not isinstance(item, dict) or "offset" not in item or "path" not in item:
            raise ImageError("flash_images entries need 'offset' and 'path'", source=path)
        offset = _parse_offset(item["offset"], source=path)
        file = Path(item["path"])
        if not file.is_absolute():
            file = path.parent / file
        name = _name_for_file(file, offset, app_offset)
        regions.append(Region(name, offset, _read(file, what=name), file))
    elf = Path(prog)
    app_bin = elf.with_suffix(".bin")
    regions.append(Region(APP, app_offset, _read(app_bin, what=APP), app_bin))
    return FlashLayout(
        chip=_resolve_chip(chip, regions, path),
        regions=tuple(regions),
        source=path,
        elf=elf,
    )


def load_arduino_dir(build_dir: Path, *, chip: str | None = None) -> FlashLayout:
    """arduino-cli `--build-path`: `X.ino.bin`, `X.ino.bootloader.bin`,
    `X.ino.partitions.bin` and `boot_app0.bin` when present."""
    build_dir = Path(build_dir)
    apps = sorted(
        p
        for p in build_dir.glob("*.ino.bin")
        if not p.name.endswith((".bootloader.bin", ".partitions.bin", ".merged.bin"))
    )
    if len(apps) != 1:
        found = ", ".join(p.name for p in apps) or "none"
        raise ImageError(f"expected one *.ino.bin, found {found}", source=build_dir)
    app = apps[0]
    stem = app.name[: -len(".bin")]
    boot = build_dir / f"{stem}.bootloader.bin"
    parts = build_dir / f"{stem}.partitions.bin"
    regions: list[Region] = []
    boot_data = _read(boot, what=BOOTLOADER)
    boot_region = Region(BOOTLOADER, 0, boot_data, boot)
    resolved = _resolve_chip(chip, [boot_region], build_dir)
    boot_offset = normalize_chip(resolved).bootloader_offset
    regions.append(Region(BOOTLOADER, boot_offset, boot_data, boot))
    regions.append(
        Region(PARTITION_TABLE, PARTITION_TABLE_OFFSET, _read(parts, what=PARTITION_TABLE), parts)
    )
    boot_app0 = build_dir / "boot_app0.bin"
    if boot_app0.exists():
        regions.append(Region(OTADATA, OTADATA_OFFSET, _read(boot_app0, what=OTADATA), boot_app0))
    regions.append(Region(APP, DEFAULT_APP_OFFSET, _read(app, what=APP), app))
    elf = app.with_suffix(".elf")
    return FlashLayout(
        chip=resolved,
        regions=tuple(regions),
        source=build_dir,
        elf=elf if elf.exists() else None,
    )


def load_pairs(
    pairs: Sequence[tuple[int, Path]],
    *,
    chip: str | None = None,
    app_offset: int = DEFAULT_APP_OFFSET,
    flash_size: int | None = None,
) -> FlashLayout:
    """Explicit `(offset, path)` pairs, as on an esptool command line."""
    regions = []
    for offset, raw_path in pairs:
        file = Path(raw_path)
        name = _name_for_file(file, offset, app_offset)
        if name.startswith("extra@") and offset == PARTITION_TABLE_OFFSET:
            name = PARTITION_TABLE
        regions.append(Region(name, offset, _read(file, what=name, flash_size=flash_size), file))
    src = Path(pairs[0][1]).parent if pairs else Path()
    return FlashLayout(
        chip=_resolve_chip(chip, regions, src),
        regions=tuple(regions),
        flash_size=flash_size,
        source=None,
    )


def find_layout_file(path: Path) -> Path:
    """Where a layout lives under a file, build dir or project dir."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise ImageError("no such file or directory", source=path)
    candidates = [
        path / "flasher_args.json",
        path / "build" / "flasher_args.json",
        path / "idedata.json",
    ]
    candidates += sorted(path.glob(".pio/build/*/idedata.json"))
    for c in candidates:
        if c.is_file():
            return c
    for d in (path, path / "build"):
        if d.is_dir() and any(d.glob("*.ino.bin")):
            return d
    raise ImageError(
        "no flash layout found (looked for flasher_args.json, build/flasher_args.json, "
        "idedata.json, .pio/build/*/idedata.json and *.ino.bin)",
        source=path,
    )


def load_layout(path: Path, *, chip: str | None = None) -> FlashLayout:
    """Load from a flasher_args.json, idedata.json, Arduino build dir or a
    project dir containing one of those."""
    found = find_layout_file(path)
    if found.is_dir():
        return load_arduino_dir(found, chip=chip)
    if found.name == "idedata.json":
        return load_idedata(found, chip=chip)
    if found.suffix == ".json":
        return load_flasher_args(found, chip=chip)
    raise ImageError("not a flasher_args.json, idedata.json or build directory", source=found)
