"""RISC-V stack unwinding with the ELF's call-frame information, as gdb
does it: from the panic's register dump (MEPC, RA, SP, S0, ...) and the
printed stack memory, each caller's return address and stack pointer come
from the CFI rules of the function it is in. A word that no rule points at
is never a frame, so stale stack contents cannot appear; where the rules
need memory that was not printed, or there is no CFI, unwinding stops.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from elftools.common.exceptions import DWARFError, ELFParseError
from elftools.dwarf.callframe import CIE, FDE, CFARule, RegisterRule
from elftools.dwarf.dwarfinfo import DWARFInfo

MAX_FRAMES = 64
SP = 2
# ESP-IDF register dump labels -> DWARF register numbers (x0..x31)
DUMP_TO_DWARF = {
    "RA": 1,
    "SP": 2,
    "GP": 3,
    "TP": 4,
    "T0": 5,
    "T1": 6,
    "T2": 7,
    "S0/FP": 8,
    "S0": 8,
    "FP": 8,
    "S1": 9,
    **{f"A{i}": 10 + i for i in range(8)},
    **{f"S{i}": 16 + i for i in range(2, 12)},
    **{f"T{i}": 25 + i for i in range(3, 7)},
}

# rule kinds in the index (plain ints, JSON-friendly)
_OFFSET, _VAL_OFFSET, _REGISTER, _SAME, _UNDEF = range(5)
_KINDS = {
    RegisterRule.OFFSET: _OFFSET,
    RegisterRule.VAL_OFFSET: _VAL_OFFSET,
    RegisterRule.REGISTER: _REGISTER,
    RegisterRule.SAME_VALUE: _SAME,
    RegisterRule.UNDEFINED: _UNDEF,
}


def cfi_table(dwarf: DWARFInfo) -> list[list[Any]]:
    """Every FDE as [lo, hi, ra_column, rows]; a row is
    [pc, cfa_reg, cfa_offset, [[reg, kind, arg], ...]] (cfa_reg -1 when the
    CFA is an expression: unwinding stops there). .debug_frame first, then
    .eh_frame for code it does not cover."""
    out: list[list[Any]] = []
    sources: list[Callable[[], Iterable[Any]]] = []
    if dwarf.has_CFI():
        sources.append(dwarf.CFI_entries)
    if dwarf.has_EH_CFI():
        sources.append(dwarf.EH_CFI_entries)
    for read in sources:
        try:
            entries = list(read())
        except (ELFParseError, DWARFError, ValueError, KeyError):
            continue  # unreadable (or stripped to NOBITS): frames stop at it
        for fde in entries:
            if not isinstance(fde, FDE):
                continue
            lo = fde.header["initial_location"]
            hi = lo + fde.header["address_range"]
            if not lo or hi <= lo:
                continue  # code the linker dropped
            cie = fde.cie
            ra_col = cie.header["return_address_register"] if isinstance(cie, CIE) else 1
            rows = []
            for line in fde.get_decoded().table:
                cfa: CFARule = line["cfa"]
                rules = [
                    [reg, _KINDS[r.type], r.arg if isinstance(r.arg, int) else 0]
                    for reg, r in line.items()
                    if isinstance(reg, int) and r.type in _KINDS
                ]
                cfa_reg = cfa.reg if cfa.expr is None and cfa.reg is not None else -1
                rows.append([line["pc"], cfa_reg, cfa.offset or 0, rules])
            out.append([lo, hi, ra_col, rows])
    out.sort(key=lambda f: (f[0], -f[1]))
    return out


@dataclass(frozen=True)
class UnwoundFrame:
    pc: int  # MEPC for the first frame, a return address for the others
    sp: int
    caller: bool  # pc is a return address (symbolize pc - 1)
    how: str = "CFI"  # MEPC (the crash point), CFI, or RA (the register, no CFI there)


class Unwinder:
    def __init__(self, fdes: list[list[Any]]) -> None:
        self.fdes = fdes
        self._los = [f[0] for f in fdes]

    def fde_for(self, pc: int) -> list[Any] | None:
        # FDEs do not overlap: only the nearest start can hold pc
        i = bisect.bisect_right(self._los, pc) - 1
        if i >= 0 and self.fdes[i][0] <= pc < self.fdes[i][1]:
            return self.fdes[i]
        return None

    def unwind(
        self,
        pc: int,
        registers: dict[int, int],
        stack_base: int | None,
        stack: bytes,
        is_code: Any,
    ) -> list[UnwoundFrame]:
        """Frames from the crash point outwards; the first is `pc` itself."""
        regs = dict(registers)
        frames = [UnwoundFrame(pc, regs.get(SP, 0), caller=False, how="MEPC")]

        def word(addr: int) -> int | None:
            if stack_base is None or addr % 4:
                return None
            off = addr - stack_base
            if off >= 0 and off + 4 <= len(stack):
                return int.from_bytes(stack[off : off + 4], "little")
            return None

        caller = False
        while len(frames) < MAX_FRAMES:
            look = pc - 1 if caller else pc
            fde = self.fde_for(look)
            if fde is None:
                # no CFI (hand-written assembly): the crash point's RA
                # register is still a real caller, but nothing past it is
                ra = regs.get(1)
                if not caller and ra and is_code(ra - 1):
                    frames.append(UnwoundFrame(ra, regs.get(SP, 0), caller=True, how="RA"))
                break
            _lo, _hi, ra_col, rows = fde
            row = None
            for r in rows:
                if r[0] <= look:
                    row = r
                else:
                    break
            if row is None or row[1] < 0 or row[1] not in regs:
                break
            cfa = regs[row[1]] + row[2]
            new = dict(regs)
            ok = True
            for reg, kind, arg in row[3]:
                if kind == _OFFSET:
                    v = word(cfa + arg)
                    if v is None:
                        new.pop(reg, None)
                        if reg == ra_col:
                            ok = False
                    else:
                        new[reg] = v
                elif kind == _VAL_OFFSET:
                    new[reg] = cfa + arg
                elif kind == _REGISTER:
                    if arg in regs:
                        new[reg] = regs[arg]
                    else:
                        new.pop(reg, None)
                elif kind == _UNDEF:
                    new.pop(reg, None)
            if not ok or ra_col not in new:
                break  # the return address is in memory that was not printed
            new[SP] = cfa
            ra = new[ra_col]
            if ra == 0 or not is_code(ra - 1):
                break  # the outermost frame (a task's entry returns to 0)
            if cfa <= regs.get(SP, 0) and ra == pc:
                break  # no progress: a corrupted frame
            pc, regs, caller = ra, new, True
            frames.append(UnwoundFrame(pc, cfa, caller=True))
        return frames


def dump_registers(named: dict[str, int]) -> dict[int, int]:
    """An ESP-IDF register dump's values keyed by DWARF register number."""
    return {DUMP_TO_DWARF[k]: v for k, v in named.items() if k in DUMP_TO_DWARF}
