"""Resolving a project's pointers: find them, make sure each blob is in the
cache (fetching it once), and materialize it under the resource dir.

Runs before every build. With nothing changed it costs a stat per pointer
and per materialized file; a materialized file that no pointer names any
more is removed, so a build never embeds a stale asset.

The blob cache is optional: when it cannot be written, the blob is
downloaded into a temp dir inside the resource dir, materialized from there
and deleted (one warning per cache dir and process). Paths read back from our
own state file must stay inside the resource dir, or they are dropped with a
warning and nothing there is touched. An archive refused for its content is
remembered by SHA-256 and refused again without being fetched or extracted.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from fbuild_watch.errors import FbuildError, RuntimeFailure
from fbuild_watch.fsutil import atomic_write
from fbuild_watch.lnk.cache import BlobCache
from fbuild_watch.lnk.fetch import Fetcher, Progress, url_label
from fbuild_watch.lnk.format import LNK_SUFFIX, Pointer, parse_pointer
from fbuild_watch.lnk.materialize import (
    MAX_ENTRIES,
    MAX_EXPANDED_BYTES,
    ArchiveError,
    extract_archive,
    place_file,
)
from fbuild_watch.watch.ignore import IgnoreRules
from fbuild_watch.watch.state import WatchSet

DEFAULT_RESOURCE_DIR = ".fbuild/resources"
STATE_NAME = ".fbuild-lnk.json"
REFUSED_NAME = ".fbuild-lnk-refused.json"  # sha256 -> why the archive was refused

_warned_caches: set[str] = set()  # blob cache dirs already warned about in this process


def _why(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


@dataclass(frozen=True)
class Resolved:
    rel: str  # the pointer, relative to the project
    pointer: Pointer
    target: Path
    fetched: bool  # downloaded by this call
    materialized: bool  # written into the resource dir by this call


def find_pointers(
    project_dir: Path, ignore: IgnoreRules | None = None, paths: Iterable[str] | None = None
) -> list[str]:
    """Every `*.lnk` the watch set of `paths` (default: the whole project)
    would hold. The watch loop does not call this: its watch set knows them."""
    root = Path(project_dir).resolve()
    ws = WatchSet(root, ignore or IgnoreRules(root), paths=paths)
    return sorted({rel for rel, _st, _link in ws.files() if rel.endswith(LNK_SUFFIX)})


def human_size(n: int | None) -> str:
    if n is None:
        return "unknown size"
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n} B"


class Resources:
    """The pointers of one project and where they materialize."""

    def __init__(
        self,
        project_dir: Path,
        out_dir: Path | None = None,
        *,
        cache: BlobCache | None = None,
        fetcher: Fetcher | None = None,
        on_line: Callable[[str], None] | None = None,
        progress: Callable[[str, int, int | None], None] | None = None,
    ) -> None:
        self.project_dir = Path(project_dir).resolve()
        self.out_dir = (
            Path(out_dir) if out_dir is not None else self.project_dir / DEFAULT_RESOURCE_DIR
        )
        if not self.out_dir.is_absolute():
            self.out_dir = self.project_dir / self.out_dir
        self.cache = cache or BlobCache()
        self.fetcher = fetcher or Fetcher()
        self.on_line = on_line
        self.progress = progress
        # archive limits (materialize.py); an attribute so tests can lower them
        self.max_expanded_bytes = MAX_EXPANDED_BYTES
        self.max_entries = MAX_ENTRIES

    def _say(self, line: str) -> None:
        if self.on_line:
            self.on_line(line)

    def parse(self, rels: Iterable[str]) -> list[tuple[str, Pointer]]:
        return [(rel, parse_pointer(self.project_dir / rel)) for rel in rels]

    def target_for(self, rel: str, pointer: Pointer) -> Path:
        return self.out_dir / Path(rel).parent / pointer.target_name

    def _warn(self, source: Path, message: str) -> None:
        """A warning in the compiler's form (`file:1: warning: ...`): the
        build's diagnostics carry it to every view."""
        self._say(f"{source}:1: warning: {message}")

    # -- the blob ---------------------------------------------------------------
    def blob(
        self, rel: str, pointer: Pointer, scratch: contextlib.ExitStack | None = None
    ) -> tuple[Path, bool]:
        """The verified blob (and whether it was fetched now): from the cache,
        or, when the cache cannot be written and `scratch` is given, from a
        temp dir in the resource dir that `scratch` deletes."""
        try:
            try:
                path, fetched = self._cached_blob(rel, pointer)
                _warned_caches.discard(str(self.cache.root))
            except OSError as exc:
                if scratch is None:
                    raise RuntimeFailure(
                        f"the blob cache {self.cache.root} is not usable: {_why(exc)}"
                    ) from None
                self._cache_unusable(pointer, exc)
                path, fetched = (
                    self._download(rel, pointer, BlobCache(self._scratch(scratch))),
                    True,
                )
            if pointer.size is not None and path.stat().st_size != pointer.size:
                raise RuntimeFailure(
                    f"size mismatch: the blob with this sha256 is {path.stat().st_size} bytes, "
                    f"the pointer says {pointer.size}"
                )
            return path, fetched
        except OSError as exc:  # not even the resource dir takes the download
            raise RuntimeFailure(
                f"cannot write the download into {self.out_dir}: {_why(exc)}", source=pointer.path
            ) from None
        except FbuildError as exc:
            if exc.source is not None:
                raise
            raise RuntimeFailure(exc.problem, source=pointer.path) from None

    def _cached_blob(self, rel: str, pointer: Pointer) -> tuple[Path, bool]:
        """Raises OSError when the cache cannot be written."""
        path = self.cache.lookup(pointer.sha256)
        if path is not None:
            return path, False
        with self.cache.lock(pointer.sha256):
            path = self.cache.lookup(pointer.sha256)  # another process may have won
            if path is not None:
                return path, False
            return self._download(rel, pointer, self.cache), True

    def _cache_unusable(self, pointer: Pointer, exc: OSError) -> None:
        root = str(self.cache.root)
        if root in _warned_caches:
            return
        _warned_caches.add(root)
        self._warn(
            pointer.path,
            f"not cached: the blob cache {root} is not usable ({_why(exc)}); "
            f"downloading into {self.out_dir} instead",
        )

    def _scratch(self, scratch: contextlib.ExitStack) -> Path:
        """A temp dir inside the resource dir (the project's side: the build
        tree takes a hardlink from it), deleted when `scratch` closes."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        d = Path(tempfile.mkdtemp(dir=self.out_dir, prefix=".lnk-download.", suffix=".tmp"))
        scratch.callback(shutil.rmtree, d, ignore_errors=True)
        return d

    def _download(self, rel: str, pointer: Pointer, cache: BlobCache) -> Path:
        limit = self.fetcher.policy.max_bytes
        if pointer.size is not None:
            limit = min(limit, pointer.size)
        self._say(f"lnk: fetching {rel} ({human_size(pointer.size)}) from {url_label(pointer.url)}")
        t0 = time.monotonic()
        progress: Progress | None = None
        if self.progress is not None:
            report = self.progress

            def progress(done: int, total: int | None) -> None:
                report(rel, done, total)

        with cache.writer(pointer.sha256, limit=limit) as w:
            self.fetcher.fetch(pointer.url, w, size=pointer.size, progress=progress)
            path = w.commit(expected_size=pointer.size)
        self._say(f"lnk: {rel}: {human_size(w.size)} verified in {time.monotonic() - t0:.2f} s")
        return path

    # -- the build tree ---------------------------------------------------------
    def _read_json(self, name: str) -> dict[str, object]:
        try:
            doc = json.loads((self.out_dir / name).read_text())
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def _inside(self, key: object) -> bool:
        """Does a path read from the state file stay strictly inside the
        resource dir, also through symlinked directories?"""
        if not isinstance(key, str) or not key or "\x00" in key:
            return False
        pure = PurePosixPath(key)
        if pure.is_absolute() or any(part in ("", ".", "..") for part in key.split("/")):
            return False
        base = self.out_dir.resolve()
        try:
            # the parent resolved (a symlinked dir is followed); the entry
            # itself may be a symlink: `_remove` unlinks it, never follows it
            parent = (self.out_dir / key).parent.resolve()
        except (OSError, RuntimeError):  # a symlink loop
            return False
        return parent.is_relative_to(base)

    def _state(self) -> tuple[dict[str, dict[str, object]], bool]:
        """(entries, whether some were dropped and the file needs rewriting)."""
        doc = self._read_json(STATE_NAME)
        state: dict[str, dict[str, object]] = {}
        dropped = False
        for key, entry in doc.items():
            if not self._inside(key):
                self._warn(
                    self.out_dir / STATE_NAME,
                    f"entry {key!r} is not a path inside {self.out_dir}; dropped "
                    "(nothing there is touched)",
                )
                dropped = True
            elif isinstance(entry, dict):
                state[key] = entry
            else:
                dropped = True
        return state, dropped

    def _save_state(self, state: dict[str, dict[str, object]]) -> None:
        self._write_json(STATE_NAME, state)

    def _write_json(self, name: str, doc: dict[str, object] | dict[str, dict[str, object]]) -> None:
        """State only spares work: a resource dir that cannot take it is one
        warning, and the next build materializes again."""
        try:
            atomic_write(self.out_dir / name, json.dumps(doc, indent=1).encode())
        except OSError as exc:
            self._warn(self.out_dir / name, f"cannot save the resource state: {_why(exc)}")

    def _limits(self) -> list[int]:
        return [self.max_expanded_bytes, self.max_entries]

    def _refused(self, pointer: Pointer) -> str | None:
        """Why this archive was refused before, if it was, under the same limits."""
        entry = self._read_json(REFUSED_NAME).get(pointer.sha256)
        if (
            isinstance(entry, dict)
            and entry.get("extract") == pointer.extract
            and entry.get("limits") == self._limits()
            and isinstance(entry.get("error"), str)
        ):
            return str(entry["error"])
        return None

    def _remember_refusal(self, pointer: Pointer, error: str) -> None:
        refused = {k: v for k, v in self._read_json(REFUSED_NAME).items() if isinstance(v, dict)}
        refused[pointer.sha256] = {
            "extract": pointer.extract,
            "limits": self._limits(),
            "error": error,
        }
        self._write_json(REFUSED_NAME, refused)

    @staticmethod
    def _stamp(path: Path) -> list[int] | None:
        try:
            st = path.lstat()
        except FileNotFoundError:
            return None
        return [st.st_size, st.st_mtime_ns, st.st_ino]

    def sync(self, rels: Iterable[str]) -> list[Resolved]:
        """Resolve and materialize every pointer in `rels`; remove what no
        pointer names any more. Malformed pointers fail before any fetch."""
        pointers = self.parse(sorted(set(rels)))
        state, dropped = self._state()
        if not pointers and not state:
            if dropped:
                self._save_state({})
            return []
        new_state: dict[str, dict[str, object]] = {}
        done: list[Resolved] = []
        ok = False
        try:
            for rel, pointer in pointers:
                done.append(self._one(rel, pointer, state, new_state))
            for key in set(state) - set(new_state):
                self._remove(self.out_dir / key)
            ok = True
        finally:
            final = new_state
            if not ok:  # keep recording what is still materialized from before
                kept = {k: v for k, v in state.items() if (self.out_dir / k).exists()}
                final = {**kept, **new_state}
            if final != state or dropped:
                self._save_state(final)
        return done

    def _one(
        self,
        rel: str,
        pointer: Pointer,
        state: dict[str, dict[str, object]],
        new_state: dict[str, dict[str, object]],
    ) -> Resolved:
        target = self.target_for(rel, pointer)
        key = target.relative_to(self.out_dir).as_posix()
        if not self._inside(key):
            raise RuntimeFailure(
                f"would materialize outside {self.out_dir} (a symlinked directory?)",
                source=pointer.path,
            )
        entry = state.get(key)
        if (
            entry is not None
            and entry.get("sha256") == pointer.sha256
            and entry.get("extract") == pointer.extract
            and entry.get("stat") == self._stamp(target)
        ):
            new_state[key] = entry
            return Resolved(rel, pointer, target, False, False)
        if key in new_state:
            raise RuntimeFailure(
                f"materializes to the same path as {new_state[key]['from']}", source=pointer.path
            )
        if pointer.extract != "file":
            refused = self._refused(pointer)
            if refused is not None:  # the same bytes fail the same way: no fetch, no extraction
                raise RuntimeFailure(refused, source=pointer.path)
        with contextlib.ExitStack() as scratch:
            blob, fetched = self.blob(rel, pointer, scratch)
            try:
                if pointer.extract == "file":
                    place_file(blob, target)
                else:
                    extract_archive(
                        blob,
                        pointer.extract,
                        target,
                        max_bytes=self.max_expanded_bytes,
                        max_entries=self.max_entries,
                    )
            except ArchiveError as exc:
                self._remember_refusal(pointer, exc.problem)
                raise RuntimeFailure(exc.problem, source=pointer.path) from None
            except FbuildError as exc:
                raise RuntimeFailure(exc.problem, source=pointer.path) from None
            except OSError as exc:
                raise RuntimeFailure(
                    f"cannot write {target}: {_why(exc)}", source=pointer.path
                ) from None
        new_state[key] = {
            "sha256": pointer.sha256,
            "extract": pointer.extract,
            "stat": self._stamp(target),
            "from": rel,
        }
        return Resolved(rel, pointer, target, fetched, True)

    def _remove(self, path: Path) -> None:
        """Only ever called with a path `_inside` accepted."""
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        except OSError as exc:
            self._warn(path, f"cannot remove a stale resource: {_why(exc)}")
