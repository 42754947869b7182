"""What the watcher ignores: VCS dirs, editor temp files, build outputs,
`.gitignore`/`.ignore` files (gitignore semantics via `pathspec`) and the
project's own `[watch] ignore` patterns."""

from __future__ import annotations

import os
from pathlib import Path

from pathspec import GitIgnoreSpec

VCS_DIRS = frozenset(
    {
        ".git",
        ".fbuild",  # our own state and materialized resources
        ".hg",
        ".svn",
        ".jj",
        ".venv",
        "__pycache__",
        "node_modules",
        ".pio",
        ".mypy_cache",
        ".ruff_cache",
        ".pytest_cache",
    }
)
# Editor swap/backup/temp files: vim (.swp, .swo, 4913, ~), emacs (#x#, .#x),
# JetBrains (___jb_tmp___), generic .tmp and macOS metadata.
_EDITOR_PATTERNS = [
    "*.swp",
    "*.swo",
    "*.swx",
    "*~",
    "4913",
    ".#*",
    "#*#",
    "*___jb_tmp___",
    "*___jb_old___",
    ".DS_Store",
    "*.tmp",
    ".*.kate-swp",
]
IGNORE_FILES = (".gitignore", ".ignore")


class IgnoreRules:
    def __init__(
        self,
        root: Path,
        *,
        output_dirs: list[Path] | None = None,
        patterns: list[str] | None = None,
        use_ignore_files: bool = True,
    ) -> None:
        self.root = Path(root).resolve()
        self._editor = GitIgnoreSpec.from_lines(_EDITOR_PATTERNS)
        self._user = GitIgnoreSpec.from_lines(patterns or [])
        outs = (self._rel(p) for p in (output_dirs or []))
        self._outputs = [o for o in outs if o and o != "."]
        # dir relpath ("" for root) -> spec from that dir's ignore files
        self._specs: dict[str, GitIgnoreSpec] = {}
        self.use_ignore_files = use_ignore_files
        if use_ignore_files:
            self.load_ignore_files(self.root)

    def _rel(self, path: Path) -> str | None:
        p = Path(path)
        if not p.is_absolute():
            p = self.root / p
        try:
            return p.resolve().relative_to(self.root).as_posix()
        except ValueError:
            return None

    def load_ignore_files(self, directory: Path) -> None:
        rel = self._rel(directory)
        if rel is None:
            return
        lines: list[str] = []
        for name in IGNORE_FILES:
            f = Path(directory) / name
            try:
                lines += f.read_text(encoding="utf-8", errors="replace").splitlines()
            except OSError:
                continue
        key = "" if rel == "." else rel
        if lines:
            self._specs[key] = GitIgnoreSpec.from_lines(lines)
        else:
            self._specs.pop(key, None)

    def is_ignore_file(self, relpath: str) -> bool:
        return relpath.rsplit("/", 1)[-1] in IGNORE_FILES

    def ignored(self, relpath: str, is_dir: bool = False) -> bool:
        """`relpath` is POSIX and relative to the root."""
        if not relpath or relpath == ".":
            return False
        parts = relpath.split("/")
        if any(p in VCS_DIRS for p in parts):
            return True
        name = parts[-1]
        if not is_dir and self._editor.match_file(name):
            return True
        for out in self._outputs:
            if relpath == out or relpath.startswith(out + "/"):
                return True
        probe = relpath + "/" if is_dir else relpath
        if self._user.match_file(probe):
            return True
        for base, spec in self._specs.items():
            if base == "":
                sub = probe
            elif relpath.startswith(base + "/"):
                sub = probe[len(base) + 1 :]
            else:
                continue
            if spec.match_file(sub):
                return True
        return False

    def ignored_abs(self, path: str) -> bool:
        try:
            rel = os.path.relpath(path, self.root)
        except ValueError:
            return True
        if rel.startswith(".."):
            return True
        return self.ignored(rel.replace(os.sep, "/"))
