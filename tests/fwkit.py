"""Build real ESP32-C3 firmware for the tests: zig cc (from PyPI) for the
ELF, the real esptool elf2image for the image, ESP-IDF-style outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from fbuild_watch.image.partitions import Partition, build_partition_table

FW_DIR = Path(__file__).parent / "fw"
ZIG_CC = [sys.executable, "-m", "ziglang", "cc"]
CFLAGS = [
    "-target",
    "riscv32-freestanding-none",
    "-mcpu=generic_rv32+m+c",
    "-Os",
    "-g",
    "-nostdlib",
    "-ffreestanding",
    "-fno-pic",
    "-mno-relax",
    "-Wl,--gc-sections",
    "-ffunction-sections",
    "-fdata-sections",
]


def zig_cc(
    sources: list[Path], ldscript: Path, out: Path, defines: dict[str, str] | None = None
) -> Path:
    args = [*ZIG_CC, *CFLAGS, "-T", str(ldscript)]
    for k, v in (defines or {}).items():
        args.append(f"-D{k}={v}")
    args += [str(s) for s in sources] + ["-o", str(out)]
    subprocess.run(args, check=True, capture_output=True)
    return out


def zig_object(source: str, out: Path) -> Path:
    """Compile C `source` to the relocatable object `out` (no link)."""
    src = out.with_suffix(".c")
    src.write_text(source)
    flags = [f for f in CFLAGS if not f.startswith("-Wl,")]
    subprocess.run([*ZIG_CC, *flags, "-c", str(src), "-o", str(out)], check=True)
    return out


def zig_link(obj: Path, out: Path) -> Path:
    """Link one object (entry `_start`, no linker script, --gc-sections)."""
    subprocess.run([*ZIG_CC, *CFLAGS, str(obj), "-o", str(out)], check=True)
    return out


def elf2image(elf: Path, out: Path, *extra: str) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "esptool",
            "--chip",
            "esp32c3",
            "elf2image",
            "--flash-mode",
            "dio",
            "--flash-size",
            "4MB",
            *extra,
            "-o",
            str(out),
            str(elf),
        ],
        check=True,
        capture_output=True,
    )
    return out


@dataclass
class Build:
    dir: Path
    app_elf: Path
    app_bin: Path
    bootloader_bin: Path
    partitions_bin: Path
    flasher_args: Path


DEFAULT_PARTITIONS = [
    Partition("nvs", 1, 2, 0x9000, 0x5000, 0),
    Partition("phy_init", 1, 1, 0xE000, 0x1000, 0),
    Partition("factory", 0, 0, 0x10000, 0x100000, 0),
]


def build_firmware(
    out: Path,
    *,
    app_source: Path = FW_DIR / "app.c",
    version: str = "1.0.0",
    partitions: list[Partition] | None = None,
) -> Build:
    """A complete ESP-IDF-like build dir: bootloader, partition table, app
    and flasher_args.json."""
    out.mkdir(parents=True, exist_ok=True)
    app_elf = zig_cc(
        [app_source], FW_DIR / "app.ld", out / "app.elf", {"APP_VERSION": f'"{version}"'}
    )
    app_bin = elf2image(app_elf, out / "app.bin", "--elf-sha256-offset", "0xb0")
    boot_elf = zig_cc([FW_DIR / "boot.c"], FW_DIR / "boot.ld", out / "bootloader.elf")
    boot_bin = elf2image(boot_elf, out / "bootloader.bin")
    parts_bin = out / "partition-table.bin"
    parts_bin.write_bytes(build_partition_table(partitions or DEFAULT_PARTITIONS))
    flasher_args = out / "flasher_args.json"
    flasher_args.write_text(
        json.dumps(
            {
                "write_flash_args": [
                    "--flash_mode",
                    "dio",
                    "--flash_size",
                    "4MB",
                    "--flash_freq",
                    "80m",
                ],
                "flash_settings": {"flash_mode": "dio", "flash_size": "4MB", "flash_freq": "80m"},
                "flash_files": {
                    "0x0": "bootloader.bin",
                    "0x8000": "partition-table.bin",
                    "0x10000": "app.bin",
                },
                "bootloader": {"offset": "0x0", "file": "bootloader.bin", "encrypted": "false"},
                "app": {"offset": "0x10000", "file": "app.bin", "encrypted": "false"},
                "partition-table": {
                    "offset": "0x8000",
                    "file": "partition-table.bin",
                    "encrypted": "false",
                },
                "extra_esptool_args": {
                    "after": "hard_reset",
                    "before": "default_reset",
                    "stub": True,
                    "chip": "esp32c3",
                },
            },
            indent=2,
        )
    )
    return Build(out, app_elf, app_bin, boot_bin, parts_bin, flasher_args)
