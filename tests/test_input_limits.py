"""Input limits (issue 18, finding 9): image files are regular files no
larger than the flash; archives are refused from their own metadata before
anything is written, stop at the limit while streaming when the metadata
lies, and a refused archive is remembered by SHA-256 instead of being
fetched and extracted again on every build. Hostile inputs are built small
(a forged header, a lowered limit) so that each test takes well under 1 s."""

from __future__ import annotations

import io
import os
import struct
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fbuild_watch.errors import ImageError, RuntimeFailure
from fbuild_watch.image.loaders import load_flasher_args, load_pairs
from fbuild_watch.lnk import materialize
from fbuild_watch.lnk.materialize import ArchiveError, extract_archive, zip_entry_count
from fbuild_watch.lnk.resolve import REFUSED_NAME, Resources
from tests.clikit import run_fbuild
from tests.lnkkit import BlobServer, serve, write_pointer


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FBUILD_CACHE_DIR", str(tmp_path / "cache"))
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def server() -> Iterator[BlobServer]:
    with serve() as s:
        yield s


# -- image files -------------------------------------------------------------------
def test_image_symlinked_to_dev_zero_is_refused_at_once(tmp_path: Path) -> None:
    app = tmp_path / "app.bin"
    app.symlink_to("/dev/zero")
    t0 = time.monotonic()
    with pytest.raises(ImageError, match="not a regular file") as err:
        load_pairs([(0x10000, app)], chip="esp32c3")
    assert time.monotonic() - t0 < 1.0
    assert str(err.value).startswith(f"{app}: ")


def test_image_fifo_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "app.bin"
    os.mkfifo(fifo)
    done = threading.Event()
    errors: list[BaseException] = []

    def load() -> None:
        try:
            load_pairs([(0x10000, fifo)], chip="esp32c3")
        except BaseException as exc:
            errors.append(exc)
        done.set()

    threading.Thread(target=load, daemon=True).start()
    assert done.wait(2.0), "opening a FIFO blocked"
    assert isinstance(errors[0], ImageError) and "not a regular file" in str(errors[0])


def test_image_larger_than_the_flash_is_refused_before_it_is_read(tmp_path: Path) -> None:
    big = tmp_path / "app.bin"
    with big.open("wb") as f:  # sparse: no disk, no memory
        f.truncate((1 << 20) + 1)
    with pytest.raises(ImageError, match=r"1048577 bytes, larger than the 1MB flash"):
        load_pairs([(0x10000, big)], chip="esp32c3", flash_size=1 << 20)
    with big.open("wb") as f:
        f.truncate((16 << 20) + 1)
    with pytest.raises(ImageError, match="larger than 16 MiB"):
        load_pairs([(0x10000, big)], chip="esp32c3")


def test_flasher_args_region_on_dev_zero_and_the_cli(tmp_path: Path) -> None:
    (tmp_path / "zero.bin").symlink_to("/dev/zero")
    doc = (
        '{"flash_files": {"0x10000": "zero.bin"}, "app": {"offset": "0x10000"},'
        ' "flash_settings": {"flash_size": "4MB"}, "extra_esptool_args": {"chip": "esp32c3"}}'
    )
    (tmp_path / "flasher_args.json").write_text(doc)
    with pytest.raises(ImageError, match="app file is not a regular file"):
        load_flasher_args(tmp_path / "flasher_args.json")
    r = run_fbuild("image", "info", "0x10000", str(tmp_path / "zero.bin"), "--chip", "esp32c3")
    assert r.returncode != 0
    assert f"{tmp_path / 'zero.bin'}: app file is not a regular file" in r.stderr
    # the layout file itself too
    (tmp_path / "layout.json").symlink_to("/dev/zero")
    with pytest.raises(ImageError, match="not a regular file"):
        load_flasher_args(tmp_path / "layout.json")


# -- archives ------------------------------------------------------------------------
def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _declared_size_lie(data: bytes, size: int) -> bytes:
    """The zip with its central directory claiming `size` bytes for every
    entry (a zip bomb declares what it expands to)."""
    out = bytearray(data)
    i = out.find(b"PK\x01\x02")
    while i >= 0:
        out[i + 24 : i + 28] = struct.pack("<I", size)
        i = out.find(b"PK\x01\x02", i + 4)
    return bytes(out)


@pytest.fixture
def no_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_a: object) -> None:
        raise AssertionError("an entry was written")

    monkeypatch.setattr(materialize, "_write_member", refuse)


def test_zip_declaring_a_bomb_is_refused_before_a_byte_is_written(
    tmp_path: Path, no_writes: None
) -> None:
    bomb = tmp_path / "bomb.zip"
    # two entries of 4 GiB - 1 each: "8 GiB" from a few hundred bytes
    bomb.write_bytes(_declared_size_lie(_zip({"a": b"\0" * 1000, "b": b"\0"}), 0xFFFFFFFF))
    with pytest.raises(ArchiveError, match="expands past the limit of 4294967296 bytes"):
        extract_archive(bomb, "zip", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["bomb.zip"]


def test_zip_whose_header_understates_stops_at_the_limit_while_streaming(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the metadata check bypassed, as if the headers lied: the streaming
    # count still refuses before the bytes on disk pass the limit
    monkeypatch.setattr(materialize, "_check_zip", lambda *_a: None)
    z = tmp_path / "z.zip"
    z.write_bytes(_zip({"a": b"\0" * (3 << 20), "b": b"\0" * (3 << 20)}))
    written: list[int] = []
    real = materialize._Budget.add

    def add(self: materialize._Budget, n: int) -> None:
        staged = sum(p.stat().st_size for p in tmp_path.rglob("*") if p.is_file() and p != z)
        written.append(staged)
        real(self, n)

    monkeypatch.setattr(materialize._Budget, "add", add)
    with pytest.raises(ArchiveError, match="expands past the limit"):
        extract_archive(z, "zip", tmp_path / "out", max_bytes=4 << 20)
    assert max(written) <= 4 << 20
    assert not (tmp_path / "out").exists()


def _forged_zip64(entries: int) -> bytes:
    """End records only (zip64 locator and record): what `zip_entry_count`
    reads; a real archive with this many entries takes seconds to build."""
    body = b"PK\x03\x04" + b"\0" * 26
    z64 = struct.pack("<4sQHHIIQQQQ", b"PK\x06\x06", 44, 45, 45, 0, 0, entries, entries, 0, 0)
    loc = struct.pack("<4sIQI", b"PK\x06\x07", 0, len(body), 1)
    eocd = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF, 0, 0, 0)
    return body + z64 + loc + eocd


def test_zip_entry_cap_from_the_end_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_writes: None
) -> None:
    many = tmp_path / "many.zip"
    many.write_bytes(_zip({f"f{i}": b"" for i in range(11)}))
    assert zip_entry_count(many) == 11

    def no_parse(*_a: object, **_k: object) -> None:
        raise AssertionError("the central directory was parsed")

    monkeypatch.setattr(zipfile, "ZipFile", no_parse)
    with pytest.raises(ArchiveError, match=r"more than 10 entries \(11\)"):
        extract_archive(many, "zip", tmp_path / "out", max_entries=10)
    forged = tmp_path / "forged.zip"
    forged.write_bytes(_forged_zip64(100_001))
    assert zip_entry_count(forged) == 100_001
    t0 = time.monotonic()
    with pytest.raises(ArchiveError, match=r"more than 100000 entries \(100001\)"):
        extract_archive(forged, "zip", tmp_path / "out")
    assert time.monotonic() - t0 < 0.5


def _tgz(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_tar_limits_are_checked_before_a_byte_is_written(tmp_path: Path, no_writes: None) -> None:
    many = tmp_path / "many.tgz"
    many.write_bytes(_tgz({f"f{i}": b"x" for i in range(11)}))
    with pytest.raises(ArchiveError, match="more than 10 entries"):
        extract_archive(many, "tar.gz", tmp_path / "out", max_entries=10)
    big = tmp_path / "big.tgz"
    big.write_bytes(_tgz({"a": b"\0" * 3000, "b": b"\0" * 3000}))
    with pytest.raises(ArchiveError, match="expands past the limit of 4096 bytes"):
        extract_archive(big, "tar.gz", tmp_path / "out", max_bytes=4096)
    # an entry we would refuse anyway, after good ones: still nothing written
    evil = tmp_path / "evil.tgz"
    evil.write_bytes(_tgz({"ok.txt": b"fine", "../up.txt": b"x"}))
    with pytest.raises(ArchiveError, match="escapes the target"):
        extract_archive(evil, "tar.gz", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_refused_archive_is_remembered_not_refetched_or_reextracted(
    tmp_path: Path, server: BlobServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "proj"
    z = _zip({f"f{i}": b"" for i in range(11)})
    write_pointer(project / "fonts.lnk", server.add("/fonts.zip", z), z, extract="zip")

    def resources() -> Resources:
        res = Resources(project)
        res.max_entries = 10
        return res

    with pytest.raises(RuntimeFailure) as first:
        resources().sync(["fonts.lnk"])
    assert str(first.value) == f"{project / 'fonts.lnk'}: archive has more than 10 entries (11)"
    assert (project / ".fbuild" / "resources" / REFUSED_NAME).is_file()
    calls: list[object] = []
    import fbuild_watch.lnk.resolve as resolve

    monkeypatch.setattr(resolve, "extract_archive", lambda *a, **k: calls.append(a))
    hits = server.count("/fonts.zip")
    (tmp_path / "cache").rename(tmp_path / "cache-gone")  # not even the cache is consulted
    with pytest.raises(RuntimeFailure) as again:
        resources().sync(["fonts.lnk"])
    assert str(again.value) == str(first.value)
    assert calls == [] and server.count("/fonts.zip") == hits
    # other limits (a newer fbuild, a configured cap): the refusal is not reused
    monkeypatch.undo()
    monkeypatch.setenv("FBUILD_CACHE_DIR", str(tmp_path / "cache-gone"))
    [r] = Resources(project).sync(["fonts.lnk"])
    assert sorted(p.name for p in r.target.iterdir()) == sorted(f"f{i}" for i in range(11))
