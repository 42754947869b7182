"""Run a `WatchLoop` on a fake project whose build the test controls."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fbuild_watch.build.backends import detect_backend
from fbuild_watch.events import Event
from fbuild_watch.image.layout import ValidatedLayout
from fbuild_watch.loop import WatchLoop
from fbuild_watch.watch import IgnoreRules, Watcher, WatchOptions, WatchSet
from tests.fwkit import Build

BUILD_PY = """
import os, pathlib, shutil, sys, time
root = pathlib.Path(__file__).parent
out = root / "build"
out.mkdir(exist_ok=True)
obj = root / "src" / "obj"
if obj.exists():  # "compiles" first: copies the object src/obj names
    (out / "obj").mkdir(exist_ok=True)
    shutil.copy(obj.read_text().strip(), out / "obj" / "main.c.o")
link = os.environ.get("LINK_ELF")
if link:  # "links" the ELF first, then makes the image (after the gate)
    shutil.copy(link, out / "app.elf")
gate = os.environ.get("GATE")
if gate:
    print("waiting for gate", flush=True)
    while not os.path.exists(gate):
        time.sleep(0.005)
    os.unlink(gate)
if (root / "src" / "broken").exists():
    print("src/main.c:1:1: error: broken on purpose", flush=True)
    sys.exit(1)
for name in ("bootloader.bin", "partition-table.bin", "app.bin", "flasher_args.json"):
    shutil.copy(os.path.join(os.environ["FW_DIR"], name), out / name)
n = int((out / "count").read_text()) + 1 if (out / "count").exists() else 1
(out / "count").write_text(str(n))
print("built", n, flush=True)
"""


def make_project(
    root: Path,
    firmware: Build,
    *,
    gate: Path | None = None,
    link: bool = False,
    elf: Path | None = None,
) -> Path:
    """`link`: the build writes the firmware's ELF (or `elf`) before waiting
    at `gate`. A file `src/obj` naming an object makes the build copy it to
    build/obj/main.c.o first, like a compile."""
    (root / "src").mkdir(parents=True)
    (root / "src" / "main.c").write_text("int main(void) { return 0; }\n")
    (root / "build.py").write_text(BUILD_PY)
    env = f'FW_DIR = "{firmware.dir}"' + (f', GATE = "{gate}"' if gate else "")
    env += f', LINK_ELF = "{elf or firmware.app_elf}"' if link else ""
    elf_line = 'elf = "build/app.elf"\n' if link else ""
    (root / "fbuild.toml").write_text(
        f'[build]\ncommand = ["{sys.executable}", "build.py"]\n'
        f'flasher_args = "build/flasher_args.json"\n{elf_line}env = {{ {env} }}\n'
        '[watch]\npaths = ["src"]\n'
    )
    return root


class FakeDeployer:
    def __init__(self) -> None:
        self.deploys: list[tuple[str, bool, bool]] = []
        self.resets = 0
        self.prepared: list[str | None] = []  # link keys (None: an object changed)
        self.releases = 0
        # a board whose app prints while another board is still written:
        # (its first line, then the seconds the other deploy goes on)
        self.line_during_deploy: float | None = None
        self._first_line: float | None = None

    async def deploy(self, layout: ValidatedLayout, *, full: bool, app_only: bool) -> bool:
        self.deploys.append((layout.image_hash, full, app_only))
        if self.line_during_deploy is not None:
            self._first_line = time.monotonic()
            await asyncio.sleep(self.line_during_deploy)
        return True

    async def reset(self) -> None:
        self.resets += 1

    async def connect_ahead(self, link_key: str | None) -> None:
        self.prepared.append(link_key)

    async def back_to_app(self) -> None:
        self.releases += 1

    async def first_app_line(self, timeout: float = 5.0) -> float | None:
        return self._first_line

    def abort(self) -> None:
        pass


class LoopRun:
    def __init__(
        self, project: Path, *, deployer: Any = None, on_busy: str = "queue", watch: bool = True
    ) -> None:
        backend = detect_backend(project)
        ignore = IgnoreRules(project, output_dirs=backend.output_dirs())
        ws = WatchSet(project, ignore, paths=["src"])
        self.events: list[Event] = []
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        watcher = Watcher(ws, WatchOptions(quiet_ms=20)) if watch else None
        self.loop = WatchLoop(backend, ws, watcher, self._emit, deployer=deployer, on_busy=on_busy)
        self.task: asyncio.Task[None] | None = None

    def _emit(self, ev: Event) -> None:
        self.events.append(ev)
        self.queue.put_nowait(ev)

    async def start(self, **kwargs: Any) -> None:
        self.task = asyncio.ensure_future(self.loop.run(**kwargs))
        await self.expect("loop_started")

    async def expect(
        self, type_: str, pred: Callable[[Event], bool] = lambda e: True, timeout: float = 10
    ) -> Event:
        async def find() -> Event:
            while True:
                ev = await self.queue.get()
                if ev.type == type_ and pred(ev):
                    return ev

        return await asyncio.wait_for(find(), timeout)

    async def until(self, cond: Callable[[], bool], timeout: float = 5.0) -> None:
        async def poll() -> None:
            while not cond():
                await asyncio.sleep(0.002)

        await asyncio.wait_for(poll(), timeout)

    async def stop(self) -> None:
        self.loop.stop()
        if self.task is not None:
            await asyncio.wait_for(self.task, 10)

    def types(self) -> list[str]:
        return [e.type for e in self.events if e.type != "build_output"]
