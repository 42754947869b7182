"""Code address -> frames, from every symbol source in turn: the app's ELF,
then the bootloader's ELF, then the ROM's linker-script names (an address
is the first source's that holds it as code: app before bootloader, as
esp-idf-monitor asks its ELFs in order).

`Symbols.addresses(line)` is meant for every serial line at flood rates:
one `in` test for lines without "0x", one regex pass otherwise, a bisection
per candidate over the sources' code ranges, and a bounded cache of the
answers (logs repeat the same few addresses).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass

from fbuild_watch.crash.rom import RomSymbols, in_rom
from fbuild_watch.crash.symbols import Location, SymbolIndex

# an 8-digit hex number that is not the start of a longer one (no look-behind:
# it would cost a test at every character of every line)
ADDRESS = re.compile(r"0[xX]([0-9a-fA-F]{8})(?![0-9A-Za-z_])")
MAX_CACHED = 8192
MAX_PER_LINE = 16  # a hex dump line has 8; more is a flood of data, not code


@dataclass(frozen=True)
class Frame:
    address: int
    function: str | None  # for display: demangled, compiler clone suffix removed
    file: str | None  # full path, as addr2line prints it
    line: int | None
    source: str  # where the address came from: MEPC, RA, backtrace, abort, unwind, ...
    symbol: str | None = None  # the raw name (linkage name or .symtab), kept for JSON
    inlined: bool = False  # this is the caller an inlined function was expanded into
    short_file: str | None = None  # `file` relative to its build dir, for display
    origin: str = "app"  # which symbols named it: app, bootloader or rom

    def where(self) -> str:
        """`function at file:line`, as addr2line and esp-idf-monitor print it."""
        text = self.function or "??"
        if self.file:
            text += f" at {self.short_file or self.file}:{self.line or '?'}"
        if self.origin != "app":
            text += f" [{'ROM' if self.origin == 'rom' else self.origin}]"
        return text

    def describe(self) -> str:
        if self.inlined:
            return f"  (inlined by) {self.where()}"
        return f"0x{self.address:08x}: {self.where()} ({self.source})"

    def as_dict(self) -> dict[str, object]:
        return {
            "address": self.address,
            "function": self.function,
            "symbol": self.symbol,
            "file": self.file,
            "line": self.line,
            "source": self.source,
            "inlined": self.inlined,
            "origin": self.origin,
        }


@dataclass(frozen=True)
class AddressNote:
    """One code address printed in a line, decoded: its inline chain,
    innermost first (the last entry is the function that holds the code)."""

    address: int
    frames: tuple[Frame, ...]

    def lines(self) -> list[str]:
        """esp-idf-monitor's rendering, without its `--- ` prefix:
        `0x42009354: fail_once at main/test_core_dump.c:14`, then one
        `(inlined by) ...` line per caller an inline was expanded into."""
        first, *rest = self.frames
        return [
            f"0x{self.address:08x}: {first.where()}",
            *(f"(inlined by) {f.where()}" for f in rest),
        ]

    def as_dict(self) -> dict[str, object]:
        f = self.frames[0]
        return {
            "address": self.address,
            "function": f.function,
            "file": f.file,
            "line": f.line,
            "origin": f.origin,
            "inlined_by": [
                {"function": g.function, "file": g.file, "line": g.line} for g in self.frames[1:]
            ],
        }


def with_address_lines(lines: Sequence[str], notes: Sequence[Sequence[AddressNote]]) -> list[str]:
    """The lines with esp-idf-monitor's decode of each code address under
    its line (`--- 0x42009354: fail_once at main/x.c:14`). `notes` is
    parallel to `lines`; empty: none."""
    if not any(notes):
        return list(lines)
    out: list[str] = []
    for line, noted in zip(lines, notes, strict=True):
        out.append(line)
        out += [f"--- {text}" for note in noted for text in note.lines()]
    return out


def _frame(addr: int, loc: Location, source: str, inlined: bool, origin: str) -> Frame:
    return Frame(
        addr, loc.function, loc.file, loc.line, source, loc.symbol, inlined, loc.short_file, origin
    )


class Symbols:
    """The symbol sources of one board: app ELF, bootloader ELF, ROM names."""

    def __init__(
        self,
        app: SymbolIndex | None = None,
        bootloader: SymbolIndex | None = None,
        rom: RomSymbols | None = None,
    ) -> None:
        self.app = app
        self.bootloader = bootloader
        self.rom = rom if rom is not None else RomSymbols()
        self._elves = [(n, i) for n, i in (("app", app), ("bootloader", bootloader)) if i]
        # every ELF code range, merged and sorted: one bisection per candidate
        self._lo: list[int] = []
        self._hi: list[int] = []
        for lo, hi in sorted(r for _n, i in self._elves for r in i.ranges):
            if self._hi and lo <= self._hi[-1]:
                self._hi[-1] = max(self._hi[-1], hi)
            else:
                self._lo.append(lo)
                self._hi.append(hi)
        self._notes: dict[int, AddressNote | None] = {}
        self._by_text: dict[str, object] = {}  # the hex digits as printed -> note or None

    def is_code(self, addr: int) -> bool:
        """In an ELF's executable sections, or in the mask ROM."""
        i = bisect.bisect_right(self._lo, addr) - 1
        return (i >= 0 and addr < self._hi[i]) or in_rom(addr)

    def frames(self, addr: int, source: str, *, caller: bool = False) -> list[Frame]:
        """The inline chain at `addr`, innermost first; [] when no source
        holds it as code. A `caller` address is a return address: looked
        up one byte back, in the call. A ROM address gives one frame, its
        function named when the ROM scripts name it."""
        look = addr - 1 if caller else addr
        for origin, index in self._elves:
            chain = index.locate(look)
            if chain:
                return [_frame(addr, loc, source, i > 0, origin) for i, loc in enumerate(chain)]
        if in_rom(look):
            name = self.rom.lookup(look)
            text = str(name) if name is not None else None
            return [
                Frame(addr, text, None, None, source, name.name if name else None, origin="rom")
            ]
        return []

    def note(self, addr: int) -> AddressNote | None:
        """`addr` decoded for a log line, or None when it is not code any
        source can name (an unnamed ROM address says nothing a reader could
        use, and register dumps are full of them)."""
        if addr in self._notes:
            return self._notes[addr]
        found = self.frames(addr, "line") if self.is_code(addr) else []
        note = AddressNote(addr, tuple(found)) if found and found[0].function else None
        if len(self._notes) >= MAX_CACHED:
            self._notes.clear()  # logs repeat a few addresses: refilled at once
        self._notes[addr] = note
        return note

    def addresses(self, line: str) -> list[AddressNote]:
        """Every code address printed in `line`, decoded, each once, in the
        order printed (data pointers and values are left alone)."""
        if "0x" not in line and "0X" not in line:
            return []
        out: list[AddressNote] = []
        by_text = self._by_text
        for h in ADDRESS.findall(line)[:MAX_PER_LINE]:
            note = by_text.get(h, _UNSEEN)
            if note is _UNSEEN:
                if len(by_text) >= MAX_CACHED:
                    by_text.clear()
                note = by_text[h] = self.note(int(h, 16))
            if isinstance(note, AddressNote) and all(n is not note for n in out):
                out.append(note)
        return out


_UNSEEN = object()


__all__ = ["ADDRESS", "AddressNote", "Frame", "Symbols"]
