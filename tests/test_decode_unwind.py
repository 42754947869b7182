"""Exact RISC-V backtraces by CFI unwinding: the same frames as gdb on
esp-coredump's ESP32-C3 core dump, the real call chain of the virtual
board's crashing firmware (abort, illegal instruction, load fault, stack
overflow), and never a frame from a stale stack word."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fbuild_watch.crash.report import PanicCollector, PanicReport
from fbuild_watch.decode import Crash, Symbolizer, decode_report
from tests.decodekit import DATA, CoreDump, c3_core_dump, riscv_panic_text, unpack
from tests.fwkit import FW_DIR, Build, build_firmware
from tests.simkit import new_board, open_port, preload, read_until

ABORT = "abort() was called at PC 0x42009351 on core 0"


@pytest.fixture(scope="module")
def c3(tmp_path_factory: pytest.TempPathFactory) -> Symbolizer:
    return Symbolizer(unpack("esp32c3_cfi.elf.xz", tmp_path_factory.mktemp("c3")))


def report_of(lines: list[str]) -> PanicReport:
    out: list[PanicReport] = []
    c = PanicCollector(out.append)
    for line in lines:
        c.feed(line)
    assert len(out) == 1
    return out[0]


def gdb_frames() -> list[tuple[int | None, str]]:
    """esp-coredump's expected output: `#N  [0xADDR in] function (...)`."""
    out = []
    for line in (DATA / "esp32c3_coredump_gdb_frames.txt").read_text().splitlines():
        m = re.match(r"#\d+\s+(?:0x([0-9a-f]+) in )?(\S+)", line)
        assert m
        out.append((int(m.group(1), 16) if m.group(1) else None, m.group(2)))
    return out


def test_same_frames_as_gdb_on_a_real_core_dump(c3: Symbolizer) -> None:
    crash = decode_report(report_of(riscv_panic_text(ABORT, c3_core_dump())), c3)
    got = [(f.address, f.function, f.origin) for f in crash.frames]
    expected = gdb_frames()
    # gdb goes on through ROM (ets_vprintf, with the ROM ELF's unwind info):
    # without it the first ROM frame is the last, its address unnamed
    rom = next(i for i, (a, _n) in enumerate(expected) if a and a < 0x40380000)
    assert rom == 4
    app = [(a if a is not None else 0x40380698, n, "app") for a, n in expected[:rom]]
    assert got == [*app, (expected[rom][0], None, "rom")]
    assert [f.source for f in crash.frames] == ["MEPC", "CFI", "CFI", "CFI", "CFI"]
    # the crash site: abort's caller, fail_once
    assert [(f.address, f.function) for f in crash.sites] == [(0x42009351, "fail_once")]
    assert crash.decoded()[0] == "crash site 0x42009351: fail_once (abort)"
    assert crash.decoded()[-1] == "0x400485e4: ?? [ROM] (CFI)"


def test_stale_code_addresses_on_the_stack_are_never_frames(c3: Symbolizer) -> None:
    dump = c3_core_dump()
    clean = decode_report(report_of(riscv_panic_text(ABORT, dump)), c3).frames
    # fill the stack's empty (zero) words with code addresses, as dead
    # frames of earlier calls leave them: a scanner would take them all
    stack = bytearray(dump.stack)
    sp = dump.registers["SP"]
    planted = 0
    for off in range(sp - dump.stack_base, len(stack), 4):
        if stack[off : off + 4] == bytes(4):
            stack[off : off + 4] = (0x42009354 + 0x40 + 2 * planted).to_bytes(4, "little")
            planted += 1
    assert planted > 30
    dirty = CoreDump(dump.registers, dump.stack_base, bytes(stack))
    frames = decode_report(report_of(riscv_panic_text(ABORT, dirty)), c3).frames
    assert [(f.address, f.function) for f in frames] == [(f.address, f.function) for f in clean]


def test_stops_where_the_printed_stack_ends(c3: Symbolizer) -> None:
    """abort() saved its return address (into fail_once) at CFA - 4 =
    0x3fc8eaec; a dump that ends before it gives no guess for that frame."""
    dump = c3_core_dump()
    short = CoreDump(dump.registers, dump.stack_base, dump.stack[: 0x3FC8EAE0 - dump.stack_base])
    frames = decode_report(report_of(riscv_panic_text(ABORT, short)), c3).frames
    assert [f.function for f in frames] == ["panic_abort", "esp_system_abort", "abort"]


@pytest.fixture(scope="module")
def crash_builds(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Build]:
    root = tmp_path_factory.mktemp("crashes")
    out = {}
    for kind in (1, 2, 3, 4):
        src = root / f"kind{kind}.c"
        src.write_text(f'#define CRASH_KIND {kind}\n#include "{FW_DIR / "crashes.c"}"\n')
        out[kind] = build_firmware(root / f"b{kind}", app_source=src)
    return out


def run_crash(build: Build) -> Crash:
    board = new_board()
    preload(board, build)
    port = open_port(board)
    board.reset()
    out = read_until(port, r"Rebooting\.\.\.").decode()
    port.close()
    rep = report_of(out.splitlines())
    return decode_report(rep, Symbolizer(build.app_elf))


def test_virtual_board_abort(crash_builds: dict[int, Build]) -> None:
    crash = run_crash(crash_builds[1])
    assert crash.report.kind == "abort"
    assert [f.function for f in crash.sites] == ["level2"]
    names = [f.function for f in crash.frames]
    assert names == ["abort", "level2", "level1", "main", "_start"]
    assert all(f.file and f.file.endswith("crashes.c") for f in crash.frames)


@pytest.mark.parametrize(("kind", "reason"), [(2, "Illegal instruction"), (3, "Load access fault")])
def test_virtual_board_faults(crash_builds: dict[int, Build], kind: int, reason: str) -> None:
    crash = run_crash(crash_builds[kind])
    assert crash.report.reason == reason
    assert [f.function for f in crash.frames] == ["level2", "level1", "main", "_start"]
    # the first frame is the faulting instruction itself, on the line of the fault
    line = next(
        i
        for i, text in enumerate((FW_DIR / "crashes.c").read_text().splitlines(), 1)
        if f"CRASH_KIND == {kind})" in text
    )
    assert crash.frames[0].line == line


def test_virtual_board_stack_overflow(crash_builds: dict[int, Build]) -> None:
    """The stack ran out: nothing of it can be printed, so the frames are
    the faulting pc and its return-address register, no more."""
    crash = run_crash(crash_builds[4])
    assert crash.report.reason == "Store access fault"
    assert [f.function for f in crash.frames] == ["recurse", "recurse"]


def test_no_cfi_gives_the_crash_point_and_its_ra_only(tmp_path: Path) -> None:
    build = build_firmware(tmp_path / "b", app_source=FW_DIR / "crash.c")
    crash = run_crash(build)
    assert [f.function for f in crash.frames][:2] == ["fault_here", "main"]
