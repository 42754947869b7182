"""Untrusted input never crashes anything but with the project's own clear
errors, and never hangs: the serial line splitter and crash detector (bytes
from a board), the diagnostics parser (compiler output), the config loader
(fbuild.toml) and the `.lnk` parser. The image/partition parsers have their
own file (test_image_fuzz.py)."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fbuild_watch.build.diagnostics import parse_line, parse_output
from fbuild_watch.config import load_config
from fbuild_watch.decode import MAX_REPORT_ADDRS, CrashDetector
from fbuild_watch.errors import ConfigError
from fbuild_watch.lnk.format import parse_pointer
from fbuild_watch.monitor import MAX_LINE, LinePiece, LineSplitter

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- serial bytes -> lines -----------------------------------------------------------
_SERIAL = st.lists(
    st.one_of(
        st.binary(max_size=64),
        st.sampled_from([b"\r", b"\n", b"\r\n", b"\xff", b"\xe2\x82", b"\xac", b"\x1b[0;32m"]),
    ),
    max_size=40,
)


def _split_all(chunks: list[bytes]) -> tuple[list[str], bytes]:
    sp = LineSplitter()
    lines: list[str] = []
    for c in chunks:
        lines += sp.feed(c)
    return lines, sp._buf


@FUZZ
@given(_SERIAL, st.data())
def test_line_splitting_does_not_depend_on_how_reads_split_the_bytes(
    parts: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(parts)
    whole = _split_all([stream])
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert _split_all(chunks) == whole  # empty reads (timeouts) included


@FUZZ
@given(st.text(alphabet=st.characters(codec="ascii", exclude_characters="\r\n"), max_size=30))
def test_every_ending_is_one_line_end(text: str) -> None:
    for eol in (b"\n", b"\r\n", b"\r"):
        lines, rest = _split_all([(text.encode() + eol) * 3])
        assert lines == [text] * 3 and rest == b""


def test_megabyte_lines_and_invalid_utf8_are_bounded() -> None:
    sp = LineSplitter()
    lines = sp.feed(b"\xff" * (1 << 20))
    # every piece but the last says the line goes on; the last waits for its end
    assert len(lines) == (1 << 20) // MAX_LINE - 1 and all(len(x) == MAX_LINE for x in lines)
    assert all(type(x) is LinePiece for x in lines) and len(sp._buf) == MAX_LINE
    assert set("".join(lines)) == {"\ufffd"}
    last = sp.flush()
    assert len(last) == 1 and type(last[0]) is str and sp._buf == b""
    # a line split mid-character across reads still decodes
    assert sp.feed("€".encode()[:2]) == [] and sp.feed("€\n".encode()[2:]) == ["€"]


def test_a_long_line_is_kept_whole_and_a_longer_one_cut_between_characters() -> None:
    sp = LineSplitter()
    whole = "x" * 10_000  # ESP-IDF hex dumps, JSON blobs: once cut at 4096
    assert sp.feed(whole.encode() + b"\r\n") == [whole]
    text = "a" + "é" * MAX_LINE  # a cut at MAX_LINE bytes would land mid-character
    pieces = sp.feed(text.encode() + b"\n")
    assert "".join(pieces) == text and "\ufffd" not in "".join(pieces)
    assert [type(p) for p in pieces] == [LinePiece, LinePiece, str]


@FUZZ
@given(st.lists(st.text(max_size=120), max_size=60))
def test_crash_detector_takes_any_lines(lines: list[str]) -> None:
    det = CrashDetector(None)
    for line in lines:
        result = det.feed(line)
        assert result is None or isinstance(result[1], list)


def test_an_unterminated_crash_report_stays_bounded() -> None:
    det = CrashDetector(None)
    det.feed(
        "Guru Meditation Error: Core  0 panic'ed (Load access fault). Exception was unhandled."
    )
    for i in range(10_000):
        assert det.feed(f"MEPC    : 0x{0x42000000 + i:08x}  RA      : 0x42000010") is None
    assert len(det._addrs) <= MAX_REPORT_ADDRS
    # the next boot's ROM banner ends the report
    assert det.feed("ESP-ROM:esp32c3-api1-20210207") is not None and not det._active


# -- compiler output -----------------------------------------------------------------
@FUZZ
@given(st.lists(st.text(max_size=200), max_size=30))
def test_diagnostics_parser_takes_any_output(lines: list[str]) -> None:
    for d in parse_output(lines):
        assert d.severity in ("error", "warning", "note")
        assert d.file is None or (d.line is not None and d.line >= 0)


@FUZZ
@given(
    st.text(alphabet="abc/._- ", max_size=20),  # ":" in a file name is ambiguous to gcc too
    st.integers(0, 10**9),
    st.one_of(st.none(), st.integers(0, 10**6)),
    st.sampled_from(["error", "warning", "note", "fatal error"]),
    st.text(alphabet=st.characters(exclude_characters="\r\n"), max_size=50),
)
def test_diagnostics_round_trip(file: str, line: int, col: int | None, sev: str, msg: str) -> None:
    file = "src/" + file.strip(": ") + ".c"
    loc = f"{file}:{line}" + (f":{col}" if col is not None else "")
    d = parse_line(f"{loc}: {sev}: {msg}")
    assert d is not None and d.line == line and d.severity == sev.replace("fatal ", "")


def test_a_pathological_line_is_not_a_diagnostic() -> None:
    assert parse_line("a.c:1:1: error: " + "x" * (1 << 20)) is None
    assert parse_line(":" * 100_000) is None


# -- fbuild.toml ---------------------------------------------------------------------
_KEYS = {
    "build": ["command", "flasher_args", "elf", "outputs", "env", "bogus"],
    "board": ["chip", "port", "baud", "speed"],
    "watch": ["paths", "ignore", "debounce_ms"],
    "lnk": ["dir", "allow_http", "max_mb"],
    "nope": ["x"],
}
_VALUES = st.one_of(
    st.text(max_size=12),
    st.integers(-(2**40), 2**40),
    st.booleans(),
    st.lists(st.one_of(st.text(max_size=6), st.integers()), max_size=3),
    st.dictionaries(st.text(max_size=4), st.one_of(st.text(max_size=4), st.integers()), max_size=2),
)


def _toml_value(v: object) -> str:
    return json.dumps(v) if not isinstance(v, bool) else str(v).lower()


def _toml_table(v: dict[str, object]) -> str:
    return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"


@st.composite
def _config_docs(draw: st.DrawFn) -> str:
    out = []
    for section in draw(st.lists(st.sampled_from(sorted(_KEYS)), unique=True, max_size=4)):
        out.append(f"[{section}]")
        for key in draw(st.lists(st.sampled_from(_KEYS[section]), unique=True, max_size=4)):
            v = draw(_VALUES)
            text = _toml_table(v) if isinstance(v, dict) else _toml_value(v)
            out.append(f"{key} = {text}")
    if draw(st.booleans()):
        out.append("[[flash]]")
        for key in draw(st.lists(st.sampled_from(["offset", "file", "x"]), unique=True)):
            out.append(f"{key} = {_toml_value(draw(_VALUES))}")
    return "\n".join(out) + "\n"


@FUZZ
@given(st.one_of(_config_docs(), st.binary(max_size=200).map(lambda b: b.decode("latin-1"))))
def test_config_loader_takes_any_document(
    tmp_path_factory: pytest.TempPathFactory, doc: str
) -> None:
    path = tmp_path_factory.mktemp("cfg") / "fbuild.toml"
    path.write_bytes(doc.encode("utf-8", "surrogateescape"))
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        assert str(exc).startswith(f"{path}: ") and "\n" not in str(exc)
        assert exc.exit_code == 2
        return
    # accepted: it was valid TOML and every value has the type the schema says
    tomllib.loads(doc)
    assert cfg.baud is None or cfg.baud > 0
    assert all(isinstance(p, str) for p in cfg.port)
    assert isinstance(cfg.lnk_allow_http, bool)


# -- .lnk pointers -------------------------------------------------------------------
_JSONISH = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text()),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(), inner, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def _pointer_docs(draw: st.DrawFn) -> bytes:
    doc = {"v": 1, "url": "https://h/a.bin", "sha256": "0" * 64, "size": 1, "extract": "file"}
    for key in draw(st.lists(st.sampled_from([*doc, "other"]), unique=True, max_size=3)):
        if draw(st.booleans()):
            doc.pop(key, None)
        else:
            doc[key] = draw(_JSONISH)
    return json.dumps(doc).encode()


@FUZZ
@given(st.one_of(_pointer_docs(), st.binary(max_size=300)))
def test_lnk_parser_takes_any_bytes(tmp_path_factory: pytest.TempPathFactory, raw: bytes) -> None:
    path = tmp_path_factory.mktemp("lnk") / "a.bin.lnk"
    try:
        p = parse_pointer(path, raw)
    except ConfigError as exc:
        assert str(exc).startswith(f"{path}: ") and "\n" not in str(exc)
        return
    assert re.fullmatch("[0-9a-f]{64}", p.sha256) and p.extract in ("file", "zip", "tar.gz")
    assert p.size is None or (isinstance(p.size, int) and p.size >= 0)


def test_lnk_parser_refuses_huge_files(tmp_path: Path) -> None:
    path = tmp_path / "a.bin.lnk"
    path.write_bytes(b" " * (1 << 20))
    with pytest.raises(ConfigError, match="too large for a .lnk pointer"):
        parse_pointer(path)
