"""Putting a verified blob into the build tree: a hardlink (copy when links
are not possible) or a checked extraction. Whatever is there appears by one
rename, so the build never sees half of it.

Archives are untrusted input: absolute paths, `..`, symlinks, hard links and
device files are refused (zip slip), and so is an archive that would expand
past a size or entry-count limit (zip bomb). Both are checked twice: first
on the archive's own metadata, before anything is written (the zip central
directory's entry count from its end record, then the declared sizes; the
tar headers in a streaming pass), then on the bytes actually written, so a
header that lies still stops at the limit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO

from fbuild_watch.errors import RuntimeFailure

MAX_EXPANDED_BYTES = 4 << 30
MAX_ENTRIES = 100_000


class ArchiveError(RuntimeFailure):
    pass


def place_file(blob: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(blob, tmp)
        except OSError:  # another filesystem, or no hardlinks there
            shutil.copyfile(blob, tmp)
            tmp.chmod(0o444)
        _clear(dest)
        tmp.replace(dest)
    finally:
        tmp.unlink(missing_ok=True)


def _clear(dest: Path) -> None:
    """Make room for `dest` when a directory (an archive before) is there."""
    if dest.is_dir() and not dest.is_symlink():
        shutil.rmtree(dest)


def safe_member_path(name: str) -> PurePosixPath:
    """The relative path an archive entry may be written to, or ArchiveError."""
    if not name or "\x00" in name:
        raise ArchiveError(f"archive entry with an empty or NUL name: {name!r}")
    if "\\" in name:
        raise ArchiveError(f"archive entry {name!r} uses backslashes")
    path = PurePosixPath(name)
    if path.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise ArchiveError(f"archive entry {name!r} is an absolute path")
    if ".." in path.parts:
        raise ArchiveError(f"archive entry {name!r} escapes the target directory")
    parts = [p for p in path.parts if p not in ("", ".")]
    if not parts:
        raise ArchiveError(f"archive entry {name!r} has no file name")
    return PurePosixPath(*parts)


class _Budget:
    def __init__(self, max_bytes: int, max_entries: int) -> None:
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self.bytes = 0
        self.entries = 0

    def entry(self) -> None:
        self.entries += 1
        if self.entries > self.max_entries:
            raise ArchiveError(f"archive has more than {self.max_entries} entries")

    def add(self, n: int) -> None:
        self.bytes += n
        if self.bytes > self.max_bytes:
            raise ArchiveError(f"archive expands past the limit of {self.max_bytes} bytes")


def _write_member(
    src: IO[bytes], root: Path, rel: PurePosixPath, mode: int, budget: _Budget
) -> None:
    out = root.joinpath(*rel.parts)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        raise ArchiveError(f"archive entry {rel} appears twice")
    with out.open("wb") as f:
        while chunk := src.read(1 << 20):
            budget.add(len(chunk))
            f.write(chunk)
    out.chmod(0o755 if mode & 0o111 else 0o644)


_EOCD = b"PK\x05\x06"
_ZIP64_LOCATOR = b"PK\x06\x07"
_ZIP64_EOCD = b"PK\x06\x06"


def zip_entry_count(blob: Path) -> int | None:
    """Entries the zip says it holds, from its end-of-central-directory
    record (zip64 too): a few hundred bytes read, whatever the entry count.
    None when there is no such record (then zipfile says why)."""
    with blob.open("rb") as f:
        size = f.seek(0, os.SEEK_END)
        n = min(size, 22 + 0xFFFF + 20)  # the record, the longest comment, the zip64 locator
        f.seek(size - n)
        tail = f.read(n)
        i = tail.rfind(_EOCD)
        if i < 0 or len(tail) - i < 22:
            return None
        total = int.from_bytes(tail[i + 10 : i + 12], "little")
        if total == 0xFFFF and i >= 20 and tail[i - 20 : i - 16] == _ZIP64_LOCATOR:
            f.seek(int.from_bytes(tail[i - 12 : i - 4], "little"))
            rec = f.read(56)
            if rec[:4] == _ZIP64_EOCD and len(rec) == 56:
                total = int.from_bytes(rec[32:40], "little")
        return total


def _check_zip(zf: zipfile.ZipFile, budget: _Budget) -> None:
    """Refuse from the central directory alone, before writing a byte."""
    declared = 0
    for info in zf.infolist():
        rel = info.filename.rstrip("/") if info.is_dir() else info.filename
        safe_member_path(rel)
        kind = stat.S_IFMT(info.external_attr >> 16)
        if kind == stat.S_IFLNK:
            raise ArchiveError(f"archive entry {info.filename!r} is a symlink")
        if not info.is_dir() and kind not in (0, stat.S_IFREG):
            raise ArchiveError(f"archive entry {info.filename!r} is not a regular file")
        declared += info.file_size
    if declared > budget.max_bytes:
        raise ArchiveError(
            f"archive expands past the limit of {budget.max_bytes} bytes ({declared} bytes)"
        )


def _extract_zip(blob: Path, root: Path, budget: _Budget) -> None:
    try:
        count = zip_entry_count(blob)
    except OSError as exc:
        raise ArchiveError(f"cannot read the archive: {exc.strerror or exc}") from None
    if count is not None and count > budget.max_entries:
        raise ArchiveError(f"archive has more than {budget.max_entries} entries ({count})")
    try:
        zf = zipfile.ZipFile(blob)
    except zipfile.BadZipFile as exc:
        raise ArchiveError(f"not a zip archive: {exc}") from None
    with zf:
        if len(zf.infolist()) > budget.max_entries:
            raise ArchiveError(f"archive has more than {budget.max_entries} entries")
        _check_zip(zf, budget)
        for info in zf.infolist():
            budget.entry()
            rel = safe_member_path(info.filename.rstrip("/") if info.is_dir() else info.filename)
            mode = info.external_attr >> 16
            kind = stat.S_IFMT(mode)
            if kind == stat.S_IFLNK:
                raise ArchiveError(f"archive entry {info.filename!r} is a symlink")
            if info.is_dir():
                root.joinpath(*rel.parts).mkdir(parents=True, exist_ok=True)
                continue
            if kind not in (0, stat.S_IFREG):
                raise ArchiveError(f"archive entry {info.filename!r} is not a regular file")
            try:
                with zf.open(info) as src:
                    _write_member(src, root, rel, mode, budget)
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                if isinstance(exc, ArchiveError):
                    raise
                raise ArchiveError(f"corrupt zip entry {info.filename!r}: {exc}") from None


def _check_tar(blob: Path, budget: _Budget) -> None:
    """One streaming pass over the headers (the data is decompressed but not
    written): refuse an entry count, a declared size or an entry we would
    refuse anyway, before anything is written. Stops at the first excess."""
    entries = declared = 0
    try:
        with tarfile.open(blob, "r|gz") as tf:
            for m in tf:
                entries += 1
                if entries > budget.max_entries:
                    raise ArchiveError(f"archive has more than {budget.max_entries} entries")
                safe_member_path(m.name.rstrip("/") if m.isdir() else m.name)
                if m.issym() or m.islnk():
                    raise ArchiveError(f"archive entry {m.name!r} is a link")
                if not (m.isdir() or m.isfile()):
                    raise ArchiveError(f"archive entry {m.name!r} is a device or special file")
                declared += m.size
                if declared > budget.max_bytes:
                    raise ArchiveError(
                        f"archive expands past the limit of {budget.max_bytes} bytes"
                    )
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise ArchiveError(f"not a tar.gz archive: {exc}") from None


def _extract_tar(blob: Path, root: Path, budget: _Budget) -> None:
    _check_tar(blob, budget)
    try:
        tf = tarfile.open(blob, "r:gz")  # noqa: SIM115 - closed by the `with` below
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise ArchiveError(f"not a tar.gz archive: {exc}") from None
    with tf:
        try:
            for m in tf:
                budget.entry()
                rel = safe_member_path(m.name.rstrip("/") if m.isdir() else m.name)
                if m.issym() or m.islnk():
                    raise ArchiveError(f"archive entry {m.name!r} is a link")
                if m.isdir():
                    root.joinpath(*rel.parts).mkdir(parents=True, exist_ok=True)
                    continue
                if not m.isfile():
                    raise ArchiveError(f"archive entry {m.name!r} is a device or special file")
                src = tf.extractfile(m)
                if src is None:
                    raise ArchiveError(f"archive entry {m.name!r} has no data")
                with src:
                    _write_member(src, root, rel, m.mode, budget)
        except (tarfile.TarError, EOFError, OSError) as exc:
            if isinstance(exc, ArchiveError):
                raise
            raise ArchiveError(f"corrupt tar.gz archive: {exc}") from None


def extract_archive(
    blob: Path,
    kind: str,
    dest: Path,
    *,
    max_bytes: int = MAX_EXPANDED_BYTES,
    max_entries: int = MAX_ENTRIES,
) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".extract"))
    try:
        budget = _Budget(max_bytes, max_entries)
        if kind == "zip":
            _extract_zip(blob, staging, budget)
        else:
            _extract_tar(blob, staging, budget)
        with _moved_aside(dest):
            staging.replace(dest)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def _moved_aside(dest: Path) -> Iterator[None]:
    """Move whatever is at `dest` out of the way; delete it once the new one is in."""
    if not dest.exists() and not dest.is_symlink():
        yield
        return
    old = dest.with_name(f".{dest.name}.{os.getpid()}.old")
    if old.exists():
        shutil.rmtree(old, ignore_errors=True)
    dest.replace(old)
    try:
        yield
    except BaseException:
        old.replace(dest)
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.unlink(missing_ok=True)
