"""The content-addressed blob cache: `<cache>/lnk/blobs/<aa>/<sha256>`.

A blob only ever appears under its final name by an atomic rename after its
digest was checked, so a reader never sees a partial or wrong blob. Blobs
are read-only (they are hardlinked into build trees). A small `.meta` file
beside each blob remembers the stat it had when verified, which makes the
per-build check a stat instead of a re-hash; `fbuild lnk check` re-hashes.

The cache is optional: reads treat an unusable cache dir (missing, not a
directory, unreadable) as empty; writes raise OSError, and the resolver then
downloads into the project's resource dir instead (resolve.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from filelock import FileLock

from fbuild_watch.errors import RuntimeFailure
from fbuild_watch.fsutil import user_cache_root

CHUNK = 1 << 20


def default_cache_dir() -> Path:
    """`$FBUILD_CACHE_DIR/lnk`, else the user cache dir (honours XDG_CACHE_HOME)."""
    return user_cache_root() / "lnk"


def hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ino]


class BlobCache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()

    def path(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256[:2] / sha256

    def _meta(self, sha256: str) -> Path:
        return self.path(sha256).with_suffix(".meta")

    def lock(self, sha256: str) -> FileLock:
        """Held while fetching one blob, so two processes download it once."""
        locks = self.root / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        return FileLock(str(locks / f"{sha256}.lock"))

    def lookup(self, sha256: str) -> Path | None:
        """The blob if present and intact. Cheap when its stat matches the one
        recorded at verification; otherwise it is re-hashed, and a blob that
        fails is deleted so the next resolve fetches it again."""
        path = self.path(sha256)
        try:
            st = path.stat()
        except OSError:  # absent, or the cache dir is not usable: not cached
            return None
        try:
            recorded = json.loads(self._meta(sha256).read_text())["stat"]
        except (OSError, ValueError, KeyError, TypeError):
            recorded = None
        if recorded == _stamp(st):
            return path
        if self.verify(sha256):
            return path
        self.discard(sha256)
        return None

    def verify(self, sha256: str) -> bool | None:
        """Full re-hash: None when absent, else whether the content matches.
        A match refreshes the recorded stat."""
        path = self.path(sha256)
        try:
            digest = hash_file(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        if digest != sha256:
            return False
        self._record(sha256)
        return True

    def discard(self, sha256: str) -> None:
        for p in (self.path(sha256), self._meta(sha256)):
            with contextlib.suppress(OSError):  # a read-only cache keeps it; lookup re-hashes
                p.unlink()

    def _record(self, sha256: str) -> None:
        """Remember the verified stat; only an optimisation, so a cache that
        cannot take the small file just re-hashes next time."""
        meta = self._meta(sha256)
        tmp = meta.with_name(f"{meta.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps({"stat": _stamp(self.path(sha256).stat())}))
            tmp.replace(meta)
        except OSError:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)

    def writer(self, sha256: str | None, *, limit: int) -> BlobWriter:
        """`sha256=None` (fbuild lnk add): the blob is stored under whatever
        digest it turns out to have."""
        tmpdir = self.root / "tmp"
        tmpdir.mkdir(parents=True, exist_ok=True)
        return BlobWriter(self, sha256, tmpdir, limit)

    def blobs(self) -> Iterator[str]:
        base = self.root / "blobs"
        if base.is_dir():
            for sub in sorted(base.iterdir()):
                for p in sorted(sub.iterdir()):
                    if p.suffix != ".meta" and len(p.name) == 64:
                        yield p.name


class BlobWriter:
    """Streams one download into a temp file in the cache, hashing as it
    goes and refusing to grow past `limit`; `commit()` renames it into place
    only if the digest matches. Leaving the block without commit deletes it."""

    def __init__(self, cache: BlobCache, sha256: str | None, tmpdir: Path, limit: int) -> None:
        self.cache = cache
        self.sha256 = sha256
        self.limit = limit
        self.size = 0
        self._hash = hashlib.sha256()
        fd, name = tempfile.mkstemp(dir=tmpdir, prefix=f"{(sha256 or 'new')[:16]}.", suffix=".part")
        self._tmp = Path(name)
        self._f = os.fdopen(fd, "wb")

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.size > self.limit:
            raise RuntimeFailure(f"download exceeds its size limit of {self.limit} bytes")
        self._hash.update(chunk)
        self._f.write(chunk)

    @property
    def digest(self) -> str:
        return self._hash.hexdigest()

    def commit(self, *, expected_size: int | None = None) -> Path:
        if expected_size is not None and self.size != expected_size:
            raise RuntimeFailure(f"size mismatch: expected {expected_size} bytes, got {self.size}")
        if self.sha256 is None:
            self.sha256 = self.digest
        elif self.digest != self.sha256:
            raise RuntimeFailure(
                f"sha256 mismatch: expected {self.sha256}, got {self.digest} ({self.size} bytes)"
            )
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        self._tmp.chmod(0o444)  # hardlinked into build trees: nobody edits it in place
        final = self.cache.path(self.sha256)
        if self.cache.lookup(self.sha256) is not None:
            return final  # already there (keep its inode: build trees link to it)
        final.parent.mkdir(parents=True, exist_ok=True)
        self._tmp.replace(final)
        self.cache._record(self.sha256)
        return final

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(OSError):  # closing a file on a full disk can fail too
            self._f.close()
        with contextlib.suppress(OSError):
            self._tmp.unlink(missing_ok=True)
