"""Event-driven watch set: knowing what changed costs O(changes)."""

from __future__ import annotations

from fbuild_watch.watch.ignore import IgnoreRules
from fbuild_watch.watch.state import ChangeSet, WatchSet, file_digest
from fbuild_watch.watch.watcher import Watcher, WatchOptions, WatchStats, state_path_for

__all__ = [
    "ChangeSet",
    "IgnoreRules",
    "WatchOptions",
    "WatchSet",
    "WatchStats",
    "Watcher",
    "file_digest",
    "state_path_for",
]
