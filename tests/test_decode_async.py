"""Decoding off the serial reader's thread: the ELF is indexed in the
background when it is set (after each build), `feed` never waits for it,
and each panic arrives once, decoded, through `on_crash`."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import fbuild_watch.crash.symbols as symbols
import fbuild_watch.decode as decode
from fbuild_watch.crash.symbols import SymbolIndex, cache_path, elf_sha256
from fbuild_watch.decode import Crash, CrashDetector
from tests.decodekit import c3_core_dump, riscv_panic_text, unpack

ABORT = "abort() was called at PC 0x42009351 on core 0"


def test_feed_never_waits_for_the_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elf = unpack("esp32c3_cfi.elf.xz", tmp_path)
    gate = threading.Event()
    real = decode._build

    def slow_index(path: Path, cache_dir: Path | None) -> decode.Symbolizer | None:
        assert gate.wait(60)  # a 20 MB ELF's DWARF, as long as the test likes
        return real(path, cache_dir)

    monkeypatch.setattr(decode, "_build", slow_index)
    crashes: queue.Queue[Crash] = queue.Queue()
    det = CrashDetector(on_crash=crashes.put)
    try:
        det.elf = elf  # after a build: indexing starts, in the background
        lines = ["I (1) app: up", *riscv_panic_text(ABORT, c3_core_dump()), "ESP-ROM:esp32c3"]
        started = time.monotonic()
        for line in lines:
            assert det.feed(line) is None
        # every line went through while the index was still blocked
        assert not gate.is_set() and not det.ready and crashes.empty()
        assert time.monotonic() - started < 5
        assert det.addresses("at 0x40380698") == []  # not ready: nothing, at once
    finally:
        gate.set()
    crash = crashes.get(timeout=60)
    assert crash.report.kind == "abort"
    assert [f.function for f in crash.frames][:4] == [
        "panic_abort",
        "esp_system_abort",
        "abort",
        "fail_once",
    ]
    data = crash.as_event_data()
    assert data["reason"] == ABORT and data["core"] == 0
    assert data["registers"]["MEPC"] == 0x40380698
    assert data["sites"][0]["function"] == "fail_once"
    assert data["frames"][0]["symbol"] == "panic_abort"
    assert crashes.empty()  # one event for one panic
    assert det.ready
    notes = det.addresses("handler at 0x40380698")
    assert [n.frames[0].function for n in notes] == ["panic_abort"]


def test_indexed_in_a_child_process_and_cached_under_the_build_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pyelftools in a thread would hold the GIL against the serial reader:
    the index is built by a child process, which also writes the cache."""
    elf = unpack("esp32c3_cfi.elf.xz", tmp_path)

    def not_here(_elf: Path, _cache: Path | None) -> SymbolIndex:
        raise AssertionError("indexed in the watch process")

    monkeypatch.setattr(decode, "IN_THREAD_BYTES", 0)  # as a real, multi-MB app ELF
    monkeypatch.setattr(symbols, "load_or_build", not_here)
    monkeypatch.setattr(decode, "load_or_build", not_here)
    cache = tmp_path / "build" / ".fbuild"
    det = CrashDetector()
    det.set_elf(elf, cache)
    assert det._symbolizer is not None
    sym = det._symbolizer.result(timeout=60)
    assert sym is not None
    assert cache_path(cache, elf_sha256(elf)).is_file()


def test_an_unreadable_elf_still_reports_the_crash(tmp_path: Path) -> None:
    bad = tmp_path / "app.elf"
    bad.write_bytes(b"\x7fELF" + b"\0" * 60)
    crashes: queue.Queue[Crash] = queue.Queue()
    det = CrashDetector(bad, on_crash=crashes.put)
    for line in riscv_panic_text(ABORT, c3_core_dump()):
        det.feed(line)
    crash = crashes.get(timeout=60)
    assert crash.reason == ABORT and crash.frames == []
    assert crash.error is not None and str(bad) in crash.error
    assert crash.decoded() == [f"(not decoded: {crash.error})"]
    # no ELF at all (monitor without --elf): the crash is still reported, and why
    det = CrashDetector(on_crash=crashes.put)
    for line in riscv_panic_text(ABORT, c3_core_dump()):
        det.feed(line)
    assert crashes.get(timeout=60).as_event_data()["error"] == "no ELF to decode with"


def test_a_newer_build_supersedes_a_queued_index(tmp_path: Path) -> None:
    """A crash collected while its ELF's index was replaced by the next
    build's is decoded with the new one, not lost."""
    elf = unpack("esp32c3_cfi.elf.xz", tmp_path)
    gate = threading.Event()
    blocker = decode._INDEXER.submit(lambda: gate.wait(60))  # the indexing thread is busy
    crashes: queue.Queue[Crash] = queue.Queue()
    det = CrashDetector(elf, on_crash=crashes.put)
    try:
        for line in riscv_panic_text(ABORT, c3_core_dump()):
            det.feed(line)
        elf.touch()  # the next build wrote the ELF again
        os.utime(elf, ns=(elf.stat().st_atime_ns, elf.stat().st_mtime_ns + 10**9))
        other = CrashDetector(elf)  # the session points every board at it
        assert other._symbolizer is not None and det._symbolizer is not None
        assert det._symbolizer.cancelled()
    finally:
        gate.set()
    blocker.result()
    crash = crashes.get(timeout=60)
    assert crash.error is None and crash.frames[0].function == "panic_abort"


def test_xtensa_backtrace_decoded_through_the_legacy_return(tmp_path: Path) -> None:
    """Without on_crash, feed returns (reason, frames) at the report's end,
    once: the ESP32 bootloader's own functions from an Xtensa backtrace."""
    elf = unpack("esp32_bootloader.elf.xz", tmp_path)
    det = CrashDetector(elf)
    sym = decode.load_symbolizer(elf)
    assert sym is not None
    idx = sym.index
    names = ("bootloader_flash_gpio_config", "bootloader_utility_load_boot_image")
    starts = [
        idx.sym_start[next(i for i, n in enumerate(idx.sym_name) if idx.strings[n] == name)]
        for name in names
    ]
    lines = [
        "Guru Meditation Error: Core  0 panic'ed (IllegalInstruction). Exception was unhandled.",
        f"Backtrace: 0x{starts[0] + 5:08x}:0x3ffe3b70 0x{starts[1] + 9:08x}:0x3ffe3b90",
        "",
        "ELF file SHA256: 0123456789abcdef",
        "",
        "Rebooting...",
    ]
    # the other core's backtrace is decoded too
    lines[2:2] = [
        "Core  1 register dump:",
        f"Backtrace: 0x{starts[1] + 9:08x}:0x3ffe3c00",
    ]
    results = [r for line in lines if (r := det.feed(line)) is not None]
    assert len(results) == 1
    reason, frames = results[0]
    assert reason == "IllegalInstruction"
    outer = [f for f in frames if not f.inlined]
    assert [f.function for f in outer] == list(names)
    assert [f.source for f in outer] == ["PC", "backtrace"]
    assert all(f.file for f in frames)
    crashes: queue.Queue[Crash] = queue.Queue()
    det = CrashDetector(elf, on_crash=crashes.put)
    for line in lines:
        det.feed(line)
    crash = crashes.get(timeout=60)
    other = crash.as_event_data()["other_cores"]
    assert [f["function"] for f in other["1"] if not f["inlined"]] == [names[1]]
    assert "core 1:" in crash.decoded()


def test_quitting_does_not_wait_for_an_index(tmp_path: Path) -> None:
    """The indexing and decoding threads are daemons: `q` during a long
    index ends the process at once."""
    elf = unpack("esp32c3_cfi.elf.xz", tmp_path)
    script = (
        "import sys, threading, fbuild_watch.decode as d\n"
        "never = threading.Event()\n"
        "d._build = lambda elf, cache: never.wait()\n"
        f"det = d.CrashDetector({str(elf)!r}, on_crash=print)\n"
        "for line in sys.stdin: det.feed(line)\n"
    )
    panic = "\n".join(riscv_panic_text(ABORT, c3_core_dump())) + "\n"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", script], input=panic, text=True, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - started < 30


def test_a_child_indexer_failure_is_said(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "big.elf"
    bad.write_bytes(b"\x7fELF\x01\x01\x01" + b"\xff" * 4000)
    monkeypatch.setattr(decode, "IN_THREAD_BYTES", 0)
    crashes: queue.Queue[Crash] = queue.Queue()
    det = CrashDetector(bad, on_crash=crashes.put)
    for line in riscv_panic_text(ABORT, c3_core_dump()):
        det.feed(line)
    crash = crashes.get(timeout=60)
    assert crash.error is not None and crash.error.startswith(f"{bad}: cannot read its symbols (")
