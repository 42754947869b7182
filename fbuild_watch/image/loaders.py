"""Loading a `FlashLayout` from what build systems leave behind.

Every loader reads each file's bytes exactly once, here, so the layout holds
a snapshot that later steps validate and flash.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from fbuild_watch.errors import ConfigError, ImageError
from fbuild_watch.image.chips import (
    DEFAULT_APP_OFFSET,
    OTADATA_OFFSET,
    PARTITION_TABLE_OFFSET,
    Chip,
    chip_by_id,
    format_size,
    normalize_chip,
    parse_flash_size,
)
from fbuild_watch.image.layout import APP, BOOTLOADER, OTADATA, PARTITION_TABLE, FlashLayout, Region
from fbuild_watch.image.settings import FlashSettings, reset_mode


class LayoutFileError(ImageError):
    """A build system's file that is there but malformed (a bad field, bad
    JSON): a configuration error, exit status 2. Missing build outputs stay
    plain ImageErrors (exit 1: run the build first)."""

    exit_code = 2


# flasher_args.json entry names -> our region names ("partition_table" is
# how ESP-IDF <= 4.3 spelled it)
_ENTRY_NAMES = {
    "bootloader": BOOTLOADER,
    "app": APP,
    "partition-table": PARTITION_TABLE,
    "partition_table": PARTITION_TABLE,
    "otadata": OTADATA,
}
_FLASHER_ARGS_FIELDS = ("write_flash_args", "flash_settings", "flash_files", "extra_esptool_args")


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


def load_json(path: Path, *, what: str = "layout") -> Any:
    raw = read_regular(path, what=what, limit=MAX_JSON_BYTES)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LayoutFileError(f"cannot read: {exc}", source=path) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise LayoutFileError(
            f"malformed JSON at line {exc.lineno}: {exc.msg}", source=path
        ) from None


_load_json = load_json


def _parse_offset(value: object, *, source: Path, field: str = "") -> int:
    try:
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        if isinstance(value, str):
            number = int(value, 0)
            if number >= 0:
                return number
    except ValueError:
        pass
    where = f"{field}: " if field else ""
    raise LayoutFileError(f"{where}bad flash offset {value!r}", source=source)


def local_file(text: str, base: Path) -> Path:
    """A path a build system wrote, as a file on this machine. Relative
    paths are relative to `base`. PlatformIO's idedata.json holds absolute
    paths of the machine that built it (a Windows path, a container's
    /project): when that file is not here but one of the same name is in
    `base`, that one is meant (the project was moved or built elsewhere)."""
    windows = "\\" in text or re.match(r"^[A-Za-z]:[/\\]", text) is not None
    name = (PureWindowsPath(text) if windows else PurePosixPath(text)).name
    if not windows:
        path = Path(text)
        path = path if path.is_absolute() else base / path
        if path.exists():
            return path
    moved = base / name
    if name and moved.exists():
        return moved
    # a Windows path cannot be a file here: the same name in `base` is the
    # best the errors can name
    return moved if windows and name else path


def _chip_from_images(regions: Iterable[Region]) -> Chip | None:
    """The chip id in the extended header of the first ESP image we find."""
    for r in regions:
        if len(r.data) >= 24 and r.data[0] == 0xE9:
            chip_id = int.from_bytes(r.data[12:14], "little")
            if chip_id in chip_by_id():
                return chip_by_id()[chip_id]
    return None


def _resolve_chip(chip: str | None, regions: Sequence[Region], source: Path) -> str:
    if chip:
        return normalize_chip(chip).name
    found = _chip_from_images(regions)
    if found is None:
        raise ImageError("cannot tell the chip; pass it explicitly (--chip)", source=source)
    return found.name


def load_flasher_args(path: Path, *, chip: str | None = None) -> FlashLayout:
    """ESP-IDF `build/flasher_args.json`; file paths are relative to it.
    The layout carries the build's flashing settings: `extra_esptool_args`
    (before, after, stub, chip) and the regions marked `"encrypted": "true"`."""
    path = Path(path)
    doc = _load_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("flash_files"), dict):
        raise LayoutFileError(
            "no 'flash_files' object (not an ESP-IDF flasher_args.json?)", source=path
        )
    base = path.parent
    settings = doc.get("flash_settings") or {}
    if not isinstance(settings, dict):
        raise LayoutFileError("flash_settings must be an object", source=path)
    size_text = settings.get("flash_size", "detect")
    flash_size = _flash_size(size_text, path, "flash_settings.flash_size")
    flash_mode = _opt_str(settings, "flash_mode", path, "flash_settings")
    flash_freq = _opt_str(settings, "flash_freq", path, "flash_settings")

    names: dict[int, str] = {}
    encrypted: set[int] = set()
    warnings: list[str] = []
    for key, entry in doc.items():
        if key in _FLASHER_ARGS_FIELDS:
            continue
        if isinstance(entry, dict) and "offset" in entry:
            offset = _parse_offset(entry["offset"], source=path, field=f"{key}.offset")
            names[offset] = _ENTRY_NAMES.get(str(key), str(key))
            flag = entry.get("encrypted", "false")
            if flag in ("true", True):
                encrypted.add(offset)
            elif flag not in ("false", False):
                raise LayoutFileError(
                    f'{key}.encrypted must be "true" or "false", got {flag!r}', source=path
                )
        elif key.startswith("encrypted-") and isinstance(entry, dict):
            # an offset -> file section of an encrypted-* flash target:
            # everything in it is written encrypted
            for off_text in entry:
                encrypted.add(_parse_offset(off_text, source=path, field=f"{key}[{off_text!r}]"))
        else:
            warnings.append(f"{path}: field '{key}' is not known to fbuild; ignored")

    regions = []
    for off_text, rel in doc["flash_files"].items():
        offset = _parse_offset(off_text, source=path, field=f"flash_files[{off_text!r}]")
        if not isinstance(rel, str) or not rel:
            raise LayoutFileError(f"flash_files[{off_text!r}] is not a path", source=path)
        file = base / rel
        name = names.get(offset, f"extra@0x{offset:x}")
        regions.append(Region(name, offset, _read(file, what=name, flash_size=flash_size), file))
    layered = _extra_esptool_args(doc.get("extra_esptool_args"), path)
    if encrypted:
        layered = replace(
            layered,
            encrypted=frozenset(encrypted),
            origins=(*layered.origins, ("encrypted", f'{path} "encrypted": "true" entries')),
        )
    layered = replace(layered, warnings=(*layered.warnings, *warnings))
    return FlashLayout(
        chip=_resolve_chip(chip or layered.chip, regions, path),
        regions=tuple(regions),
        flash_mode=flash_mode,
        flash_size=flash_size,
        flash_freq=flash_freq,
        source=path,
        settings=layered,
    )


def _extra_esptool_args(extra: object, path: Path) -> FlashSettings:
    """`extra_esptool_args` {after, before, stub, chip} (ESP-IDF >= 4.2):
    what `idf.py flash` passes to esptool besides the files."""
    if extra is None:
        return FlashSettings()
    field = "extra_esptool_args"
    if not isinstance(extra, dict):
        raise LayoutFileError(f"{field} must be an object", source=path)
    values: dict[str, Any] = {}
    origins: list[tuple[str, str]] = []
    warnings: list[str] = []
    for key, value in extra.items():
        where = f"{field}.{key}"
        try:
            if key in ("before", "after"):
                values[key] = reset_mode(value, kind=key, where=where)
            elif key == "stub":
                if not isinstance(value, bool):
                    raise ConfigError(f"{where} must be true or false, got {value!r}")
                values[key] = value
            elif key == "chip":
                if not isinstance(value, str):
                    raise ConfigError(f"{where} must be a string, got {value!r}")
                values[key] = normalize_chip(value).name
            else:
                warnings.append(f"{path}: {where} is not supported by fbuild; ignored")
                continue
        except ConfigError as exc:
            problem = exc.problem if exc.problem.startswith(where) else f"{where}: {exc.problem}"
            raise LayoutFileError(problem, source=path) from None
        origins.append((key, f"{path} {where}"))
    return FlashSettings(**values, warnings=tuple(warnings), origins=tuple(origins))


def _flash_size(value: object, path: Path, field: str) -> int | None:
    try:
        return parse_flash_size(str(value))
    except ConfigError as exc:
        raise LayoutFileError(f"{field}: {exc.problem}", source=path) from None


def _opt_str(doc: dict[str, Any], key: str, path: Path, section: str) -> str | None:
    value = doc.get(key)
    if value is None or isinstance(value, str):
        return value
    raise LayoutFileError(f"{section}.{key} must be a string, got {value!r}", source=path)


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
    """PlatformIO `idedata.json` (`pio run -t idedata`): `extra.flash_images`
    (bootloader, partitions, boot_app0 and any extra images) and the app at
    `extra.application_offset`."""
    path = Path(path)
    doc = _load_json(path)
    extra = doc.get("extra") if isinstance(doc, dict) else None
    prog = doc.get("prog_path") if isinstance(doc, dict) else None
    if not isinstance(extra, dict) or not isinstance(prog, str):
        raise LayoutFileError(
            "no 'extra' / 'prog_path' (not a PlatformIO idedata.json?)", source=path
        )
    app_offset = _parse_offset(
        extra.get("application_offset", DEFAULT_APP_OFFSET),
        source=path,
        field="extra.application_offset",
    )
    images = extra.get("flash_images")
    images = [] if images is None else images
    if not isinstance(images, list):
        raise LayoutFileError("extra.flash_images must be a list", source=path)
    regions: list[Region] = []
    for i, item in enumerate(images):
        if not isinstance(item, dict) or "offset" not in item or "path" not in item:
            raise LayoutFileError(f"extra.flash_images[{i}] needs 'offset' and 'path'", source=path)
        if not isinstance(item["path"], str):
            raise LayoutFileError(f"extra.flash_images[{i}].path must be a string", source=path)
        offset = _parse_offset(item["offset"], source=path, field=f"extra.flash_images[{i}].offset")
        file = local_file(item["path"], path.parent)
        name = _name_for_file(file, offset, app_offset)
        regions.append(Region(name, offset, _read(file, what=name), file))
    elf = local_file(prog, path.parent)
    stem, dot, ext = prog.rpartition(".")
    app_bin = local_file(
        (stem if dot and not re.search(r"[/\\]", ext) else prog) + ".bin", path.parent
    )
    regions.append(Region(APP, app_offset, _read(app_bin, what=APP), app_bin))
    return FlashLayout(
        chip=_resolve_chip(chip, regions, path),
        regions=tuple(regions),
        source=path,
        elf=elf,
    )


def parse_flash_args(text: str, *, source: Path) -> tuple[list[str], list[tuple[int, str]]]:
    """An esptool argument file as ESP-IDF and arduino-esp32 write them
    (`flash_args`): (the options, the (offset, file) pairs)."""
    tokens = text.split()
    options: list[str] = []
    pairs: list[tuple[int, str]] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.startswith("-"):
            options.append(tok)
            if tok.replace("_", "-") in _VALUED_WRITE_OPTIONS and i + 1 < len(tokens):
                i += 1
                options.append(tokens[i])
        else:
            if i + 1 >= len(tokens):
                raise LayoutFileError(f"offset {tok} has no file", source=source)
            pairs.append((_parse_offset(tok, source=source), tokens[i + 1]))
            i += 1
        i += 1
    return options, pairs


_VALUED_WRITE_OPTIONS = ("--flash-mode", "--flash-freq", "--flash-size", "-fm", "-ff", "-fs")


def _write_option(options: list[str], *names: str) -> str | None:
    for i, tok in enumerate(options[:-1]):
        if tok.replace("_", "-") in names:
            return options[i + 1]
    return None


def _arduino_name(file: str) -> str | None:
    name = file.lower()
    if name.endswith("bootloader.bin"):
        return BOOTLOADER
    if name.endswith(".partitions.bin") or name.endswith("partitions.bin"):
        return PARTITION_TABLE
    if name == "boot_app0.bin" or "ota_data" in name:
        return OTADATA
    if name.endswith(".ino.bin") or name.endswith(".cpp.bin"):
        return APP
    return None


def load_arduino_dir(build_dir: Path, *, chip: str | None = None) -> FlashLayout:
    """An arduino-cli `--build-path` or an exported build (`build/<fqbn>/`,
    `--export-binaries`, Arduino IDE's "Export compiled binary"). The
    build's own `flash_args` (arduino-esp32 >= 3) is the layout when it is
    there, extra images (tinyuf2, models) included; otherwise `X.ino.bin`,
    `X.ino.bootloader.bin`, `X.ino.partitions.bin` and `boot_app0.bin`."""
    build_dir = Path(build_dir)
    flash_args = build_dir / "flash_args"
    if flash_args.is_file():
        return _arduino_from_flash_args(flash_args, chip)
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


def _arduino_from_flash_args(path: Path, chip: str | None) -> FlashLayout:
    try:
        text = read_regular(path, what="flash_args", limit=MAX_JSON_BYTES).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LayoutFileError(f"cannot read: {exc}", source=path) from None
    options, pairs = parse_flash_args(text, source=path)
    if not pairs:
        raise LayoutFileError("no 'offset file' pairs", source=path)
    size_text = _write_option(options, "--flash-size", "-fs")
    flash_size = _flash_size(size_text or "keep", path, "--flash-size")
    regions: list[Region] = []
    app: Path | None = None
    for offset, rel in pairs:
        file = path.parent / rel
        name = _arduino_name(rel) or f"extra@0x{offset:x}"
        if name == APP:
            app = file
        if any(r.name == name for r in regions):
            name = f"{name}@0x{offset:x}"
        regions.append(Region(name, offset, _read(file, what=name, flash_size=flash_size), file))
    elf = app.with_suffix(".elf") if app is not None else None
    return FlashLayout(
        chip=_resolve_chip(chip, regions, path),
        regions=tuple(regions),
        flash_mode=_write_option(options, "--flash-mode", "-fm"),
        flash_size=flash_size,
        flash_freq=_write_option(options, "--flash-freq", "-ff"),
        source=path.parent,
        elf=elf if elf is not None and elf.exists() else None,
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
    # `idf.py -B DIR` build dirs and Arduino exports (build/<vendor.arch.board>/)
    found = sorted(
        p.parent
        for p in [*path.glob("*/flasher_args.json"), *path.glob("build/*/*.ino.bin")]
        if not p.parent.name.startswith(".")
    )
    found = sorted(set(found))
    if len(found) == 1:
        only = found[0]
        return only / "flasher_args.json" if (only / "flasher_args.json").is_file() else only
    if len(found) > 1:
        names = ", ".join(str(f.relative_to(path)) for f in found)
        raise ImageError(f"several flash layouts found ({names}); name one", source=path)
    raise ImageError(
        "no flash layout found (looked for flasher_args.json, build/flasher_args.json, "
        "idedata.json, .pio/build/*/idedata.json, *.ino.bin, */flasher_args.json and "
        "build/*/*.ino.bin)",
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
