"""Ignore semantics identical to git's: every verdict (and the deciding
pattern) of IgnoreRules is compared with `git check-ignore` on seeded random
corpora of nested `.gitignore` files, `.git/info/exclude` and
`core.excludesFile`, and the watch set with `git ls-files --others
--exclude-standard`. Plus the watcher taking rule edits into account."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from fbuild_watch.watch import IgnoreRules, WatchOptions, WatchSet, gitignore
from tests.watchkit import watching

GIT = shutil.which("git")
if GIT is None:  # the Makefile's venv/CI setup installs git; its absence is a setup error
    raise RuntimeError("git is required by tests/test_ignore_git.py")


@pytest.fixture
def git_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """HOME and XDG_CONFIG_HOME in tmp for git and for us: the real user
    configuration is neither read nor written."""
    home, xdg = tmp_path / "home", tmp_path / "xdg"
    home.mkdir()
    xdg.mkdir()
    for var in ("GIT_DIR", "GIT_WORK_TREE", "GIT_CONFIG_GLOBAL", "GIT_CONFIG_SYSTEM"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(xdg))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    return dict(os.environ)


def _git(top: Path, *args: str, stdin: bytes | None = None) -> bytes:
    return subprocess.run(
        [GIT, *args], cwd=top, input=stdin, capture_output=True, check=True
    ).stdout


def _init(top: Path) -> None:
    top.mkdir(parents=True, exist_ok=True)
    _git(top, "init", "-q")


def git_check_ignore(top: Path, paths: list[str]) -> dict[str, tuple[str, int, str] | None]:
    """path -> (source file, absolute; line; pattern) of git's deciding
    pattern, or None. A negative pattern means "not ignored"."""
    out = subprocess.run(
        [GIT, "check-ignore", "--no-index", "-v", "-n", "-z", "--stdin"],
        cwd=top,
        input=b"".join(os.fsencode(p) + b"\0" for p in paths),
        capture_output=True,
        check=False,  # 1: nothing ignored
    )
    assert out.returncode in (0, 1), out.stderr
    f = out.stdout.split(b"\0")
    res: dict[str, tuple[str, int, str] | None] = {}
    for i in range(0, len(f) - 1, 4):
        source, line, pattern, path = (os.fsdecode(x) for x in f[i : i + 4])
        src = os.path.normpath(top / source) if source else ""
        res[path] = (src, int(line), pattern) if source else None
    assert set(res) == set(paths)
    return res


def ours(rules: IgnoreRules, rel: str, is_dir: bool) -> tuple[str, int, str] | None:
    rule = rules.explain(rel, is_dir)
    return None if rule is None else (os.path.normpath(rule.source), rule.lineno, rule.text)


def _compare(rules: IgnoreRules, top: Path, prefix: str, entries: dict[str, bool]) -> int:
    """Every entry (project-relative path -> is a directory): same deciding
    pattern as git and the verdict that follows from it."""
    want = git_check_ignore(top, [prefix + p for p in entries])
    diffs = []
    for rel, is_dir in entries.items():
        g, o = want[prefix + rel], ours(rules, rel, is_dir)
        git_ignored = g is not None and not g[2].startswith("!")
        if g != o or rules.ignored(rel, is_dir) != git_ignored:
            diffs.append(f"{rel}{'/' if is_dir else ''}: git {g}, ours {o}")
    assert not diffs, "\n".join(diffs[:20])
    return len(entries)


# -- the generated corpus ---------------------------------------------------------

DIRS = ["a", "b", "src", "lib", "docs", "build", "gen", "sub", "x y", "ab", "a1"]
STEMS = ["main", "util", "important", "readme", "foo", "bar", "a", "a1", "b2", "x y",
         "!bang", "#hash", "tail ", "Makefile", "ba", "[x]", "q?"]  # fmt: skip
EXTS = [".c", ".h", ".log", ".md", ".o", ".txt", "", ".bin"]


def _corpus_tree(rng: random.Random) -> tuple[list[str], list[str]]:
    dirs: set[str] = set()
    while len(dirs) < 45:
        depth = rng.choice([1, 1, 2, 2, 3, 4])
        parts = [rng.choice(DIRS) for _ in range(depth)]
        for k in range(1, depth + 1):
            dirs.add("/".join(parts[:k]))
    files: set[str] = set()
    dl = sorted(dirs)
    while len(files) < 260:
        d = rng.choice(["", "", *dl])
        name = rng.choice(STEMS) + rng.choice(EXTS)
        rel = f"{d}/{name}" if d else name
        if rel not in dirs:
            files.add(rel)
    return dl, sorted(files)


def _pattern(rng: random.Random) -> str:
    d, d2 = rng.choice(DIRS), rng.choice(DIRS)
    stem, ext = rng.choice(STEMS), rng.choice([e for e in EXTS if e])
    name = stem + rng.choice(EXTS)
    glob_name = name.replace("\\", "\\\\").replace("[", "\\[").replace("?", "\\?")
    if glob_name.startswith(("!", "#")):
        glob_name = "\\" + glob_name
    if glob_name.endswith(" "):
        glob_name = glob_name[:-1] + "\\ "
    specific = [
        glob_name, glob_name, f"*{ext}", f"*{ext}", f"{d}/", f"{d}", f"/{d}", f"/{d}/",
        f"{d}/{glob_name}", f"/{d}/{d2}", f"**/{glob_name}", f"**/{d}/", f"{d}/**",
        f"{d}/**/{glob_name}", f"{d}/**/*{ext}", f"**/{d}/*{ext}", f"{d}/*", f"{d}/*/",
        f"{d[0]}?", f"{stem[:1]}?*{ext}", f"[!m]*{ext}", "[[:digit:]]*", f"*[0-9]{ext}",
        "[[:alpha:]][[:digit:]]*", "[]x]*", "\\!bang*", "!bang*", "#hash.c", "\\#hash*",
        f"{glob_name}   ", "tail\\ ", "tail \\ ", "tail ", f"{d}/{d2[0]}**", f"{d}**",
        f"{d}/**/", f"*/{glob_name}", f"{d}/*/{glob_name}", "**/*.log", "**/foo/**",
        f"{d}\\/x", "[a-", "[[:nope:]]x", "foo\\", f"{d}//", f"{stem}.[ch]",
        f"[{stem[:1]}-z]*{ext}", f"\\{glob_name}" if glob_name[0].isalpha() else glob_name,
        f"{d}/{d2}/", f"/{glob_name}", f"{d}/**/{d2}/", "q\\?*", "\\[x]*",
    ]  # fmt: skip
    broad = ["*", "**", "[ab]*", "[a-c]*", "*[0-9]*", "?", "*/"]
    forms = broad if rng.random() < 0.04 else specific
    p = rng.choice(forms)
    if rng.random() < 0.35 and not p.startswith("#"):
        p = "!" + p
    return p


def _rule_file(rng: random.Random, n: int) -> str:
    lines = []
    for _ in range(n):
        r = rng.random()
        if r < 0.08:
            lines.append("# a comment")
        elif r < 0.12:
            lines.append("")
        else:
            lines.append(_pattern(rng))
    end = rng.choice(["\n", "\n", "\r\n", ""])
    return end.join(lines) + (end or "")


def _write_corpus(
    rng: random.Random, top: Path, env: dict[str, str], info: Path | None
) -> dict[str, bool]:
    dirs, files = _corpus_tree(rng)
    for d in dirs:
        (top / d).mkdir(parents=True, exist_ok=True)
    for f in files:
        (top / f).write_text(f"// {f}\n")
    (top / ".gitignore").write_text(_rule_file(rng, rng.randint(8, 16)))
    for d in rng.sample(dirs, 14):
        (top / d / ".gitignore").write_text(_rule_file(rng, rng.randint(3, 10)))
    if info is not None:
        info.parent.mkdir(parents=True, exist_ok=True)
        info.write_text(_rule_file(rng, rng.randint(4, 10)))
    # core.excludesFile: repo config, ~/.gitconfig with "~/", or git's default
    how = rng.choice(["local", "home", "default"])
    home, xdg = Path(env["HOME"]), Path(env["XDG_CONFIG_HOME"])
    target = {"local": home / "excl-local", "home": home / "excl-home",
              "default": xdg / "git" / "ignore"}[how]  # fmt: skip
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(_rule_file(rng, rng.randint(4, 10)))
    if how == "local":
        _git(top, "config", "core.excludesFile", str(target))
    elif how == "home":
        (home / ".gitconfig").write_text('[core]\n\texcludesFile = "~/excl-home"  ; comment\n')
    entries = {d: True for d in dirs} | {f: False for f in files}
    entries |= {f"{d}/.gitignore": False for d in dirs if (top / d / ".gitignore").exists()}
    entries[".gitignore"] = False
    return entries


@pytest.mark.parametrize("seed", range(8))
def test_corpus_matches_git_check_ignore(
    tmp_path: Path, git_env: dict[str, str], seed: int
) -> None:
    rng = random.Random(seed)
    top = tmp_path / "repo"
    _init(top)
    entries = _write_corpus(rng, top, git_env, top / ".git" / "info" / "exclude")
    rules = IgnoreRules(top)
    assert _compare(rules, top, "", entries) >= 200
    # the watch set holds exactly what git calls untracked and not ignored
    ws = WatchSet(top, rules)
    ws.scan()
    listed = _git(top, "ls-files", "--others", "--exclude-standard", "-z").split(b"\0")
    assert set(ws._files) == {os.fsdecode(p) for p in listed if p}


def test_project_below_the_work_tree_top(tmp_path: Path, git_env: dict[str, str]) -> None:
    """The project is a subdirectory: the ignore files above it and the
    repository's exclude sources apply, patterns relative to their own dirs."""
    rng = random.Random(100)
    top = tmp_path / "repo"
    _init(top)
    # (the project dir itself stays included: a project git ignores is
    # still watched, see IgnoreRules)
    (top / ".gitignore").write_text("fw/gen/\n*.bak\n!keep.bak\n/fw/src/x.c\n!/fw/\n")
    (top / ".git" / "info" / "exclude").write_text("secret*\n")
    project = top / "fw"
    entries = _write_corpus(rng, project, git_env, None)
    (project / ".gitignore").unlink()  # the rules above it take its place
    for rel in ("gen/a.c", "src/x.c", "src/y.bak", "keep.bak", "secret.c"):
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text("x")
        entries[rel] = False
    entries |= {"gen": True, "src": True}
    rules = IgnoreRules(project)
    _compare(rules, top, "fw/", entries)
    # the sources above the project did decide some of them
    sources = {Path(r.source).parent.name for e, d in entries.items()
               if (r := rules.explain(e, d)) is not None}  # fmt: skip
    assert {"repo", "info"} <= sources


# -- the reported defects -----------------------------------------------------------


def _repo_project(top: Path) -> Path:
    _init(top)
    (top / "src").mkdir()
    (top / "src" / "main.c").write_text("int main;\n")
    return top


async def test_nested_negation_is_watched_and_builds(
    tmp_path: Path, git_env: dict[str, str]
) -> None:
    """Root `*.log`, `logs/.gitignore` `!important.log`: git tracks
    logs/important.log, so an edit to it must start a build."""
    root = _repo_project(tmp_path / "p")
    (root / ".gitignore").write_text("*.log\n")
    (root / "logs").mkdir()
    (root / "logs" / ".gitignore").write_text("!important.log\n")
    (root / "logs" / "important.log").write_text("v1\n")
    (root / "logs" / "other.log").write_text("v1\n")
    assert git_check_ignore(root, ["logs/important.log"])["logs/important.log"] == (
        str(root / "logs" / ".gitignore"), 1, "!important.log")  # fmt: skip
    async with watching(root) as h:
        assert "logs/important.log" in h.ws and "logs/other.log" not in h.ws
        (root / "logs" / "important.log").write_text("v2\n")
        cs = await h.next()
        assert cs.changed == {"logs/important.log"}


async def test_file_below_excluded_dir_stays_ignored(
    tmp_path: Path, git_env: dict[str, str]
) -> None:
    """`docs` + `!docs/readme.md`: git cannot re-include a file whose parent
    directory is excluded; an edit there must not start a build."""
    root = _repo_project(tmp_path / "p")
    (root / ".gitignore").write_text("docs\n!docs/readme.md\n")
    (root / "docs").mkdir()
    (root / "docs" / "readme.md").write_text("v1\n")
    assert git_check_ignore(root, ["docs/readme.md"])["docs/readme.md"] == (
        str(root / ".gitignore"), 1, "docs")  # fmt: skip
    async with watching(root) as h:
        assert "docs/readme.md" not in h.ws
        before = h.watcher.stats.raw_events
        (root / "docs" / "readme.md").write_text("v2\n")
        (root / "src" / "main.c").write_text("int main2;\n")  # the marker that comes through
        cs = await h.next()
        assert h.watcher.stats.raw_events > before
        assert cs.changed == {"src/main.c"} and "docs/readme.md" not in h.ws


def test_info_exclude_and_excludes_file_are_read(tmp_path: Path, git_env: dict[str, str]) -> None:
    root = _repo_project(tmp_path / "p")
    (root / "src" / "local.c").write_text("x")
    (root / "src" / "global.c").write_text("x")
    (root / ".git" / "info" / "exclude").write_text("local.c\n")
    xdg_ignore = Path(git_env["XDG_CONFIG_HOME"]) / "git" / "ignore"
    xdg_ignore.parent.mkdir(parents=True)
    xdg_ignore.write_text("global.c\n")
    ws = WatchSet(root, IgnoreRules(root))
    ws.scan()
    assert set(ws._files) == {"src/main.c"}
    # an explicit core.excludesFile replaces the default one
    other = tmp_path / "elsewhere.ignore"
    other.write_text("main.c\n")
    _git(root, "config", "core.excludesFile", str(other))
    ws = WatchSet(root, IgnoreRules(root))
    ws.scan()
    assert set(ws._files) == {"src/global.c"}


# -- rule edits while watching ------------------------------------------------------


async def test_self_ignoring_gitignore_edit_takes_effect(
    tmp_path: Path, git_env: dict[str, str]
) -> None:
    """A `.gitignore` that lists itself is ignored, yet its edits change
    what is watched."""
    root = _repo_project(tmp_path / "p")
    (root / "src" / "gen.h").write_text("x")
    (root / ".gitignore").write_text(".gitignore\n")
    async with watching(root) as h:
        assert "src/gen.h" in h.ws
        (root / ".gitignore").write_text(".gitignore\n*.h\n")
        cs = await h.next()
        assert cs.removed == {"src/gen.h"} and "src/gen.h" not in h.ws
        (root / ".gitignore").write_text(".gitignore\n")
        cs = await h.next()
        assert cs.changed == {"src/gen.h"}


async def test_info_exclude_edit_takes_effect(tmp_path: Path, git_env: dict[str, str]) -> None:
    root = _repo_project(tmp_path / "p")
    (root / "src" / "gen.h").write_text("x")
    async with watching(root) as h:
        assert "src/gen.h" in h.ws
        (root / ".git" / "info" / "exclude").write_text("*.h\n")
        cs = await h.next()
        assert cs.removed == {"src/gen.h"}
        (root / "src" / "main.c").write_text("int main2;\n")
        assert (await h.next()).changed == {"src/main.c"}


async def test_polling_sees_excludes_file_and_nested_gitignore_edits(
    tmp_path: Path, git_env: dict[str, str]
) -> None:
    """No events for files outside the tree (core.excludesFile) or ignored
    ones: the poll re-stats the rule files it read."""
    root = _repo_project(tmp_path / "p")
    (root / "src" / "gen.h").write_text("x")
    (root / "src" / "data.bin").write_text("x")
    (root / "src" / ".gitignore").write_text(".gitignore\n")
    excl = Path(git_env["XDG_CONFIG_HOME"]) / "git" / "ignore"
    excl.parent.mkdir(parents=True)
    excl.write_text("")
    opts = WatchOptions(quiet_ms=20, force_polling=True, poll_interval_ms=30)
    async with watching(root, options=opts) as h:
        assert {"src/gen.h", "src/data.bin"} <= set(h.ws._files)
        excl.write_text("*.h\n")
        assert (await h.next()).removed == {"src/gen.h"}
        (root / "src" / ".gitignore").write_text(".gitignore\n*.bin\n")
        assert (await h.next()).removed == {"src/data.bin"}
        excl.write_text("")
        assert (await h.next()).changed == {"src/gen.h"}


def test_nothing_in_git_dir_is_watched(tmp_path: Path, git_env: dict[str, str]) -> None:
    root = _repo_project(tmp_path / "p")
    (root / ".gitignore").write_text("!.git\n!.git/**\n")
    rules = IgnoreRules(root, patterns=["!*"])
    ws = WatchSet(root, rules)
    ws.scan()
    assert all(not p.startswith(".git/") for p in ws._files)
    assert rules.ignored_abs(str(root / ".git" / "info" / "exclude"))


# -- core.excludesFile without git -----------------------------------------------------


CONFIGS = [
    "[core]\n\texcludesFile = /abs/one\n",
    "[Core]\n\tEXCLUDESFILE=~/two  # trailing comment\n",
    '[core]\n\texcludesfile = "~/with space/three" ; c\n',
    "[user]\n\tname = x\n[core]\n\texcludesFile = /first\n\texcludesFile = /second\n",
    '[core "sub"]\n\texcludesFile = /not-this\n',
    "[core]\n\tautocrlf = false\n",
]


@pytest.mark.parametrize("config", CONFIGS)
def test_config_fallback_reads_like_git(
    tmp_path: Path, git_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, config: str
) -> None:
    """Where git is missing at run time, the config files are read directly;
    the answer is the one git gives."""
    top = tmp_path / "repo"
    _init(top)
    (Path(git_env["HOME"]) / ".gitconfig").write_text(config)
    with_git = gitignore.excludes_file(gitignore.find_repo(top), top)
    out = subprocess.run([GIT, "config", "--path", "--get", "core.excludesFile"], cwd=top,
                         capture_output=True, check=False).stdout  # fmt: skip
    if out:
        assert with_git == Path(os.fsdecode(out.rstrip(b"\n")))
    else:
        assert with_git == Path(git_env["XDG_CONFIG_HOME"]) / "git" / "ignore"
    monkeypatch.setattr(gitignore.shutil, "which", lambda _name: None)
    gitignore._config_cache.clear()
    assert gitignore.excludes_file(gitignore.find_repo(top), top) == with_git
