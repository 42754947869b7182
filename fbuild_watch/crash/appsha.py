"""Is the board running the ELF we decode with? ESP-IDF prints the app
descriptor's ELF SHA-256 (a prefix) in its boot log (`cpu_start:` /
`app_init: ELF file SHA256:  1b43c5e74...`) and after a panic; it is the
SHA-256 of the ELF file the image was made from (`esptool elf2image
--elf-sha256-offset`). Checked once per boot, as esp-idf-monitor does.
"""

from __future__ import annotations

import re
from pathlib import Path

SHA_LINE = re.compile(r"ELF file SHA256:\s*([0-9a-fA-F]{8,64})")
# the ROM's first words after a reset: a new boot (ESP32: "ets Jun  8 2016")
BOOT_BANNERS = ("ESP-ROM:", "ets ", "rst:0x")


class ShaCheck:
    """Feed every line; `printed(line)` gives the SHA-256 prefix the board
    printed, at most once per boot."""

    def __init__(self) -> None:
        self._checked = False

    def reset(self) -> None:
        """A new boot, or a new ELF: the next printed SHA is checked."""
        self._checked = False

    def printed(self, line: str) -> str | None:
        if line.startswith(BOOT_BANNERS):
            self._checked = False
            return None
        if self._checked or "SHA256" not in line:
            return None
        m = SHA_LINE.search(line)
        if m is None:
            return None
        self._checked = True
        return m.group(1).lower()


def mismatch(printed: str, elf_sha256: str, elf: Path) -> str | None:
    """The warning when the board's ELF is not `elf`; None when it is, or
    when the board's image carries no SHA (all zeros: a build that did not
    fill the app descriptor's field, as some Arduino builds)."""
    if not printed.strip("0"):
        return None
    if elf_sha256.lower().startswith(printed):
        return None
    return (
        f"the board runs a different build than {elf}: it says ELF SHA-256 {printed}..., "
        f"the file is {elf_sha256[: len(printed)]}...; decoded addresses may name the wrong code"
    )


__all__ = ["BOOT_BANNERS", "SHA_LINE", "ShaCheck", "mismatch"]
