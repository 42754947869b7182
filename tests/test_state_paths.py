"""Paths read from our own state files stay inside their directory (issue 18,
finding 3): a hostile `.fbuild-lnk.json`, `watch-state.json` or flashed-cache
manifest never makes fbuild touch anything outside; the entry is dropped
with a warning."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from fbuild_watch.deploy import FlashCache
from fbuild_watch.lnk.resolve import STATE_NAME, Resources
from fbuild_watch.watch.state import WatchSet
from tests.clikit import run_fbuild
from tests.examplekit import copy_example
from tests.test_deploy import Builds, builds, rig

__all__ = ["builds"]  # the module fixture, shared with test_deploy

_ENTRY = {"sha256": "0" * 64, "extract": "zip", "stat": None, "from": "x.lnk"}


def _victim(where: Path) -> Path:
    where.mkdir(parents=True)
    (where / "precious.txt").write_text("keep me")
    return where


def _hostile_lnk_state(tmp_path: Path, project: Path) -> list[Path]:
    """A resource state naming three directories outside the project: by
    `..`, by an absolute path and through a symlinked directory."""
    out = project / ".fbuild" / "resources"
    out.mkdir(parents=True)
    by_dots = _victim(tmp_path / "victim-dots")
    by_abs = _victim(tmp_path / "victim-abs")
    by_link = _victim(tmp_path / "victim-link")
    by_entry = _victim(tmp_path / "victim-entry")
    (out / "escape").symlink_to(tmp_path)  # a directory symlink leading out
    (out / "fonts").symlink_to(by_entry)  # an entry that is itself a symlink: unlinked only
    rel_dots = os.path.relpath(by_dots, out)
    assert rel_dots.startswith("../")
    state = {
        rel_dots: _ENTRY,
        str(by_abs): _ENTRY,
        "escape/victim-link": _ENTRY,
        "fonts": _ENTRY,
    }
    (out / STATE_NAME).write_text(json.dumps(state))
    return [by_dots, by_abs, by_link, by_entry]


def test_hostile_lnk_state_touches_nothing_outside(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    victims = _hostile_lnk_state(tmp_path, project)
    lines: list[str] = []
    assert Resources(project, on_line=lines.append).sync([]) == []
    for v in victims:
        assert (v / "precious.txt").read_text() == "keep me"
    assert not (project / ".fbuild" / "resources" / "fonts").is_symlink()  # a stale entry: gone
    state_file = project / ".fbuild" / "resources" / STATE_NAME
    warnings = [line for line in lines if line.startswith(f"{state_file}:1: warning: entry ")]
    assert len(warnings) == 3, lines
    assert all("dropped" in w for w in warnings)
    # the file is rewritten without them: the next build says nothing
    assert json.loads(state_file.read_text()) == {}
    lines.clear()
    Resources(project, on_line=lines.append).sync([])
    assert lines == []


def test_fbuild_build_with_a_hostile_lnk_state(tmp_path: Path) -> None:
    project = copy_example(tmp_path / "blink-c3")
    victims = _hostile_lnk_state(tmp_path, project)
    r = run_fbuild("build", str(project))
    assert r.returncode == 0, r.stdout + r.stderr
    for v in victims:
        assert (v / "precious.txt").read_text() == "keep me"
    assert r.stdout.count(": warning: entry ") >= 3


def test_watch_state_paths_outside_the_project_are_dropped(tmp_path: Path) -> None:
    state = tmp_path / "watch-state.json"
    rec = (b"\0" * 24 + b"\1" * 16).hex()
    files = {"src/main.c": rec, "../../etc/passwd": rec, "/etc/shadow": rec, "a/./b": rec}
    state.write_text(json.dumps({"version": 1, "files": files, "build_fingerprint": "f"}))
    warnings: list[str] = []
    loaded = WatchSet.load_state(state, warnings=warnings)
    assert loaded is not None
    assert set(loaded[0]) == {"src/main.c"} and loaded[1] == "f"
    assert len(warnings) == 1 and "'../../etc/passwd' and 2 more" in warnings[0]


def _manifest(d: Path, entries: list[tuple[int, str, bytes]]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    regions = [
        {"offset": off, "size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "file": f}
        for off, f, data in entries
    ]
    (d / "manifest.json").write_text(json.dumps({"version": 1, "regions": regions}))


def test_flash_cache_manifest_entries_outside_are_ignored(tmp_path: Path) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"outside")
    cache = FlashCache(tmp_path / "cache")
    d = tmp_path / "cache" / "aabbcc"
    (d).mkdir(parents=True)
    (d / "00008000.bin").write_bytes(b"inside")
    (d / "link.bin").symlink_to(secret)
    _manifest(
        d,
        [
            (0x8000, "00008000.bin", b"inside"),
            (0x0, "../../secret.bin", b"outside"),
            (0x1000, str(secret), b"outside"),
            (0x2000, "link.bin", b"outside"),
        ],
    )
    warnings: list[str] = []
    assert cache.load("aa:bb:cc", warnings.append) == {0x8000: b"inside"}
    assert len(warnings) == 3 and all("points outside" in w for w in warnings)


def test_deploy_with_a_hostile_flash_cache_warns_and_flashes(
    builds: Builds, tmp_path: Path
) -> None:
    cache = FlashCache(tmp_path / "cache")
    secret = tmp_path / "secret.bin"
    app = builds.v1.layout.region("app")
    assert app is not None
    secret.write_bytes(app.data)
    # the board's MAC in the sim is fixed (test_deploy: 58:cf:79:a1:b2:c3)
    _manifest(tmp_path / "cache" / "58cf79a1b2c3", [(app.offset, "../../secret.bin", app.data)])
    r = rig(tmp_path, cache=cache)
    o = r.dep.deploy(builds.v1)
    assert o.ok and o.kind == "verify-probe", o.error
    assert not any("cached last layout confirmed" in line for line in o.log)
    assert len(o.warnings) == 1 and "points outside" in o.warnings[0]
    assert secret.read_bytes() == app.data
    r.conn.close()


@pytest.mark.parametrize("key", ["", ".", "a/../b", "a//b"])
def test_odd_lnk_state_keys_are_dropped(tmp_path: Path, key: str) -> None:
    project = tmp_path / "proj"
    out = project / ".fbuild" / "resources"
    out.mkdir(parents=True)
    (out / "keep.txt").write_text("x")
    (out / STATE_NAME).write_text(json.dumps({key: _ENTRY}))
    lines: list[str] = []
    Resources(project, on_line=lines.append).sync([])
    assert (out / "keep.txt").exists() and len(lines) == 1
