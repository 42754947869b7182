"""Resolving a project's pointers: find them, make sure each blob is in the
cache (fetching it once), and materialize it under the resource dir.

Runs before every build. With nothing changed it costs a stat per pointer
and per materialized file; a materialized file that no pointer names any
more is removed, so a build never embeds a stale asset.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from fbuild_watch.errors import FbuildError, RuntimeFailure
from fbuild_watch.fsutil import atomic_write
from fbuild_watch.lnk.cache import BlobCache
from fbuild_watch.lnk.fetch import Fetcher, Progress, url_label
from fbuild_watch.lnk.format import LNK_SUFFIX, Pointer, parse_pointer
from fbuild_watch.lnk.materialize import extract_archive, place_file
from fbuild_watch.watch.ignore import IgnoreRules
from fbuild_watch.watch.state import WatchSet

DEFAULT_RESOURCE_DIR = ".fbuild/resources"
STATE_NAME = ".fbuild-lnk.json"


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

    def _say(self, line: str) -> None:
        if self.on_line:
            self.on_line(line)

    def parse(self, rels: Iterable[str]) -> list[tuple[str, Pointer]]:
        return [(rel, parse_pointer(self.project_dir / rel)) for rel in rels]

    def target_for(self, rel: str, pointer: Pointer) -> Path:
        return self.out_dir / Path(rel).parent / pointer.target_name

    # -- the blob ---------------------------------------------------------------
    def blob(self, rel: str, pointer: Pointer) -> tuple[Path, bool]:
        """The verified cached blob (and whether it was fetched now)."""
        try:
            path = self.cache.lookup(pointer.sha256)
            if path is None:
                with self.cache.lock(pointer.sha256):
                    path = self.cache.lookup(pointer.sha256)  # another process may have won
                    if path is None:
                        return self._download(rel, pointer), True
            if pointer.size is not None and path.stat().st_size != pointer.size:
                raise RuntimeFailure(
                    f"size mismatch: the blob with this sha256 is {path.stat().st_size} bytes, "
                    f"the pointer says {pointer.size}"
                )
            return path, False
        except FbuildError as exc:
            if exc.source is not None:
                raise
            raise RuntimeFailure(exc.problem, source=pointer.path) from None

    def _download(self, rel: str, pointer: Pointer) -> Path:
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

        with self.cache.writer(pointer.sha256, limit=limit) as w:
            self.fetcher.fetch(pointer.url, w, size=pointer.size, progress=progress)
            path = w.commit(expected_size=pointer.size)
        self._say(f"lnk: {rel}: {human_size(w.size)} verified in {time.monotonic() - t0:.2f} s")
        return path

    # -- the build tree ---------------------------------------------------------
    def _state(self) -> dict[str, dict[str, object]]:
        try:
            doc = json.loads((self.out_dir / STATE_NAME).read_text())
        except (OSError, ValueError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def _save_state(self, state: dict[str, dict[str, object]]) -> None:
        atomic_write(self.out_dir / STATE_NAME, json.dumps(state, indent=1).encode())

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
        state = self._state()
        if not pointers and not state:
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
            if final != state:
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
        blob, fetched = self.blob(rel, pointer)
        try:
            if pointer.extract == "file":
                place_file(blob, target)
            else:
                extract_archive(blob, pointer.extract, target)
        except FbuildError as exc:
            raise RuntimeFailure(exc.problem, source=pointer.path) from None
        new_state[key] = {
            "sha256": pointer.sha256,
            "extract": pointer.extract,
            "stat": self._stamp(target),
            "from": rel,
        }
        return Resolved(rel, pointer, target, fetched, True)

    def _remove(self, path: Path) -> None:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
