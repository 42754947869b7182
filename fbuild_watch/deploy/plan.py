"""Which bytes to send: sector diffs and the ROM-or-stub cost model."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

SECTOR = 0x1000
PAGE = 0x100
BLOCK = 0x10000

# Cost model for choosing ROM or stub (figures: LOOP.md "Virtual board timing",
# from shared/notes/esp-serial-protocol.md; the same for real hardware).
# COMMAND_S is one command's round trip beyond the wire time of its bytes
# (a USB-UART bridge's turnaround): what the model assumes until the link's
# own round trip is measured at connect (`rtt`, BoardDeployer).
COMMAND_S = 0.004
SECTOR_ERASE_S = 0.045
PAGE_PROGRAM_S = 0.0006
MD5_BYTES_PER_S = 8_000_000
# esptool's change_baud sleeps this long (on top of its command)
CHANGE_BAUD_S = 0.05
ROM_BAUD = 115200
# esptool 5.6's stub (v2) for the C3 as run_stub sends it: bytes on the wire
# both ways with SLIP and headers, and its commands (counted at the port)
STUB_UPLOAD_BYTES = 6_341
# Chips whose flasher stubs (esptool's v1 and v2) keep the UART divider the
# ROM set over a USB-UART bridge (they touch clocks only over USB or SDIO):
# the baud is raised in the ROM and the stub uploaded at the flashing baud,
# ~0.4 s sooner than esptool's order (LOOP.md, "Choosing ROM or stub").
# Not ESP32/S2/P4 (stub v2 resets the divider after raising the clock there),
# ESP8266 (no baud change in ROM) or C2 (26 MHz crystal in ROM).
STUB_KEEPS_ROM_BAUD = frozenset(
    {"ESP32-C3", "ESP32-C5", "ESP32-C6", "ESP32-C61", "ESP32-H2", "ESP32-S3"}
)
STUB_COMMANDS = 7
ROM_BLOCK = 0x400
STUB_BLOCK = 0x4000
# Measured on the virtual board at 460800 baud (BENCHMARKS.md, "ROM or stub"):
# for incompressible data the ROM wins up to 48 KiB, the stub from 64 KiB.
# Past 4x this the stub is chosen without estimating (at any round trip the
# stub's lead only grows with size).
STUB_BREAK_EVEN = 64 * 1024
# How many separate places a rebuild is expected to change in a region (the
# edited code, a string, the app descriptor's ELF SHA-256 and the image
# checksum at its end): sizes the MD5 probe's blocks (`probe_block`).
PROBE_CHANGES = 4
PROBE_BLOCKS = tuple(SECTOR << k for k in range(1, 7))  # 8 KiB ... 256 KiB


@dataclass(frozen=True)
class Run:
    """A sector-aligned span of one region to write."""

    region: str
    offset: int  # flash address
    data: bytes

    @property
    def sectors(self) -> int:
        return -(-len(self.data) // SECTOR)

    @property
    def pages(self) -> int:
        """256-byte flash pages programmed."""
        return -(-len(self.data) // PAGE)


def sector_runs(region: str, offset: int, new: bytes, base: bytes | None) -> list[Run]:
    """Sector runs where `new` differs from `base` (what the flash holds)."""
    if base is None:
        return [Run(region, offset, new)] if new else []
    runs: list[Run] = []
    start: int | None = None
    for pos in range(0, len(new), SECTOR):
        a = new[pos : pos + SECTOR]
        b = base[pos : pos + SECTOR]
        # bytes past the old image are erased flash (0xFF) after a full write
        b = b + b"\xff" * (len(a) - len(b)) if len(b) < len(a) else b
        differs = a != b[: len(a)]
        if differs and start is None:
            start = pos
        elif not differs and start is not None:
            runs.append(Run(region, offset + start, new[start:pos]))
            start = None
    if start is not None:
        runs.append(Run(region, offset + start, new[start:]))
    return runs


def wire_s(nbytes: int, baud: int) -> float:
    return nbytes * 10 / baud


def compressed_sizes(runs: list[Run]) -> list[int]:
    """What the runs compress to, estimated with fast zlib level 1 (esptool
    sends level 9, a little smaller; this only ranks the options)."""
    return [len(zlib.compress(run.data, 1)) for run in runs]


def wire_bytes(size: int, compressed: int, block: int) -> int:
    """Payload bytes esptool sends for one run: deflated when that is
    smaller, else raw with the last block padded to the block size (16 KiB
    with the stub, which is why small incompressible runs cost it more)."""
    if compressed < size:
        return compressed
    return -(-size // block) * block


def estimate_s(
    runs: list[Run],
    *,
    stub: bool,
    baud: int,
    rtt: float = COMMAND_S,
    sizes: list[int] | None = None,
    stub_running: bool = False,
    rebaud: bool = False,
    upload_baud: int = ROM_BAUD,
) -> float:
    """Modelled time to write `runs` over ROM or stub at `baud` (after the
    connection exists), each command costing `rtt` beyond its wire time.
    `stub_running`: the stub is already there (no upload); `upload_baud`:
    the baud the stub is uploaded at; `rebaud`: the ROM is not at that baud
    (connected ahead at the flashing baud), so the upload first changes it."""
    total = 0.0
    if stub and not stub_running:
        total += wire_s(STUB_UPLOAD_BYTES, upload_baud) + STUB_COMMANDS * rtt
        if rebaud:
            total += CHANGE_BAUD_S + rtt
    sizes = sizes if sizes is not None else compressed_sizes(runs)
    for run, comp in zip(runs, sizes, strict=True):
        block = STUB_BLOCK if stub else ROM_BLOCK
        sent = wire_bytes(len(run.data), comp, block)
        blocks = -(-sent // block)
        erase = run.sectors * SECTOR_ERASE_S
        program = run.pages * PAGE_PROGRAM_S
        wire = wire_s(sent, baud)
        if stub:
            # each block is acked on arrival and its flash work done while
            # the next one is on the wire: only the last block's work is
            # not hidden (one block: none is)
            per_wire, per_work = wire / blocks, (erase + program) / blocks
            total += (
                per_wire + (blocks - 1) * max(per_wire, per_work) + per_work + (blocks + 2) * rtt
            )
        else:  # ROM: erase at begin, then synchronous 1 KiB blocks
            total += erase + wire + program + blocks * rtt + 2 * rtt
        total += len(run.data) / MD5_BYTES_PER_S + rtt  # esptool's MD5 verify of the run
    return total


def break_even_kib(
    *, baud: int, rtt: float, limit_kib: int = 256, upload_baud: int = ROM_BAUD
) -> int | None:
    """The incompressible sector-delta size (KiB, whole sectors) from which
    the model always writes faster with the stub (uploaded at `upload_baud`)
    than with the ROM, up to `limit_kib`; None if the ROM still wins
    somewhere there. (Below it the stub can win at multiples of its 16 KiB
    block, where it sends no padding.)"""
    since: int | None = None
    for kib in range(4, limit_kib + 1, 4):
        run = [Run("delta", 0, bytes(kib * 1024))]
        sizes = [kib * 1024 + 64]  # incompressible: deflate adds a little
        rom = estimate_s(run, stub=False, baud=baud, rtt=rtt, sizes=sizes)
        wins = (
            estimate_s(run, stub=True, baud=baud, rtt=rtt, sizes=sizes, upload_baud=upload_baud)
            < rom
        )
        if not wins:
            since = None
        elif since is None:
            since = kib
    return since


def probe_block(region_size: int, rtt: float, changes: int = PROBE_CHANGES) -> int:
    """Block size for probing a region whose MD5 differs: every block is
    hashed (one command each), then each differing block sector by sector.
    Minimises expected round trips plus hashing: ceil(S/B) * rtt for the
    blocks, and for the (at most `changes`) differing blocks B/4 KiB sector
    commands of rtt + 4 KiB of hashing each. Dear round trips favour bigger
    blocks (fewer block commands); cheap ones smaller (less re-hashing)."""

    def cost(block: int) -> float:
        blocks = -(-region_size // block)
        differing = min(changes, blocks)
        return blocks * rtt + differing * (block // SECTOR) * (rtt + SECTOR / MD5_BYTES_PER_S)

    return min(PROBE_BLOCKS, key=cost)
