"""The watch set: every watched file's (mtime_ns, size, inode, digest) and an
incrementally maintained fingerprint of the whole tree.

Knowing whether anything changed costs nothing (is the dirty set empty?);
events mark paths dirty, and only dirty paths are re-stat'ed and, if their
stat changed, re-hashed. A save that leaves the bytes as they were (touch,
save without edits, an editor's atomic save of the same content) changes the
stat but not the digest and so is not a change.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import struct
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fbuild_watch.fsutil import atomic_write
from fbuild_watch.watch.ignore import IgnoreRules

# Resource pointers (`.lnk`, fbuild_watch/lnk/format.py) are found by this
# suffix; the watch layer sits below lnk/, so the constant lives here.
LNK_SUFFIX = ".lnk"

# mtime_ns, size, inode, 16-byte digest in one bytes object: ~73 bytes per
# file instead of ~300 for a tuple of Python ints and bytes.
_REC = struct.Struct("<qqQ16s")
_HASH_CHUNK = 1 << 20


def file_digest(path: str | os.PathLike[str]) -> bytes:
    """blake2b-128 of the content: in the standard library, faster than
    sha256 on small source files, and wide enough for change detection."""
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.digest()


def _entry_hash(relpath: str, digest: bytes) -> int:
    return int.from_bytes(
        hashlib.blake2b(relpath.encode() + b"\0" + digest, digest_size=32).digest(), "little"
    )


@dataclass
class ChangeSet:
    changed: set[str] = field(default_factory=set)  # added or content changed
    removed: set[str] = field(default_factory=set)
    touched: set[str] = field(default_factory=set)  # stat changed, bytes did not
    first_event_at: float | None = None  # monotonic time of the first event behind it

    def __bool__(self) -> bool:
        return bool(self.changed or self.removed)

    @property
    def paths(self) -> set[str]:
        return self.changed | self.removed

    def merge(self, other: ChangeSet) -> None:
        self.changed |= other.changed
        self.removed |= other.removed
        self.touched |= other.touched
        self.removed -= self.changed


class WatchSet:
    def __init__(self, root: Path, ignore: IgnoreRules, paths: Iterable[str] | None = None) -> None:
        self.root = Path(root).resolve()
        self.ignore = ignore
        # roots relative to the project dir ("" = the whole project)
        self.paths = [p.strip("/") for p in (paths or [""])] or [""]
        self._files: dict[str, bytes] = {}
        self._links: set[str] = set()  # symlinked files: no events, stat-checked at build time
        self._pointers: set[str] = set()  # `.lnk` files, resolved before each build
        self._dirty: set[str] = set()
        self._dirty_dirs: set[str] = set()
        self._fp = 0
        self._lock = threading.Lock()
        self._unreadable: list[tuple[str, str]] = []

    # -- queries --------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._files)

    def __contains__(self, relpath: str) -> bool:
        return relpath in self._files

    @property
    def has_pending(self) -> bool:
        """O(1): is anything possibly changed? (symlinks are checked by refresh)"""
        return bool(self._dirty or self._dirty_dirs)

    def pointers(self) -> list[str]:
        """The `.lnk` resource pointers in the watch set, without a walk."""
        with self._lock:
            return sorted(self._pointers)

    @property
    def fingerprint(self) -> str:
        return f"{self._fp:064x}"

    def fingerprint_with(self, digests: Mapping[str, bytes | None]) -> str:
        """The fingerprint of the tree as if each file in `digests` (a
        project-relative path) had that content digest, None meaning absent,
        whether or not it is watched. A build is recorded with the settings
        files its backend was made from (`Backend.settings_digests()`), not
        with what they hold on disk now: a malformed fbuild.toml that the
        loop could not load is never recorded as built, and an edit to one
        outside the watch paths still makes the next start rebuild."""
        with self._lock:
            fp = self._fp
            for rel, digest in digests.items():
                rec = self._files.get(rel)
                if rec is not None:
                    fp ^= _entry_hash(rel, _REC.unpack(rec)[3])
                if digest is not None:
                    fp ^= _entry_hash(rel, digest)
        return f"{fp:064x}"

    # -- scanning ---------------------------------------------------------------
    def _rel(self, abspath: str) -> str | None:
        rel = os.path.relpath(abspath, self.root)
        if rel.startswith(".."):
            return None
        return rel.replace(os.sep, "/")

    def _in_paths(self, rel: str) -> bool:
        return any(p in ("", rel) or rel.startswith(p + "/") for p in self.paths)

    def _walk(self, rel_dir: str) -> Iterable[tuple[str, os.stat_result, bool]]:
        """(relpath, lstat, is_symlink) of every watched file under rel_dir."""
        stack = [rel_dir]
        while stack:
            d = stack.pop()
            absdir = os.path.join(self.root, d) if d else str(self.root)
            if self.ignore.use_ignore_files:
                self.ignore.load_ignore_files(Path(absdir))
            try:
                it = os.scandir(absdir)
            except OSError:
                continue
            with it:
                for e in it:
                    rel = f"{d}/{e.name}" if d else e.name
                    try:
                        st = e.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if stat.S_ISDIR(st.st_mode):
                        if not self.ignore.ignored(rel, is_dir=True):
                            stack.append(rel)
                        continue
                    link = stat.S_ISLNK(st.st_mode)
                    if link:
                        try:
                            st = os.stat(e.path)
                        except OSError:
                            continue
                        if not stat.S_ISREG(st.st_mode):
                            continue
                    elif not stat.S_ISREG(st.st_mode):
                        continue
                    if not self.ignore.ignored(rel):
                        yield rel, st, link

    def files(self) -> Iterator[tuple[str, os.stat_result, bool]]:
        """(relpath, stat, is_symlink) of every file the watch set covers, on
        disk now; nothing is hashed."""
        for root in self.paths:
            absroot = self.root / root if root else self.root
            if absroot.is_file():
                yield root, absroot.stat(), absroot.is_symlink()
            else:
                yield from self._walk(root)

    def scan(self, previous: dict[str, bytes] | None = None) -> ChangeSet:
        """Full scan. With `previous` (persisted state), only files whose stat
        differs from it are hashed. Returns the differences from what this
        watch set knew before (or from `previous`)."""
        known = dict(previous if previous is not None else self._files)
        with self._lock:
            # what this scan covers; marks arriving during it stay for refresh()
            self._dirty.clear()
            self._dirty_dirs.clear()
        new: dict[str, bytes] = {}
        links: set[str] = set()
        for rel, st, link in self.files():
            try:
                new[rel] = self._record(rel, st, known.get(rel))
            except FileNotFoundError:
                continue  # deleted while the scan ran: its event follows
            if link:
                links.add(rel)
        changes = ChangeSet()
        for rel, rec in new.items():
            old = known.get(rel)
            if old is None or _REC.unpack(old)[3] != _REC.unpack(rec)[3]:
                changes.changed.add(rel)
            elif old != rec:
                changes.touched.add(rel)
        changes.removed = set(known) - set(new)
        with self._lock:
            self._files = new
            self._links = links
            self._pointers = {rel for rel in new if rel.endswith(LNK_SUFFIX)}
            self._fp = 0
            for rel, rec in new.items():
                self._fp ^= _entry_hash(rel, _REC.unpack(rec)[3])
        return changes

    def _record(self, rel: str, st: os.stat_result, old: bytes | None) -> bytes:
        """Raises FileNotFoundError for a file that vanished since its stat;
        a file that cannot be read is recorded with a digest of the error (a
        change the build will report) and listed by `take_unreadable`."""
        if old is not None:
            mtime, size, ino, digest = _REC.unpack(old)
            if (mtime, size, ino) == (st.st_mtime_ns, st.st_size, st.st_ino):
                return old  # same stat: trust the stored digest
        try:
            digest = file_digest(self.root / rel)
        except FileNotFoundError:
            raise
        except OSError as exc:
            why = exc.strerror or type(exc).__name__
            with self._lock:
                self._unreadable.append((rel, why))
            digest = hashlib.blake2b(f"unreadable:{why}".encode(), digest_size=16).digest()
        return _REC.pack(st.st_mtime_ns, st.st_size, st.st_ino, digest)

    def take_unreadable(self) -> list[tuple[str, str]]:
        """(path, why) of files met since the last call that could not be read."""
        with self._lock:
            out, self._unreadable = self._unreadable, []
        return out

    # -- events -----------------------------------------------------------------
    def mark(self, abspaths: Iterable[str], *, dirs: Iterable[str] = ()) -> None:
        """Paths from filesystem events (may or may not have changed)."""
        with self._lock:
            for p in abspaths:
                rel = self._rel(p)
                if rel is not None and self._in_paths(rel):
                    self._dirty.add(rel)
            for d in dirs:
                rel = self._rel(d)
                if rel is not None:
                    self._dirty_dirs.add(rel)

    def refresh(self) -> ChangeSet:
        """Re-stat dirty paths (and symlinked files), hash those whose stat
        changed, update the fingerprint; returns what really changed."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            dirty_dirs, self._dirty_dirs = self._dirty_dirs, set()
            dirty |= self._links
        changes = ChangeSet()
        for d in sorted(dirty_dirs):
            # a new or renamed directory: its files may have produced no events
            absd = self.root / d
            if absd.is_dir() and not self.ignore.ignored(d, is_dir=True):
                for rel, _st, link in self._walk(d):
                    dirty.add(rel)
                    if link:
                        self._links.add(rel)
            prefix = d + "/"
            dirty.update(r for r in self._files if r.startswith(prefix))
        for rel in dirty:
            self._refresh_one(rel, changes)
        return changes

    def _refresh_one(self, rel: str, changes: ChangeSet) -> None:
        path = self.root / rel
        old = self._files.get(rel)
        try:
            st = path.stat()
            ok = stat.S_ISREG(st.st_mode) and not self.ignore.ignored(rel)
        except OSError:
            ok = False
        if not ok:
            if old is not None:
                self._drop(rel, old)
                changes.removed.add(rel)
            return
        try:
            rec = self._record(rel, st, old)
        except OSError:  # vanished between stat and read
            if old is not None:
                self._drop(rel, old)
                changes.removed.add(rel)
            return
        if rec == old:
            return
        with self._lock:
            self._files[rel] = rec
            if rel.endswith(LNK_SUFFIX):
                self._pointers.add(rel)
            new_digest = _REC.unpack(rec)[3]
            if old is not None:
                old_digest = _REC.unpack(old)[3]
                if old_digest == new_digest:
                    changes.touched.add(rel)
                    return
                self._fp ^= _entry_hash(rel, old_digest)
            self._fp ^= _entry_hash(rel, new_digest)
        changes.changed.add(rel)

    def _drop(self, rel: str, old: bytes) -> None:
        with self._lock:
            self._files.pop(rel, None)
            self._links.discard(rel)
            self._pointers.discard(rel)
            self._fp ^= _entry_hash(rel, _REC.unpack(old)[3])

    def stat_diff(self) -> list[str]:
        """Polling: absolute paths whose (mtime_ns, size, inode) differ from
        what is stored, plus new and vanished files. No hashing."""
        out: list[str] = []
        seen: set[str] = set()
        for rel, st, _link in self.files():  # file roots too: they are not "vanished"
            seen.add(rel)
            rec = self._files.get(rel)
            if rec is None or _REC.unpack(rec)[:3] != (st.st_mtime_ns, st.st_size, st.st_ino):
                out.append(str(self.root / rel))
        out += [str(self.root / rel) for rel in self._files.keys() - seen]
        return out

    # -- persistence ------------------------------------------------------------
    def save_state(self, path: Path, *, build_fingerprint: str | None = None) -> None:
        """Safe from any thread: the records are copied under the lock."""
        with self._lock:
            files = dict(self._files)
            fingerprint = self.fingerprint
        doc = {
            "version": 1,
            "root": str(self.root),
            "fingerprint": fingerprint,
            "build_fingerprint": build_fingerprint,
            "files": {rel: rec.hex() for rel, rec in files.items()},
        }
        atomic_write(path, json.dumps(doc, separators=(",", ":")).encode())

    @staticmethod
    def load_state(
        path: Path, *, warnings: list[str] | None = None
    ) -> tuple[dict[str, bytes], str | None] | None:
        """(files, fingerprint of the last successful build) or None.
        An entry whose path is not a plain relative path inside the project
        (absolute, `..`) is dropped, and one line about it appended to
        `warnings`. (Paths through a symlinked directory need no resolving:
        the walk never enters one, so such an entry is never read.)"""
        try:
            doc = json.loads(path.read_text())
            if doc.get("version") != 1:
                return None
            files: dict[str, bytes] = {}
            outside: list[str] = []
            for rel, h in doc["files"].items():
                if _plain_relative(rel):
                    files[rel] = bytes.fromhex(h)
                else:
                    outside.append(rel)
            if any(len(r) != _REC.size for r in files.values()):
                return None
            if outside and warnings is not None:
                more = f" and {len(outside) - 1} more" if len(outside) > 1 else ""
                warnings.append(
                    f"{path}: entry {outside[0]!r}{more} is not a path inside the project; dropped"
                )
            return files, doc.get("build_fingerprint")
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None


def _plain_relative(rel: object) -> bool:
    """A watch-set key: "dir/file", relative, no `.`/`..`/empty parts."""
    if not isinstance(rel, str) or not rel or "\x00" in rel or rel.startswith("/"):
        return False
    return all(part not in ("", ".", "..") for part in rel.split("/"))
