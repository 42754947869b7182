"""How long things take on the virtual board.

`REALISTIC` makes the board take real time (the demo feels like a board);
`INSTANT` only counts the same modelled time without waiting (tests).
Every figure is sourced in LOOP.md ("Virtual board timing"); they are fixed
inputs to the benchmarks, never tuned to a result.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    name: str
    realtime: bool
    # Host <-> chip command turnaround on a USB-UART bridge beyond wire time
    # (USB frame scheduling + ROM/stub dispatch). Notes: ~5 ms round trip at
    # 115200 of which ~1 ms is wire time for a small command.
    command_latency_s: float = 0.004
    # NOR datasheet class: 4 KiB sector erase ~45 ms typ (notes; C3 ROM ~40 ms).
    sector_erase_s: float = 0.045
    # NOR datasheet class: 256 B page program 0.4-0.7 ms.
    page_program_s: float = 0.0006
    # Flash read + MD5 on a 160 MHz core: estimate, no measured figure; flash
    # read bandwidth at 80 MHz DIO is ~20 MB/s, software MD5 ~10 MB/s.
    md5_bytes_per_s: float = 8_000_000.0
    # Stub-side inflate speed (miniz on a 160 MHz core), estimate.
    inflate_bytes_per_s: float = 4_000_000.0
    # EN released -> ROM banner: RC delay on EN plus ROM start-up.
    reset_to_rom_s: float = 0.03
    # ROM loads the 2nd stage bootloader, which loads and verifies the app.
    bootloader_s: float = 0.22
    # Crash loop: ESP-IDF prints the dump, then resets; pause before reboot.
    panic_reboot_s: float = 0.3
    # USB-Serial/JTAG re-enumeration after a chip reset.
    usb_reenumerate_s: float = 0.25

    def wire_s(self, nbytes: int, baud: int) -> float:
        """8N1: 10 bits per byte."""
        return nbytes * 10 / baud


REALISTIC = Timing("realistic", realtime=True)
# Same model, counted but not waited for; crash-loop and re-enumeration pauses
# shrink so tests do not sleep, yet stay non-zero so loops cannot spin.
INSTANT = Timing("instant", realtime=False, panic_reboot_s=0.05, usb_reenumerate_s=0.02)

TIMINGS = {t.name: t for t in (REALISTIC, INSTANT)}
