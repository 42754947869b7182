"""Connecting ahead on its own: the moment a build shows the image changes."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Awaitable
from pathlib import Path

from fbuild_watch.connect_ahead import ConnectAhead
from fbuild_watch.image.linkkey import link_key
from tests.fwkit import Build


class Boards:
    def __init__(self) -> None:
        self.keys: list[str | None] = []
        self.back = 0
        self.gate: asyncio.Event | None = None  # set: the connect may finish

    async def connect_ahead(self, link_key: str | None) -> None:
        self.keys.append(link_key)
        if self.gate is not None:
            await self.gate.wait()

    async def back_to_app(self) -> None:
        self.back += 1


def background(coro: Awaitable[None], _part: str) -> asyncio.Future[None]:
    return asyncio.ensure_future(coro)


async def until(cond, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.005)


async def test_a_linked_elf_with_new_loadable_bytes_connects_ahead(
    firmware: Build, tmp_path: Path
) -> None:
    boards, timings = Boards(), {}
    ahead = ConnectAhead(boards, background)
    elf = tmp_path / "app.elf"
    build: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    ahead.start(elf, build, timings, asyncio.get_running_loop().time())
    shutil.copy(firmware.app_elf, elf)  # the linker writes the ELF
    await until(lambda: boards.keys)
    assert boards.keys == [link_key(elf)]
    await until(lambda: "connected_ahead" in timings)
    assert "linked" in timings
    build.set_result(None)
    await ahead.settle()


async def test_a_build_that_never_links_connects_nothing(tmp_path: Path) -> None:
    boards = Boards()
    ahead = ConnectAhead(boards, background)
    build: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    ahead.start(tmp_path / "app.elf", build, {}, 0.0)
    await asyncio.sleep(0.05)  # the watch looks a few times: nothing there
    build.set_result(None)
    await ahead.settle()  # stops the watch
    assert boards.keys == []
    await ahead.back_to_app()  # the loop's "no deploy follows"
    assert boards.back == 1


async def test_settle_waits_for_a_connect_in_progress(firmware: Build, tmp_path: Path) -> None:
    """The deploy takes the held connection over: the build's end must not
    cancel a connect half way."""
    boards = Boards()
    boards.gate = asyncio.Event()
    ahead = ConnectAhead(boards, background)
    elf = tmp_path / "app.elf"
    build: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    timings: dict[str, float] = {}
    ahead.start(elf, build, timings, 0.0)
    shutil.copy(firmware.app_elf, elf)
    await until(lambda: boards.keys)
    build.set_result(None)
    settled = asyncio.ensure_future(ahead.settle())
    await asyncio.sleep(0.02)
    assert not settled.done()  # still connecting
    boards.gate.set()
    await settled
    assert "connected_ahead" in timings
