"""What the verify probe asks the board when nothing is trusted: as few
MD5 commands as tell what to write (each is a round trip plus hashing on the
chip), and always the right runs."""

from __future__ import annotations

import os

from fbuild_watch.deploy.plan import SECTOR, Run
from fbuild_watch.deploy.probe import confirm_cached, md5, probe_regions
from fbuild_watch.image.layout import Region

OFFSET = 0x10000


class Flash:
    """The board's flash as the probe sees it: MD5 on request, counted."""

    def __init__(self, data: bytes) -> None:
        self.data = data + b"\xff" * (1 << 20)
        self.asked: list[tuple[int, int]] = []

    def md5(self, offset: int, size: int) -> str:
        self.asked.append((offset, size))
        return md5(self.data[offset - OFFSET : offset - OFFSET + size])


def probe(flash: Flash, new: bytes, cached: bytes | None) -> tuple[list[Run], dict[int, bytes]]:
    confirmed: dict[int, bytes] = {}
    runs = probe_regions(
        flash.md5,
        [Region("app", OFFSET, new)],
        {OFFSET: cached} if cached is not None else {},
        rtt=0.005,
        log=[],
        confirmed=confirmed,
    )
    return runs, confirmed


def written(flash: Flash, runs: list[Run]) -> bytes:
    data = bytearray(flash.data)
    for run in runs:
        start = run.offset - OFFSET
        data[start : start + len(run.data)] = run.data
    return bytes(data)


def edit(old: bytes, at: int, grow: int = 0) -> bytes:
    return old[:at] + b"v1.0.1" + old[at + 6 :] + os.urandom(grow)


OLD = os.urandom(200 * 1024)


def test_edit_of_another_size_costs_one_region_md5() -> None:
    new = edit(OLD, 100 * 1024, grow=100)
    flash = Flash(OLD)
    runs, _ = probe(flash, new, OLD)
    assert [size for _, size in flash.asked] == [SECTOR, len(OLD)]  # first sector, the cache
    assert written(flash, runs)[: len(new)] == new


def test_edit_of_the_same_size_costs_one_region_md5() -> None:
    new = edit(OLD, 100 * 1024)
    flash = Flash(OLD)
    runs, _ = probe(flash, new, OLD)
    assert [size for _, size in flash.asked] == [SECTOR, len(OLD)]
    assert [run.offset for run in runs] == [OFFSET + 100 * 1024 // SECTOR * SECTOR]


def test_board_already_holding_the_new_image_is_confirmed() -> None:
    new = edit(OLD, 100 * 1024)
    flash = Flash(new)
    runs, confirmed = probe(flash, new, OLD)
    assert runs == [] and confirmed == {OFFSET: new}
    assert len(flash.asked) == 2


def test_board_holding_neither_is_probed_block_by_block() -> None:
    new = edit(OLD, 100 * 1024, grow=100)
    other = edit(OLD, 10 * 1024)  # flashed by some other tool: the cache is stale
    flash = Flash(other)
    runs, _ = probe(flash, new, OLD)
    assert written(flash, runs)[: len(new)] == new
    assert len(runs) == 3  # the other tool's change undone, ours, the longer tail


def test_new_image_that_only_adds_to_the_cached_one() -> None:
    new = OLD + os.urandom(3 * SECTOR)
    flash = Flash(OLD)
    runs, _ = probe(flash, new, OLD)
    assert written(flash, runs)[: len(new)] == new
    assert sum(run.sectors for run in runs) == 3


def test_regions_confirmed_ahead_are_diffed_without_asking() -> None:
    new = edit(OLD, 100 * 1024)
    flash = Flash(OLD)
    on_board = confirm_cached(flash.md5, {OFFSET: OLD})
    assert on_board == {OFFSET: OLD} and len(flash.asked) == 1
    confirmed: dict[int, bytes] = {}
    runs = probe_regions(
        flash.md5,
        [Region("app", OFFSET, new)],
        {OFFSET: OLD},
        rtt=0.005,
        log=[],
        confirmed=confirmed,
        on_board=on_board,
    )
    assert len(flash.asked) == 1  # nothing more asked
    assert written(flash, runs)[: len(new)] == new
    assert confirm_cached(Flash(new).md5, {OFFSET: OLD}) == {}  # not on the board: not confirmed
