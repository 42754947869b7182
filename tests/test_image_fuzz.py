"""Random and mutated bytes never crash the parsers with anything but
ImageError, and never hang."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fbuild_watch.errors import ImageError
from fbuild_watch.image import parse_image, parse_partition_table
from fbuild_watch.image.partitions import build_partition_table
from tests.fwkit import DEFAULT_PARTITIONS, FW_DIR, build_firmware

_APP: bytes | None = None


def _real_app() -> bytes:
    global _APP
    if _APP is None:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            _APP = build_firmware(Path(d) / "b").app_bin.read_bytes()
    return _APP


assert FW_DIR.is_dir()
_TABLE = build_partition_table(DEFAULT_PARTITIONS)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _mutations(base: bytes) -> st.SearchStrategy[bytes]:
    edits = st.lists(
        st.tuples(st.integers(0, len(base) - 1), st.integers(0, 255)), min_size=1, max_size=8
    )
    return st.one_of(
        edits.map(lambda es: _apply(base, es)),
        st.integers(0, len(base)).map(lambda n: base[:n]),
        st.tuples(edits, st.integers(0, len(base))).map(lambda t: _apply(base, t[0])[: t[1]]),
    )


def _apply(base: bytes, edits: list[tuple[int, int]]) -> bytes:
    b = bytearray(base)
    for pos, val in edits:
        b[pos] = val
    return bytes(b)


def _parse_image_safely(data: bytes) -> None:
    try:
        parse_image(data, expect_chip_id=5)
    except ImageError:
        pass


@FUZZ
@given(st.binary(max_size=4096))
def test_image_parser_random(data: bytes) -> None:
    _parse_image_safely(data)


@FUZZ
@given(st.data())
def test_image_parser_mutated(data: st.DataObject) -> None:
    _parse_image_safely(data.draw(_mutations(_real_app())))


@FUZZ
@given(st.binary(max_size=0xC00) | _mutations(_TABLE))
def test_partition_parser(data: bytes) -> None:
    try:
        parse_partition_table(data, flash_size=4 << 20)
    except ImageError:
        pass


def test_header_that_looks_valid_but_lies() -> None:
    # magic + segment count 16 + all-zero rest: esptool would read 16 empty segments
    data = bytes([0xE9, 16, 2, 0x20]) + b"\0" * 20
    _parse_image_safely(data)
