"""Writing files so that a reader never sees half of one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from platformdirs import user_cache_dir


def atomic_write(path: Path, data: bytes, *, fsync: bool = False) -> None:
    """Write to a temp file beside `path`, then rename over it: an
    interrupted write leaves the old file (or none), never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def user_cache_root() -> Path:
    """`$FBUILD_CACHE_DIR`, else the user cache dir (honours XDG_CACHE_HOME):
    the optional caches not tied to a project (verified layouts, `.lnk`
    blobs, symbol indexes for `fbuild monitor --elf`)."""
    env = os.environ.get("FBUILD_CACHE_DIR")
    return Path(env) if env else Path(user_cache_dir("fbuild-watch", appauthor=False))
