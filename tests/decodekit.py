"""Fixtures for the crash-decoding tests: Espressif's test material under
tests/data/idf_monitor (see its README) and GNU addr2line's stored answers."""

from __future__ import annotations

import base64
import io
import lzma
import struct
from dataclasses import dataclass
from pathlib import Path

from elftools.elf.elffile import ELFFile
from elftools.elf.segments import NoteSegment

DATA = Path(__file__).parent / "data" / "idf_monitor"
RV_DUMP = [
    "MEPC", "RA", "SP", "GP", "TP", "T0", "T1", "T2", "S0/FP", "S1",
    "A0", "A1", "A2", "A3", "A4", "A5", "A6", "A7",
    "S2", "S3", "S4", "S5", "S6", "S7", "S8", "S9", "S10", "S11",
    "T3", "T4", "T5", "T6",
]  # fmt: skip


def unpack(name: str, tmp: Path) -> Path:
    """An .xz fixture, decompressed into `tmp`."""
    out = tmp / name.removesuffix(".xz")
    if not out.exists():
        out.write_bytes(lzma.decompress((DATA / name).read_bytes()))
    return out


Chain = list[tuple[str | None, str | None, int | None]]


def addr2line_answers(name: str) -> dict[int, Chain]:
    """Parse stored `addr2line -fiaC` output: address -> inline chain."""
    return parse_addr2line(lzma.decompress((DATA / name).read_bytes()).decode())


def parse_addr2line(text: str) -> dict[int, Chain]:
    """`addr2line -fiaC` output: address -> inline chain (function, file, line)."""
    lines = text.splitlines()
    res: dict[int, Chain] = {}
    cur = 0
    i = 0
    while i < len(lines):
        if lines[i].startswith("0x") and " " not in lines[i]:
            cur = int(lines[i], 16)
            res[cur] = []
            i += 1
            continue
        name_ = lines[i].removeprefix(" (inlined by) ")
        file, _, ln = lines[i + 1].rpartition(":")
        ln = ln.split(" ")[0]
        res[cur].append(
            (
                None if name_ == "??" else name_,
                None if file in ("??", "") else file,
                int(ln) if ln.isdigit() and ln != "0" else None,
            )
        )
        i += 2
    return res


@dataclass
class CoreDump:
    registers: dict[str, int]
    stack_base: int
    stack: bytes


def c3_core_dump() -> CoreDump:
    """The crashed task of esp-coredump's ESP32-C3 test core dump (ELF
    format, base64 lines): its registers (NT_PRSTATUS) and stack (PT_LOAD)."""
    text = (DATA / "esp32c3_coredump.b64").read_text().split()
    raw = b"".join(base64.b64decode(line) for line in text)
    elf = ELFFile(io.BytesIO(raw[raw.index(b"\x7fELF") :]))
    segs = list(elf.iter_segments())
    notes = segs[0]
    assert isinstance(notes, NoteSegment)
    note = next(iter(notes.iter_notes()))
    desc = note["n_descdata"]
    desc = desc if isinstance(desc, bytes) else desc.encode("latin-1")
    regs = dict(zip(RV_DUMP, struct.unpack("<32I", desc[72 : 72 + 128]), strict=True))
    # the crashed task's TCB comes first, then its stack
    stack = segs[2]
    return CoreDump(regs, stack["p_vaddr"], stack.data())


def riscv_panic_text(first: str, dump: CoreDump, *, stack_from: int | None = None) -> list[str]:
    """The lines ESP-IDF's RISC-V panic handler prints for this state
    (panic_arch.c: register dump, then the stack from SP)."""
    lines = [first, "", "Core  0 register dump:"]
    items = [*dump.registers.items()]
    items += [("MSTATUS", 0x1881), ("MTVEC", 0x40380001), ("MCAUSE", 2), ("MTVAL", 0)]
    items += [("MHARTID", 0)]
    for i in range(0, len(items), 4):
        lines.append("".join(f"{n:<8}: 0x{v:08x}  " for n, v in items[i : i + 4]))
    lines += ["", "Stack memory:"]
    start = stack_from if stack_from is not None else dump.registers["SP"] & ~31
    end = dump.stack_base + len(dump.stack)
    for a in range(start, end, 32):
        off = a - dump.stack_base
        words = [
            int.from_bytes(dump.stack[off + k : off + k + 4], "little")
            for k in range(0, 32, 4)
            if off + k + 4 <= len(dump.stack)
        ]
        lines.append(f"{a:08x}: " + " ".join(f"0x{w:08x}" for w in words))
    return [*lines, "", "ELF file SHA256: 3c5a7b8e1f2d4c6b", "", "Rebooting..."]
