"""ESP-IDF core dumps printed on the UART: found in the line stream, read
(the ELF formats of ESP-IDF v4.1 and later, with CRC32 or SHA-256; the
older binary format is saved for esp-coredump but not decoded), and each
task's backtrace decoded with our symbols, the crashed task first.

On the console a dump is base64 text between two marker lines, each line
encoded on its own (esp_core_dump_uart.c):

    ================= CORE DUMP START =================
    <base64 of the header + data + checksum, one chunk per line>
    ================= CORE DUMP END =================

The data is, since ESP-IDF v4.1, an ELF core file (esp_core_dump_elf.c):
one NT_PRSTATUS note per task (its TCB address as pr_pid, then the
registers), PT_LOAD segments with each task's TCB and stack, and ESP notes
with the crashed task's TCB (EXTRA_INFO), the panic reason and the app's
ELF SHA-256. The layouts below are esp-coredump's (corefile/loader.py,
riscv.py, xtensa.py).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fbuild_watch.crash.frames import Frame, Symbols
from fbuild_watch.crash.unwind import SP, Unwinder
from fbuild_watch.fsutil import atomic_write

START = "================= CORE DUMP START ================="
END = "================= CORE DUMP END ================="
PROMPT = "Press Enter to print core dump to UART..."
_BASE64 = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")
MAX_DUMP_CHARS = 16 << 20  # far above any core dump partition
KEEP_DUMPS = 32  # saved dumps kept per directory (a crash loop dumps at every boot)
MAX_FRAMES = 64

# esp_chip_info.h ids, as the header's upper half carries them
CHIPS = {
    0: "esp32",
    2: "esp32s2",
    9: "esp32s3",
    5: "esp32c3",
    12: "esp32c2",
    13: "esp32c6",
    16: "esp32h2",
    18: "esp32p4",
    20: "esp32c61",
    23: "esp32c5",
    25: "esp32h21",
    28: "esp32h4",
    32: "esp32s31",
}
XTENSA_CHIPS = frozenset({0, 2, 9})
# dump format versions: (header bytes, checksum bytes, ELF inside?)
_FORMATS = {
    0x0001: (16, 4, False),  # binary, before ESP-IDF v4.1
    0x0002: (20, 4, False),
    0x0003: (24, 4, False),
    0x0100: (20, 4, True),  # ELF, CRC32
    0x0102: (24, 4, True),
    0x0101: (20, 32, True),  # ELF, SHA-256
    0x0103: (24, 32, True),
    0x0104: (12, 32, True),
}
_NT_PRSTATUS = 1
_PT_LOAD, _PT_NOTE = 1, 4
_EXTRA_INFO, _PANIC_DETAILS, _DUMP_INFO = 677, 679, 8266
_PR_PID, _PR_REG = 24, 72
# Xtensa: the prstatus register block (pc, ps, lbeg, lend, lcount, sar, ...,
# a0..a15 from index 64)
_XT_AR = 64
_XT_CODE = (0x40000000, 0x50000000)  # instruction space (ROM, IRAM, flash)
# FreeRTOS TCB: pxTopOfStack, two list items (5 words each), priority,
# pxStack, then pcTaskName[configMAX_TASK_NAME_LEN = 16]; ESP-IDF before v5
# on Xtensa had one more word (xMPUSettings) after pxTopOfStack
_TCB_NAME = (52, 56)
RV_NAMES = (
    "PC", "RA", "SP", "GP", "TP", "T0", "T1", "T2", "S0/FP", "S1",
    "A0", "A1", "A2", "A3", "A4", "A5", "A6", "A7",
    "S2", "S3", "S4", "S5", "S6", "S7", "S8", "S9", "S10", "S11",
    "T3", "T4", "T5", "T6",
)  # fmt: skip


class CoreDumpError(Exception):
    """The dump cannot be read (said with the dump's event)."""


# -- the line stream -------------------------------------------------------------------
class CoreDumpLines:
    """Feed every line: a dump's base64 lines are collected (and reported
    as not to be shown), and `on_dump(lines, why_incomplete)` gets them
    when the END line comes, or when something else interrupts the dump
    (a reset, output cut): then with why it is incomplete."""

    def __init__(self, on_dump: Callable[[list[str], str | None], None]) -> None:
        self.on_dump = on_dump
        self.lines: list[str] | None = None  # None: not inside a dump
        self._chars = 0

    @property
    def active(self) -> bool:
        return self.lines is not None

    def feed(self, line: str) -> bool:
        """True when `line` is part of a dump's body (base64): the views
        leave it out; the marker lines themselves are shown."""
        if self.lines is None:
            if START in line:
                self.lines, self._chars = [], 0
            return False
        if END in line:
            self._finish(None)
            return False
        text = line.strip()
        if not text:
            return True
        if not _BASE64.match(text):
            self._finish(f"the dump stopped after {len(self.lines)} lines, at: {text[:80]}")
            if START in line:  # a new dump right away
                self.lines, self._chars = [], 0
            return False
        self._chars += len(text)
        if self._chars > MAX_DUMP_CHARS:
            self._finish(f"more than {MAX_DUMP_CHARS >> 20} MB of base64 without an END line")
            return True
        self.lines.append(text)
        return True

    def finish(self) -> None:
        """The output stopped (port closed) inside a dump."""
        if self.lines is not None:
            self._finish("the output stopped before the dump's END line")

    def _finish(self, why: str | None) -> None:
        lines, self.lines = self.lines, None
        if lines is not None:
            self.on_dump(lines, why)


def decode_base64(lines: Iterable[str]) -> bytes:
    """The dump's bytes: each printed line is base64 of its own."""
    try:
        return b"".join(base64.b64decode(line, validate=True) for line in lines)
    except (binascii.Error, ValueError) as exc:
        raise CoreDumpError(f"not base64: {exc}") from None


# -- the dump --------------------------------------------------------------------------
@dataclass
class Segment:
    addr: int
    data: bytes

    def holds(self, addr: int, size: int = 1) -> bool:
        return self.addr <= addr and addr + size <= self.addr + len(self.data)


@dataclass
class TaskDump:
    tcb: int
    registers: list[int]  # RISC-V: pc, x1..x31; Xtensa: the 129-word prstatus block
    name: str | None = None
    crashed: bool = False


@dataclass
class CoreImage:
    chip_id: int
    version: int  # the dump format (0x0103: ELF with SHA-256, ...)
    tasks: list[TaskDump]  # the crashed task first
    segments: list[Segment]
    panic_reason: str | None = None
    app_sha256: str | None = None  # the app ELF's SHA-256 (a prefix), as the board had it
    checksum_ok: bool | None = None  # None: this format has none we check
    xtensa_extra: dict[int, int] = field(default_factory=dict)

    @property
    def chip(self) -> str:
        return CHIPS.get(self.chip_id, f"chip {self.chip_id}")

    @property
    def xtensa(self) -> bool:
        return self.chip_id in XTENSA_CHIPS

    def segment(self, addr: int, size: int = 1) -> Segment | None:
        return next((s for s in self.segments if s.holds(addr, size)), None)

    def word(self, addr: int) -> int | None:
        seg = self.segment(addr, 4)
        if seg is None:
            return None
        return int.from_bytes(seg.data[addr - seg.addr : addr - seg.addr + 4], "little")

    def task_name(self, tcb: int) -> str | None:
        """pcTaskName from the TCB, when the dump holds it and it reads as a name."""
        for off in _TCB_NAME:
            seg = self.segment(tcb + off, 16)
            if seg is None:
                continue
            raw = seg.data[tcb + off - seg.addr :][:16]
            if b"\0" not in raw:
                continue
            text = raw.split(b"\0", 1)[0]
            # a pointer (the other layout's field here) is never printable ASCII
            if text and all(0x20 <= c < 0x7F for c in text):
                return text.decode("ascii")
        return None


def parse(raw: bytes) -> CoreImage:
    """A core dump's bytes (header, data, checksum) -> its tasks and memory."""
    if len(raw) < 12:
        raise CoreDumpError(f"{len(raw)} bytes: too short for a core dump header")
    tot_len, ver = struct.unpack_from("<II", raw)
    dump_ver, chip = ver & 0xFFFF, ver >> 16
    fmt = _FORMATS.get(dump_ver)
    if fmt is None:
        raise CoreDumpError(f"core dump format 0x{dump_ver:04x} is not one esp-coredump reads")
    head, check, is_elf = fmt
    if not head + check <= tot_len <= len(raw):
        raise CoreDumpError(f"the header says {tot_len} bytes, {len(raw)} arrived")
    body = raw[head : tot_len - check]
    checksum = raw[tot_len - check : tot_len]
    ok: bool | None = None
    if dump_ver != 0x0001:  # the oldest format's checksum covers a header it does not have
        covered = raw[: tot_len - check]
        if check == 4:
            ok = zlib.crc32(covered) & 0xFFFFFFFF == int.from_bytes(checksum, "little")
        else:
            ok = hashlib.sha256(covered).digest() == checksum
    if not is_elf:
        raise CoreDumpError(
            f"core dump format 0x{dump_ver:04x} (binary, ESP-IDF before v4.1) is not decoded here;"
            " esp-coredump reads the saved file"
        )
    image = _parse_elf(body, chip, dump_ver)
    image.checksum_ok = ok
    for t in image.tasks:
        t.name = image.task_name(t.tcb)
    return image


def _parse_elf(elf: bytes, chip: int, version: int) -> CoreImage:
    if elf[:4] != b"\x7fELF" or len(elf) < 52 or elf[4] != 1 or elf[5] != 1:
        raise CoreDumpError("the dump's data is not a 32-bit little-endian ELF file")
    (phoff,) = struct.unpack_from("<I", elf, 28)
    phentsize, phnum = struct.unpack_from("<HH", elf, 42)
    if phentsize < 32 or phoff + phnum * phentsize > len(elf):
        raise CoreDumpError("the core file's program headers run past its end")
    segments: list[Segment] = []
    notes: list[tuple[bytes, int, bytes]] = []
    for i in range(phnum):
        p_type, off, vaddr, _pa, filesz = struct.unpack_from("<IIIII", elf, phoff + i * phentsize)
        if off + filesz > len(elf):
            raise CoreDumpError(f"segment {i} runs past the core file's end")
        data = elf[off : off + filesz]
        if p_type == _PT_LOAD:
            segments.append(Segment(vaddr, data))
        elif p_type == _PT_NOTE:
            notes += _notes(data)
    image = CoreImage(chip, version, [], segments)
    crashed_tcb: int | None = None
    for name, kind, desc in notes:
        if name == b"CORE" and kind == _NT_PRSTATUS and len(desc) >= _PR_REG + 4:
            (tcb,) = struct.unpack_from("<I", desc, _PR_PID)
            n = (len(desc) - _PR_REG) // 4
            regs = list(struct.unpack_from(f"<{n}I", desc, _PR_REG))
            image.tasks.append(TaskDump(tcb, regs[: 32 if chip not in XTENSA_CHIPS else n]))
        elif kind == _EXTRA_INFO and len(desc) >= 4:
            words = struct.unpack_from(f"<{len(desc) // 4}I", desc)
            crashed_tcb = words[0]
            image.xtensa_extra = dict(zip(words[1::2], words[2::2], strict=False))
        elif kind == _PANIC_DETAILS:
            image.panic_reason = desc.split(b"\0", 1)[0].decode("utf-8", "replace").strip()
        elif kind == _DUMP_INFO and len(desc) >= 8:
            sha = desc[4:68].split(b"\0", 1)[0].decode("ascii", "replace")
            image.app_sha256 = sha or None
    _mark_crashed(image, crashed_tcb)
    return image


def _notes(data: bytes) -> list[tuple[bytes, int, bytes]]:
    out = []
    pos = 0
    while pos + 12 <= len(data):
        namesz, descsz, kind = struct.unpack_from("<III", data, pos)
        pos += 12
        name = data[pos : pos + namesz].rstrip(b"\0")
        pos += (namesz + 3) & ~3
        desc = data[pos : pos + descsz]
        pos += (descsz + 3) & ~3
        if pos > len(data):
            break  # a torn note: the notes before it still count
        out.append((name, kind, desc))
    return out


def _mark_crashed(image: CoreImage, tcb: int | None) -> None:
    crashed = next((t for t in image.tasks if t.tcb == tcb), None)
    if crashed is None and image.tasks:
        crashed = image.tasks[0]
    if crashed is not None:
        crashed.crashed = True
        image.tasks.remove(crashed)
        image.tasks.insert(0, crashed)


# -- backtraces ------------------------------------------------------------------------
@dataclass
class TaskTrace:
    tcb: int
    name: str | None
    crashed: bool
    registers: dict[str, int]
    frames: list[Frame]

    def title(self) -> str:
        what = "crashed task" if self.crashed else "task"
        return f"{what} {self.name or '?'} (TCB 0x{self.tcb:08x})"

    def as_dict(self) -> dict[str, Any]:
        return {
            "tcb": self.tcb,
            "name": self.name,
            "crashed": self.crashed,
            "registers": self.registers,
            "frames": [f.as_dict() for f in self.frames],
        }


def task_traces(image: CoreImage, symbols: Symbols) -> list[TaskTrace]:
    out = []
    for t in image.tasks:
        if image.xtensa:
            regs = {"PC": t.registers[0], **{f"A{i}": t.registers[_XT_AR + i] for i in range(16)}}
            frames = _xtensa_frames(image, t, symbols)
        else:
            regs = dict(zip(RV_NAMES, t.registers, strict=False))
            frames = _riscv_frames(image, t, symbols)
        out.append(TaskTrace(t.tcb, t.name, t.crashed, regs, frames))
    return out


def _frames_at(symbols: Symbols, addr: int, how: str, caller: bool) -> list[Frame]:
    found = symbols.frames(addr, how, caller=caller)
    # an address no source holds is still shown: a jump to nowhere is the crash
    return found or [Frame(addr, None, None, None, how, origin="unknown")]


def _riscv_frames(image: CoreImage, task: TaskDump, symbols: Symbols) -> list[Frame]:
    regs = task.registers
    pc = regs[0]
    dwarf = {i: regs[i] for i in range(1, 32)}
    stack = image.segment(regs[SP])
    app = symbols.app
    unwinder = app.unwinder if app is not None else Unwinder([])
    unwound = unwinder.unwind(
        pc,
        dwarf,
        stack.addr if stack else None,
        stack.data if stack else b"",
        symbols.is_code,
    )
    frames: list[Frame] = []
    for f in unwound:
        frames += _frames_at(symbols, f.pc, "PC" if f.how == "MEPC" else f.how, f.caller)
    return frames


def _xtensa_frames(image: CoreImage, task: TaskDump, symbols: Symbols) -> list[Frame]:
    """The windowed ABI's walk, as esp_backtrace_get_next_frame: a caller's
    pc is in a0 (its top two bits are the window size), and below each
    frame's sp lies the base save area with the next a0 and sp. It needs no
    unwind info, so it goes on through ROM and code the ELF does not know,
    until a0 is 0 (a task's entry) or the save area was not dumped."""
    regs = task.registers
    frames = _frames_at(symbols, regs[0], "PC", False)
    sp, next_pc = regs[_XT_AR + 1], regs[_XT_AR]
    while next_pc and len(frames) < MAX_FRAMES:
        ra = (next_pc & 0x3FFFFFFF) | 0x40000000
        if not _XT_CODE[0] <= ra < _XT_CODE[1]:
            break
        frames += _frames_at(symbols, ra, "backtrace", True)
        nxt, nsp = image.word(sp - 16), image.word(sp - 12)
        if nxt is None or nsp is None or nsp <= sp:
            break  # the base save area was not dumped, or the chain loops
        next_pc, sp = nxt, nsp
    return frames


# -- what the views get ----------------------------------------------------------------
@dataclass
class CoreDumpReport:
    """A UART core dump, decoded: what the `coredump` event carries."""

    lines: int  # base64 lines collapsed out of the log
    file: Path | None = None  # the saved dump, for esp-coredump
    save_error: str | None = None
    chip: str | None = None
    reason: str | None = None  # the panic reason the dump carries
    tasks: list[TaskTrace] = field(default_factory=list)
    elf: Path | None = None
    error: str | None = None  # why nothing (or not everything) was decoded
    warnings: list[str] = field(default_factory=list)

    def decoded(self) -> list[str]:
        """Text lines for the views: what it is, where it was saved, then
        each task's backtrace, the crashed task first."""
        what = self.reason or "no panic reason recorded"
        head = f"core dump ({self.chip or 'unknown chip'}, {len(self.tasks)} tasks): {what}"
        out = [head]
        if self.file is not None:
            out.append(f"saved to {self.file} (esp-coredump info_corefile --core {self.file} ELF)")
        if self.save_error:
            out.append(f"(not saved: {self.save_error})")
        out += [f"(warning: {w})" for w in self.warnings]
        if self.error:
            out.append(f"(not decoded: {self.error})")
        for t in self.tasks:
            out.append(f"{t.title()}:")
            out += [f"  {f.describe()}" for f in t.frames]
        return out

    def as_event_data(self) -> dict[str, Any]:
        return {
            "file": str(self.file) if self.file else None,
            "save_error": self.save_error,
            "chip": self.chip,
            "reason": self.reason,
            "lines": self.lines,
            "tasks": [t.as_dict() for t in self.tasks],
            "elf": str(self.elf) if self.elf else None,
            "error": self.error,
            "warnings": self.warnings,
            "decoded": self.decoded(),
        }


# -- the saved file --------------------------------------------------------------------
def save(lines: list[str], directory: Path) -> Path:
    """The dump as printed (base64 lines), for `esp-coredump info_corefile
    --core FILE --core-format b64 ELF`; the oldest dumps beyond KEEP_DUMPS
    go. Raises OSError."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    digest = hashlib.sha256("".join(lines).encode()).hexdigest()[:8]
    path = directory / f"coredump-{stamp}-{digest}.b64"
    atomic_write(path, ("\n".join(lines) + "\n").encode())
    old = sorted(directory.glob("coredump-*.b64"), key=lambda p: p.stat().st_mtime, reverse=True)
    for p in old[KEEP_DUMPS:]:
        p.unlink(missing_ok=True)
    return path


__all__ = [
    "END",
    "PROMPT",
    "START",
    "CoreDumpError",
    "CoreDumpLines",
    "CoreDumpReport",
    "CoreImage",
    "TaskTrace",
    "decode_base64",
    "parse",
    "save",
    "task_traces",
]
