"""What an ESP32-C3 prints and does from reset to the app's entry point.

The first stage (mask ROM) and the second stage (ESP-IDF bootloader) are
*modelled*, not executed: the board reads the bootloader image header and
segments the way the ROM does, then does what ESP-IDF's bootloader does
(read the partition table at 0x8000, pick factory or the first OTA app,
verify checksum and SHA-256, load segments) and prints the same kind of log.
It accepts and refuses what ESP-IDF's bootloader does, with its messages:
ESP-IDF bootloader_support/src/esp_image_format.c (header, segments, load
addresses, checksum, hash) and bootloader_common_loader.c (chip id and
revision), commit 102122904ade. Only the app's own code runs on the CPU
emulator.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from fbuild_watch.errors import ImageError
from fbuild_watch.image.esp_image import parse_app_desc, parse_image
from fbuild_watch.image.partitions import TABLE_MAX, parse_partition_table
from fbuild_watch.sim.flash import SpiFlash

ROM_BANNER = "ESP-ROM:esp32c3-api1-20210207\r\nBuild:Feb  7 2021\r\n"
ESP32C3_CHIP_ID = 5

# key: (RESET_REASON code from ESP-IDF esp_rom/esp32c3/include/esp32c3/rom/rtc.h,
# the name the C3 ROM prints in its banner)
_REASONS: dict[str, tuple[int, str]] = {
    "poweron": (0x01, "POWERON"),
    "sw_sys": (0x03, "RTC_SW_SYS_RST"),
    "tg0wdt_sys": (0x07, "TG0WDT_SYS_RST"),
    "tg1wdt_sys": (0x08, "TG1WDT_SYS_RST"),
    "rtcwdt_sys": (0x09, "RTCWDT_SYS_RST"),
    "tg0wdt_cpu": (0x0B, "TG0WDT_CPU_RST"),
    "sw_cpu": (0x0C, "RTC_SW_CPU_RST"),
    "rtcwdt_cpu": (0x0D, "RTCWDT_CPU_RST"),
    "rtcwdt_rtc": (0x10, "RTCWDT_RTC_RST"),
    "tg1wdt_cpu": (0x11, "TG1WDT_CPU_RST"),
    "super_wdt": (0x12, "SUPER_WDT_RST"),
    "usb_uart": (0x15, "USB_UART_CHIP_RESET"),
}
RESET_REASONS = {k: f"rst:0x{code:x} ({name})" for k, (code, name) in _REASONS.items()}
# bootloader_esp32c3.c bootloader_check_if_wdt_reset(): the resets it warns about
_WDT_RESETS = ("rtcwdt_sys", "tg0wdt_sys", "tg1wdt_sys", "tg0wdt_cpu", "tg1wdt_cpu", "rtcwdt_cpu")
BOOT_FLASH = "boot:0xc (SPI_FAST_FLASH_BOOT)"
BOOT_DOWNLOAD = "boot:0x5 (DOWNLOAD(USB/UART0/1))"

# What ESP-IDF's C3 bootloader occupies while it loads the app
# (bootloader/subproject/main/ld/esp32c3/bootloader.memory.ld.in, soc.h):
# its DRAM data, its "loader" IRAM, and the stack below the ROM's stack top
# with esp_image_format.c's 32 KiB headroom under the modelled sp.
SOC_ROM_STACK_START = 0x3FCDE710
BOOTLOADER_SP = 0x3FCDE5F0  # modelled: the ROM stack top less the boot frames
STACK_LOAD_HEADROOM = 0x8000
BOOTLOADER_DRAM = (0x3FCD5710, 0x3FCDA710)  # dram_seg
BOOTLOADER_LOADER_IRAM = (0x403CE710, 0x403D5710)  # iram_loader_seg
DRAM = (0x3FC80000, 0x3FCE0000)
IRAM = (0x4037C000, 0x403E0000)
DIRAM_IRAM_LOW = 0x40380000
I_D_OFFSET = DIRAM_IRAM_LOW - DRAM[0]  # SOC_I_D_OFFSET: same SRAM, two buses
RTC_FAST = (0x50000000, 0x50002000)
MAPPED = ((0x3C000000, 0x3C800000), (0x42000000, 0x42800000))  # DROM, IROM
MMU_PAGE = 0x10000
MAX_SEGMENTS = 16
APP_DESC_SIZE = 256
NOT_SET_REV = 0xFFFF


def reset_code(reason: str) -> int:
    return _REASONS.get(reason, _REASONS["poweron"])[0]


@dataclass(frozen=True)
class AppBoot:
    segments: list[tuple[int, bytes]]
    entry: int
    elf_sha256: str | None
    partition_offset: int


@dataclass
class BootOutcome:
    text: str  # everything printed, CRLF line ends
    app: AppBoot | None  # None: nothing bootable
    rom_stuck: bool = False  # invalid header: the ROM retries forever


def rom_banner(reason: str, download: bool) -> str:
    boot = BOOT_DOWNLOAD if download else BOOT_FLASH
    text = f"{ROM_BANNER}{RESET_REASONS.get(reason, RESET_REASONS['poweron'])},{boot}\r\n"
    if download:
        text += "waiting for download\r\n"
    return text


def _log(level: str, t_ms: int, tag: str, msg: str) -> str:
    return f"{level} ({t_ms}) {tag}: {msg}\r\n"


def boot_from_flash(
    flash: SpiFlash, *, reason: str = "poweron", chip_rev: tuple[int, int] = (0, 4)
) -> BootOutcome:
    """Boot as ROM + ESP-IDF bootloader do after a reset for `reason`, on a
    chip of revision `chip_rev` (major, minor)."""
    out: list[str] = []
    header = flash.read(0, 24)
    if header[0] != 0xE9:
        word = int.from_bytes(header[:4], "little")
        return BootOutcome(f"invalid header: 0x{word:08x}\r\n", None, rom_stuck=True)
    boot_img = flash.read(0, 64 * 1024)
    try:
        bl = parse_image(boot_img, expect_chip_id=ESP32C3_CHIP_ID)
    except ImageError:
        word = int.from_bytes(header[:4], "little")
        return BootOutcome(f"invalid header: 0x{word:08x}\r\n", None, rom_stuck=True)
    out.append("SPIWP:0xee\r\n")
    out.append(f"mode:{bl.flash_mode.upper()}, clock div:1\r\n")
    for seg in bl.segments:
        out.append(f"load:0x{seg.load_addr:08x},len:0x{seg.length:x}\r\n")
    out.append(f"entry 0x{bl.entry:08x}\r\n")

    t = 30
    out.append(
        _log("I", t, "boot", "ESP-IDF v5.3 2nd stage bootloader (modelled by fbuild-watch sim)")
    )
    out.append(_log("I", t, "boot", f"chip revision: v{chip_rev[0]}.{chip_rev[1]}"))
    size_mb = (bl.flash_size or 4 << 20) >> 20
    out.append(_log("I", t + 4, "boot.esp32c3", f"SPI Mode       : {bl.flash_mode.upper()}"))
    out.append(_log("I", t + 8, "boot.esp32c3", f"SPI Flash Size : {size_mb}MB"))
    if reason in _WDT_RESETS:
        out.append(_log("W", t + 10, "boot.esp32c3", "PRO CPU has been reset by WDT."))
    try:
        table = parse_partition_table(flash.read(0x8000, TABLE_MAX), flash_size=flash.size)
    except ImageError as exc:
        out.append(_log("E", t + 12, "flash_parts", f"partition table invalid: {exc.problem}"))
        out.append(_log("E", t + 12, "boot", "Failed to verify partition table"))
        out.append(_log("E", t + 12, "boot", "load partition table error!"))
        return BootOutcome("".join(out), None)
    out.append(_log("I", t + 14, "boot", "Partition Table:"))
    out.append(
        _log("I", t + 14, "boot", "## Label            Usage          Type ST Offset   Length")
    )
    for i, p in enumerate(table.partitions):
        usage = f"{p.subtype_name} app" if p.is_app else f"{p.subtype_name} data"
        out.append(
            _log(
                "I",
                t + 16 + i,
                "boot",
                f"{i:2d} {p.label:<16} {usage:<14} {p.type:02x} {p.subtype:02x} "
                f"{p.offset:08x} {p.size:08x}",
            )
        )
    out.append(_log("I", t + 20, "boot", "End of partition table"))
    part = table.boot_app()
    if part is None:
        out.append(_log("E", t + 22, "boot", "No bootable app partitions in the partition table"))
        return BootOutcome("".join(out), None)
    data = flash.read(part.offset, part.size)
    rev_full = chip_rev[0] * 100 + chip_rev[1]
    lines, loaded = load_app_image(data, part.offset, rev_full)
    for n, (level, tag, msg) in enumerate(lines):
        out.append(_log(level, t + 24 + n, tag, msg))
    if loaded is None:
        out.append(
            _log(
                "E",
                t + 24,
                "boot",
                "Factory app partition is not bootable"
                if part.subtype == 0
                else f"OTA app partition slot {part.subtype & 0xF} is not bootable",
            )
        )
        out.append(_log("E", t + 24, "boot", "No bootable app partitions in the partition table"))
        return BootOutcome("".join(out), None)
    segments, entry, elf_sha = loaded
    out.append(_log("I", t + 40, "boot", f"Loaded app from partition at offset 0x{part.offset:x}"))
    out.append(_log("I", t + 40, "boot", "Disabling RNG early entropy source..."))
    return BootOutcome("".join(out), AppBoot(segments, entry, elf_sha, part.offset))


_Lines = list[tuple[str, str, str]]  # (level, tag, message)


def load_app_image(
    data: bytes, offset: int, chip_rev_full: int
) -> tuple[_Lines, tuple[list[tuple[int, bytes]], int, str | None] | None]:
    """esp_image_load() for an app in a partition: (log lines, (segments to
    load, entry, ELF SHA-256) or None when the bootloader refuses it)."""
    lines: _Lines = []

    def fail(tag: str, msg: str) -> tuple[_Lines, None]:
        lines.append(("E", tag, msg))
        return lines, None

    if len(data) < 24 or data[0] != 0xE9:
        return fail(
            "esp_image", f"image at 0x{offset:x} has invalid magic byte (nothing flashed here?)"
        )
    nseg, entry = data[1], struct.unpack_from("<I", data, 4)[0]
    chip_id, _min_rev, min_full, max_full = struct.unpack_from("<HBHH", data, 12)
    hash_appended = data[23] == 1
    # bootloader_common_check_chip_validity()
    if chip_id != ESP32C3_CHIP_ID:
        return fail("boot_comm", f"mismatch chip ID, expected {ESP32C3_CHIP_ID}, found {chip_id}")
    if min_full != NOT_SET_REV and chip_rev_full < min_full:
        return fail(
            "boot_comm",
            f"chip revision check failed. Required >= v{min_full // 100}.{min_full % 100}, "
            f"found v{chip_rev_full // 100}.{chip_rev_full % 100}.",
        )
    if max_full != NOT_SET_REV and chip_rev_full > max_full:
        return fail(
            "boot_comm",
            f"chip revision check failed. Required <= v{max_full // 100}.{max_full % 100}, "
            f"found v{chip_rev_full // 100}.{chip_rev_full % 100}.",
        )
    if nseg > MAX_SEGMENTS:
        return fail(
            "esp_image",
            f"image at 0x{offset:x} segment count {nseg} exceeds max {MAX_SEGMENTS}",
        )
    checksum = 0xEF
    pos = 24
    segments: list[tuple[int, bytes]] = []
    elf_sha: str | None = None
    for n in range(nseg):
        if pos + 8 > len(data):
            return fail("esp_image", "image offset has wrapped")
        load_addr, length = struct.unpack_from("<II", data, pos)
        pos += 8
        paddr = offset + pos
        if length & 3 or length >= 0x1000000:
            return fail("esp_image", f"invalid segment length 0x{length:x}")
        if n == 0 and length < APP_DESC_SIZE:
            return fail(
                "esp_image", f"Segment 0: length 0x{length:x} is too short for app description"
            )
        mapped = any(lo <= load_addr < hi for lo, hi in MAPPED)
        if mapped and paddr % MMU_PAGE != load_addr % MMU_PAGE:
            return fail(
                "esp_image",
                f"Segment {n} load address 0x{load_addr:08x}, doesn't match data 0x{paddr:08x}",
            )
        payload = data[pos : pos + length]
        if len(payload) < length:
            return fail("esp_image", "image offset has wrapped")
        do_load = not mapped and load_addr >= 0x10000000
        kind = "load" if do_load else "map" if mapped else ""
        lines.append(
            (
                "I",
                "esp_image",
                f"segment {n}: paddr={paddr:08x} vaddr={load_addr:08x} "
                f"size={length:05x}h ({length:6d}) {kind}",
            )
        )
        if do_load and length:
            problem = load_address_problem(load_addr, load_addr + length)
            if problem:
                return fail(
                    "esp_image",
                    f"Segment {n} 0x{load_addr:08x}-0x{load_addr + length:08x} invalid: {problem}",
                )
            segments.append((load_addr, payload))
        elif mapped:
            segments.append((load_addr, payload))
            if elf_sha is None and 0x3C000000 <= load_addr < 0x3C800000:
                desc = parse_app_desc(payload)
                elf_sha = desc.elf_sha256 if desc else None
        checksum ^= _xor_bytes(payload)
        pos += length
    # the checksum byte ends a 16-byte block
    end = (pos + 1 + 15) & ~15
    if end > len(data):
        return fail("esp_image", f"Image length {end} doesn't fit in partition length {len(data)}")
    read_checksum = data[end - 1]
    if read_checksum != checksum:
        return fail(
            "esp_image", f"Checksum failed. Calculated 0x{checksum:x} read 0x{read_checksum:x}"
        )
    if hash_appended:
        if end + 32 > len(data):
            return fail(
                "esp_image", f"Image length {end + 32} doesn't fit in partition length {len(data)}"
            )
        if hashlib.sha256(data[:end]).digest() != data[end : end + 32]:
            return fail("esp_image", "Image hash failed - image is corrupt")
    return lines, (segments, entry, elf_sha)


def _xor_bytes(data: bytes) -> int:
    """XOR of all bytes, folded as one big integer (C speed, not a byte loop)."""
    n = int.from_bytes(data, "little")
    width = len(data)
    while width > 1:
        half = (width + 1) // 2
        n = (n & ((1 << (8 * half)) - 1)) ^ (n >> (8 * half))
        width = half
    return n & 0xFF


def _overlap(a0: int, a1: int, b0: int, b1: int) -> bool:
    return a0 < b1 and b0 < a1


def load_address_problem(start: int, end: int, recurse: bool = True) -> str | None:
    """verify_load_addresses(): why loading [start, end) would clobber the
    running bootloader, or None when it is a fine place to load."""
    last = end - 1
    if DRAM[0] <= start < DRAM[1] and DRAM[0] <= last < DRAM[1]:
        if _overlap(BOOTLOADER_SP - STACK_LOAD_HEADROOM, SOC_ROM_STACK_START, start, end):
            return "overlaps bootloader stack"
        if _overlap(*BOOTLOADER_DRAM, start, end):
            return "overlaps bootloader data"
        if recurse:  # the same SRAM seen through the instruction bus
            return load_address_problem(start + I_D_OFFSET, end + I_D_OFFSET, recurse=False)
        return None
    if IRAM[0] <= start < IRAM[1] and IRAM[0] <= last < IRAM[1]:
        if _overlap(*BOOTLOADER_LOADER_IRAM, start, end):
            return "overlaps loader IRAM"
        if recurse and _overlap(DIRAM_IRAM_LOW, IRAM[1], start, end):
            lo = max(start, DIRAM_IRAM_LOW) - I_D_OFFSET
            return load_address_problem(lo, end - I_D_OFFSET, recurse=False)
        return None
    if RTC_FAST[0] <= start < RTC_FAST[1] and RTC_FAST[0] <= last < RTC_FAST[1]:
        return None
    return "bad load address range"
