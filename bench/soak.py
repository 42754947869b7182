"""Soak: the loop under a seeded random mix of edits and faults, checked
after every quiet point.

`fbuild watch`'s session (the same objects the TUI drives) runs on the
example against a virtual board with instant timing. Each step does one
thing a user (or the world) does - code, comment, asset (`.lnk`) edits,
atomic and touch-only saves, broken then fixed builds, branch-switch
bursts, full flashes, resets, unplug/replug between and during deploys,
corrupted responses, another board swapped onto the port - then waits for
the loop to go quiet and asserts:

- the board's flash holds the last successfully built layout whenever the
  last deploy claimed success, and always holds what session trust claims;
- every trust-skip happened when the board really held those bytes;
- the log file holds exactly the bytes the monitor read from the port (the
  virtual board records every host read and which thread made it);
- open file descriptors and resident memory stay flat;
- failures are seen: an unusable cache directory, a file that cannot be
  read and a second watcher on the project are each a visible event (or a
  refusal), never a failed good deploy or a silent stop; no `error` event
  (an unexpected exception in a part of the loop) is ever emitted; and at
  the end the log file's disk fills up: one warning, the monitor goes on.

`python -m bench soak` runs 200 steps; `make test` runs a short one.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import copy_example, save
from fbuild_watch import sim
from fbuild_watch.events import Event
from fbuild_watch.image.layout import ValidatedLayout
from fbuild_watch.lnk.format import dump_pointer
from fbuild_watch.session import SessionOptions, WatchSession
from fbuild_watch.sim.board import VirtualBoard
from fbuild_watch.sim.regs import ChipIdentity

ACTIONS = {  # weights
    "code_edit": 6,
    "comment_edit": 3,
    "asset_edit": 2,
    "atomic_save": 2,
    "touch_only": 2,
    "broken_then_fixed": 2,
    "branch_switch": 1,
    "full_flash": 1,
    "reset": 2,
    "unplug_replug": 2,
    "unplug_during_deploy": 2,
    "corrupt_responses": 1,
    "swap_board": 1,
    "cache_unusable": 1,
    "unreadable_file": 1,
    "second_watcher": 1,
}


class SoakFailure(AssertionError):
    pass


@dataclass
class Soak:
    root: Path
    seed: int
    board: VirtualBoard
    project: Path
    log_path: Path
    rng: random.Random
    events: list[Event] = field(default_factory=list)
    faults: collections.Counter[str] = field(default_factory=collections.Counter)
    outcomes: collections.Counter[str] = field(default_factory=collections.Counter)
    last_ok: bool = False  # the last deploy's outcome (the board holds the last layout)
    version: int = 0
    blobs: list[bytes] = field(default_factory=list)
    session: WatchSession | None = None
    failure: SoakFailure | None = None  # found inside an event callback
    lines_seen: int = 0  # serial lines the views were handed

    def on_serial(
        self, _board: str, _port: str, _t: float, lines: list[str], _notes: object = ()
    ) -> None:
        self.lines_seen += len(lines)

    # -- events -----------------------------------------------------------------
    def emit(self, ev: Event) -> None:
        try:
            self._observe(ev)
        except SoakFailure as exc:  # raised at the next quiet point, not into the session
            self.failure = self.failure or exc

    def _observe(self, ev: Event) -> None:
        self.events.append(ev)
        if ev.type == "deploy_finished":
            kind = str(ev.data.get("kind"))
            self.outcomes[kind] += 1
            self.last_ok = bool(ev.data.get("ok"))
            if not self.last_ok:
                assert self.session is not None
                trust = self.session.boards[0].deployer.trust
                self.require(trust.trusted is None, "a failed deploy left trust set")
            if kind == "trust-skip":
                # honest only if the board really holds the layout right now
                layout = self.loop.last_layout
                assert layout is not None
                self.require(self.flash_matches(layout), "trust-skip but the board differs")

    @property
    def loop(self) -> Any:
        assert self.session is not None and self.session.loop is not None
        return self.session.loop

    def require(self, cond: bool, what: str) -> None:
        if not cond:
            tail = [f"{e.type} {e.data}" for e in self.events[-12:] if e.type != "build_output"]
            raise SoakFailure(f"seed {self.seed}: {what}; last events: {tail}")

    def flash_matches(self, layout: ValidatedLayout) -> bool:
        return all(self.board.flash.read(r.offset, r.size) == r.data for r in layout.layout.regions)

    # -- quiet points -----------------------------------------------------------
    async def settle(self, timeout: float = 60.0) -> None:
        loop = self.loop
        await loop.watcher.probe()
        deadline = time.monotonic() + timeout
        quiet = 0
        while quiet < 3:  # three polls in a row: nothing in flight anywhere
            if self.failure is not None:
                raise self.failure
            if time.monotonic() > deadline:
                self.require(False, "the loop never went quiet")
            busy = not (loop.watcher.idle and loop.idle)
            quiet = 0 if busy else quiet + 1
            await asyncio.sleep(0.02)

    def check(self) -> None:
        assert self.session is not None
        if self.failure is not None:
            raise self.failure
        b = self.session.boards[0]
        layout = self.loop.last_layout
        trusted = b.deployer.effective_trust()  # what the next deploy would rely on
        if trusted is not None:
            for off, data in trusted.regions.items():
                self.require(
                    self.board.flash.read(off, len(data)) == data,
                    f"trust claims bytes at 0x{off:x} the board does not hold",
                )
        if self.last_ok and self.board.present and layout is not None:
            self.require(self.flash_matches(layout), "deploy said ok but flash differs")
        if b.log_file is not None:
            b.log_file.flush()
        self.check_log(final=False)

    def check_log(self, *, final: bool) -> None:
        """The log file is what the monitor read. While the session runs the
        app keeps printing, so the chunk just read may not be written yet;
        once it has stopped, the two are identical."""
        assert self.board.host_rx_log is not None
        log = self.log_path.read_bytes() if self.log_path.exists() else b""  # first: every
        chunks = [d for who, d in list(self.board.host_rx_log) if who.startswith("reader-")]
        read = b"".join(chunks)  # byte in the log was read before it was written
        in_flight = 0 if final else sum(len(c) for c in chunks[-3:])
        self.require(
            read.startswith(log) and len(read) - len(log) <= in_flight,
            f"log file has {len(log)} bytes, the monitor read {len(read)}",
        )
        self.require(
            not any(who.startswith("flush:reader-") for who, _ in self.board.host_rx_log),
            "the monitor threw away unread input",
        )

    # -- actions ----------------------------------------------------------------
    def _write(self, rel: str, text: str) -> None:
        (self.project / rel).write_text(text)

    def bump_version(self) -> None:
        self.version += 1
        self._write("src/version.h", f'#define APP_VERSION "9.{self.seed}.{self.version}"\n')

    async def act(self, name: str) -> None:
        p = self.project
        if name == "code_edit":
            self.bump_version()
        elif name == "comment_edit":
            main = p / "src" / "main.c"
            main.write_text(main.read_text() + f"/* soak {self.rng.random()} */\n")
        elif name == "asset_edit":
            data = self.rng.choice(self.blobs)
            mirror = self.root / f"blob-{hash(data) & 0xFFFF}.bin"
            mirror.write_bytes(data)
            import hashlib

            ptr = dump_pointer(mirror.as_uri(), hashlib.sha256(data).hexdigest(), len(data))
            (p / "assets" / "asset.bin.lnk").write_bytes(ptr)
        elif name == "atomic_save":
            self.version += 1 if self.rng.random() < 0.5 else 0
            tmp = p / "src" / ".version.h.swp"
            tmp.write_text(f'#define APP_VERSION "9.{self.seed}.{self.version}"\n')
            tmp.replace(p / "src" / "version.h")
        elif name == "touch_only":
            os.utime(p / "src" / "hal.c")
        elif name == "broken_then_fixed":
            main = p / "src" / "main.c"
            good = main.read_text()
            main.write_text(good.replace("led_init();", "led_init()", 1))
            await self.settle()
            self.require(
                any(e.type == "build_finished" and not e.data["ok"] for e in self.events[-40:]),
                "a broken build was not reported",
            )
            self.check()  # the board still runs (and holds) the last good build
            main.write_text(good)
            self.bump_version()
        elif name == "branch_switch":
            lock = p / ".git" / "index.lock"
            lock.parent.mkdir(exist_ok=True)
            lock.write_text("")
            for i in range(20):
                self._write(f"src/gen_{i}.h", f"/* branch {self.rng.random()} */\n")
            self.bump_version()
            lock.unlink()
        elif name == "full_flash":
            self.session.command("full-flash")  # type: ignore[union-attr]
        elif name == "reset":
            self.session.command("reset")  # type: ignore[union-attr]
        elif name == "unplug_replug":
            self.board.unplug()
            self.last_ok = False  # an unplugged board proves nothing until redeployed
            await self.settle()
            self.board.replug()
            self.faults["unplug"] += 1
        elif name == "unplug_during_deploy":
            # any loader command deploys have used: connect, probe, erase or write
            used = sorted(c for c in self.board.counters.commands if c.isupper())
            self.board.faults.drop_on_command = self.rng.choice(used or ["SYNC"])
            self.bump_version()
            await self.settle()
            if not self.board.present:
                self.faults["unplug_mid_deploy"] += 1
                self.board.replug()  # the loop redeploys the build the board missed
            self.board.faults.drop_on_command = None
        elif name == "corrupt_responses":
            self.board.faults.corrupt_frames = self.rng.randint(1, 3)
            self.bump_version()
            await self.settle()
            self.faults["corrupt_frames"] += 1
            self.board.faults.corrupt_frames = 0
            if self.outcomes and not self.last_ok:
                self.session.command("full-flash")  # type: ignore[union-attr]
        elif name == "swap_board":
            self.board.unplug()
            self.last_ok = False
            await self.settle()
            mac = bytes([0x58, 0xCF, 0x79]) + self.rng.randbytes(3)
            self.board.set_identity(ChipIdentity(mac=mac))
            # the other board holds something else: scribble over the app
            self.board.flash.erase(0x10000, 0x10000)
            self.board.replug()
            self.faults["board_swap"] += 1
            await self.settle()
            self.bump_version()  # the next change deploys to the new board
        elif name == "cache_unusable":
            # the optional cache dir turns into a file: deploys must stay ok
            cache = Path(os.environ["FBUILD_CACHE_DIR"])
            aside = cache.with_name("cache-aside")
            if cache.exists():
                cache.replace(aside)
            cache.write_text("not a directory")
            before = len(self.events)
            self.bump_version()
            await self.settle()
            cache.unlink()
            if aside.exists():
                aside.replace(cache)
            deployed = [e for e in self.events[before:] if e.type == "deploy_finished"]
            self.require(
                all(e.data["ok"] for e in deployed if self.board.present),
                "an unusable cache failed a good deploy",
            )
            self.faults["cache_unusable"] += 1
        elif name == "unreadable_file":
            from fbuild_watch.watch import state as watch_state

            real = watch_state.file_digest

            def digest(path: str | os.PathLike[str]) -> bytes:
                if Path(path).name == "unreadable.h":  # root reads everything: injected
                    raise PermissionError(13, "Permission denied", str(path))
                return real(path)

            watch_state.file_digest = digest
            before = len(self.events)
            try:
                self._write("src/unreadable.h", f"/* {self.rng.random()} */\n")
                await self.settle()
            finally:
                watch_state.file_digest = real
            self.require(
                any(
                    e.type == "warning" and "unreadable.h" in e.data["message"]
                    for e in self.events[before:]
                ),
                "an unreadable file was not reported",
            )
            (p / "src" / "unreadable.h").unlink()
            self.bump_version()  # and the loop still builds and deploys
            self.faults["unreadable_file"] += 1
        elif name == "second_watcher":
            from fbuild_watch.errors import RuntimeFailure
            from fbuild_watch.project_lock import ProjectLock

            try:
                ProjectLock(p).acquire()
                self.require(False, "a second watcher got the project lock")
            except RuntimeFailure:
                self.faults["second_watcher_refused"] += 1
        await self.settle()
        self.check()
        self.require(
            not [e for e in self.events if e.type == "error"],
            "a part of the loop failed unexpectedly",
        )

    async def log_disk_full(self) -> None:
        """The log file's disk fills up (/dev/full: every write is ENOSPC):
        one warning, the log file is turned off, the monitor goes on."""
        assert self.session is not None
        before = len(self.events)
        lines_before = self.lines_seen
        self.session.set_log_file(Path("/dev/full"))
        self.bump_version()
        await self.settle()
        self.session.set_log_file(None)
        warnings = [
            e
            for e in self.events[before:]
            if e.type == "warning" and "/dev/full" in str(e.data.get("message"))
        ]
        self.require(len(warnings) == 1, f"{len(warnings)} warnings for a full log disk")
        self.require(self.lines_seen > lines_before, "the monitor stopped with the log file")
        self.require(self.last_ok, "a full log disk failed a deploy")
        self.faults["log_disk_full"] += 1


def _fds() -> int:
    fd_dir = Path("/proc/self/fd")
    return sum(1 for _ in fd_dir.iterdir()) if fd_dir.is_dir() else -1


def _rss_kib() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return -1


async def _run(soak: Soak, steps: int) -> dict[str, Any]:
    opts = SessionOptions(
        project=soak.project,
        ports=[f"sim://{soak.board.name}"],
        log_file=soak.log_path,
        build_on_start=True,
    )
    session = soak.session = WatchSession(opts, soak.emit, soak.on_serial)
    session.setup()
    task = asyncio.ensure_future(session.run())
    while (
        session.loop is None
        or not soak.events
        or not any(e.type == "deploy_finished" for e in soak.events)
    ):
        await asyncio.sleep(0.02)
        if task.done():
            await task
    await soak.settle()
    soak.check()
    names, weights = zip(*ACTIONS.items(), strict=True)
    done: collections.Counter[str] = collections.Counter()
    spent: collections.Counter[str] = collections.Counter()
    samples: list[tuple[int, int, int]] = []
    t0 = time.monotonic()
    for step in range(steps):
        name = soak.rng.choices(names, weights)[0]
        t_act = time.monotonic()
        await soak.act(name)
        done[name] += 1
        spent[name] += time.monotonic() - t_act
        if step % 10 == 0:
            gc.collect()
            samples.append((step, _fds(), _rss_kib()))
    elapsed = time.monotonic() - t0
    soak.check_log(final=False)
    await soak.log_disk_full()
    session.stop()
    await task
    warm = samples[min(2, len(samples) - 1)]
    end = samples[-1]
    builds = sum(1 for e in soak.events if e.type == "build_finished")
    return {
        "steps": steps,
        "seed": soak.seed,
        "seconds": round(elapsed, 1),
        "actions": dict(done),
        "action_mean_s": {k: round(spent[k] / done[k], 2) for k in sorted(done)},
        "faults_survived": dict(soak.faults),
        "deploy_outcomes": dict(soak.outcomes),
        "builds": builds,
        "failed_builds": sum(
            1 for e in soak.events if e.type == "build_finished" and not e.data["ok"]
        ),
        "log_bytes": soak.log_path.stat().st_size,
        "fds": {"after_warmup": warm[1], "end": end[1]},
        "rss_kib": {"after_warmup": warm[2], "end": end[2]},
    }


def run_soak(steps: int, seed: int, workdir: Path) -> dict[str, Any]:
    """Run a soak; raises SoakFailure on the first broken invariant."""
    project = copy_example(workdir)
    rng = random.Random(seed)
    old_cache = os.environ.get("FBUILD_CACHE_DIR")
    os.environ["FBUILD_CACHE_DIR"] = str(workdir / "cache")
    board = sim.add_board(VirtualBoard(f"soak{seed}", timing=sim.INSTANT, record_tx=False))
    board.host_rx_log = []
    soak = Soak(workdir, seed, board, project, workdir / "serial.log", rng)
    soak.blobs = [rng.randbytes(rng.choice([4096, 8192, 16384])) for _ in range(3)]
    try:
        result = asyncio.run(_run(soak, steps))
    finally:
        sim.remove_board(board.name)
        if old_cache is None:
            os.environ.pop("FBUILD_CACHE_DIR", None)
        else:
            os.environ["FBUILD_CACHE_DIR"] = old_cache
    result["goals"] = {"fd_growth": 0, "rss_growth_kib_max": 20_000}
    return result


def main() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        result = run_soak(200, 1, Path(tmp))
    save("soak", result)
    return result


def render(result: dict[str, Any]) -> list[str]:
    faults = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in result["faults_survived"].items())
    acts = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(result["actions"].items()))
    outs = ", ".join(f"{k} {v}" for k, v in sorted(result["deploy_outcomes"].items()))
    fds, rss = result["fds"], result["rss_kib"]
    return [
        f"{result['steps']} seeded random steps (seed {result['seed']}) on `examples/blink-c3` "
        f"against a **virtual board with instant timing**, in {result['seconds']} s. After every "
        "step the loop is allowed to go quiet, then the board's flash, session trust, every "
        "trust-skip and the log file are checked against the virtual board's own record.",
        "",
        f"- Steps: {acts}.",
        f"- Faults survived: {faults}.",
        f"- Builds {result['builds']} ({result['failed_builds']} failed on purpose); deploy "
        f"outcomes: {outs}.",
        f"- Log file: {result['log_bytes']:,} bytes, identical to what the monitor read.",
        f"- Open fds after warm-up {fds['after_warmup']}, at the end {fds['end']}; resident "
        f"memory {rss['after_warmup'] / 1024:.1f} MiB -> {rss['end'] / 1024:.1f} MiB "
        f"(goal: no fd growth, < {result['goals']['rss_growth_kib_max'] / 1024:.0f} MiB growth).",
    ]
