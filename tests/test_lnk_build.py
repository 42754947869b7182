"""A `.lnk` asset in the example firmware: resolved before each build,
embedded, and seen in the board's boot log; a changed pointer rebuilds once
and its materialized file never loops back into the watcher."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clikit import run_fbuild, watch_json
from tests.examplekit import copy_example
from tests.lnkkit import BlobServer, blob, serve, write_pointer


def checksum(data: bytes) -> str:
    """The firmware's asset_checksum(): sum = sum * 31 + byte (mod 2^32)."""
    s = 0
    for b in data:
        s = (s * 31 + b) & 0xFFFFFFFF
    return f"0x{s:08x}"


@pytest.fixture
def server() -> Iterator[BlobServer]:
    with serve() as s:
        yield s


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    e["FBUILD_CACHE_DIR"] = str(tmp_path / "cache")
    return e


def test_fbuild_build_embeds_the_lnk_asset(
    tmp_path: Path, server: BlobServer, env: dict[str, str]
) -> None:
    project = copy_example(tmp_path / "blink-c3")
    data = blob(16 * 1024)
    write_pointer(project / "assets" / "asset.bin.lnk", server.add("/asset.bin", data), data)
    r = run_fbuild("build", str(project), env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "lnk: fetching assets/asset.bin.lnk (16.0 KiB) from http://127.0.0.1" in r.stdout
    assert (project / "build" / "asset.bin").read_bytes() == data
    # a broken pointer fails the build with the file named, and nothing is built
    (project / "assets" / "asset.bin.lnk").write_text('{"v": 1}')
    r = run_fbuild("build", str(project), env=env)
    assert r.returncode == 2  # a malformed pointer is a configuration error, as in `fbuild lnk`
    assert f'{project / "assets" / "asset.bin.lnk"}: missing "url"' in r.stdout + r.stderr


def test_watch_resolves_a_changed_pointer_before_the_build(
    tmp_path: Path, server: BlobServer, env: dict[str, str]
) -> None:
    project = copy_example(tmp_path / "blink-c3")
    first, second = blob(8 * 1024, 1), blob(12 * 1024, 2)
    lnk = write_pointer(project / "assets" / "asset.bin.lnk", server.add("/v1", first), first)
    ev = watch_json(project, "sim://lnkw?timing=instant&flash=", env)
    asset_line = re.compile(r"asset (\d+) bytes, checksum (0x[0-9a-f]{8})")

    def asset_seen(size: int, data: bytes) -> None:
        line = ev.expect(lambda e: e["type"] == "serial_line" and "asset " in e["text"])
        m = asset_line.search(line["text"])
        assert m and (int(m[1]), m[2]) == (size, checksum(data)), line["text"]

    try:
        ev.expect(lambda e: e["type"] == "build_finished" and e["ok"])
        asset_seen(len(first), first)
        builds_before = sum(1 for e in ev.seen if e["type"] == "build_started")

        write_pointer(lnk, server.add("/v2", second), second)
        started = ev.expect(lambda e: e["type"] == "build_started")
        assert started["changed"] == ["assets/asset.bin.lnk"]
        out = ev.expect(lambda e: e["type"] == "build_output" and "lnk: fetching" in e["line"])
        assert "assets/asset.bin.lnk (12.0 KiB)" in out["line"]
        ev.expect(lambda e: e["type"] == "build_finished" and e["ok"])
        asset_seen(len(second), second)
        # the materialized file changed under .fbuild/resources: that must not
        # start another build. A reset and its full boot log give any such
        # build time to show up first.
        ev.send("reset")
        asset_seen(len(second), second)
        builds = [e for e in ev.seen if e["type"] == "build_started"]
        assert len(builds) == builds_before + 1
        assert server.count("/v2") == 1
        ev.send("quit")
        assert ev.proc.wait(timeout=20) == 0
    finally:
        ev.kill()
