"""git's `core.ignorecase` (set at init/clone on macOS and Windows): every
verdict of IgnoreRules on mixed-case names and patterns is compared with
`git check-ignore` and the watch set with `git ls-files --others`, both
with the setting on (in each spelling git accepts) and off. Plus the
setting read like git reads it, and a watcher not rebuilding for `build/`
when `.gitignore` says `Build/`."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from fbuild_watch.watch import IgnoreRules, WatchSet, gitignore
from tests import test_ignore_git as tig
from tests.watchkit import watching

git_env = tig.git_env  # the same isolated HOME / XDG_CONFIG_HOME fixture
GIT: str = tig.GIT or "git"  # (tig refuses to import without git)


def _set_icase(top: Path, spelling: str | None) -> None:
    """core.ignorecase in the repository's config: None unsets it, "" writes
    the key with no value (a boolean's true)."""
    subprocess.run([GIT, "config", "--unset-all", "core.ignorecase"], cwd=top, check=False)
    if spelling == "":
        with (top / ".git" / "config").open("a") as f:
            f.write("[core]\n\tignorecase\n")
    elif spelling is not None:
        tig._git(top, "config", "core.ignorecase", spelling)


def _git_others(top: Path, excludes: list[str]) -> set[str]:
    args = ["ls-files", "--others", "--exclude-standard", "-z"]
    out = tig._git(top, *args, *(f"--exclude={p}" for p in excludes))
    return {os.fsdecode(p) for p in out.split(b"\0") if p}


# -- the generated corpus -------------------------------------------------------------

DIRS = ["a", "A", "Build", "build", "BUILD", "src", "Src", "lib", "Docs", "docs", "gen",
        "Gen", "x Y", "ab", "aB"]  # fmt: skip
STEMS = ["main", "Main", "MAIN", "util", "Util", "readme", "README", "Makefile", "makefile",
         "foo", "Foo", "a", "A", "b2", "B2", "[x]", "[X]", "z_", "Z_"]  # fmt: skip
EXTS = [".c", ".C", ".h", ".H", ".log", ".LOG", ".Log", ".o", ".O", ".md", ""]


def _flip(rng: random.Random, s: str) -> str:
    """`s` with some letters in the other case."""
    return "".join(c.swapcase() if rng.random() < 0.4 else c for c in s)


def _glob(name: str) -> str:
    return name.replace("[", "\\[")


def _pattern(rng: random.Random) -> str:
    d, d2 = _flip(rng, rng.choice(DIRS)), _flip(rng, rng.choice(DIRS))
    stem, ext = _flip(rng, rng.choice(STEMS)), _flip(rng, rng.choice([e for e in EXTS if e]))
    name = _glob(stem + _flip(rng, rng.choice(EXTS)))
    forms = [
        name, name, f"*{ext}", f"*{ext}", f"{d}/", f"{d}", f"/{d}", f"/{d}/", f"{d}/{name}",
        f"/{d}/{d2}", f"**/{name}", f"**/{d}/", f"{d}/**", f"{d}/**/{name}", f"{d}/**/*{ext}",
        f"**/{d}/*{ext}", f"{d}/*", f"{d}*/", f"{d}/*/", f"*/{name}", f"{_glob(stem)}.*",
        f"{_glob(stem)}.[cC]", f"{_glob(stem)}.[C]", f"{_glob(stem)}.[!C]*", f"[A-M]*{ext}",
        f"[a-m]*{ext}", "[[:upper:]]*", "[[:lower:]]*.c", "[!M]*", "[M]*", "[m]*", "\\M*",
        "\\m*", "*\\[X]*", "[Z-a]*", "*[[:upper:]]_*", f"?{name[1:]}" if name else "?",
        f"{d}/**/", f"{d[0]}?",
    ]  # fmt: skip
    p = rng.choice(forms)
    if rng.random() < 0.35:
        p = "!" + p
    return p


def _rules(rng: random.Random, n: int) -> str:
    return "".join(_pattern(rng) + "\n" for _ in range(n))


def _write_corpus(rng: random.Random, top: Path, env: dict[str, str]) -> dict[str, bool]:
    dirs: set[str] = set()
    while len(dirs) < 40:
        parts = [rng.choice(DIRS) for _ in range(rng.choice([1, 1, 2, 2, 3]))]
        for k in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:k]))
    files: set[str] = set()
    while len(files) < 240:
        d = rng.choice(["", "", *sorted(dirs)])
        rel = f"{d}/" * bool(d) + rng.choice(STEMS) + rng.choice(EXTS)
        if rel not in dirs:
            files.add(rel)
    for d in sorted(dirs):
        (top / d).mkdir(parents=True, exist_ok=True)
    for f in sorted(files):
        (top / f).write_text(f"// {f}\n")
    (top / ".gitignore").write_text(_rules(rng, rng.randint(8, 14)))
    for d in rng.sample(sorted(dirs), 12):
        (top / d / ".gitignore").write_text(_rules(rng, rng.randint(2, 8)))
    (top / ".git" / "info").mkdir(exist_ok=True)
    (top / ".git" / "info" / "exclude").write_text(_rules(rng, rng.randint(2, 6)))
    excl = Path(env["XDG_CONFIG_HOME"]) / "git" / "ignore"  # git's default excludesFile
    excl.parent.mkdir(parents=True, exist_ok=True)
    excl.write_text(_rules(rng, rng.randint(2, 6)))
    entries = {d: True for d in dirs} | {f: False for f in files}
    return entries | {f"{d}/.gitignore": False for d in dirs if (top / d / ".gitignore").exists()}


SPELLINGS = ["true", "TRUE", "yes", "On", "1", "0x10", "", "true", "yes", "1"]


@pytest.mark.parametrize("seed", range(len(SPELLINGS)))
def test_corpus_matches_git_with_ignorecase(
    tmp_path: Path, git_env: dict[str, str], seed: int
) -> None:
    """Mixed-case names and patterns (literal names, globs, `**`, brackets,
    directory-only patterns, negations, nested .gitignore, info/exclude,
    excludesFile, `[watch] ignore` as git's --exclude): the same verdicts as
    git with core.ignorecase on, then, on the same tree, with it off."""
    rng = random.Random(seed)
    top = tmp_path / "repo"
    tig._init(top)
    entries = _write_corpus(rng, top, git_env)
    (top / ".Git").mkdir()  # git's walk skips it when folding case
    (top / ".Git" / "main.c").write_text("x")
    user = [_pattern(rng) for _ in range(3)]
    flips = 0
    for spelling in (SPELLINGS[seed], rng.choice(["false", "off", "0", None])):
        _set_icase(top, spelling)
        rules = IgnoreRules(top)
        assert tig._compare(rules, top, "", entries) >= 200
        flips += sum(rules.ignored(e, d) for e, d in entries.items())
        for patterns in ([], user):
            ws = WatchSet(top, IgnoreRules(top, patterns=patterns))
            ws.scan()
            assert set(ws._files) == _git_others(top, patterns)
    assert flips  # the corpus does ignore things


def test_quirks_of_wildmatch_casefold(tmp_path: Path, git_env: dict[str, str]) -> None:
    """Each pattern alone (in its own directory's .gitignore) against the
    same mixed-case names: git folds the text and a pattern's plain
    characters, not a bracket's members nor an escaped character."""
    patterns = ["[A]*", "[a]*", "\\A*", "\\a*", "[!A]*", "[!a]*", "[[:upper:]]*",
                "[[:lower:]]*", "[Z-a]*", "[A-C]*", "[a-c]*", "[^B-Y]*", "Ab*", "aB*",
                "*.C", "*.c", "sub/AB.c", "SUB/ab.c", "/Sub/*.C", "s*/A*", "S[U]b/*",
                "sub/\\A*", "**/AB.C", "SUB/**", "Sub/", "sub*/", "*Ub", "[[:upper:]]u[B]",
                "\\[x]*", "[[]X]*", "ab.C", "*B.c", "_*", "[_]*", "[^_]*"]  # fmt: skip
    names = ["a", "A", "ab.c", "AB.C", "Ab.c", "b", "B", "_", "z", "Z", "[x]", "[X]"]
    top = tmp_path / "repo"
    tig._init(top)
    _set_icase(top, "true")
    entries: dict[str, bool] = {}
    for k, pattern in enumerate(patterns):
        d = top / f"p{k}"
        (d / "sub").mkdir(parents=True)
        (d / "Sub").mkdir()
        (d / ".gitignore").write_text(pattern + "\n")
        entries |= {f"p{k}": True, f"p{k}/sub": True, f"p{k}/Sub": True}
        for n in names:
            for rel in (n, f"sub/{n}", f"Sub/{n}"):
                (d / rel).write_text("x")
                entries[f"p{k}/{rel}"] = False
    rules = IgnoreRules(top)
    tig._compare(rules, top, "", entries)
    assert rules.ignored("p0/A") is False  # "[A]*": never, whatever the case
    assert rules.ignored("p1/A") is True  # "[a]*": both


def test_setting_change_recompiles_every_rule(tmp_path: Path, git_env: dict[str, str]) -> None:
    """core.ignorecase read when the root is (re)loaded: flipping it changes
    what the rules already read match, in the tree, above it and in
    [watch] ignore."""
    top = tmp_path / "repo"
    tig._init(top)
    (top / ".gitignore").write_text("Build/\n")
    (top / "src").mkdir()
    (top / "src" / ".gitignore").write_text("*.O\n")
    (top / ".git" / "info" / "exclude").write_text("GEN.h\n")
    for rel in ("build/x.c", "src/a.o", "gen.h", "Tmp.c", "main.c"):
        (top / rel).parent.mkdir(parents=True, exist_ok=True)
        (top / rel).write_text("x")
    rules = IgnoreRules(top, patterns=["tmp.C"])

    def watched() -> set[str]:
        ws = WatchSet(top, rules)
        ws.scan()
        return set(ws._files)

    everything = {".gitignore", "src/.gitignore", "build/x.c", "src/a.o", "gen.h", "Tmp.c",
                  "main.c"}  # fmt: skip
    assert watched() == everything
    for spelling, want in (("true", {".gitignore", "src/.gitignore", "main.c"}),
                           ("false", everything)):  # fmt: skip
        _set_icase(top, spelling)
        rules.load_ignore_files(top)  # what a rescan does
        assert watched() == want == _git_others(top, ["tmp.C"])


async def test_watcher_ignores_build_dir_written_in_other_case(
    tmp_path: Path, git_env: dict[str, str]
) -> None:
    """macOS: `.gitignore` says `Build/`, the build writes to `build/`.
    Without folding every output write would start a build."""
    top = tmp_path / "p"
    tig._init(top)
    _set_icase(top, "true")
    (top / "src").mkdir()
    (top / "src" / "main.c").write_text("int main;\n")
    (top / ".gitignore").write_text("Build/\n*.LOG\n")
    (top / "build").mkdir()
    (top / "build" / "app.o").write_text("v1\n")
    async with watching(top) as h:
        assert set(h.ws._files) == {".gitignore", "src/main.c"}
        before = h.watcher.stats.raw_events
        (top / "build" / "app.o").write_text("v2\n")
        (top / "build" / "new.o").write_text("v1\n")
        (top / "run.log").write_text("x\n")
        (top / "src" / "main.c").write_text("int main2;\n")  # the marker that comes through
        cs = await h.next()
        assert h.watcher.stats.raw_events > before
        assert cs.paths == {"src/main.c"} and "build/new.o" not in h.ws


# -- reading the setting ----------------------------------------------------------------

VALUES = ["true", "True", "YES", "on", "1", "-1", "0x10", "010", "1k", "1g", " 1", "+0", "",
          "false", "No", "OFF", "0", "0k", '"true"', "true ; comment", None,
          "maybe", "2g", "2147483648", "08", "0x", "1x", "  ", "tru"]  # fmt: skip


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_setting_reads_like_git(
    tmp_path: Path, git_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    """Asked of git, or where git is missing read from the config files:
    the value git reads; one clear line (naming the file) where git refuses it."""
    top = tmp_path / "repo"
    tig._init(top)
    line = "\tignorecase\n" if value is None else f"\tignorecase = {value}\n"
    (Path(git_env["HOME"]) / ".gitconfig").write_text("[core]\n" + line)
    proc = subprocess.run([GIT, "config", "--type=bool", "--get", "core.ignorecase"], cwd=top,
                          capture_output=True, check=False)  # fmt: skip
    repo = gitignore.find_repo(top)
    gitignore._config_cache.clear()
    with_git = gitignore.core_config(repo, top)
    with monkeypatch.context() as m:
        m.setattr(shutil, "which", lambda _name: None)
        gitignore._config_cache.clear()
        without = gitignore.core_config(repo, top)
    for got in (with_git, without):
        if proc.returncode == 0:
            assert (got.ignore_case, got.problem) == (proc.stdout == b"true\n", None)
        else:
            assert b"bad boolean config value" in proc.stderr
            assert got.ignore_case is False
            assert got.problem is not None and "core.ignorecase" in got.problem
    if proc.returncode != 0:
        assert str(Path(git_env["HOME"]) / ".gitconfig") in str(without.problem)
        gitignore._config_cache.clear()
        warnings = IgnoreRules(top).take_warnings()
        assert len(warnings) == 1 and "core.ignorecase" in warnings[0]


def test_last_value_wins_across_files(tmp_path: Path, git_env: dict[str, str]) -> None:
    top = tmp_path / "repo"
    tig._init(top)
    (Path(git_env["HOME"]) / ".gitconfig").write_text("[core]\n\tignorecase = true\n")
    _set_icase(top, "false")
    assert gitignore.core_config(gitignore.find_repo(top), top).ignore_case is False
    _set_icase(top, None)
    assert gitignore.core_config(gitignore.find_repo(top), top).ignore_case is True


def test_rule_base_and_rules_file_names_fold(tmp_path: Path, git_env: dict[str, str]) -> None:
    """Where the walk and git cannot disagree on a name's case only on a
    case-insensitive filesystem: a rule's directory compares folded
    (dir.c: fspathncmp), and an edit to `.GitIgnore` is an edit of the
    directory's `.gitignore` (opening one opens the other)."""
    rule = gitignore.compile_rule(b"x/*.c", b"Sub/", "t", 1, icase=True)
    assert rule is not None and rule.matches(b"sub/x/a.C", b"a.C", False)
    exact = gitignore.compile_rule(b"x/*.c", b"Sub/", "t", 1)
    assert exact is not None and not exact.matches(b"sub/x/a.c", b"a.c", False)
    top = tmp_path / "repo"
    tig._init(top)
    (top / "src").mkdir()
    assert not IgnoreRules(top).is_rules_file_abs(str(top / "src" / ".GitIgnore"))
    _set_icase(top, "true")
    assert IgnoreRules(top).is_rules_file_abs(str(top / "src" / ".GitIgnore"))
