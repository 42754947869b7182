"""The object files the last image was linked from, watched during a build.

After each cycle (off the hot path) the build directory's newest object
files are summarised (`image.objkey`) along with what the last link kept.
While the next build runs the loop polls the stamps of the most recently
built ones (a few stats every few ms); when the compiler rewrites one with a
different summary, the image is going to change and the boards can be
connected ahead before the link. Objects never built before, or beyond the
caps, only cost that head start: the link trigger still follows.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from fbuild_watch.image.linkkey import file_stamp, read_regular
from fbuild_watch.image.objkey import ObjectSummary, linked_names, summarize

OBJECT_SUFFIXES = (".o", ".obj")
HOT = 64  # objects polled while a build runs: the most recently built
SUMMARISED = 256  # objects summarised per refresh, newest first

Stamp = tuple[int, int, int]


@dataclass
class _Known:
    kept: frozenset[str] | None = None
    objects: dict[Path, tuple[Stamp, ObjectSummary]] = field(default_factory=dict)
    hot: list[Path] = field(default_factory=list)


class ObjectWatch:
    def __init__(self, root: Path, elf: Path) -> None:
        """`root`: where the build writes its objects (the ELF's directory
        tree for every backend); `elf`: the ELF the link writes."""
        self.root = root
        self.elf = elf
        self._known = _Known()
        self._lock = threading.Lock()  # refresh runs on a worker thread
        # the ELF's stamp and what it kept: a cycle that did not link keeps both
        self._kept_of: tuple[Stamp | None, frozenset[str] | None] = (None, None)

    def refresh(self) -> None:
        """Summarise the newest objects and what the last link kept. Blocking
        (a directory walk and some reads): call it off the event loop."""
        stamp = file_stamp(self.elf)
        kept = self._kept_of[1]
        if stamp is None or stamp != self._kept_of[0]:
            elf = read_regular(self.elf)
            kept = linked_names(elf) if elf is not None else None
            self._kept_of = (stamp, kept)
        found: list[tuple[int, Path, Stamp]] = []
        for dirpath, _, files in os.walk(self.root):
            for name in files:
                if name.endswith(OBJECT_SUFFIXES):
                    path = Path(dirpath, name)
                    stamp = file_stamp(path)
                    if stamp is not None:
                        found.append((stamp[2], path, stamp))
        found.sort(key=lambda f: f[0], reverse=True)
        with self._lock:
            before = self._known.objects
        objects: dict[Path, tuple[Stamp, ObjectSummary]] = {}
        for _, path, stamp in found[:SUMMARISED]:
            old = before.get(path)
            if old is not None and old[0] == stamp:
                objects[path] = old
                continue
            data = read_regular(path)
            summary = summarize(data) if data is not None else None
            if summary is not None:
                objects[path] = (stamp, summary)
        hot = [path for _, path, _ in found[:HOT] if path in objects]
        with self._lock:
            self._known = _Known(kept, objects, hot)

    def start(self) -> BuildObjects:
        """The watch for one build: what is known now."""
        with self._lock:
            return BuildObjects(self._known)


class BuildObjects:
    """Tells, while one build runs, whether a rewritten object changes the image."""

    def __init__(self, known: _Known) -> None:
        self._known = known
        self._checked: dict[Path, Stamp] = {}

    def poll(self) -> list[Path]:
        """Hot objects rewritten since they were summarised and not yet checked."""
        out = []
        for path in self._known.hot:
            stamp = file_stamp(path)
            if stamp is None or stamp == self._known.objects[path][0]:
                continue
            if self._checked.get(path) != stamp:
                out.append(path)
        return out

    def image_changes(self, paths: list[Path]) -> bool:
        """True if one of `paths` now holds code or data the last link kept
        that differs from before. Blocking (reads): off the event loop. An
        object still being written is not judged (the next poll retries)."""
        kept = self._known.kept
        for path in paths:
            stamp = file_stamp(path)
            data = read_regular(path)
            summary = summarize(data) if data is not None else None
            if summary is None or stamp is None or file_stamp(path) != stamp:
                continue
            self._checked[path] = stamp
            if summary.key(kept) != self._known.objects[path][1].key(kept):
                return True
        return False
