"""Which bytes to send: sector diffs and the ROM-or-stub cost model."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

SECTOR = 0x1000
PAGE = 0x100
BLOCK = 0x10000

# Cost model for choosing ROM or stub (figures: LOOP.md "Virtual board timing",
# from shared/notes/esp-serial-protocol.md; the same for real hardware).
COMMAND_S = 0.004
SECTOR_ERASE_S = 0.045
PAGE_PROGRAM_S = 0.0006
# esptool 5.6's stub (v2) for the C3 as run_stub sends it: bytes on the wire
# both ways with SLIP and headers, and its commands (counted at the port)
STUB_UPLOAD_BYTES = 6_341
STUB_COMMANDS = 7
ROM_BLOCK = 0x400
STUB_BLOCK = 0x4000
# Measured on the virtual board at 460800 baud (BENCHMARKS.md, "ROM or stub"):
# for incompressible data the ROM wins up to 48 KiB, the stub from 64 KiB.
STUB_BREAK_EVEN = 64 * 1024


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


def estimate_s(runs: list[Run], *, stub: bool, baud: int, sizes: list[int] | None = None) -> float:
    """Modelled time to write `runs` over ROM or stub at `baud` (after the
    connection exists): the cheaper one is used."""
    total = 0.0
    if stub:
        total += wire_s(STUB_UPLOAD_BYTES, 115200) + STUB_COMMANDS * COMMAND_S
    sizes = sizes if sizes is not None else compressed_sizes(runs)
    for run, comp in zip(runs, sizes, strict=True):
        block = STUB_BLOCK if stub else ROM_BLOCK
        sent = wire_bytes(len(run.data), comp, block)
        blocks = -(-sent // block)
        erase = run.sectors * SECTOR_ERASE_S
        program = run.pages * PAGE_PROGRAM_S
        wire = wire_s(sent, baud)
        if stub:  # flash work overlaps the wire; acks are immediate
            total += max(wire, erase + program) + 3 * COMMAND_S
        else:  # ROM: erase at begin, then synchronous 1 KiB blocks
            total += erase + wire + program + blocks * COMMAND_S + 2 * COMMAND_S
        total += len(run.data) / 8_000_000 + COMMAND_S  # esptool's MD5 verify of the run
    return total
