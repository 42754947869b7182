"""`fbuild lnk pull|check|add|ls`: the resource pointers from the command line."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from fbuild_watch.errors import ConfigError, FbuildError, UsageError
from fbuild_watch.lnk.cache import BlobCache
from fbuild_watch.lnk.fetch import Fetcher, FetchPolicy
from fbuild_watch.lnk.format import LNK_SUFFIX, dump_pointer, parse_pointer
from fbuild_watch.lnk.resolve import Resources, find_pointers, human_size
from fbuild_watch.watch.ignore import IgnoreRules


@dataclass
class Scope:
    """A directory's pointers and where they materialize: a project's
    settings when DIR is a project, plain defaults otherwise."""

    resources: Resources
    rels: list[str]
    is_project: bool


class _Progress:
    """One self-overwriting stderr line per download, only on a terminal."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self._last = 0.0

    def __call__(self, rel: str, done: int, total: int | None) -> None:
        now = time.monotonic()
        if not self.tty or (now - self._last < 0.1 and done != total):
            return
        self._last = now
        pct = f"{100 * done // total:3d}%" if total else "    "
        of = f" / {human_size(total)}" if total else ""
        sys.stderr.write(f"\r  {pct} {rel}: {human_size(done)}{of}\x1b[K")
        if total is not None and done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()


def scope(directory: Path, *, allow_http: bool = False, say: bool = True) -> Scope:
    from fbuild_watch.build.backends import NoProjectError, detect_backend  # noqa: PLC0415

    directory = Path(directory)
    if not directory.is_dir():
        raise UsageError(f"{directory} is not a directory")
    progress = _Progress()
    on_line = (lambda line: print(line, file=sys.stderr)) if say else None
    try:
        backend = detect_backend(directory)
    except NoProjectError:
        policy = FetchPolicy(allow_http=allow_http)
        res = Resources(directory, fetcher=Fetcher(policy), on_line=on_line, progress=progress)
        return Scope(res, find_pointers(directory, IgnoreRules(directory)), False)
    policy = backend.fetch_policy()
    if allow_http:
        policy = dataclasses.replace(policy, allow_http=True)
    res = Resources(
        backend.project_dir,
        backend.resource_dir(),
        fetcher=Fetcher(policy),
        on_line=on_line,
        progress=progress,
    )
    rels = find_pointers(backend.project_dir, backend.ignore_rules(), backend.watch_paths())
    return Scope(res, rels, True)


def pull(directory: Path, *, allow_http: bool, as_json: bool) -> int:
    """Fetch every blob; materialize them too when DIR is a project."""
    sc = scope(directory, allow_http=allow_http, say=not as_json)
    res = sc.resources
    rows = []
    if sc.is_project:
        for r in res.sync(sc.rels):
            rows.append({"pointer": r.rel, "fetched": r.fetched, "path": str(r.target)})
    else:
        for rel, pointer in res.parse(sc.rels):
            path, fetched = res.blob(rel, pointer)
            rows.append({"pointer": rel, "fetched": fetched, "path": str(path)})
    if as_json:
        print(json.dumps({"pointers": rows}, indent=2))
    else:
        n_fetched = sum(1 for r in rows if r["fetched"])
        cached = len(rows) - n_fetched
        print(f"{len(rows)} pointer(s): {n_fetched} fetched, {cached} already cached")
    return 0


def check(directory: Path, *, as_json: bool) -> int:
    """No network: re-hash every cached blob a pointer names."""
    sc = scope(directory, say=False)
    cache = sc.resources.cache
    rows = []
    worst = 0
    for rel in sc.rels:
        row: dict[str, object] = {"pointer": rel}
        try:
            pointer = parse_pointer(sc.resources.project_dir / rel)
        except ConfigError as exc:
            row.update(state="malformed", error=exc.problem)
            worst = max(worst, exc.exit_code)
            rows.append(row)
            continue
        ok = cache.verify(pointer.sha256)
        if ok is None:
            row["state"] = "missing"
        elif not ok:
            row["state"] = "corrupt"
        elif pointer.size is not None and cache.path(pointer.sha256).stat().st_size != pointer.size:
            row["state"] = "size-mismatch"
        else:
            row["state"] = "ok"
        if row["state"] != "ok":
            worst = max(worst, 1)
        rows.append(row)
    if as_json:
        print(json.dumps({"ok": worst == 0, "pointers": rows}, indent=2))
    else:
        for row in rows:
            extra = f"  ({row['error']})" if "error" in row else ""
            print(f"{row['state']:>13}  {row['pointer']}{extra}")
        bad = sum(1 for r in rows if r["state"] != "ok")
        print(f"{len(rows)} pointer(s), {bad} problem(s)", file=sys.stderr)
    return worst


def ls(directory: Path, *, as_json: bool) -> int:
    sc = scope(directory, say=False)
    res = sc.resources
    rows = []
    for rel in sc.rels:
        row: dict[str, object] = {"pointer": rel}
        try:
            p = parse_pointer(res.project_dir / rel)
        except ConfigError as exc:
            row.update(cache="malformed", error=exc.problem)
            rows.append(row)
            continue
        target = res.target_for(rel, p)
        row.update(
            url=p.url,
            sha256=p.sha256,
            size=p.size,
            extract=p.extract,
            cache="cached" if res.cache.path(p.sha256).exists() else "missing",
            materialized=str(target) if target.exists() else None,
        )
        rows.append(row)
    if as_json:
        print(json.dumps({"resource_dir": str(res.out_dir), "pointers": rows}, indent=2))
        return 0
    if not rows:
        print(f"no {LNK_SUFFIX} pointers under {directory}")
        return 0
    width = max(len(str(r["pointer"])) for r in rows)
    print(f"{'POINTER':<{width}}  {'SIZE':>10}  {'CACHE':<9}  {'BUILD TREE':<10}  URL")
    for r in rows:
        size = r.get("size")
        print(
            f"{r['pointer']!s:<{width}}  "
            f"{human_size(size) if isinstance(size, int) else '-':>10}  "
            f"{r['cache']!s:<9}  {'yes' if r.get('materialized') else 'no':<10}  "
            f"{r.get('url', r.get('error', ''))}"
        )
    return 0


def _guess_extract(url: str) -> str:
    path = urlsplit(url).path.lower()
    if path.endswith(".zip"):
        return "zip"
    if path.endswith((".tar.gz", ".tgz")):
        return "tar.gz"
    return "file"


def add(
    url: str,
    output: str | None,
    *,
    extract: str | None,
    allow_http: bool,
    force: bool,
    as_json: bool,
) -> int:
    """Download once, hash, write the pointer next to where the file would be."""
    name = Path(unquote(urlsplit(url).path)).name
    if output is None:
        if not name:
            raise UsageError(f"cannot name a pointer after {url}; give -o PATH")
        lnk = Path(name + LNK_SUFFIX)
    else:
        lnk = Path(output if output.endswith(LNK_SUFFIX) else output + LNK_SUFFIX)
    if lnk.exists() and not force:
        raise UsageError(f"{lnk} exists (use --force to replace it)")
    kind = extract or _guess_extract(url)
    fetcher = Fetcher(FetchPolicy(allow_http=allow_http))
    cache = BlobCache()
    progress = _Progress()
    try:
        with cache.writer(None, limit=fetcher.policy.max_bytes) as w:
            fetcher.fetch(url, w, size=None, progress=lambda d, t: progress(lnk.name, d, t))
            w.commit()
    except FbuildError as exc:
        raise type(exc)(exc.problem, source=url) from None
    assert w.sha256 is not None
    lnk.parent.mkdir(parents=True, exist_ok=True)
    lnk.write_bytes(dump_pointer(url, w.sha256, w.size, kind))
    parse_pointer(lnk)  # what we wrote must read back
    if as_json:
        doc = {"pointer": str(lnk), "sha256": w.sha256, "size": w.size, "extract": kind}
        print(json.dumps(doc))
    else:
        print(f"wrote {lnk}: {human_size(w.size)}, sha256 {w.sha256[:16]}..., extract {kind}")
    return 0
