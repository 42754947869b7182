"""Acceptance tests of the event-driven watch set with real inotify events."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from fbuild_watch.watch import IgnoreRules, WatchOptions, WatchSet
from tests.watchkit import watching


def _tree(root: Path) -> Path:
    (root / "src").mkdir(parents=True)
    (root / "src" / "main.c").write_text("int main(void) { return 0; }\n")
    (root / "src" / "util.c").write_text("int util;\n")
    (root / "Makefile").write_text("all:\n")
    (root / "build").mkdir()
    (root / ".gitignore").write_text("*.o\nlogs/\n")
    return root


async def test_content_change_is_one_release(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    async with watching(root, outputs=[root / "build"]) as h:
        fp = h.ws.fingerprint
        (root / "src" / "main.c").write_text("int main(void) { return 1; }\n")
        cs = await h.next()
        assert cs.changed == {"src/main.c"} and not cs.removed
        assert h.ws.fingerprint != fp
        assert h.releases.empty()


async def test_touch_only_and_same_bytes_saves_do_not_release(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    async with watching(root) as h:
        fp = h.ws.fingerprint
        before = h.watcher.stats.batches
        os.utime(root / "src" / "main.c", ns=(1, 2))  # touch
        await h.settled_without_release(before)
        # editor "save" that writes the same bytes through a temp file + rename
        before = h.watcher.stats.batches
        tmp = root / "src" / ".main.c.swp"
        tmp.write_text("int main(void) { return 0; }\n")
        tmp.replace(root / "src" / "main.c")
        await h.settled_without_release(before)
        assert h.ws.fingerprint == fp
        assert h.watcher.stats.touch_only >= 1


async def test_atomic_save_with_new_content(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    async with watching(root) as h:
        tmp = root / "src" / "main.c.tmp"  # ignored name; only the rename matters
        tmp.write_text("int main(void) { return 2; }\n")
        tmp.replace(root / "src" / "main.c")
        cs = await h.next()
        assert cs.changed == {"src/main.c"}


async def test_vim_style_save(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    async with watching(root) as h:
        # vim (backupcopy=no): write 4913 probe, rename original to main.c~,
        # write new main.c, delete the backup
        probe = root / "src" / "4913"
        probe.write_text("")
        probe.unlink()
        (root / "src" / "main.c").replace(root / "src" / "main.c~")
        (root / "src" / "main.c").write_text("int main(void) { return 3; }\n")
        (root / "src" / "main.c~").unlink()
        cs = await h.next()
        assert cs.changed == {"src/main.c"} and not cs.removed


async def test_new_directory_with_files_right_after(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    async with watching(root) as h:
        deep = root / "src" / "a" / "b"
        deep.mkdir(parents=True)
        for i in range(200):
            (deep / f"f{i}.c").write_text(f"int f{i};\n")
        seen: set[str] = set()
        while len(seen) < 200:
            seen |= (await h.next()).changed
        assert seen == {f"src/a/b/f{i}.c" for i in range(200)}


async def test_directory_rename(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    (root / "src" / "drv").mkdir()
    (root / "src" / "drv" / "uart.c").write_text("int uart;\n")
    async with watching(root) as h:
        (root / "src" / "drv").rename(root / "src" / "driver")
        changed: set[str] = set()
        removed: set[str] = set()
        while "src/driver/uart.c" not in changed or "src/drv/uart.c" not in removed:
            cs = await h.next()
            changed |= cs.changed
            removed |= cs.removed
        assert "src/driver/uart.c" in h.ws and "src/drv/uart.c" not in h.ws


async def test_build_outputs_and_ignored_files_do_not_release(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    async with watching(root, outputs=[root / "build"], patterns=["docs/"]) as h:
        before = h.watcher.stats.raw_events
        (root / "build" / "app.bin").write_bytes(b"\x00" * 100)
        (root / "src" / "main.o").write_bytes(b"obj")  # .gitignore: *.o
        (root / "logs").mkdir()
        (root / "logs" / "x.log").write_text("x")  # .gitignore: logs/
        (root / "docs").mkdir()
        (root / "docs" / "a.md").write_text("a")  # [watch] ignore
        (root / "src" / ".#main.c").write_text("emacs lock")
        await h.until(lambda: h.watcher.stats.raw_events >= before + 5)
        await h.until(lambda: not h.ws.has_pending)
        assert h.releases.empty()
        (root / "src" / "util.c").write_text(
            "int util2;\n"
        )  # and a real change still comes through
        assert (await h.next()).changed == {"src/util.c"}


async def test_burst_of_10k_files_is_one_release(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    gen = root / "src" / "gen"
    gen.mkdir()
    for i in range(10_000):
        (gen / f"g{i}.h").write_text("0\n")
    async with watching(root, options=WatchOptions(quiet_ms=40)) as h:
        # a checkout: git holds index.lock while it rewrites the tree
        lock = root / ".git" / "index.lock"
        lock.parent.mkdir()

        def checkout() -> None:  # another process, running concurrently
            lock.write_text("")
            for i in range(10_000):
                (gen / f"g{i}.h").write_text("1\n")
                if i == 5_000:
                    time.sleep(0.3)  # git pausing mid-checkout, longer than the quiet period
            lock.unlink()

        await asyncio.to_thread(checkout)
        cs = await h.next(timeout=30)
        assert len(cs.changed) == 10_000
        await h.until(lambda: not h.ws.has_pending, timeout=10)
        assert h.releases.empty()
        assert h.watcher.stats.lock_waits >= 1


async def test_symlinked_file_checked_at_refresh(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    target = tmp_path.parent / f"{tmp_path.name}-outside.h"
    target.write_text("#define A 1\n")
    (root / "src" / "config.h").symlink_to(target)
    ws = WatchSet(root, IgnoreRules(root))
    ws.scan()
    assert "src/config.h" in ws
    assert not ws.refresh()  # nothing changed
    target.write_text("#define A 2\n")  # no event in the tree at all
    assert ws.refresh().changed == {"src/config.h"}


async def test_polling_mode_sees_sub_second_rewrites(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    opts = WatchOptions(quiet_ms=20, force_polling=True, poll_interval_ms=20)
    async with watching(root, options=opts) as h:
        f = root / "src" / "main.c"
        f.write_text("A" * 10)
        assert (await h.next()).changed == {"src/main.c"}
        st = f.stat()
        f.write_text("B" * 10)  # same size, same second
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1000))
        assert (await h.next()).changed == {"src/main.c"}


async def test_idle_rescan_heals_a_missed_change(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    ws = WatchSet(root, IgnoreRules(root))
    ws.scan()
    # change behind the watcher's back (as after an inotify queue overflow)
    (root / "src" / "util.c").write_text("int healed;\n")
    from fbuild_watch.watch import Watcher

    watcher = Watcher(
        ws,
        WatchOptions(quiet_ms=20, idle_rescan_s=0.2, force_polling=True, poll_interval_ms=60_000),
    )
    gen = watcher.changes()
    cs = await asyncio.wait_for(gen.__anext__(), 5)
    assert cs.changed == {"src/util.c"}
    assert watcher.stats.healed == 1
    watcher.stop()
    await gen.aclose()


def test_fingerprint_is_order_independent_and_incremental(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    a = WatchSet(root, IgnoreRules(root))
    a.scan()
    (root / "src" / "util.c").write_text("int other;\n")
    a.mark([str(root / "src" / "util.c")])
    a.refresh()
    b = WatchSet(root, IgnoreRules(root))
    b.scan()
    assert a.fingerprint == b.fingerprint  # incremental == from scratch
    shutil.rmtree(root / "src")
    a.mark([str(root / "src" / "main.c"), str(root / "src" / "util.c")])
    assert a.refresh().removed == {"src/main.c", "src/util.c"}
    c = WatchSet(root, IgnoreRules(root))
    c.scan()
    assert a.fingerprint == c.fingerprint


def test_persisted_state_hashes_only_changed_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = _tree(tmp_path / "proj")
    ws = WatchSet(root, IgnoreRules(root))
    ws.scan()
    state = tmp_path / "state.json"
    ws.save_state(state, build_fingerprint=ws.fingerprint)
    files, fp = WatchSet.load_state(state)  # type: ignore[misc]
    assert fp == ws.fingerprint
    (root / "src" / "util.c").write_text("int changed_while_away;\n")
    import fbuild_watch.watch.state as state_mod

    hashed: list[str] = []
    real = state_mod.file_digest
    monkeypatch.setattr(state_mod, "file_digest", lambda p: hashed.append(str(p)) or real(p))
    again = WatchSet(root, IgnoreRules(root))
    cs = again.scan(files)
    assert cs.changed == {"src/util.c"}
    assert hashed == [str(root / "src" / "util.c")]
    assert again.fingerprint != fp
    state.write_text("{broken")
    assert WatchSet.load_state(state) is None


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_gitignore_nested(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    (root / "src" / ".gitignore").write_text("gen_*.c\n")
    (root / "src" / "gen_a.c").write_text("x")
    ws = WatchSet(root, IgnoreRules(root))
    ws.scan()
    assert "src/gen_a.c" not in ws and "src/main.c" in ws
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    assert ".git/config" not in ws


async def test_watcher_error_falls_back_to_polling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import watchfiles

    def broken(*_a: object, **_k: object) -> object:
        raise OSError("OS file watch limit reached (MaxFilesWatch)")

    monkeypatch.setattr(watchfiles, "watch", broken)
    root = _tree(tmp_path)
    notes: list[str] = []
    from fbuild_watch.watch import Watcher

    ws = WatchSet(root, IgnoreRules(root))
    ws.scan()
    watcher = Watcher(ws, WatchOptions(quiet_ms=20, poll_interval_ms=30), on_note=notes.append)
    gen = watcher.changes()
    first = asyncio.ensure_future(gen.__anext__())
    while watcher.stats.mode != "polling":
        await asyncio.sleep(0.01)
    (root / "src" / "util.c").write_text("int seen_by_polling;\n")
    cs = await asyncio.wait_for(first, 10)
    while "src/util.c" not in cs.changed:
        cs = await asyncio.wait_for(gen.__anext__(), 10)
    assert watcher.stats.watcher_errors == 1
    assert any("falling back to polling" in n for n in notes)
    watcher.stop()
    await gen.aclose()


def test_stat_sweep_sees_file_roots(tmp_path: Path) -> None:
    """A watch path that is a file (fbuild.toml, a Makefile) is not reported
    as vanished by every idle sweep; a real change to it is."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.c").write_text("int a;\n")
    (tmp_path / "Makefile").write_text("all:\n")
    ws = WatchSet(tmp_path, IgnoreRules(tmp_path), paths=["src", "Makefile"])
    ws.scan()
    assert ws.stat_diff() == []
    (tmp_path / "Makefile").write_text("all: x\n")
    assert ws.stat_diff() == [str(tmp_path.resolve() / "Makefile")]


async def test_the_first_probe_needs_no_head_start(tmp_path: Path) -> None:
    """Probing right after the watcher starts (its inotify watches may not be
    placed yet) writes its cookie again until heard: no false "deaf", no
    restart, and no fixed sleep before it."""
    from fbuild_watch.watch import Watcher

    root = _tree(tmp_path)
    ws = WatchSet(root, IgnoreRules(root))
    ws.scan()
    watcher = Watcher(ws, WatchOptions(quiet_ms=30))

    async def consume() -> None:
        async for _ in watcher.changes():
            pass

    task = asyncio.ensure_future(consume())
    try:
        await asyncio.sleep(0)  # the source task starts; its watches come later
        assert await watcher.probe()
        assert watcher.stats.restarts == 0 and watcher.stats.cookies == 1
    finally:
        watcher.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert not list(root.rglob(".fbuild-cookie-*"))  # every cookie removed
