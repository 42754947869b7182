"""The watch set against a stat-walk fingerprint (what make/ninja and the
seeds' tool do before every build), measured in the same run.

* decision: "is anything changed?" with nothing dirty and with 5 dirty files,
  on trees of 1k, 10k and 100k files;
* save -> build start: file write to the loop's `build_started` event;
* a real `git checkout` of 10k changed files -> number of builds;
* memory per watched file at 100k files.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

from bench.common import ROOT, save, stats_ms
from fbuild_watch.build.backends import detect_backend
from fbuild_watch.events import Event
from fbuild_watch.loop import WatchLoop
from fbuild_watch.watch import IgnoreRules, Watcher, WatchOptions, WatchSet

SIZES = (1_000, 10_000, 100_000)
FILES_PER_DIR = 100


def make_tree(root: Path, n: int) -> list[Path]:
    files = []
    for i in range(n):
        d = root / "src" / f"d{i // FILES_PER_DIR:04d}"
        if i % FILES_PER_DIR == 0:
            d.mkdir(parents=True, exist_ok=True)
        f = d / f"f{i:06d}.c"
        f.write_text(f"int v{i} = {i};\n")
        files.append(f)
    return files


def stat_walk_fingerprint(root: Path) -> str:
    """The peer: walk and lstat every file, hash (path, mtime_ns, size)."""
    h = hashlib.blake2b(digest_size=16)
    stack = [str(root)]
    while stack:
        d = stack.pop()
        with os.scandir(d) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                else:
                    st = e.stat(follow_symlinks=False)
                    h.update(f"{e.path}\0{st.st_mtime_ns}\0{st.st_size}\n".encode())
    return h.hexdigest()


def decision_times(n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        files = make_tree(root, n)
        ws = WatchSet(root, IgnoreRules(root))
        ws.scan()
        reps = 200 if n <= 10_000 else 50

        def ours_clean() -> None:
            if ws.has_pending:  # the hot path: nothing dirty
                ws.refresh()

        def ours_dirty(k: int) -> None:
            ws.mark([str(f) for f in files[k : k + 5]])
            if ws.has_pending:
                ws.refresh()

        clean = []
        for _ in range(reps):
            t0 = time.perf_counter()
            ours_clean()
            clean.append(time.perf_counter() - t0)
        dirty = []
        for r in range(reps):
            for f in files[r * 5 : r * 5 + 5]:
                f.write_text(f"int changed{r};\n")
            t0 = time.perf_counter()
            ours_dirty(r * 5)
            dirty.append(time.perf_counter() - t0)
        walk = []
        for _ in range(max(5, reps // 10)):
            t0 = time.perf_counter()
            stat_walk_fingerprint(root)
            walk.append(time.perf_counter() - t0)
    c, d, w = stats_ms(clean), stats_ms(dirty), stats_ms(walk)
    return {
        "files": n,
        "ours_nothing_dirty": c,
        "ours_5_dirty": d,
        "stat_walk": w,
        "speedup_nothing_dirty": round(w["median_ms"] / max(c["median_ms"], 1e-6)),
        "speedup_5_dirty": round(w["median_ms"] / max(d["median_ms"], 1e-6), 1),
    }


def memory_per_file(n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_tree(root, n)
        gc.collect()
        tracemalloc.start()
        ws = WatchSet(root, IgnoreRules(root))
        ws.scan()
        gc.collect()
        current, _peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert len(ws) == n
    return {"files": n, "bytes_total": current, "bytes_per_file": round(current / n, 1)}


def _fast_project(root: Path) -> Path:
    """A project whose build is instant, so the loop is ready for each edit."""
    (root / "src").mkdir(parents=True)
    (root / "src" / "main.c").write_text("int x;\n")
    ex = ROOT / "examples" / "blink-c3" / "build"
    flash = "".join(
        f'[[flash]]\noffset = {off}\nfile = "{ex / name}"\n'
        for off, name in (
            (0, "bootloader.bin"),
            (0x8000, "partition-table.bin"),
            (0x10000, "blink-c3.bin"),
        )
    )
    (root / "fbuild.toml").write_text(
        f'[build]\ncommand = ["true"]\n[watch]\npaths = ["src"]\n{flash}'
    )
    return root


async def _save_to_build_start(project: Path, edits: int) -> list[float]:
    backend = detect_backend(project)
    ws = WatchSet(project, IgnoreRules(project, output_dirs=backend.output_dirs()), paths=["src"])
    watcher = Watcher(ws, WatchOptions())  # the default quiet period
    q: asyncio.Queue[Event] = asyncio.Queue()
    loop = WatchLoop(backend, ws, watcher, q.put_nowait)
    task = asyncio.ensure_future(loop.run(startup_build=True))

    async def expect(t: str) -> Event:
        while True:
            ev = await asyncio.wait_for(q.get(), 10)
            if ev.type == t:
                return ev

    await expect("cycle_finished")
    await asyncio.sleep(0.3)  # let the watcher place its inotify watches before timing
    samples = []
    main_c = project / "src" / "main.c"
    for i in range(edits):
        t0 = time.perf_counter()
        main_c.write_text(f"int x = {i};\n")
        ev = await expect("build_started")
        samples.append(time.perf_counter() - t0)
        assert ev.data["changed"] == ["src/main.c"]
        await expect("cycle_finished")
    loop.stop()
    await task
    return samples


async def _naive_awatch_latency(root: Path, edits: int) -> list[float]:
    """Peer: watchfiles with its defaults, as a naive watch loop uses it."""
    import watchfiles

    f = root / "src" / "main.c"
    samples: list[float] = []
    stop = asyncio.Event()
    started = asyncio.Event()
    got: asyncio.Queue[float] = asyncio.Queue()

    async def consume() -> None:
        async for _ in watchfiles.awatch(
            root, stop_event=stop, rust_timeout=200, yield_on_timeout=True
        ):
            started.set()
            got.put_nowait(time.perf_counter())

    task = asyncio.ensure_future(consume())
    await asyncio.wait_for(started.wait(), 5)
    await asyncio.sleep(0.3)
    while not got.empty():
        got.get_nowait()
    for i in range(edits):
        t0 = time.perf_counter()
        f.write_text(f"int y = {i};\n")
        t1 = await asyncio.wait_for(got.get(), 10)
        samples.append(t1 - t0)
        await asyncio.sleep(0.05)
        while not got.empty():
            got.get_nowait()
    stop.set()
    await task
    return samples


async def _git_checkout_builds(n: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _fast_project(root)
        gen = root / "src" / "gen"
        gen.mkdir()
        for i in range(n):
            (gen / f"g{i:05d}.h").write_text("#define V 1\n")
        git = [
            "git",
            "-c",
            "user.email=b@b",
            "-c",
            "user.name=b",
            "-c",
            "advice.detachedHead=false",
        ]
        subprocess.run([*git, "init", "-q", "-b", "main"], cwd=root, check=True)
        subprocess.run([*git, "add", "-A"], cwd=root, check=True)
        subprocess.run([*git, "commit", "-qm", "one"], cwd=root, check=True)
        subprocess.run([*git, "checkout", "-qb", "other"], cwd=root, check=True)
        for i in range(n):
            (gen / f"g{i:05d}.h").write_text("#define V 2\n")
        subprocess.run([*git, "commit", "-qam", "two"], cwd=root, check=True)
        subprocess.run([*git, "checkout", "-q", "main"], cwd=root, check=True)

        backend = detect_backend(root)
        ws = WatchSet(root, IgnoreRules(root, output_dirs=backend.output_dirs()), paths=["src"])
        watcher = Watcher(ws, WatchOptions())
        events: list[Event] = []
        q: asyncio.Queue[Event] = asyncio.Queue()

        def emit(ev: Event) -> None:
            events.append(ev)
            q.put_nowait(ev)

        loop = WatchLoop(backend, ws, watcher, emit)
        task = asyncio.ensure_future(loop.run(startup_build=True))
        while (await asyncio.wait_for(q.get(), 30)).type != "cycle_finished":
            pass
        await asyncio.sleep(0.5)
        t0 = time.perf_counter()
        await asyncio.to_thread(
            subprocess.run, [*git, "checkout", "-q", "other"], cwd=root, check=True
        )
        while (await asyncio.wait_for(q.get(), 60)).type != "cycle_finished":
            pass
        settle = time.perf_counter() - t0
        await asyncio.sleep(1.0)  # any second build would start within this window
        loop.stop()
        await task
        builds = [e for e in events if e.type == "build_started" and e.data["reason"] != "startup"]
        return {"files_changed": n, "builds": len(builds),
                "changed_in_build": builds[0].data["count"] if builds else 0,
                "checkout_to_cycle_end_ms": round(settle * 1000, 1)}  # fmt: skip


def main() -> dict[str, Any]:
    subprocess.run(["make", "-s", "-C", str(ROOT / "examples" / "blink-c3"), f"PYTHON={sys.executable}"],
                   check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    decisions = [decision_times(n) for n in SIZES]
    memory = memory_per_file(100_000)
    with tempfile.TemporaryDirectory() as tmp:
        ours = asyncio.run(_save_to_build_start(_fast_project(Path(tmp) / "p"), 50))
        naive = asyncio.run(_naive_awatch_latency(Path(tmp) / "p", 20))
    checkout = asyncio.run(_git_checkout_builds(10_000))
    result = {
        "description": "watch set vs stat-walk fingerprint; save -> build start; git checkout",
        "goals": {
            "nothing_dirty_ms": 1.0, "five_dirty_ms": 2.0, "speedup_100k": 1000,
            "save_to_build_median_ms": 60, "save_to_build_p90_ms": 100,
            "checkout_builds": 1, "bytes_per_file": 300,
        },
        "decision": decisions,
        "save_to_build_start": stats_ms(ours),
        "naive_awatch_defaults": stats_ms(naive),
        "git_checkout": checkout,
        "memory": memory,
    }  # fmt: skip
    save("watch", result)
    return result


def render(result: dict[str, Any]) -> list[str]:
    g = result["goals"]
    lines = [
        '"Is anything changed?" before a build (this machine, warm page cache). Ours: the',
        "watch set's dirty set (events mark paths; only dirty paths are re-stat'ed and",
        "hashed). Peer: a stat-walk fingerprint of the whole tree (make/ninja, the seeds' tool).",
        "",
        "| files | ours, nothing dirty | ours, 5 dirty | stat-walk | walk / ours (nothing dirty) | walk / ours (5 dirty) |",
        "|---|---|---|---|---|---|",
    ]
    for d in result["decision"]:
        lines.append(
            f"| {d['files']:,} | {d['ours_nothing_dirty']['median_ms'] * 1000:.2f} µs | {d['ours_5_dirty']['median_ms']:.3f} ms "
            f"| {d['stat_walk']['median_ms']:.1f} ms | {d['speedup_nothing_dirty']:,}x | {d['speedup_5_dirty']:,}x |"
        )
    s, n = result["save_to_build_start"], result["naive_awatch_defaults"]
    c, m = result["git_checkout"], result["memory"]
    lines += [
        "",
        f"Goals: nothing dirty < {g['nothing_dirty_ms']} ms and >= {g['speedup_100k']}x the walk at 100k; "
        f"5 dirty < {g['five_dirty_ms']} ms.",
        "",
        "| measure | ours | peer | goal |",
        "|---|---|---|---|",
        f"| save -> build start, median (n={s['n']}) | {s['median_ms']:.1f} ms | {n['median_ms']:.1f} ms "
        f"(watchfiles defaults, event only) | <= {g['save_to_build_median_ms']} ms |",
        f"| save -> build start, p90 | {s['p90_ms']:.1f} ms | {n['p90_ms']:.1f} ms | <= {g['save_to_build_p90_ms']} ms |",
        f"| `git checkout` of {c['files_changed']:,} changed files | {c['builds']} build "
        f"({c['changed_in_build']:,} files in it) | - | {g['checkout_builds']} |",
        f"| memory per watched file (100k files) | {m['bytes_per_file']:.0f} B | - | < {g['bytes_per_file']} B |",
    ]
    return lines


if __name__ == "__main__":
    main()
