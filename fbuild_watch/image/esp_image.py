"""ESP application/bootloader image parsing and validation.

Parsing is esptool's (`esptool.bin_image`); this module turns its many
failure modes (FatalError, struct.error, RuntimeError, ...) into one
`ImageError` and adds the checks esptool leaves to the caller: the checksum
byte, the appended SHA-256 and the chip id.
"""

from __future__ import annotations

import hashlib
import io
import struct
from dataclasses import dataclass

from fbuild_watch.errors import ImageError
from fbuild_watch.image.chips import FLASH_SIZE_BY_NIBBLE, chip_by_id

ESP_IMAGE_MAGIC = 0xE9
APP_DESC_MAGIC = 0xABCD5432
# esp_app_desc_t: magic, secure_version, reserv1[2], version[32],
# project_name[32], time[16], date[16], idf_ver[32], app_elf_sha256[32], ...
_APP_DESC = struct.Struct("<II8s32s32s16s16s32s32s")
MAX_SEGMENTS = 16
# min/max_chip_rev_full value meaning "no limit" (ESP-IDF's IS_FIELD_SET)
REV_NOT_SET = (0, 0xFFFF)

FLASH_MODES = {0: "qio", 1: "qout", 2: "dio", 3: "dout", 4: "fast-read", 5: "slow-read"}


@dataclass(frozen=True)
class Segment:
    load_addr: int
    file_offset: int  # offset of the segment data inside the image
    length: int


@dataclass(frozen=True)
class AppDescriptor:
    version: str
    project_name: str
    time: str
    date: str
    idf_version: str
    elf_sha256: str  # hex

    def as_dict(self) -> dict[str, str]:
        return {
            "project_name": self.project_name,
            "version": self.version,
            "idf_version": self.idf_version,
            "compile_time": f"{self.date} {self.time}".strip(),
            "elf_sha256": self.elf_sha256,
        }


@dataclass(frozen=True)
class EspImage:
    chip_id: int
    entry: int
    flash_mode: str
    flash_size: int | None
    segments: tuple[Segment, ...]
    checksum: int
    sha256: str | None  # appended digest, hex, when hash_appended
    length: int  # bytes from header to end of digest (the meaningful part)
    app_desc: AppDescriptor | None
    # Extended header: the chip revisions (major * 100 + minor) the image
    # accepts; 0 / 0xFFFF mean no limit (esp_image_header_t).
    min_rev_full: int = 0
    max_rev_full: int = 0xFFFF

    @property
    def chip_name(self) -> str:
        chip = chip_by_id().get(self.chip_id)
        return chip.name if chip else f"chip id {self.chip_id}"

    @property
    def max_rev_set(self) -> bool:
        return self.max_rev_full not in REV_NOT_SET


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def parse_app_desc(data: bytes) -> AppDescriptor | None:
    if len(data) < _APP_DESC.size:
        return None
    magic, _sv, _r, ver, name, time_, date, idf, elf = _APP_DESC.unpack_from(data)
    if magic != APP_DESC_MAGIC:
        return None
    return AppDescriptor(
        version=_cstr(ver),
        project_name=_cstr(name),
        time=_cstr(time_),
        date=_cstr(date),
        idf_version=_cstr(idf),
        elf_sha256=elf.hex(),
    )


def parse_image(data: bytes, *, expect_chip_id: int | None = None) -> EspImage:
    """Parse and fully validate an ESP32-family image.

    Raises ImageError with the problem (no source; the caller adds it).
    """
    if len(data) < 24:
        raise ImageError(f"image too short ({len(data)} bytes)")
    if data[0] != ESP_IMAGE_MAGIC:
        raise ImageError(f"bad magic byte 0x{data[0]:02x} (expected 0xe9)")
    nseg = data[1]
    if nseg == 0 or nseg > MAX_SEGMENTS:
        raise ImageError(f"bad segment count {nseg} (1..{MAX_SEGMENTS})")
    if data[23] not in (0, 1):
        raise ImageError(f"bad hash_appended byte 0x{data[23]:02x} in extended header")
    # esptool parses (imported here: the loop's start should not pay for it)
    from esptool.bin_image import ESP32FirmwareImage  # noqa: PLC0415
    from esptool.loader import ESPLoader  # noqa: PLC0415

    try:
        img = ESP32FirmwareImage(io.BytesIO(data))
    except Exception as exc:  # esptool raises FatalError, struct.error, ...
        raise ImageError(_describe_esptool_error(exc)) from None

    segments: list[Segment] = []
    for seg in img.segments:
        segments.append(Segment(seg.addr, seg.file_offs + 8, len(seg.data)))

    end_of_checksum = getattr(img, "data_length", None)
    stored_checksum = img.checksum
    calc = ESPLoader.ESP_CHECKSUM_MAGIC
    for seg in img.segments:
        calc = ESPLoader.checksum(seg.data, calc)
    if stored_checksum != calc:
        raise ImageError(f"bad checksum byte 0x{stored_checksum:02x} (computed 0x{calc:02x})")

    digest_hex: str | None = None
    if img.append_digest:
        assert end_of_checksum is not None
        stored = img.stored_digest
        if len(stored) != 32:
            raise ImageError("appended SHA-256 is truncated")
        if stored != hashlib.sha256(data[:end_of_checksum]).digest():
            raise ImageError("appended SHA-256 does not match the image contents")
        digest_hex = stored.hex()
        length = end_of_checksum + 32
    else:
        length = _checksum_end(segments)

    if expect_chip_id is not None and img.chip_id != expect_chip_id:
        got = chip_by_id().get(img.chip_id)
        want = chip_by_id().get(expect_chip_id)
        raise ImageError(
            f"image is for {got.name if got else f'chip id {img.chip_id}'}, "
            f"not {want.name if want else f'chip id {expect_chip_id}'}"
        )

    # esptool image-info's rule: the first segment loaded into the chip's
    # DROM window (its own memory map) starts with esp_app_desc_t.
    app_desc = None
    chip = chip_by_id().get(img.chip_id)
    for seg in img.segments:
        if chip is not None and chip.in_drom(seg.addr):
            app_desc = parse_app_desc(seg.data)
            break

    return EspImage(
        chip_id=img.chip_id,
        entry=img.entrypoint,
        flash_mode=FLASH_MODES.get(img.flash_mode, f"0x{img.flash_mode:02x}"),
        flash_size=FLASH_SIZE_BY_NIBBLE.get((img.flash_size_freq >> 4) & 0xF),
        segments=tuple(segments),
        checksum=stored_checksum,
        sha256=digest_hex,
        length=length,
        app_desc=app_desc,
        min_rev_full=img.min_rev_full,
        max_rev_full=img.max_rev_full,
    )


def _checksum_end(segments: list[Segment]) -> int:
    end = max((s.file_offset + s.length for s in segments), default=24)
    return (end | 15) + 1  # the checksum is the last byte of a 16-byte block


def _describe_esptool_error(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, struct.error | TypeError | IndexError):
        return f"image is truncated ({text})"
    if text.startswith("End of file reading segment"):
        return f"segment runs past the end of the data: {text}"
    return text
