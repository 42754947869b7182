"""gitignore(5) as git itself implements it (dir.c, wildmatch.c): parsing a
pattern file, matching one pattern, and finding git's other exclude sources
(`$GIT_DIR/info/exclude`, `core.excludesFile`) and `core.ignorecase`.

Patterns are matched on bytes (the path as the filesystem has it), as git
does: `?` is one byte, bracket ranges compare byte values, character classes
are ASCII only. Each pattern becomes one compiled regex whose full match is
exactly wildmatch's verdict; the literal-prefix split git makes before
calling wildmatch (which changes where `**` counts as "at the start") is
reproduced.

With `core.ignorecase` git folds ASCII case: its literal comparisons
(strncasecmp) fold both sides, and wildmatch's WM_CASEFOLD lowers the text
and the pattern's plain characters but not a bracket's members nor an
escaped character (`[A]` and `\\A` then match nothing, `[!A]` anything);
the same quirks are reproduced.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

_BOM = b"\xef\xbb\xbf"
_GLOB_SPECIAL = frozenset(b"*?[\\")


def _ascii(chars: bytes) -> frozenset[int]:
    return frozenset(chars)


_DIGIT = _ascii(b"0123456789")
_UPPER = _ascii(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_LOWER = _ascii(b"abcdefghijklmnopqrstuvwxyz")
_ALPHA = _UPPER | _LOWER
_SPACE = _ascii(b"\t\n\r ")  # git's own ctype: no \v, no \f
_PRINT = frozenset(range(0x20, 0x7F))
_GRAPH = frozenset(range(0x21, 0x7F))
# [:name:] in a bracket; git uses its locale-independent ASCII ctype
_CLASSES: dict[bytes, frozenset[int]] = {
    b"alnum": _ALPHA | _DIGIT,
    b"alpha": _ALPHA,
    b"blank": _ascii(b" \t"),
    b"cntrl": frozenset([*range(0x20), 0x7F]),
    b"digit": _DIGIT,
    b"graph": _GRAPH,
    b"lower": _LOWER,
    b"print": _PRINT,
    b"punct": _GRAPH - _ALPHA - _DIGIT,
    b"space": _SPACE,
    b"upper": _UPPER,
    b"xdigit": _DIGIT | _ascii(b"abcdefABCDEF"),
}


def _byte_class(members: frozenset[int] | set[int]) -> bytes:
    if not members:
        return b"(?!)"
    return b"[" + b"".join(b"\\x%02x" % c for c in sorted(members)) + b"]"


def _lower(c: int) -> int:
    return c + 0x20 if 0x41 <= c <= 0x5A else c


def _fold_members(members: set[int]) -> set[int]:
    """The text bytes whose lowered form is in `members` (WM_CASEFOLD
    compares the lowered text byte with the pattern's byte as written); the
    result is closed under case, so a regex compiled with IGNORECASE keeps
    it exact."""
    return {c for c in range(1, 256) if _lower(c) in members}


def _bracket(p: bytes, i: int, pathname: bool, casefold: bool) -> tuple[bytes, int] | None:
    """`p[i]` is `[`: (regex for the set, index after its `]`), or None when
    wildmatch would abort (unterminated set, unknown class): such a pattern
    never matches. Follows wildmatch's parse step by step. `members` holds
    the (lowered, with `casefold`) text bytes that match."""
    n = len(p)

    def at(k: int) -> int:
        return p[k] if k < n else 0

    j = i + 1
    c = at(j)
    if c == ord("^"):
        c = ord("!")
    negated = c == ord("!")
    if negated:
        j += 1
        c = at(j)
    members: set[int] = set()
    prev = 0
    while True:
        if not c:
            return None
        if c == ord("\\"):
            j += 1
            c = at(j)
            if not c:
                return None
            members.add(c)
        elif c == ord("-") and prev and at(j + 1) and at(j + 1) != ord("]"):
            j += 1
            c = at(j)
            if c == ord("\\"):
                j += 1
                c = at(j)
                if not c:
                    return None
            members.update(range(prev, c + 1))
            if casefold:  # a lowered letter also matches if its upper case is in range
                members.update(u + 0x20 for u in range(max(prev, 0x41), min(c, 0x5A) + 1))
            c = 0  # a range never starts another one
        elif c == ord("[") and at(j + 1) == ord(":"):
            s = k = j + 2
            while at(k) and at(k) != ord("]"):
                k += 1
            if not at(k):
                return None
            if k - s - 1 < 0 or p[k - 1] != ord(":"):
                members.add(ord("["))  # no ":]": an ordinary "[", scan goes on after it
            else:
                name = p[s : k - 1]
                cls = _CLASSES.get(name)
                if cls is None:
                    return None
                members |= _ALPHA if casefold and name == b"upper" else cls
                c = 0
                j = k
        else:
            members.add(c)
        prev = c
        j += 1
        c = at(j)
        if c == ord("]"):
            break
    if casefold:
        members = _fold_members(members)
    chosen = set(range(1, 256)) - members if negated else members - {0}
    if pathname:
        chosen.discard(ord("/"))
    return _byte_class(chosen), j + 1


def wildmatch_regex(p: bytes, pathname: bool, casefold: bool = False) -> bytes | None:
    """Regex source whose full match is git's wildmatch(p, text) (with
    WM_PATHNAME when `pathname`); None for a pattern that never matches.
    With `casefold` (WM_CASEFOLD) it is to be compiled with re.IGNORECASE,
    which on bytes folds ASCII only, as git does."""
    out: list[bytes] = []
    i, n = 0, len(p)
    while i < n:
        c = p[i]
        if c == ord("\\"):
            if i + 1 >= n:
                return None  # a trailing backslash matches nothing
            if casefold and 0x41 <= p[i + 1] <= 0x5A:
                out.append(b"(?!)")  # the escaped byte is compared with the lowered text
            else:
                out.append(re.escape(p[i + 1 : i + 2]))
            i += 2
        elif c == ord("?"):
            out.append(b"[^/]" if pathname else b".")
            i += 1
        elif c == ord("*"):
            j = i + 1
            if j < n and p[j] == ord("*"):
                while j < n and p[j] == ord("*"):
                    j += 1
                if not pathname:
                    slash = True
                elif (i == 0 or p[i - 1] == ord("/")) and (
                    j == n or p[j] == ord("/") or p[j : j + 2] == b"\\/"
                ):
                    if j < n and p[j] == ord("/"):
                        out.append(b"(?:.*/)?")  # "**/": zero or more directories
                        i = j + 1
                        continue
                    slash = True
                else:
                    slash = False  # "**" not between slashes is "*"
            else:
                slash = not pathname
            out.append(b".*" if slash else b"[^/]*")
            i = j
        elif c == ord("["):
            got = _bracket(p, i, pathname, casefold)
            if got is None:
                return None
            cls, i = got
            out.append(cls)
        else:
            out.append(re.escape(p[i : i + 1]))
            i += 1
    return b"".join(out)


@dataclass(frozen=True, slots=True)
class Rule:
    """One pattern line. `base` is the directory of its file relative to the
    work tree top, b"" or ending in b"/"."""

    match: Callable[[bytes], object]  # compiled fullmatch
    base: bytes
    negative: bool
    dir_only: bool
    basename_only: bool
    source: str  # the file it came from, for messages and tests
    lineno: int
    text: str  # the pattern as git prints it (`git check-ignore -v`)
    icase: bool = False  # core.ignorecase: it was compiled folding case

    def matches(self, path: bytes, basename: bytes, is_dir: bool) -> bool:
        """`path` relative to the work tree top, strictly below `base`."""
        if self.dir_only and not is_dir:
            return False
        if self.basename_only:
            return self.match(basename) is not None
        base = self.base
        if not path.startswith(base) and not (
            self.icase and path[: len(base)].lower() == base.lower()  # git: fspathncmp
        ):
            return False
        return self.match(path[len(base) :]) is not None


def _trim_trailing_spaces(line: bytes) -> bytes:
    """Unescaped trailing spaces (not tabs) go, as in dir.c."""
    last_space = -1
    i, n = 0, len(line)
    while i < n:
        c = line[i]
        if c == 0x20:
            if last_space < 0:
                last_space = i
        elif c == 0x5C:
            i += 1
            if i >= n:
                return line
            last_space = -1
        else:
            last_space = -1
        i += 1
    return line[:last_space] if last_space >= 0 else line


def compile_rule(
    line: bytes, base: bytes, source: str, lineno: int, icase: bool = False
) -> Rule | None:
    """One trimmed pattern line -> Rule, or None for one that matches nothing.
    `icase`: core.ignorecase (git's literal comparisons and wildmatch fold)."""
    text = line.decode("utf-8", "surrogateescape")
    negative = line.startswith(b"!")
    p = line[1:] if negative else line
    n = len(p)
    dir_only = n > 0 and p[-1] == ord("/")
    if dir_only:
        n -= 1
    body = p[:n]
    if not body:
        return None
    nowild = next((k for k, c in enumerate(p) if c in _GLOB_SPECIAL), len(p))
    prefix = min(nowild, n)
    basename_only = b"/" not in body
    if basename_only:
        rx = wildmatch_regex(body, pathname=False, casefold=icase)
    else:
        if body.startswith(b"/"):
            body = body[1:]
            prefix -= 1
        # git compares the literal prefix itself and runs wildmatch on the
        # rest only, so a "**" right after the prefix counts as leading
        rest = wildmatch_regex(body[prefix:], pathname=True, casefold=icase)
        rx = None if rest is None else re.escape(body[:prefix]) + rest
    if rx is None:
        return None
    return Rule(
        match=re.compile(rx, re.DOTALL | re.IGNORECASE if icase else re.DOTALL).fullmatch,
        base=base,
        negative=negative,
        dir_only=dir_only,
        basename_only=basename_only,
        source=source,
        lineno=lineno,
        text=text,
        icase=icase,
    )


def parse_rules(data: bytes, base: bytes, source: str, icase: bool = False) -> tuple[Rule, ...]:
    """A whole exclude file, as add_patterns_from_buffer reads it."""
    if data.startswith(_BOM):
        data = data[len(_BOM) :]
    rules: list[Rule] = []
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for lineno, raw in enumerate(lines, 1):
        if not raw or raw[0] == ord("#"):
            continue
        line = raw[:-1] if raw.endswith(b"\r") else raw
        nul = line.find(b"\0")
        if nul >= 0:
            line = line[:nul]  # git reads each line as a C string
        rule = compile_rule(_trim_trailing_spaces(line), base, source, lineno, icase)
        if rule is not None:
            rules.append(rule)
    return tuple(rules)


def first_match(rules: tuple[Rule, ...], path: bytes, basename: bytes, is_dir: bool) -> Rule | None:
    """The last rule in `rules` that matches (git: last match wins)."""
    for rule in reversed(rules):
        if rule.matches(path, basename, is_dir):
            return rule
    return None


# -- where git finds its patterns -------------------------------------------


@dataclass(frozen=True)
class Repo:
    top: Path  # the work tree's top directory
    common_dir: Path  # holds info/exclude and config (shared by worktrees)


def find_repo(start: Path) -> Repo | None:
    """The git work tree containing `start` (a `.git` directory, or a `.git`
    file pointing at one, as in worktrees and submodules)."""
    for d in (start, *start.parents):
        dotgit = d / ".git"
        try:
            if dotgit.is_dir():
                gitdir = dotgit
            elif dotgit.is_file():
                head = dotgit.read_text(encoding="utf-8", errors="replace").strip()
                if not head.startswith("gitdir:"):
                    continue
                gitdir = (d / head[len("gitdir:") :].strip()).resolve()
            else:
                continue
            common = gitdir
            commondir = gitdir / "commondir"
            if commondir.is_file():
                common = (gitdir / commondir.read_text(encoding="utf-8").strip()).resolve()
            if not (gitdir / "HEAD").is_file():
                continue  # not a repository: git looks further up too
        except OSError:
            continue
        return Repo(top=d, common_dir=common)
    return None


def _home() -> Path | None:
    home = os.environ.get("HOME")
    return Path(home) if home else None


def _xdg_git(name: str) -> Path | None:
    xdg = os.environ.get("XDG_CONFIG_HOME")
    if xdg:
        return Path(xdg) / "git" / name
    home = _home()
    return home / ".config" / "git" / name if home else None


def _expand(value: str, cwd: Path) -> Path | None:
    if not value:
        return None
    p = Path(os.path.expanduser(value)) if value.startswith("~") else Path(value)
    return p if p.is_absolute() else cwd / p


def _config_files(repo: Repo | None) -> list[Path]:
    """The files git reads its configuration from, lowest precedence first."""
    files: list[Path] = []
    if not os.environ.get("GIT_CONFIG_NOSYSTEM"):
        files.append(Path(os.environ.get("GIT_CONFIG_SYSTEM") or "/etc/gitconfig"))
    if "GIT_CONFIG_GLOBAL" in os.environ:
        if os.environ["GIT_CONFIG_GLOBAL"]:
            files.append(Path(os.environ["GIT_CONFIG_GLOBAL"]))
    else:
        xdg, home = _xdg_git("config"), _home()
        files += [p for p in (xdg, home / ".gitconfig" if home else None) if p is not None]
    if repo is not None:
        files.append(repo.common_dir / "config")
    return files


_QUOTE_ESCAPES = {"n": "\n", "t": "\t", "b": "\b", "\\": "\\", '"': '"'}


def _config_value(raw: str) -> str:
    """A git config value: quotes, escapes, trailing comments."""
    out: list[str] = []
    quoted = False
    i = 0
    pending_space = ""
    while i < len(raw):
        c = raw[i]
        if c == '"':
            quoted = not quoted
        elif c == "\\" and i + 1 < len(raw):
            out.append(pending_space + _QUOTE_ESCAPES.get(raw[i + 1], raw[i + 1]))
            pending_space = ""
            i += 1
        elif c in "#;" and not quoted:
            break
        elif c in " \t" and not quoted:
            pending_space += c if out else ""
        else:
            out.append(pending_space + c)
            pending_space = ""
        i += 1
    return "".join(out)


def _read_core_values(path: Path, key: str) -> list[str | None]:
    """Every value of `core.<key>` (lower case) in one config file (no
    includes), in order; None for a key written without `=`, which a
    boolean reads as true."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    values: list[str | None] = []
    section = ""
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("["):
            end = s.find("]")
            section = s[1:end].strip().lower() if end > 0 else ""
            s = s[end + 1 :].strip() if end > 0 else ""
            if not s:
                continue
        if section != "core" or not s or s[0] in "#;":
            continue
        name, sep, rest = s.partition("=")
        if name.strip().lower() == key:
            values.append(_config_value(rest.strip()) if sep else None)
    return values


def _git_config(cwd: Path, *args: str) -> subprocess.CompletedProcess[bytes] | None:
    """`git config ARGS` (git knows includes, system config and the
    GIT_CONFIG_* variables); None when git is missing or did not run."""
    git = shutil.which("git")
    if git is None:
        return None
    try:
        return subprocess.run(
            [git, "config", *args], cwd=cwd, capture_output=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None


def _excludes_from_git(cwd: Path) -> tuple[bool, str | None]:
    """(answered, value) of core.excludesFile from git."""
    proc = _git_config(cwd, "--path", "--get", "core.excludesFile")
    if proc is None or proc.returncode not in (0, 1):
        return False, None
    if proc.returncode == 1:  # not set
        return True, None
    return True, os.fsdecode(proc.stdout.rstrip(b"\n"))


_INT = re.compile(r"[ \t\n\v\f\r]*([+-]?)(?:0[xX]([0-9a-fA-F]+)|(0[0-7]*)|([1-9][0-9]*))")
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_INT_MAX = (1 << 31) - 1


def _parse_int(value: str) -> int | None:
    """git_parse_int: strtoimax(base 0), a k/m/g unit, within an int."""
    m = _INT.match(value)
    if m is None:
        return None
    sign, hexa, octal, dec = m.groups()
    val = int(hexa, 16) if hexa else int(octal, 8) if octal else int(dec)
    factor = _UNITS.get(value[m.end() :].lower())
    if factor is None or val > _INT_MAX // factor:
        return None
    return -val * factor if sign == "-" else val * factor


def parse_bool(value: str | None) -> bool | None:
    """A boolean config value as git_config_bool reads it: no value is true,
    an empty one false, true/yes/on and false/no/off in any case, else an
    integer (nonzero is true); None where git stops with "bad boolean"."""
    if value is None:
        return True
    low = value.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("", "false", "no", "off"):
        return False
    n = _parse_int(value)
    return None if n is None else n != 0


def _ignorecase_from_files(files: list[Path]) -> tuple[bool, str | None]:
    value, problem = False, None
    for f in files:
        for raw in _read_core_values(f, "ignorecase"):
            got = parse_bool(raw)
            if got is None:
                problem = problem or f"{f}: core.ignorecase = {raw!r} is not a boolean"
            else:
                value = got  # the last one wins
    return (False, problem) if problem else (value, None)


def _ignorecase(where: Path, files: list[Path]) -> tuple[bool, str | None]:
    proc = _git_config(where, "--type=bool", "--get", "core.ignorecase")
    if proc is not None and proc.returncode in (0, 1):
        return proc.stdout.strip() == b"true", None
    value, problem = _ignorecase_from_files(files)
    if problem is None and proc is not None and b"core.ignorecase" in proc.stderr:
        # a bad value the files read here do not show (an included file)
        problem = "git config: " + proc.stderr.decode("utf-8", "replace").strip().splitlines()[0]
    return value, problem


@dataclass(frozen=True)
class CoreConfig:
    excludes_file: Path | None
    ignore_case: bool
    problem: str | None  # one line for the user: a setting git refuses


_config_cache: dict[tuple[object, ...], CoreConfig] = {}


def _stat_key(p: Path) -> tuple[int, int, int] | None:
    try:
        st = p.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino  # git config writes a new file each time


_ENV = ("HOME", "XDG_CONFIG_HOME", "GIT_CONFIG_GLOBAL", "GIT_CONFIG_SYSTEM",
        "GIT_CONFIG_NOSYSTEM", "GIT_CONFIG_PARAMETERS", "GIT_CONFIG_COUNT")  # fmt: skip


def core_config(repo: Repo | None, cwd: Path) -> CoreConfig:
    """The settings of git's that decide what it ignores. Asked of git
    itself when it is installed (once per configuration state), else read
    from the config files; only ever read, never written.

    excludes_file: the file `core.excludesFile` names, or git's default
    ($XDG_CONFIG_HOME/git/ignore, else ~/.config/git/ignore). ignore_case:
    `core.ignorecase` (git sets it at init/clone on a case-insensitive
    filesystem); false, with `problem` set, for a value git refuses."""
    where = repo.top if repo is not None else cwd
    files = _config_files(repo)
    key: tuple[object, ...] = (
        str(where),
        *((str(f), _stat_key(f)) for f in files),
        *(os.environ.get(v) for v in _ENV),
    )
    got = _config_cache.get(key)
    if got is not None:
        return got
    answered, value = _excludes_from_git(where)
    if not answered:
        value = None
        for f in files:
            values = _read_core_values(f, "excludesfile")
            if values:
                value = values[-1] or ""
    path = _xdg_git("ignore") if value is None else _expand(value, where)
    icase, problem = _ignorecase(where, files)
    got = _config_cache[key] = CoreConfig(path, icase, problem)
    return got


def excludes_file(repo: Repo | None, cwd: Path) -> Path | None:
    """core_config's excludes_file."""
    return core_config(repo, cwd).excludes_file
