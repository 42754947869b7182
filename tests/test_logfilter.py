"""Log filters as esp-idf-monitor's `--print_filter`, checked byte for byte
against its own host-test inputs and expected outputs (tests/data/idf_monitor,
see its README), plus the regex and substring searches that cannot be
mistaken for a print filter."""

from __future__ import annotations

import lzma

import pytest

from fbuild_watch.idfconsole import STATUS_QUERY, auto_colour, split_status_query
from fbuild_watch.logfilter import PrintFilter, compile_filter, kind_of
from fbuild_watch.monitor import LineSplitter
from tests.decodekit import DATA


def data(name: str) -> bytes:
    path = DATA / name
    if path.exists():
        return path.read_bytes()
    return lzma.decompress((DATA / f"{name}.xz").read_bytes())


def monitor_output(stream: bytes, spec: str) -> bytes:
    """What esp-idf-monitor prints for `stream` with `--print_filter spec`:
    our splitter, filter and console habits in its order (the status query
    goes to the terminal whatever the filter; kept lines get auto colour)."""
    keep = compile_filter(spec)
    out: list[str] = []
    for line in LineSplitter().feed(stream):
        query, rest = split_status_query(line)
        if query:
            out.append(STATUS_QUERY)
        if keep is None or keep(rest):
            out.append(auto_colour(rest) + "\n")
    return "".join(out).encode()


# esp-idf-monitor's test_print_filter parameters, unchanged
@pytest.mark.parametrize(
    ("input_file", "spec", "expected"),
    [
        ("in1.txt", "", "in1f1.txt"),
        ("in1.txt", "*:V", "in1f1.txt"),
        ("in1.txt", "hello_world", "in1f2.txt"),
        ("in1.txt", "*:N", "in1f3.txt"),
        ("in2.txt", "boot mdf_device_handle:I mesh:E vfs:I", "in2f1.txt"),
        ("in2.txt", "vfs", "in2f2.txt"),
    ],
)
def test_same_output_as_esp_idf_monitor(input_file: str, spec: str, expected: str) -> None:
    assert monitor_output(data(input_file), spec) == data(expected)


def test_auto_colour_as_esp_idf_monitor() -> None:
    assert monitor_output(data("color.txt"), "") == data("color_out.txt")


def test_a_bare_tag_among_items_is_that_tag_at_every_level() -> None:
    """The old filter read this spec as one substring and kept 0 of 54 lines."""
    keep = compile_filter("boot mdf_device_handle:I mesh:E vfs:I")
    assert keep is not None
    lines = [ln for ln in LineSplitter().feed(data("in2.txt")) if keep(ln)]
    assert len(lines) == 54
    assert keep("\x1b[0;32mI (30) boot: ESP-IDF v3.1\x1b[0m")
    assert keep("V (30) boot: verbose")  # bare tag: all levels
    assert not keep("W (30) mesh: a warning")  # mesh:E
    assert keep("E (30) mesh: an error")
    assert not keep("I (30) wifi: other tags: hidden")
    assert not keep("Hello world!")  # not a log line, and '*' is N


@pytest.mark.parametrize("spec", ["wifi:w", "wifi:W", "WiFi:w *:n"])
def test_levels_in_either_case(spec: str) -> None:
    keep = compile_filter(spec)
    assert keep is not None
    assert keep("W (1) wifi: x") is (spec != "WiFi:w *:n")
    assert keep("E (1) WiFi: x") is (spec == "WiFi:w *:n")


def test_timestamps_of_any_format_or_none() -> None:
    keep = compile_filter("bar:I")
    assert keep is not None
    assert keep("I (00:00:00.100) bar: system time")
    assert keep("I (20-02-02 00:00:00.100) bar: system date and time")
    assert keep("I bar: no timestamp at all")
    assert not keep("D (00:00:00.100) bar: above I")
    assert not keep("I (123) baz: another tag")


def test_star_sets_the_default_and_non_log_lines_follow_it() -> None:
    keep = compile_filter("*:E wifi:I")
    assert keep is not None
    assert keep("boot banner") and keep("E (1) x: e") and not keep("W (1) x: w")
    assert keep("I (1) wifi: i")
    assert compile_filter("") is None and compile_filter("   ") is None


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (":E", "No tag specified in filter :E"),
        ("wifi:X", "Unknown warning level in filter wifi:X"),
        ("a:b:c", 'Missing ":" in filter a:b:c'),
    ],
)
def test_errors_are_esp_idf_monitors(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{message}$"):
        compile_filter(spec)


def test_regex_and_text_only_when_they_cannot_be_a_print_filter() -> None:
    assert kind_of("/err(or)?/") == "regex" and kind_of('"heap low"') == "text"
    assert kind_of("vfs") == "idf" and kind_of("error: 404") == "idf"
    rx = compile_filter(r"/free heap: \d+/")
    assert rx is not None and rx("\x1b[0;32mI (1) m: free heap: 42\x1b[0m")
    text = compile_filter('"HEAP LOW"')
    assert text is not None and text("W (1) m: heap low!") and not text("W (1) m: fine")
    with pytest.raises(ValueError, match=r"^bad regex /\(/: "):
        compile_filter("/(/")


def test_print_filter_rules() -> None:
    assert PrintFilter.parse("vfs boot:w *:e").rules == {"vfs": 5, "boot": 2, "*": 1}


def test_tui_import_still_works() -> None:
    from fbuild_watch.tui.filters import compile_filter as old

    assert old is compile_filter
