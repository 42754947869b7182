"""UART core dumps: found in the serial lines, collapsed out of the log,
saved for esp-coredump, and every task's backtrace decoded, the crashed
task first: checked against gdb's backtraces (esp-coredump's expected
output) for Espressif's real ESP32-C3 (RISC-V) and ESP32 (Xtensa) dumps,
and against a real UART console log of a dump (tests/data/idf_monitor)."""

from __future__ import annotations

import base64
import queue
import re
import threading
import time
from pathlib import Path

import pytest

import fbuild_watch.decode as decode
from fbuild_watch.crash import coredump
from fbuild_watch.crash.coredump import END, START, CoreDumpReport, TaskTrace
from fbuild_watch.decode import CrashDetector
from tests.decodekit import DATA, c3_core_dump, riscv_panic_text, unpack

ABORT = "abort() was called at PC 0x42009351 on core 0"
GdbFrame = tuple[int | None, str | None]


def gdb_threads(name: str) -> dict[str, list[GdbFrame]]:
    """gdb's `THREAD n (TCB: ..., name: '...')` blocks: per task name, its
    frames as (address or None for frame #0 at a line start, function);
    an inlined function's frame is folded into the function that holds
    the code (the symbol table's name for that address)."""
    out: dict[str, list[GdbFrame]] = {}
    frames: list[GdbFrame] = []
    for line in (DATA / name).read_text().splitlines():
        m = re.match(r"=+ THREAD \d+ \(TCB: 0x[0-9a-f]+, name: '(.*)'\)", line)
        if m:
            frames = out.setdefault(m.group(1), [])
            continue
        m = re.match(r"#(\d+)\s+(?:0x([0-9a-f]+) in )?(\S+)", line)
        if not m:
            continue
        addr = int(m.group(2), 16) if m.group(2) else None
        if addr is None and m.group(1) != "0":
            frames[-1] = (frames[-1][0], m.group(3))  # inlined into this one
        else:
            frames.append((addr, m.group(3)))
    return out


def ours(trace: TaskTrace) -> list[tuple[int, str | None]]:
    out: list[tuple[int, str | None]] = []
    for f in trace.frames:
        if f.inlined:
            out[-1] = (out[-1][0], f.function)
        else:
            out.append((f.address, f.function))
    return out


def dump_lines(name: str) -> list[str]:
    return (DATA / name).read_text().split()


def console(dump: list[str]) -> list[str]:
    """What an ESP32-C3 prints for an abort() with the core dump to UART
    (ESP-IDF v5: the panic handler's dump, then esp_core_dump_uart's)."""
    panic = riscv_panic_text(ABORT, c3_core_dump())[:-2]  # up to "ELF file SHA256"
    return [
        "I (312) main_task: Calling app_main()",
        *panic,
        "I (342) esp_core_dump_uart: Init core dump to UART",
        "I (412) esp_core_dump_elf: Found tasks: 3",
        START,
        *dump,
        END,
        "I (602) esp_core_dump_uart: Core dump has been written to uart.",
        "Rebooting...",
        "ESP-ROM:esp32c3-api1-20210207",
    ]


@pytest.fixture(scope="module")
def c3_elf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return unpack("esp32c3_cfi.elf.xz", tmp_path_factory.mktemp("c3"))


def test_c3_dump_collapsed_saved_and_decoded_like_gdb(
    c3_elf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the ELF's index takes as long as the test likes: the reader never waits
    gate = threading.Event()
    real = decode._build

    def slow_index(path: Path, cache_dir: Path | None) -> decode.Symbolizer:
        assert gate.wait(60)
        return real(path, cache_dir)

    monkeypatch.setattr(decode, "_build", slow_index)
    got: queue.Queue[CoreDumpReport] = queue.Queue()
    crashes: queue.Queue[decode.Crash] = queue.Queue()
    det = CrashDetector(
        on_crash=crashes.put, on_coredump=got.put, coredump_dir=tmp_path / ".fbuild" / "coredumps"
    )
    dump = dump_lines("esp32c3_coredump.b64")
    try:
        det.set_elf(c3_elf)
        started = time.monotonic()
        shown = det.take(console(dump))
        assert time.monotonic() - started < 5 and got.empty() and not gate.is_set()
    finally:
        gate.set()
    # the base64 body is collapsed; the markers and everything else stay
    assert shown == [ln for ln in console(dump) if ln not in dump]
    assert START in shown and END in shown
    rep = got.get(timeout=60)
    assert crashes.get(timeout=60).report.kind == "abort"  # the panic text: its own event

    # saved as printed, for `esp-coredump info_corefile --core FILE`
    assert rep.file is not None and rep.file.parent == tmp_path / ".fbuild" / "coredumps"
    assert rep.file.read_text().split() == dump
    assert rep.lines == len(dump) and rep.error is None

    assert (rep.chip, rep.reason) == ("esp32c3", ABORT)
    assert [(t.name, t.crashed, t.tcb) for t in rep.tasks] == [
        ("main", True, 0x3FC8EC30),
        ("IDLE", False, 0x3FC8F38C),
        ("esp_timer", False, 0x3FC8DA94),
    ]
    assert rep.tasks[0].registers["PC"] == 0x40380698
    gdb = gdb_threads("esp32c3_coredump_gdb_threads.txt")
    for t in rep.tasks:
        assert t.name is not None
        expected = [(a, n) for a, n in gdb[t.name] if a != 0]  # gdb's "0x00000000 in ??"
        # without the ROM's unwind info the first ROM frame is the last, unnamed
        rom = next((i for i, (a, _n) in enumerate(expected) if a and a < 0x40380000), None)
        if rom is not None:
            expected = [*expected[:rom], (expected[rom][0], None)]
        got_frames = ours(t)
        assert len(got_frames) == len(expected), t.name
        for (ga, gn), (ea, en) in zip(got_frames, expected, strict=True):
            assert (ga if ea is not None else None, gn) == (ea, en), t.name
    # the fixture ELF is a trimmed copy: not the file the board was built from
    assert any("the dump is of a different build" in w for w in rep.warnings)
    text = rep.decoded()
    assert text[0] == f"core dump (esp32c3, 3 tasks): {ABORT}"
    assert "crashed task main (TCB 0x3fc8ec30):" in text
    data = rep.as_event_data()
    assert data["tasks"][2]["frames"][3]["function"] == "timer_task"


@pytest.fixture(scope="module")
def esp32_app(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return unpack("esp32_app_symtab.elf.xz", tmp_path_factory.mktemp("esp32"))


def test_xtensa_dump_every_task_like_gdb(esp32_app: Path, tmp_path: Path) -> None:
    """The windowed ABI's walk needs no unwind info: every frame gdb finds,
    through ROM too, named by ESP-IDF's ROM linker script."""
    rom = unpack("esp32.rom.ld.xz", tmp_path)
    det = CrashDetector()
    det.set_elf(esp32_app, rom_scripts=[rom])
    det.take([START, *dump_lines("esp32_coredump.b64"), END])
    rep = det.last_coredump
    assert rep is not None and rep.error is None and rep.chip == "esp32"
    gdb = gdb_threads("esp32_coredump_gdb_threads.txt")
    assert [t.name for t in rep.tasks] == list(gdb)
    assert rep.tasks[0].crashed and not any(t.crashed for t in rep.tasks[1:])
    for t in rep.tasks:
        assert t.name is not None
        # gdb adds a frame from a0 = 0 (0x40000000) where ESP-IDF's walk stops
        expected = [(a, n) for a, n in gdb[t.name] if n != "??"]
        got = ours(t)
        assert [a for a, _n in got][1:] == [a for a, _n in expected][1:], t.name
        for (ga, gn), (ea, en) in zip(got, expected, strict=True):
            if ea is not None and ea < 0x40070000:  # ROM: the script's nearest name below
                # (0x40007c78 is in ets_write_char, a static the script does not
                # list: its nearest listed name is rom_main, shown as rom_main+0x5b3)
                assert gn is not None and gn.split("+")[0] in (en, "rom_main"), (t.name, ga)
            else:
                assert gn == en, (t.name, ga)
    rom_frames = {f.address: f.function for t in rep.tasks for f in t.frames if f.origin == "rom"}
    assert rom_frames[0x4000BFF0] == "_xtos_set_intlevel+0x14"
    assert rom_frames[0x4000814B] == "ets_printf+0x3f6"  # a return address: looked up 1 back


def test_real_uart_console_log_of_a_dump(tmp_path: Path) -> None:
    """esp-idf-monitor's old host test input: an ESP32 (ESP-IDF v4.2)
    printing a StoreProhibited panic and its core dump, then rebooting."""
    log = (DATA / "esp32_uart_coredump.txt").read_text().splitlines()
    replies: list[bytes] = []
    det = CrashDetector(coredump_dir=tmp_path, on_reply=replies.append)
    shown = det.take(log)
    start, end = log.index(START), log.index(END)
    assert shown == log[: start + 1] + log[end:]  # 286 base64 lines collapsed
    assert replies == [b"\n"]  # Enter at "Press Enter to print core dump to UART..."
    rep = det.last_coredump
    assert rep is not None and rep.lines == end - start - 1
    assert rep.file is not None and rep.file.read_text().split() == log[start + 1 : end]
    assert rep.error == "no ELF to decode with" and rep.chip == "esp32"
    # the addresses are gdb's (its ELF was a dummy: every frame is ??)
    gdb = gdb_threads("esp32_uart_coredump_gdb_threads.txt")
    assert [t.name for t in rep.tasks] == list(gdb)
    for t in rep.tasks:
        assert t.name is not None
        assert [f.address for f in t.frames] == [a for a, _n in gdb[t.name]], t.name


def test_interrupted_dump_is_reported_and_the_next_boot_shown(c3_elf: Path) -> None:
    dump = dump_lines("esp32c3_coredump.b64")
    det = CrashDetector(c3_elf)
    cut = [START, *dump[:20], "ESP-ROM:esp32c3-api1-20210207", "I (30) boot: ESP-IDF v5.1"]
    assert det.take(cut) == [START, "ESP-ROM:esp32c3-api1-20210207", "I (30) boot: ESP-IDF v5.1"]
    rep = det.last_coredump
    assert rep is not None and rep.lines == 20 and not rep.tasks
    assert rep.error is not None and rep.error.startswith("incomplete: the dump stopped after 20")
    # the port closing inside a dump ends it too
    det.take([START, *dump[:5]])
    det.flush()
    assert det.last_coredump is not None and det.last_coredump.lines == 5
    assert det.last_coredump.error == "incomplete: the output stopped before the dump's END line"


def test_garbled_dump_is_said_and_still_decoded(c3_elf: Path, tmp_path: Path) -> None:
    raw = bytearray(coredump.decode_base64(dump_lines("esp32c3_coredump.b64")))
    raw[2000] ^= 0xFF  # one byte of a task's stack, wrong
    lines = [base64.b64encode(raw[i : i + 48]).decode() for i in range(0, len(raw), 48)]
    blocker = tmp_path / "coredumps"
    blocker.write_text("a file where the directory should be")
    det = CrashDetector(c3_elf, coredump_dir=blocker)
    det.take([START, *lines, END])
    rep = det.last_coredump
    assert rep is not None and rep.file is None
    assert rep.save_error is not None and rep.save_error.startswith(f"{blocker}: ")
    assert "the dump's checksum does not match: some bytes were garbled" in rep.warnings
    assert [t.name for t in rep.tasks] == ["main", "IDLE", "esp_timer"]
    assert any(line.startswith("(not saved: ") for line in rep.decoded())


def test_not_a_core_dump() -> None:
    with pytest.raises(coredump.CoreDumpError, match="not one esp-coredump reads"):
        coredump.parse(bytes(64))
    with pytest.raises(coredump.CoreDumpError, match="not base64"):
        coredump.decode_base64(["@@@@"])
    raw = coredump.decode_base64(dump_lines("esp32c3_coredump.b64"))
    with pytest.raises(coredump.CoreDumpError, match="3224 bytes, 1000 arrived"):
        coredump.parse(raw[:1000])


def test_saved_dumps_are_bounded(tmp_path: Path) -> None:
    for i in range(coredump.KEEP_DUMPS + 3):
        coredump.save([f"QUFB{i:04d}"], tmp_path)
    assert len(list(tmp_path.glob("coredump-*.b64"))) == coredump.KEEP_DUMPS
