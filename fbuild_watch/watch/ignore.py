"""What the watcher ignores: VCS dirs, editor temp files, build outputs, the
project's own `[watch] ignore` patterns, and what git ignores.

Git's verdict is reproduced exactly (gitignore(5), checked against `git
check-ignore` in tests/test_ignore_git.py): `.gitignore` files in the tree
(and `.ignore`, read like a second `.gitignore` of the same directory), the
ones in the repository above the project, `$GIT_DIR/info/exclude` and
`core.excludesFile`; the deepest file wins, the last matching line within a
file wins, and nothing below an excluded directory can be re-included.
`[watch] ignore` patterns act like git's command-line `--exclude`: they come
before every file, so `!name` there re-includes what a `.gitignore` excludes.
With git's `core.ignorecase` set (case-insensitive filesystems), every
pattern, `[watch] ignore` ones too, matches folding ASCII case as git does,
and a directory named `.git` in any case is never entered.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import threading
from pathlib import Path

from fbuild_watch.watch.gitignore import (
    CoreConfig,
    Repo,
    Rule,
    core_config,
    find_repo,
    first_match,
    parse_rules,
    wildmatch_regex,
)

log = logging.getLogger(__name__)

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
    b"*.swp",
    b"*.swo",
    b"*.swx",
    b"*~",
    b"4913",
    b".#*",
    b"#*#",
    b"*___jb_tmp___",
    b"*___jb_old___",
    b".DS_Store",
    b"*.tmp",
    b".*.kate-swp",
]
_EDITOR = re.compile(
    b"|".join(b"(?:%s)" % wildmatch_regex(p, pathname=False) for p in _EDITOR_PATTERNS),
    re.DOTALL,
).fullmatch
IGNORE_FILES = (".gitignore", ".ignore")
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)

# Per directory: the rule excluding it (None: not excluded) and the rules
# that apply to its entries (every ancestor's, deepest last).
_DirInfo = tuple[Rule | None, tuple[Rule, ...]]
_Stamp = tuple[int, int, int]
_Contents = tuple[tuple[str, bytes], ...]  # (file name, bytes) of one directory's ignore files


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
        self._root_s = str(self.root)
        outs = (self._rel(p) for p in (output_dirs or []))
        self._outputs = [o for o in outs if o and o != "."]
        self.use_ignore_files = use_ignore_files
        self._repo: Repo | None = find_repo(self.root) if use_ignore_files else None
        # paths are matched relative to the work tree top, as git does
        prefix = ""
        if self._repo is not None and self._repo.top != self.root:
            prefix = self.root.relative_to(self._repo.top).as_posix() + "/"
        self._prefix = os.fsencode(prefix)
        self._user_text = "\n".join(patterns or []).encode("utf-8", "surrogateescape")
        self._icase = False  # git's core.ignorecase, read with the other global sources
        self._config = CoreConfig(excludes_file=None, ignore_case=False, problem=None)
        self._user = parse_rules(self._user_text, self._prefix, "[watch] ignore")
        self._lock = threading.RLock()
        self._warnings: list[str] = []
        self._warned: set[str] = set()
        self._global: tuple[Rule, ...] = ()  # excludesFile, info/exclude, dirs above root
        self._global_contents: list[tuple[str, bytes, bytes]] = []
        self._global_stamps: dict[str, _Stamp | None] = {}
        self._own: dict[str, tuple[Rule, ...]] = {}  # dir relpath ("" root) -> its files' rules
        self._contents: dict[str, _Contents] = {}  # of the dirs that have ignore files
        self._stamps: dict[str, dict[str, _Stamp]] = {}
        self._dirs: dict[str, _DirInfo] = {}
        self._pruned_size = 0
        if use_ignore_files:
            self.load_ignore_files(self.root)

    # -- reading the rules ------------------------------------------------------
    def _rel(self, path: Path | str) -> str | None:
        s = os.fspath(path)
        if s == self._root_s:
            return "."
        if s.startswith(self._root_s + os.sep):  # the walk's own paths: no resolve
            tail = s[len(self._root_s) + 1 :].split(os.sep)
            if all(part not in ("", ".", "..") for part in tail):
                return "/".join(tail)
        p = Path(s)
        if not p.is_absolute():
            p = self.root / p
        try:
            return p.resolve().relative_to(self.root).as_posix()
        except ValueError:
            return None

    def _warn(self, path: str, exc: OSError) -> None:
        self._warn_once(
            path, f"{path}: cannot read ({exc.strerror or exc}); its ignore rules are not applied"
        )

    def _warn_once(self, key: str, msg: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            self._warnings.append(msg)
            log.warning(msg)

    def _read(self, path: str, *, nofollow: bool) -> tuple[bytes, _Stamp] | None:
        """None when the file does not exist (or, in the tree, is a symlink:
        git does not follow those either)."""
        try:
            fd = os.open(path, os.O_RDONLY | (_O_NOFOLLOW if nofollow else 0))
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                self._warn(path, exc)
            return None
        try:
            st = os.fstat(fd)
            chunks = []
            while chunk := os.read(fd, 1 << 16):
                chunks.append(chunk)
        except OSError as exc:
            if exc.errno != errno.EISDIR:  # not a file: git skips it too
                self._warn(path, exc)
            return None
        finally:
            os.close(fd)
        return b"".join(chunks), (st.st_mtime_ns, st.st_size, st.st_ino)

    def _global_sources(self) -> list[tuple[str, bytes, bool]]:
        """(path, base, in the tree) of the files below the project's own in
        precedence, lowest first."""
        out: list[tuple[str, bytes, bool]] = []
        excl = self._config.excludes_file
        if excl is not None:
            out.append((str(excl), b"", False))
        repo = self._repo
        if repo is not None:
            out.append((str(repo.common_dir / "info" / "exclude"), b"", False))
            d, base = repo.top, b""
            for part in self.root.relative_to(repo.top).parts:
                out += [(str(d / name), base, True) for name in IGNORE_FILES]
                d, base = d / part, base + os.fsencode(part) + b"/"
        return out

    def _load_global(self) -> bool:
        """(Re)read excludesFile, info/exclude and the ignore files of the
        directories between the work tree top and the project; True if the
        rules changed."""
        self._config = config = core_config(self._repo, self.root)
        if config.problem is not None:
            self._warn_once(
                config.problem, f"{config.problem}; ignore patterns match case-sensitively"
            )
        contents: list[tuple[str, bytes, bytes]] = []
        stamps: dict[str, _Stamp | None] = {}
        for path, base, in_tree in self._global_sources():
            got = self._read(path, nofollow=in_tree)
            stamps[path] = got[1] if got else None
            if got:
                contents.append((path, base, got[0]))
        with self._lock:
            self._global_stamps = stamps
            if config.ignore_case != self._icase:
                self._set_icase(config.ignore_case)
            elif contents == self._global_contents:
                return False
            self._global_contents = contents
            icase = self._icase
            self._global = tuple(
                r for p, b, data in contents for r in parse_rules(data, b, p, icase)
            )
            self._dirs.clear()
            return True

    def _set_icase(self, icase: bool) -> None:
        """Under the lock: core.ignorecase changed; every rule read so far
        is compiled again (the caller redoes the global ones)."""
        self._icase = icase
        self._user = parse_rules(self._user_text, self._prefix, "[watch] ignore", icase)
        for rel, contents in self._contents.items():
            self._own[rel] = self._parse_dir(rel, contents)

    def _read_dir(self, rel: str) -> tuple[_Contents, dict[str, _Stamp]]:
        absdir = os.path.join(self._root_s, rel) if rel else self._root_s
        contents: list[tuple[str, bytes]] = []
        stamps: dict[str, _Stamp] = {}
        for name in IGNORE_FILES:
            got = self._read(os.path.join(absdir, name), nofollow=True)
            if got is not None:
                contents.append((name, got[0]))
                stamps[name] = got[1]
        return tuple(contents), stamps

    def _store_dir(self, rel: str, contents: _Contents, stamps: dict[str, _Stamp]) -> bool:
        """Under the lock; True if the directory's rules differ from before."""
        if stamps:
            self._stamps[rel] = stamps
        else:
            self._stamps.pop(rel, None)
        if rel in self._own and self._contents.get(rel, ()) == contents:
            return False
        if contents:
            self._contents[rel] = contents
        else:
            self._contents.pop(rel, None)
        self._own[rel] = self._parse_dir(rel, contents)
        return True

    def _parse_dir(self, rel: str, contents: _Contents) -> tuple[Rule, ...]:
        absdir = os.path.join(self._root_s, rel) if rel else self._root_s
        base = self._prefix + (os.fsencode(rel) + b"/" if rel else b"")
        icase = self._icase
        rules = (parse_rules(data, base, os.path.join(absdir, n), icase) for n, data in contents)
        return tuple(r for file_rules in rules for r in file_rules)

    def _reload_dir(self, rel: str) -> bool:
        contents, stamps = self._read_dir(rel)
        with self._lock:
            known = rel in self._own
            if not self._store_dir(rel, contents, stamps) or not known:
                return False  # unchanged, or nothing was derived from it yet (see _dir)
            # what was derived from the old rules: this directory and below
            if rel == "":
                self._dirs.clear()
            else:
                below = rel + "/"
                for d in [d for d in self._dirs if d == rel or d.startswith(below)]:
                    del self._dirs[d]
            return True

    def _prune(self) -> None:
        """Forget directories that no longer exist, once the caches have
        grown well past their size at the last pruning (amortized; keeps a
        long session with directory churn from growing them without end)."""
        with self._lock:
            if len(self._dirs) + len(self._own) <= 2 * self._pruned_size + 256:
                return
            known = set(self._dirs) | set(self._own)
        gone = {d for d in known if d and not os.path.isdir(os.path.join(self._root_s, d))}
        with self._lock:
            for d in gone:
                self._dirs.pop(d, None)
                self._own.pop(d, None)
                self._contents.pop(d, None)
                self._stamps.pop(d, None)
            self._pruned_size = len(self._dirs) + len(self._own)

    def load_ignore_files(self, directory: Path | str) -> None:
        """(Re)read one directory's ignore files (the walk calls this for
        every directory it enters); for the root, git's other sources too."""
        if not self.use_ignore_files:
            return
        rel = self._rel(directory)
        if rel is None:
            return
        if rel == ".":
            self._prune()
            self._load_global()
            rel = ""
        self._reload_dir(rel)

    def reload_changed(self) -> bool:
        """Re-read the ignore files whose stat changed since they were read
        (a stat of each, no walk); True if any rule changed. For polling and
        idle sweeps, where no event says so; the caller then rescans."""
        if not self.use_ignore_files:
            return False

        def differs(path: str, stamp: _Stamp | None) -> bool:
            try:
                st = os.stat(path)
            except OSError:
                return stamp is not None
            return (st.st_mtime_ns, st.st_size, st.st_ino) != stamp

        with self._lock:
            known_global = list(self._global_stamps.items())
            known_dirs = [(rel, dict(names)) for rel, names in self._stamps.items()]
        changed = any(differs(p, s) for p, s in known_global) and self._load_global()
        for rel, names in known_dirs:
            absdir = os.path.join(self._root_s, rel) if rel else self._root_s
            if any(differs(os.path.join(absdir, n), s) for n, s in names.items()):
                changed = self._reload_dir(rel) or changed
        return changed

    def take_warnings(self) -> list[str]:
        """One line per ignore file that exists but could not be read."""
        with self._lock:
            out, self._warnings = self._warnings, []
        return out

    def is_rules_file_abs(self, path: str) -> bool:
        """A file whose edit changes what is ignored: an ignore file in a
        directory that is not itself ignored, info/exclude, excludesFile, or
        one of the ignore files above the project."""
        if not self.use_ignore_files:
            return False
        if path in self._global_stamps:
            return True
        name = os.path.basename(path)
        # with core.ignorecase the filesystem is taken to fold case: opening
        # ".gitignore" (as git and _read do) reads a ".GitIgnore"
        if (name.lower() if self._icase else name) not in IGNORE_FILES:
            return False
        rel = self._rel(os.path.dirname(path))
        if rel is None:
            return False
        return rel == "." or not self.ignored(rel, is_dir=True)

    # -- verdicts ---------------------------------------------------------------
    def _dir(self, rel: str) -> _DirInfo:
        """`rel` ("" for the root): is it excluded, and which rules apply in
        it. Cached; a changed ignore file drops what was derived from it."""
        info = self._dirs.get(rel)
        if info is not None:
            return info
        with self._lock:
            if rel == "":
                info = (None, self._global + self._own_rules(""))
            else:
                info = parent = self._dir(rel.rpartition("/")[0])
                if parent[0] is not None:
                    return parent[0], ()  # not cached: the excluded ancestor is
                rule = self._match(rel, True, parent[1])
                if rule is not None and not rule.negative:
                    info = (rule, ())
                elif own := self._own_rules(rel):
                    info = (None, parent[1] + own)
                # else the parent's own tuple: one less object per directory
            self._dirs[rel] = info
            return info

    def _own_rules(self, rel: str) -> tuple[Rule, ...]:
        """Under the lock: a directory's rules, read on first use (an event
        can ask about a directory before a walk has entered it)."""
        if not self.use_ignore_files:
            return ()
        if rel not in self._own:
            self._store_dir(rel, *self._read_dir(rel))
        return self._own[rel]

    def _match(self, relpath: str, is_dir: bool, stack: tuple[Rule, ...]) -> Rule | None:
        """The deciding rule for `relpath`, its parent not being excluded."""
        if not stack and not self._user:
            return None
        path = self._prefix + os.fsencode(relpath)
        basename = path.rpartition(b"/")[2]
        return first_match(self._user, path, basename, is_dir) or first_match(
            stack, path, basename, is_dir
        )

    def explain(self, relpath: str, is_dir: bool = False) -> Rule | None:
        """The rule deciding git's (and `[watch] ignore`'s) verdict on
        `relpath`, as `git check-ignore -v` names it; None if none matches."""
        parent = relpath.rpartition("/")[0]
        excluded_by, stack = self._dir(parent)
        return excluded_by or self._match(relpath, is_dir, stack)

    def ignored(self, relpath: str, is_dir: bool = False) -> bool:
        """`relpath` is POSIX and relative to the root."""
        if not relpath or relpath == ".":
            return False
        parts = relpath.split("/")
        if any(p in VCS_DIRS for p in parts):
            return True
        if self._icase and ".git" in (low := relpath.lower()) and ".git" in low.split("/"):
            return True  # git's walk skips it too (dir.c: fspathcmp(name, ".git"))
        if not is_dir and _EDITOR(os.fsencode(parts[-1])) is not None:
            return True
        for out in self._outputs:
            if relpath == out or relpath.startswith(out + "/"):
                return True
        excluded_by, stack = self._dir(relpath.rpartition("/")[0])
        if excluded_by is not None:
            return True
        rule = self._match(relpath, is_dir, stack)
        return rule is not None and not rule.negative

    def ignored_abs(self, path: str) -> bool:
        try:
            rel = os.path.relpath(path, self.root)
        except ValueError:
            return True
        if rel.startswith(".."):
            return True
        return self.ignored(rel.replace(os.sep, "/"))
