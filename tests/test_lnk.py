"""`.lnk` resource pointers against a local HTTP(S) server: fetch, verify,
cache, materialize, and every way it must refuse."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fbuild_watch.errors import ConfigError, RuntimeFailure
from fbuild_watch.lnk.cache import BlobCache
from fbuild_watch.lnk.fetch import Fetcher, FetchPolicy
from fbuild_watch.lnk.format import parse_pointer
from fbuild_watch.lnk.materialize import ArchiveError, extract_archive
from fbuild_watch.lnk.resolve import Resources, find_pointers
from tests.clikit import run_fbuild
from tests.lnkkit import BlobServer, blob, serve, sha, write_pointer


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FBUILD_CACHE_DIR", str(tmp_path / "cache"))
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def server() -> Iterator[BlobServer]:
    with serve() as s:
        yield s


def _project(tmp_path: Path) -> Path:
    p = tmp_path / "proj"
    p.mkdir(exist_ok=True)
    return p


def _resources(project: Path, **kw: object) -> Resources:
    policy = kw.pop("policy", None)
    return Resources(project, fetcher=Fetcher(policy), **kw)  # type: ignore[arg-type]


def _leftovers(tmp_path: Path) -> list[str]:
    """Anything partial: temp downloads, staging dirs, half-renamed files."""
    out = []
    for p in tmp_path.rglob("*"):
        n = p.name
        if n.endswith((".part", ".tmp", ".extract", ".old")):
            out.append(str(p.relative_to(tmp_path)))
    return out


# -- fetch + verify + materialize ------------------------------------------------
def test_fetch_verify_materialize_then_cache_hit(tmp_path: Path, server: BlobServer) -> None:
    data = blob(300_000)
    url = server.add("/a/logo.bin", data)
    project = _project(tmp_path)
    write_pointer(project / "assets" / "logo.bin.lnk", url, data)
    res = _resources(project)
    [r] = res.sync(find_pointers(project))
    assert r.fetched and r.materialized
    target = project / ".fbuild" / "resources" / "assets" / "logo.bin"
    assert r.target == target and target.read_bytes() == data
    cached = BlobCache().path(sha(data))
    # hardlinked from the read-only cache blob: no copy, and nobody edits it in place
    assert target.samefile(cached)
    assert not cached.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    assert server.count("/a/logo.bin") == 1

    # unchanged pointer: nothing fetched, nothing rewritten
    [again] = _resources(project).sync(find_pointers(project))
    assert not again.fetched and not again.materialized
    # another project with the same blob: a cache hit makes no request
    other = tmp_path / "other"
    write_pointer(other / "x.bin.lnk", url, data)
    [hit] = _resources(other).sync(find_pointers(other))
    assert not hit.fetched and hit.materialized
    assert (other / ".fbuild" / "resources" / "x.bin").read_bytes() == data
    assert server.count("/a/logo.bin") == 1
    assert _leftovers(tmp_path) == []


def test_changed_and_removed_pointers(tmp_path: Path, server: BlobServer) -> None:
    project = _project(tmp_path)
    a, b = blob(5000, 1), blob(7000, 2)
    lnk = write_pointer(project / "f.bin.lnk", server.add("/a", a), a)
    res = _resources(project)
    res.sync(["f.bin.lnk"])
    target = project / ".fbuild" / "resources" / "f.bin"
    assert target.read_bytes() == a
    write_pointer(lnk, server.add("/b", b), b)
    [r] = res.sync(["f.bin.lnk"])
    assert r.fetched and target.read_bytes() == b
    # a file deleted from the build tree is put back from the cache
    target.unlink()
    [r] = res.sync(["f.bin.lnk"])
    assert not r.fetched and r.materialized and target.read_bytes() == b
    # the pointer is gone: so is its file, so no build embeds a stale asset
    lnk.unlink()
    assert res.sync([]) == []
    assert not target.exists()


def test_hash_mismatch_leaves_nothing_behind(tmp_path: Path, server: BlobServer) -> None:
    good, evil = blob(50_000, 1), blob(50_000, 9)
    url = server.add("/x.bin", evil)
    project = _project(tmp_path)
    write_pointer(project / "x.bin.lnk", url, good)
    with pytest.raises(RuntimeFailure) as err:
        _resources(project).sync(["x.bin.lnk"])
    msg = str(err.value)
    assert msg.startswith(str(project / "x.bin.lnk") + ": sha256 mismatch")
    assert sha(good) in msg and sha(evil) in msg and "\n" not in msg
    assert list(BlobCache().blobs()) == []
    assert not (project / ".fbuild" / "resources" / "x.bin").exists()
    assert _leftovers(tmp_path) == []


def test_404_and_connection_refused_are_one_line_errors(tmp_path: Path, server: BlobServer) -> None:
    project = _project(tmp_path)
    write_pointer(project / "gone.bin.lnk", server.url("/nope"), b"x")
    with pytest.raises(RuntimeFailure, match=r"gone\.bin\.lnk: HTTP 404 Not Found from http://127"):
        _resources(project).sync(["gone.bin.lnk"])

    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    write_pointer(project / "gone.bin.lnk", f"http://127.0.0.1:{port}/a", b"x")
    with pytest.raises(RuntimeFailure) as err:
        _resources(project).sync(["gone.bin.lnk"])
    assert f"cannot connect to 127.0.0.1:{port}: " in str(err.value)
    assert "refused" in str(err.value).lower() and "\n" not in str(err.value)
    assert _leftovers(tmp_path) == []


def test_size_caps(tmp_path: Path, server: BlobServer) -> None:
    data = blob(200_000)
    project = _project(tmp_path)
    # the pointer's size: a server sending more is cut off (before hashing it all)
    (project / "a.bin.lnk").write_text(
        json.dumps({"v": 1, "url": server.add("/a", data), "sha256": sha(data), "size": 1000})
    )
    with pytest.raises(RuntimeFailure, match="over the limit of 1000"):
        _resources(project).sync(["a.bin.lnk"])
    # no Content-Length to refuse early on: bytes are counted as they arrive
    server.add("/stream", data, content_length=-1)
    (project / "a.bin.lnk").write_text(
        json.dumps({"v": 1, "url": server.url("/stream"), "sha256": sha(data), "size": 1000})
    )
    with pytest.raises(RuntimeFailure, match="exceeds its size limit of 1000 bytes"):
        _resources(project).sync(["a.bin.lnk"])
    # no size in the pointer: the global limit
    write_pointer(project / "a.bin.lnk", server.url("/a"), data, size=False)
    with pytest.raises(RuntimeFailure, match="over the limit of 65536"):
        _resources(project, policy=FetchPolicy(max_bytes=65536)).sync(["a.bin.lnk"])
    # a short body with a correct hash claim is a size mismatch, named as such
    short = data[:1000]
    (project / "a.bin.lnk").write_text(
        json.dumps({"v": 1, "url": server.add("/s", short), "sha256": sha(short), "size": 2000})
    )
    with pytest.raises(RuntimeFailure, match="size mismatch: expected 2000 bytes, got 1000"):
        _resources(project).sync(["a.bin.lnk"])
    assert list(BlobCache().blobs()) == []
    assert _leftovers(tmp_path) == []


# -- URL policy --------------------------------------------------------------------
def test_url_policy(tmp_path: Path, server: BlobServer) -> None:
    data = b"payload"
    project = _project(tmp_path)
    write_pointer(project / "a.lnk.bin.lnk", "http://example.com/a.bin", data)
    with pytest.raises(RuntimeFailure, match="refusing plain http:// for example.com"):
        _resources(project).sync(["a.lnk.bin.lnk"])
    write_pointer(project / "a.lnk.bin.lnk", "ftp://example.com/a.bin", data)
    with pytest.raises(RuntimeFailure, match="unsupported URL scheme 'ftp'"):
        _resources(project).sync(["a.lnk.bin.lnk"])
    # a redirect to plain http is refused, even from a loopback server
    server.add("/r", b"", status=302, location="http://127.0.0.1:1/a")
    write_pointer(project / "a.lnk.bin.lnk", server.url("/r"), data)
    with pytest.raises(RuntimeFailure, match="refusing redirect .* to non-https"):
        _resources(project).sync(["a.lnk.bin.lnk"])
    # file:// for a local mirror
    mirror = tmp_path / "mirror.bin"
    mirror.write_bytes(data)
    write_pointer(project / "a.lnk.bin.lnk", mirror.as_uri(), data)
    [r] = _resources(project).sync(["a.lnk.bin.lnk"])
    assert r.fetched and r.target.read_bytes() == data


def test_https_redirects_are_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: BlobServer
) -> None:
    data = blob(10_000)
    with serve(tls_dir=tmp_path) as tls:
        monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "ca.pem"))
        final = tls.add("/final.bin", data)
        tls.add("/hop", b"", status=301, location=final)
        server.add("/start", b"", status=302, location=tls.url("/hop"))  # http loopback -> https
        project = _project(tmp_path)
        write_pointer(project / "d.bin.lnk", server.url("/start"), data)
        [r] = _resources(project).sync(["d.bin.lnk"])
        assert r.target.read_bytes() == data
        assert tls.hits == ["/hop", "/final.bin"]


# -- archives ----------------------------------------------------------------------
def _zip(entries: list[tuple[str, bytes, int]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name)
            info.external_attr = mode << 16
            zf.writestr(info, data)
    return buf.getvalue()


def _tgz(members: list[tarfile.TarInfo], data: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for m in members:
            body = (data or {}).get(m.name)
            if body is not None:
                m.size = len(body)
            tf.addfile(m, io.BytesIO(body) if body is not None else None)
    return buf.getvalue()


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    m = tarfile.TarInfo(name)
    m.type = kind
    m.linkname = link
    return m


def test_archives_extract_into_a_directory(tmp_path: Path, server: BlobServer) -> None:
    project = _project(tmp_path)
    z = _zip([("fonts/a.ttf", b"A" * 100, 0o100644), ("run.sh", b"#!/bin/sh\n", 0o100755)])
    write_pointer(project / "fonts.lnk", server.add("/f.zip", z), z, extract="zip")
    t_members = [_member("img", tarfile.DIRTYPE), _member("img/x.png")]
    t = _tgz(t_members, {"img/x.png": b"PNG"})
    write_pointer(project / "images.lnk", server.add("/i.tgz", t), t, extract="tar.gz")
    res = _resources(project)
    res.sync(["fonts.lnk", "images.lnk"])
    out = project / ".fbuild" / "resources"
    assert (out / "fonts" / "fonts" / "a.ttf").read_bytes() == b"A" * 100
    assert os.access(out / "fonts" / "run.sh", os.X_OK)
    assert (out / "images" / "img" / "x.png").read_bytes() == b"PNG"
    # a new archive replaces the directory whole
    z2 = _zip([("only.txt", b"2", 0o100644)])
    write_pointer(project / "fonts.lnk", server.add("/f2.zip", z2), z2, extract="zip")
    res.sync(["fonts.lnk", "images.lnk"])
    assert sorted(p.name for p in (out / "fonts").iterdir()) == ["only.txt"]
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("entries", "why"),
    [
        ([("../evil.txt", b"x", 0o100644)], "escapes the target"),
        ([("a/../../evil.txt", b"x", 0o100644)], "escapes the target"),
        ([("/etc/evil", b"x", 0o100644)], "absolute path"),
        ([("C:/evil", b"x", 0o100644)], "absolute path"),
        ([("a\\..\\evil", b"x", 0o100644)], "backslashes"),
        ([("link", b"/etc/passwd", 0o120777)], "symlink"),
        ([("fifo", b"", 0o010644)], "not a regular file"),
        ([("a.txt", b"1", 0o100644), ("a.txt", b"2", 0o100644)], "appears twice"),
    ],
)
@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_malicious_zip_entries_are_refused(
    tmp_path: Path, server: BlobServer, entries: list[tuple[str, bytes, int]], why: str
) -> None:
    project = _project(tmp_path)
    z = _zip(entries)
    write_pointer(project / "evil.lnk", server.add("/e.zip", z), z, extract="zip")
    with pytest.raises(RuntimeFailure, match=why) as err:
        _resources(project).sync(["evil.lnk"])
    assert str(err.value).startswith(str(project / "evil.lnk") + ": ")
    assert not (project / ".fbuild" / "resources" / "evil").exists()
    assert not (tmp_path / "evil.txt").exists() and not (project / "evil.txt").exists()
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("member", "why"),
    [
        (_member("../up.txt"), "escapes the target"),
        (_member("/abs.txt"), "absolute path"),
        (_member("ln", tarfile.SYMTYPE, "/etc/passwd"), "is a link"),
        (_member("hard", tarfile.LNKTYPE, "etc/passwd"), "is a link"),
        (_member("dev", tarfile.CHRTYPE), "device or special file"),
        (_member("fifo", tarfile.FIFOTYPE), "device or special file"),
    ],
)
def test_malicious_tar_entries_are_refused(
    tmp_path: Path, server: BlobServer, member: tarfile.TarInfo, why: str
) -> None:
    project = _project(tmp_path)
    body = {member.name: b"x"} if member.type == tarfile.REGTYPE else None
    t = _tgz([member], body)
    write_pointer(project / "evil.lnk", server.add("/e.tgz", t), t, extract="tar.gz")
    with pytest.raises(RuntimeFailure, match=why):
        _resources(project).sync(["evil.lnk"])
    assert not (project / ".fbuild" / "resources" / "evil").exists()
    assert _leftovers(tmp_path) == []


def test_archive_bombs_are_refused(tmp_path: Path) -> None:
    # counted on written bytes: 64 KiB of zeros compresses to almost nothing
    z = tmp_path / "bomb.zip"
    with zipfile.ZipFile(z, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros", b"\0" * 65536)
    with pytest.raises(ArchiveError, match="expands past the limit of 4096 bytes"):
        extract_archive(z, "zip", tmp_path / "out", max_bytes=4096)
    t = tmp_path / "many.tgz"
    t.write_bytes(_tgz([_member(f"f{i}") for i in range(20)], {f"f{i}": b"" for i in range(20)}))
    with pytest.raises(ArchiveError, match="more than 10 entries"):
        extract_archive(t, "tar.gz", tmp_path / "out", max_entries=10)
    (tmp_path / "junk").write_bytes(b"not an archive")
    with pytest.raises(ArchiveError, match="not a zip archive"):
        extract_archive(tmp_path / "junk", "zip", tmp_path / "out")
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


# -- concurrency -------------------------------------------------------------------
def _resolve_in_child(project: str, cache: str, q: multiprocessing.Queue[str]) -> None:
    os.environ["FBUILD_CACHE_DIR"] = cache
    try:
        [r] = Resources(Path(project)).sync(["big.bin.lnk"])
        q.put(f"ok {r.fetched}")
    except BaseException as exc:
        q.put(f"error {exc}")


def test_concurrent_resolves_share_one_download(tmp_path: Path, server: BlobServer) -> None:
    data = blob(256 * 1024)
    url = server.add("/big.bin", data, chunk_delay_s=0.002)  # ~0.13 s: the resolves overlap
    ctx = multiprocessing.get_context("spawn")
    q: multiprocessing.Queue[str] = ctx.Queue()
    procs = []
    for i in range(4):
        project = tmp_path / f"p{i}"
        write_pointer(project / "big.bin.lnk", url, data)
        p = ctx.Process(target=_resolve_in_child, args=(str(project), str(tmp_path / "cache"), q))
        p.start()
        procs.append(p)
    results = sorted(q.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(30)
    assert [r.split()[0] for r in results] == ["ok"] * 4, results
    assert results.count("ok True") == 1  # one fetched; the others waited on its lock
    assert server.count("/big.bin") == 1
    for i in range(4):
        assert (tmp_path / f"p{i}" / ".fbuild" / "resources" / "big.bin").read_bytes() == data
    assert list(BlobCache().blobs()) == [sha(data)]
    assert _leftovers(tmp_path) == []


# -- the format --------------------------------------------------------------------
GOOD = {"v": 1, "url": "https://h/a.bin", "sha256": "ab" * 32}


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (b"{not json", "malformed JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b"\xff\xfe", "not UTF-8"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "sha256"}), 'missing "sha256"'),
        (json.dumps({**GOOD, "sha256": "ab" * 31}), "64 hex digits, got 62"),
        (json.dumps({**GOOD, "sha256": "zz" * 32}), "64 hex digits"),
        (json.dumps({**GOOD, "v": 2}), "unsupported version 2"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "v"}), 'missing "v"'),
        (json.dumps({**GOOD, "sha265": "x"}), "unknown key 'sha265'"),
        (json.dumps({**GOOD, "size": -1}), '"size" must be a non-negative integer'),
        (json.dumps({**GOOD, "size": "12"}), '"size" must be a non-negative integer'),
        (json.dumps({**GOOD, "extract": "rar"}), '"extract" must be one of'),
        (json.dumps({**GOOD, "url": "h/a.bin"}), "has no scheme"),
    ],
)
def test_malformed_pointers_name_the_file(tmp_path: Path, text: bytes | str, why: str) -> None:
    p = tmp_path / "asset.bin.lnk"
    p.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ConfigError, match=why) as err:
        parse_pointer(p)
    assert str(err.value).startswith(f"{p}: ") and "\n" not in str(err.value)


def test_pointer_defaults_and_case(tmp_path: Path) -> None:
    p = tmp_path / "x.bin.lnk"
    p.write_text(json.dumps({**GOOD, "sha256": "AB" * 32}))
    ptr = parse_pointer(p)
    assert (ptr.sha256, ptr.size, ptr.extract, ptr.target_name) == (
        "ab" * 32,
        None,
        "file",
        "x.bin",
    )


# -- the CLI -----------------------------------------------------------------------
def test_cli_add_pull_ls_check(tmp_path: Path, server: BlobServer) -> None:
    env = {**os.environ}
    data = blob(40_000)
    url = server.add("/pkg/sound.raw", data)
    project = _project(tmp_path)
    r = run_fbuild("lnk", "add", url, "-o", str(project / "assets" / "sound.raw"), env=env)
    assert r.returncode == 0, r.stderr
    lnk = project / "assets" / "sound.raw.lnk"
    ptr = parse_pointer(lnk)
    assert (ptr.sha256, ptr.size, ptr.url, ptr.extract) == (sha(data), len(data), url, "file")
    assert run_fbuild("lnk", "add", url, "-o", str(lnk), env=env).returncode == 2  # exists

    r = run_fbuild("lnk", "ls", str(project), "--json", env=env)
    [row] = json.loads(r.stdout)["pointers"]
    assert row["pointer"] == "assets/sound.raw.lnk" and row["cache"] == "cached"
    assert row["materialized"] is None

    r = run_fbuild("lnk", "pull", str(project), env=env)
    assert r.returncode == 0 and "1 pointer(s): 0 fetched, 1 already cached" in r.stdout
    assert server.count("/pkg/sound.raw") == 1  # add downloaded it; pull did not again
    r = run_fbuild("lnk", "check", str(project), env=env)
    assert r.returncode == 0 and "ok  assets/sound.raw.lnk" in r.stdout

    # tamper with the cached blob: check (no network) finds it
    cached = BlobCache(tmp_path / "cache" / "lnk").path(sha(data))
    cached.chmod(0o644)
    cached.write_bytes(data[:-1] + b"\x00")
    r = run_fbuild("lnk", "check", str(project), env=env)
    assert r.returncode == 1 and "corrupt  assets/sound.raw.lnk" in r.stdout
    # and the next resolve re-fetches instead of building with it
    r = run_fbuild("lnk", "pull", str(project), env=env)
    assert r.returncode == 0 and "1 fetched" in r.stdout, r.stderr
    assert server.count("/pkg/sound.raw") == 2
    cached.unlink()
    r = run_fbuild("lnk", "check", str(project), "--json", env=env)
    assert r.returncode == 1 and json.loads(r.stdout)["pointers"][0]["state"] == "missing"


def test_cli_errors_and_exit_codes(tmp_path: Path, server: BlobServer) -> None:
    env = {**os.environ}
    project = _project(tmp_path)
    (project / "bad.bin.lnk").write_text("{")
    r = run_fbuild("lnk", "pull", str(project), env=env)
    assert r.returncode == 2
    assert r.stderr.strip() == f"fbuild: error: {project / 'bad.bin.lnk'}: malformed JSON: " + (
        "Expecting property name enclosed in double quotes at line 1"
    )
    assert run_fbuild("lnk", "check", str(project), env=env).returncode == 2
    (project / "bad.bin.lnk").unlink()
    write_pointer(project / "gone.bin.lnk", server.url("/missing"), b"abc")
    r = run_fbuild("lnk", "pull", str(project), env=env)
    assert r.returncode == 1 and r.stderr.count("\n") >= 1
    assert r.stderr.strip().splitlines()[-1] == (
        f"fbuild: error: {project / 'gone.bin.lnk'}: HTTP 404 Not Found from {server.url('/missing')}"
    )
