"""What to write when nothing is trusted: ask the board's flash by MD5.

The cached last layout, confirmed by one MD5 per region, is diffed against
at sector granularity; otherwise regions, then blocks (sized for the link's
round trip, `plan.probe_block`), then sectors are hashed on the board and
only what differs is written.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable

from fbuild_watch.deploy.plan import SECTOR, Run, probe_block, sector_runs
from fbuild_watch.image.layout import Region

# esptool's `flash_md5sum(offset, size) -> hex digest`, on the board
DeviceMd5 = Callable[[int, int], str]


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@functools.cache
def erased_md5(size: int) -> str:
    """MD5 of `size` bytes of erased flash (0xFF)."""
    return md5(b"\xff" * size)


def add_run(runs: list[Run], run: Run) -> None:
    """Append, merging with the previous run when the two touch."""
    if runs and runs[-1].offset + len(runs[-1].data) == run.offset:
        runs[-1] = Run(run.region, runs[-1].offset, runs[-1].data + run.data)
    else:
        runs.append(run)


def confirm_cached(device_md5: DeviceMd5, cached: dict[int, bytes]) -> dict[int, bytes]:
    """The regions of the cached last layout the board still holds, one MD5
    each: asked while connected ahead, before the new image exists."""
    return {
        offset: data
        for offset, data in cached.items()
        if data and device_md5(offset, len(data)) == md5(data)
    }


def probe_regions(
    device_md5: DeviceMd5,
    regions: list[Region],
    cached: dict[int, bytes],
    *,
    rtt: float,
    log: list[str],
    confirmed: dict[int, bytes],
    on_board: dict[int, bytes] | None = None,
) -> list[Run]:
    """Runs to write. Regions found whole on the board go into `confirmed`.
    `on_board`: regions already confirmed on the board (`confirm_cached`),
    diffed against without asking again."""
    runs: list[Run] = []
    for r in regions:
        held = (on_board or {}).get(r.offset)
        if held is not None:
            if held == r.data:
                confirmed[r.offset] = r.data
            else:
                runs += _diff_against_cached(r, held, log)
            continue
        block = probe_block(r.size, rtt)
        if r.size > block:
            # an image starts in its first sector: if that is erased, the
            # image is not there and hashing the whole region would be wasted
            head = device_md5(r.offset, SECTOR)
            if head == erased_md5(SECTOR) and r.data[:SECTOR] != b"\xff" * SECTOR:
                runs.append(Run(r.name, r.offset, r.data))
                continue
        base = cached.get(r.offset) or None
        if base is not None and len(base) != r.size:
            # the usual case after an edit: one MD5 over the cached image
            # (the board cannot hold the new one where the old one matches,
            # but when the new image only adds to it: diffing writes that)
            if device_md5(r.offset, len(base)) == md5(base):
                runs += _diff_against_cached(r, base, log)
                continue
            base = None
        device = device_md5(r.offset, r.size)
        if device == md5(r.data):
            confirmed[r.offset] = r.data
            continue
        if base is not None and device == md5(base):  # same size: one MD5 tells both
            runs += _diff_against_cached(r, base, log)
            continue
        runs += probe_blocks(device_md5, r, device, block)
    return runs


def _diff_against_cached(r: Region, base: bytes, log: list[str]) -> list[Run]:
    log.append(f"{r.name}: cached last layout confirmed on the board; diffing against it")
    return sector_runs(r.name, r.offset, r.data, base)


def probe_blocks(device_md5: DeviceMd5, r: Region, region_md5: str, block_size: int) -> list[Run]:
    """MD5 of each `block_size` block, then of each sector of the blocks
    that differ."""
    if region_md5 == erased_md5(r.size):
        return [Run(r.name, r.offset, r.data)]  # erased: every sector differs
    runs: list[Run] = []
    for bstart in range(0, r.size, block_size):
        block = r.data[bstart : bstart + block_size]
        device = device_md5(r.offset + bstart, len(block))
        if device == md5(block):
            continue
        if device == erased_md5(len(block)):  # erased block: no per-sector probing
            add_run(runs, Run(r.name, r.offset + bstart, block))
            continue
        for sstart in range(0, len(block), SECTOR):
            sector = block[sstart : sstart + SECTOR]
            addr = r.offset + bstart + sstart
            if device_md5(addr, len(sector)) != md5(sector):
                add_run(runs, Run(r.name, addr, sector))
    return runs
