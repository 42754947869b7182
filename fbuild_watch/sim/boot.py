"""What an ESP32-C3 prints and does from reset to the app's entry point.

The first stage (mask ROM) and the second stage (ESP-IDF bootloader) are
*modelled*, not executed: the board reads the bootloader image header and
segments the way the ROM does, then does what ESP-IDF's bootloader does
(read the partition table at 0x8000, pick factory or the first OTA app,
verify checksum and SHA-256, load segments) and prints the same kind of log.
Only the app's own code runs on the CPU emulator.
"""

from __future__ import annotations

from dataclasses import dataclass

from fbuild_watch.errors import ImageError
from fbuild_watch.image.esp_image import parse_image
from fbuild_watch.image.partitions import TABLE_MAX, parse_partition_table
from fbuild_watch.sim.flash import SpiFlash

ROM_BANNER = "ESP-ROM:esp32c3-api1-20210207\r\nBuild:Feb  7 2021\r\n"
ESP32C3_CHIP_ID = 5

RESET_REASONS = {
    "poweron": "rst:0x1 (POWERON)",
    "sw_sys": "rst:0x3 (RTC_SW_SYS_RST)",
    "sw_cpu": "rst:0xc (RTC_SW_CPU_RST)",
    "usb_uart": "rst:0x15 (USB_UART_CHIP_RESET)",
}
BOOT_FLASH = "boot:0xc (SPI_FAST_FLASH_BOOT)"
BOOT_DOWNLOAD = "boot:0x5 (DOWNLOAD(USB/UART0/1))"


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


def boot_from_flash(flash: SpiFlash) -> BootOutcome:
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
    out.append(_log("I", t, "boot", "chip revision: v0.4"))
    size_mb = (bl.flash_size or 4 << 20) >> 20
    out.append(_log("I", t + 4, "boot.esp32c3", f"SPI Mode       : {bl.flash_mode.upper()}"))
    out.append(_log("I", t + 8, "boot.esp32c3", f"SPI Flash Size : {size_mb}MB"))
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
    try:
        app = parse_image(data, expect_chip_id=ESP32C3_CHIP_ID)
    except ImageError as exc:
        problem = exc.problem
        if "SHA-256" in problem:
            msg = "Image hash failed - image is corrupt"
        elif "checksum" in problem:
            msg = f"Checksum failed. {problem}"
        elif "magic" in problem:
            msg = f"image at 0x{part.offset:x} has invalid magic byte (nothing flashed here)"
        else:
            msg = f"image at 0x{part.offset:x} is invalid: {problem}"
        out.append(_log("E", t + 24, "esp_image", msg))
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
    segments = []
    for n, seg in enumerate(app.segments):
        payload = data[seg.file_offset : seg.file_offset + seg.length]
        mapped = (
            0x3C000000 <= seg.load_addr < 0x3C800000 or 0x42000000 <= seg.load_addr < 0x42800000
        )
        kind = "map" if mapped else "load"
        paddr = part.offset + seg.file_offset
        out.append(
            _log(
                "I",
                t + 30 + n,
                "esp_image",
                f"segment {n}: paddr={paddr:08x} vaddr={seg.load_addr:08x} "
                f"size={seg.length:05x}h ({seg.length:6d}) {kind}",
            )
        )
        if seg.load_addr != 0:  # address 0: esptool's padding segment
            segments.append((seg.load_addr, payload))
    out.append(_log("I", t + 40, "boot", f"Loaded app from partition at offset 0x{part.offset:x}"))
    out.append(_log("I", t + 40, "boot", "Disabling RNG early entropy source..."))
    elf_sha = app.app_desc.elf_sha256 if app.app_desc else None
    return BootOutcome("".join(out), AppBoot(segments, app.entry, elf_sha, part.offset))
