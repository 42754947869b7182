"""Optional caches never fail a good deploy or build (issue 18, finding 2):
the verified-layout cache and the `.lnk` blob cache degrade to "not cached"
with one warning when their directory is missing, full, read-only or not a
directory, against real esptool deploys to the virtual board."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest

from fbuild_watch.build import detect_backend, run_build
from fbuild_watch.deploy import FlashCache
from fbuild_watch.events import Event
from fbuild_watch.lnk.cache import BlobCache
from fbuild_watch.lnk.fetch import Fetcher
from fbuild_watch.lnk.resolve import Resources
from fbuild_watch.session import MultiDeployer, SessionOptions, WatchSession
from tests.examplekit import copy_example
from tests.lnkkit import BlobServer, serve, write_pointer
from tests.simkit import new_board
from tests.test_deploy import Builds, builds, flash_holds, rig

__all__ = ["builds"]  # the module fixture, shared with test_deploy


def _not_a_dir(tmp_path: Path) -> Path:
    """A cache root whose parent is a regular file: every write fails with
    ENOTDIR, as root too (chmod does not stop root)."""
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache dir should be")
    return blocker / "cache"


def _failing_writes(monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    """The cache's writes fail as on a full (ENOSPC) or read-only (EROFS) disk."""
    import fbuild_watch.deploy.trust as trust

    def refuse(path: Path, _data: bytes, **_kw: object) -> None:
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(trust, "atomic_write", refuse)


@pytest.mark.parametrize("fault", ["not-a-dir", "full", "read-only", "uncreatable"])
def test_verified_deploy_is_ok_whatever_the_flash_cache_does(
    builds: Builds, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    root = tmp_path / "cache"
    if fault == "not-a-dir":
        root = _not_a_dir(tmp_path)
    elif fault == "full":
        _failing_writes(monkeypatch, errno.ENOSPC)
    elif fault == "read-only":
        _failing_writes(monkeypatch, errno.EROFS)
    else:
        root = Path("/proc/self/no-such-dir/cache")  # mkdir fails (ENOENT), as root too
    r = rig(tmp_path, cache=FlashCache(root))
    mark = len(r.data)
    o = r.dep.deploy(builds.v1)
    assert o.ok and o.kind == "verify-probe", o.error
    assert o.flash_state == "verified" and flash_holds(r.board, builds.v1)
    assert len(o.warnings) == 1 and "flash cache not saved" in o.warnings[0]
    assert "warning: flash cache not saved" in o.summary()
    assert o.as_dict()["warnings"] == o.warnings and o.as_dict()["ok"]
    # reset into the app (not left in the ROM bootloader), trust kept
    r.wait_for("blink-c3 version 1.0.0", mark)
    assert r.dep.trust.trusted is not None
    assert r.dep.deploy(builds.v1).kind == "trust-skip"
    # one warning: the next write that cannot be cached says nothing more
    o = r.dep.deploy(builds.v2)
    assert o.ok and o.kind == "sector-delta" and o.warnings == [], o.error
    r.conn.close()


def test_flash_cache_warns_again_only_after_it_worked(tmp_path: Path) -> None:
    cache = FlashCache(_not_a_dir(tmp_path))
    assert cache.save("aa:bb", {0: b"x"}) is not None
    assert cache.save("aa:bb", {0: b"x"}) is None
    (tmp_path / "blocker").unlink()
    assert cache.save("aa:bb", {0: b"x"}) is None  # works again
    assert cache.load("aa:bb") == {0: b"x"}
    shutil.rmtree(tmp_path / "blocker")
    (tmp_path / "blocker").write_text("a file again")
    assert cache.save("aa:bb", {0: b"x"}) is not None  # a new episode: one new warning


def test_watch_session_deploy_with_a_file_as_cache_dir(
    builds: Builds, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FBUILD_CACHE_DIR", str(_not_a_dir(tmp_path)))
    board = new_board()
    events: list[Event] = []
    session = WatchSession(
        SessionOptions(project=builds.project, ports=[f"sim://{board.name}"]),
        events.append,
        lambda *_a: None,
    )
    session.setup()

    async def go() -> None:
        session.open_boards()
        deployer = MultiDeployer(session)
        boots = board.counters.app_boots
        assert await deployer.deploy(builds.v1, full=False, app_only=False)
        for _ in range(500):  # the board boots on its own thread
            if board.counters.app_boots > boots:
                break
            await asyncio.sleep(0.01)
        assert board.counters.app_boots > boots  # in its app, not in the ROM bootloader
        assert await deployer.deploy(builds.v1, full=False, app_only=False)

    try:
        asyncio.run(go())
    finally:
        session.close()
    done = [e.data for e in events if e.type == "deploy_finished"]
    assert [d["kind"] for d in done] == ["verify-probe", "trust-skip"]
    assert all(d["ok"] for d in done)
    assert len(done[0]["warnings"]) == 1 and done[1]["warnings"] == []


def test_cli_deploy_json_with_a_file_as_cache_dir(
    builds: Builds,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fbuild_watch.cli import main

    monkeypatch.setenv("FBUILD_CACHE_DIR", str(_not_a_dir(tmp_path)))
    project = copy_example(tmp_path / "proj")
    assert run_build(detect_backend(project)).ok
    board = new_board()
    assert main(["deploy", str(project), "--port", f"sim://{board.name}", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] and doc["flash_state"] == "verified"
    assert len(doc["warnings"]) == 1 and "blocker" in doc["warnings"][0]


# -- the .lnk blob cache --------------------------------------------------------
def _lnk_project(tmp_path: Path, server: BlobServer) -> tuple[Path, bytes]:
    project = tmp_path / "proj"
    project.mkdir()
    body = b"asset bytes " * 1000
    write_pointer(project / "logo.bin.lnk", server.add("/logo.bin", body), body)
    return project, body


@pytest.mark.parametrize("fault", ["not-a-dir", "uncreatable", "full"])
def test_lnk_download_without_a_usable_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    root = tmp_path / "cache" / "lnk"
    if fault == "not-a-dir":
        root = _not_a_dir(tmp_path) / "lnk"
    elif fault == "uncreatable":
        root = Path("/proc/self/no-such-dir/lnk")
    lines: list[str] = []
    with serve() as server:
        project, body = _lnk_project(tmp_path, server)
        cache = BlobCache(root)
        if fault == "full":
            real = tempfile.mkstemp

            def full(*a: Any, **kw: Any) -> tuple[int, str]:
                if str(kw.get("dir", "")).startswith(str(root)):
                    raise OSError(errno.ENOSPC, "No space left on device", str(kw["dir"]))
                return real(*a, **kw)

            monkeypatch.setattr(tempfile, "mkstemp", full)
        res = Resources(project, cache=cache, fetcher=Fetcher(), on_line=lines.append)
        [r] = res.sync(["logo.bin.lnk"])
        assert r.fetched and r.target.read_bytes() == body
        warnings = [line for line in lines if ": warning: " in line]
        assert len(warnings) == 1, lines
        assert "not cached" in warnings[0]
        # nothing left of the temp download, in the project or elsewhere
        out = project / ".fbuild" / "resources"
        assert sorted(p.name for p in out.iterdir()) == [".fbuild-lnk.json", "logo.bin"]
        # the next build is a stat, no download, no warning
        lines.clear()
        [r] = Resources(project, cache=cache, fetcher=Fetcher(), on_line=lines.append).sync(
            ["logo.bin.lnk"]
        )
        assert not r.fetched and not r.materialized and lines == []
        assert server.count("/logo.bin") == 1


def test_lnk_download_that_cannot_be_written_anywhere_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fbuild_watch.errors import RuntimeFailure

    with serve() as server:
        project, _body = _lnk_project(tmp_path, server)

        def full(*_a: object, **kw: object) -> tuple[int, str]:
            raise OSError(errno.ENOSPC, "No space left on device", str(kw.get("dir")))

        monkeypatch.setattr(tempfile, "mkstemp", full)
        res = Resources(project, cache=BlobCache(tmp_path / "c"), fetcher=Fetcher())
        with pytest.raises(RuntimeFailure) as err:
            res.sync(["logo.bin.lnk"])
        text = str(err.value)
        assert "\n" not in text and text.startswith(str(project / "logo.bin.lnk") + ": ")
        assert "No space left on device" in text


def test_fbuild_build_with_a_file_as_cache_dir(tmp_path: Path) -> None:
    from tests.clikit import run_fbuild
    from tests.lnkkit import blob

    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["FBUILD_CACHE_DIR"] = str(_not_a_dir(tmp_path))
    project = copy_example(tmp_path / "blink-c3")
    data = blob(4096)
    with serve() as server:
        url = server.add("/asset.bin", data)
        write_pointer(project / "assets" / "asset.bin.lnk", url, data)
        r = run_fbuild("build", str(project), env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (project / "build" / "asset.bin").read_bytes() == data
    warn = f"{project / 'assets' / 'asset.bin.lnk'}:1: warning: not cached: the blob cache"
    assert warn in r.stdout and "Not a directory" in r.stdout
    assert not list((project / ".fbuild" / "resources").glob(".lnk-download.*"))
