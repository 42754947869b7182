"""Crash decoding: code addresses in panics and backtraces -> function at
file:line, using the ELF from the last build (pyelftools).

Only addresses inside the ELF's executable sections are decoded, so printed
pointers and data values are never mistaken for code.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

HEX = re.compile(r"0x([0-9a-fA-F]{8})")
PANIC_START = re.compile(r"Guru Meditation Error: Core\s+\d+ panic'ed \((?P<reason>[^)]*)\)")
REG_LINE = re.compile(r"(MEPC|RA|PC)\s*:\s*0x([0-9a-fA-F]{8})")
XTENSA_BT = re.compile(r"^Backtrace:\s*(.*)$")
STACK_LINE = re.compile(r"^[0-9a-fA-F]{8}:\s+((?:0x[0-9a-fA-F]{8}\s*)+)$")
PANIC_END = ("Rebooting...", "ELF file SHA256:")
# A report that never ends (output cut, board reset by hand) must not collect
# addresses forever; the ROM banner of the next boot ends it too.
MAX_REPORT_ADDRS = 512
BOOT_BANNER = "ESP-ROM:"


@dataclass(frozen=True)
class Frame:
    address: int
    function: str | None
    file: str | None
    line: int | None
    source: str  # where the address came from: MEPC, RA, stack, backtrace

    def describe(self) -> str:
        where = f" at {self.file}:{self.line}" if self.file else ""
        return f"0x{self.address:08x}: {self.function or '??'}{where} ({self.source})"

    def as_dict(self) -> dict[str, object]:
        return {
            "address": self.address,
            "function": self.function,
            "file": self.file,
            "line": self.line,
            "source": self.source,
        }


class Symbolizer:
    def __init__(self, elf: Path) -> None:
        self.elf = Path(elf)
        self._ranges: list[tuple[int, int]] = []
        self._funcs: list[tuple[int, int, str]] = []
        self._func_starts: list[int] = []
        self._rows: list[tuple[int, str, int]] = []
        self._row_addrs: list[int] = []
        self._load()

    def _load(self) -> None:
        with self.elf.open("rb") as f:
            elf = ELFFile(f)
            for sec in elf.iter_sections():
                if sec["sh_flags"] & SH_FLAGS.SHF_EXECINSTR and sec["sh_size"]:
                    self._ranges.append((sec["sh_addr"], sec["sh_addr"] + sec["sh_size"]))
            for sec in elf.iter_sections():
                if isinstance(sec, SymbolTableSection):
                    for sym in sec.iter_symbols():
                        if sym["st_info"]["type"] == "STT_FUNC" and sym["st_value"]:
                            self._funcs.append((sym["st_value"], max(sym["st_size"], 1), sym.name))
            self._funcs.sort()
            self._func_starts = [s for s, _z, _n in self._funcs]
            if elf.has_dwarf_info():
                dwarf = elf.get_dwarf_info()
                for cu in dwarf.iter_CUs():
                    lp = dwarf.line_program_for_CU(cu)
                    if lp is None:
                        continue
                    files = lp["file_entry"]
                    dirs = lp["include_directory"]
                    version = lp.header["version"]
                    for entry in lp.get_entries():
                        st = entry.state
                        if st is None or st.end_sequence:
                            continue
                        idx = st.file if version >= 5 else st.file - 1
                        if not 0 <= idx < len(files):
                            continue
                        fe = files[idx]
                        name = fe.name.decode(errors="replace")
                        d = fe.dir_index if version >= 5 else fe.dir_index - 1
                        if not name.startswith("/") and 0 <= d < len(dirs):
                            dname = dirs[d].decode(errors="replace")
                            if dname and not dname.startswith("/"):
                                name = f"{dname}/{name}"
                        self._rows.append((st.address, name, st.line))
                self._rows.sort()
                self._row_addrs = [a for a, _f, _l in self._rows]

    def is_code(self, addr: int) -> bool:
        return any(lo <= addr < hi for lo, hi in self._ranges)

    def lookup(self, addr: int, source: str) -> Frame | None:
        if not self.is_code(addr):
            return None
        func = None
        i = bisect.bisect_right(self._func_starts, addr) - 1
        if i >= 0:
            start, size, name = self._funcs[i]
            if start <= addr < start + size:
                func = name
        file = line = None
        j = bisect.bisect_right(self._row_addrs, addr) - 1
        if j >= 0:
            _a, file, line = self._rows[j]
        return Frame(addr, func, file, line, source)


def load_symbolizer(elf: Path | None) -> Symbolizer | None:
    if elf is None or not Path(elf).is_file():
        return None
    try:
        return Symbolizer(elf)
    except (ELFError, OSError, ValueError, KeyError):
        return None


class CrashDetector:
    """Feed log lines; returns the decoded frames when a crash report ends.

    The ELF is parsed on the first crash, not on every deploy: DWARF of a
    real app takes a while and deploys are the hot path.
    """

    def __init__(self, elf: Path | None = None) -> None:
        self.elf = elf
        self._active = False
        self._reason = ""
        self._addrs: list[tuple[int, str]] = []
        self._symbolizer: Symbolizer | None = None
        self._loaded_key: tuple[str, float] | None = None

    @property
    def symbolizer(self) -> Symbolizer | None:
        if self.elf is None or not Path(self.elf).is_file():
            return None
        key = (str(self.elf), Path(self.elf).stat().st_mtime)
        if key != self._loaded_key:
            self._loaded_key = key
            self._symbolizer = load_symbolizer(self.elf)
        return self._symbolizer

    def feed(self, line: str) -> tuple[str, list[Frame]] | None:
        if not self._active and "Guru Meditation" not in line and "Backtrace:" not in line:
            return None  # the common case, at flood rates: two substring tests
        m = PANIC_START.search(line)
        if m:
            self._active, self._reason, self._addrs = True, m.group("reason"), []
            return None
        bt = XTENSA_BT.match(line.strip())
        if bt:  # Xtensa: "Backtrace: 0xPC:0xSP 0xPC:0xSP ..."
            addrs = [
                (int(pc, 16), "backtrace")
                for pc in re.findall(r"0x([0-9a-fA-F]{8}):0x", bt.group(1))
            ]
            return self._finish(self._reason or "backtrace", addrs)
        if not self._active:
            return None
        if BOOT_BANNER in line:
            self._active = False
            return self._finish(self._reason, self._addrs)
        for name, val in REG_LINE.findall(line):
            self._addrs.append((int(val, 16), name))
        sm = STACK_LINE.match(line.strip())
        if sm:
            self._addrs += [(int(v, 16), "stack") for v in HEX.findall(sm.group(1))]
        del self._addrs[MAX_REPORT_ADDRS:]
        if line.strip().startswith(PANIC_END):
            self._active = False
            return self._finish(self._reason, self._addrs)
        return None

    def _finish(self, reason: str, addrs: list[tuple[int, str]]) -> tuple[str, list[Frame]]:
        frames: list[Frame] = []
        seen: set[int] = set()
        symbolizer = self.symbolizer
        for addr, source in addrs:
            if addr in seen or symbolizer is None:
                continue
            frame = symbolizer.lookup(addr, source)
            if frame is not None:
                seen.add(addr)
                frames.append(frame)
        self._addrs = []
        return reason, frames
