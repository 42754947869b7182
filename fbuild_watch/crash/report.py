"""ESP-IDF fatal-error reports, recognised line by line in serial output.

One `PanicReport` per panic, whatever printed it: Guru Meditation (Xtensa
and RISC-V), `abort()` (RISC-V prints it with a register dump and no Guru
line), `assert failed`, `ESP_ERROR_CHECK failed`, stack overflow / stack
protection fault / stack smashing, task and interrupt watchdogs, brownout,
cache errors, double exceptions, and a bare `Backtrace:` (esp_backtrace_print).
The collector only gathers text; decoding it is `decode.py`'s job, off the
reader thread.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from fbuild_watch.termsafe import terminal_safe

_GURU = re.compile(r"Guru Meditation Error: Core\s+(\d+) panic'ed \(([^)]*)\)")
_ABORT = re.compile(r"abort\(\) was called at PC (0x[0-9a-fA-F]+) on core (\d+)")
_ASSERT = re.compile(r"(assert failed: .*|assertion \".*\" failed.*|Assertion .* failed.*)")
_ESP_ERR = re.compile(r"ESP_ERROR_CHECK failed: (.*?)(?: at (0x[0-9a-fA-F]+))?\s*$")
_OVERFLOW = re.compile(r"A stack overflow in task (.*) has been detected")
_SMASH = re.compile(r"Stack smashing protect failure!")
_TASK_WDT = re.compile(r"Task watchdog got triggered")
_BROWNOUT = re.compile(r"Brownout detector was triggered")
_DUMP = re.compile(r"Core\s+(\d+) register dump:")
_BACKTRACE = re.compile(r"^Backtrace:\s*(.*)$")
_BT_PAIR = re.compile(r"0x([0-9a-fA-F]{8}):0x([0-9a-fA-F]{8})")
_REG = re.compile(r"\b([A-Z][A-Z0-9]*(?:/[A-Z0-9]+)?)\s*:\s*0x([0-9a-fA-F]{8})")
_STACK = re.compile(r"^([0-9a-fA-F]{8}):((?:\s+0x[0-9a-fA-F]{8})+)\s*$")
_SHA = re.compile(r"ELF file SHA256:\s*([0-9a-fA-F]+)")
_DETECTED = re.compile(r"Detected in task \"(.*)\" at (0x[0-9a-fA-F]{8})")
_DEBUG_REASON = re.compile(r"Debug exception reason:\s*(.*)")
_PRINT_CPU = re.compile(r"Print CPU (\d+) \(current core\)")
# one cheap test per line in the idle state (the common case, at flood rates)
_TRIGGER = re.compile(
    r"Guru Meditation|abort\(\) was called|assert|Assertion|ESP_ERROR_CHECK failed"
    r"|stack overflow in task|Stack smashing|Task watchdog got triggered"
    r"|Brownout detector|register dump:|Backtrace:"
)
_NEW_ERROR = re.compile(
    "|".join(
        p.pattern
        for p in (_GURU, _ABORT, _ASSERT, _ESP_ERR, _OVERFLOW, _SMASH, _TASK_WDT, _BROWNOUT)
    )
)
# a report is over at any of these (the next boot's banner included)
_ENDS = ("Rebooting...", "CPU halted", "ESP-ROM:", "ets Jun", "rst:0x")
# lines that belong to a report after its backtrace/stack dump was printed
_CONTINUES = re.compile(
    r"^$|register dump:|^Backtrace:|^Stack memory:|^[0-9a-fA-F]{8}:|^[A-Z][A-Z0-9/]*\s*:\s*0x"
    r"|task_wdt|Print CPU|was running in ISR|Entering gdb stub|Setting breakpoint|CORE DUMP"
    r"|core dump|Core dump|^ELF file SHA256"
)
MAX_REPORT_LINES = 600


@dataclass
class CoreState:
    """What one core's part of the report printed."""

    registers: dict[str, int] = field(default_factory=dict)
    backtrace: list[int] = field(default_factory=list)  # Xtensa: pcs, as printed
    corrupted: bool = False  # the backtrace ended with |<-CORRUPTED
    stack_base: int | None = None  # RISC-V: the "Stack memory:" dump
    stack: bytearray = field(default_factory=bytearray)


@dataclass
class PanicReport:
    reason: str
    kind: str
    core: int | None = None
    details: list[str] = field(default_factory=list)
    sites: list[tuple[int, str]] = field(default_factory=list)  # (address, what printed it)
    cores: dict[int, CoreState] = field(default_factory=dict)
    elf_sha256: str | None = None
    lines: list[str] = field(default_factory=list)

    @property
    def crashed(self) -> CoreState:
        """The crashed core's state (the first one printed if unknown)."""
        if self.core is not None and self.core in self.cores:
            return self.cores[self.core]
        return next(iter(self.cores.values()), CoreState())

    def state(self, core: int) -> CoreState:
        return self.cores.setdefault(core, CoreState())


def kind_of(reason: str) -> str:
    r = reason.lower()
    if "interrupt wdt" in r:
        return "interrupt_watchdog"
    if "cache" in r:
        return "cache_error"
    if "double exception" in r:
        return "double_exception"
    if "stack protection" in r or "stack canary" in r:
        return "stack_overflow"
    return "exception"


class PanicCollector:
    """Feed it every line; `on_report` gets each finished report once."""

    def __init__(self, on_report: Callable[[PanicReport], None]) -> None:
        self.on_report = on_report
        self.report: PanicReport | None = None
        self._core = 0  # the core whose dump/backtrace is being printed
        self._tail = False  # a backtrace or stack dump is complete
        self._in_stack = False
        self._await_backtrace = False  # an Xtensa SHA line came before its backtrace

    def feed(self, line: str) -> None:
        rep = self.report
        if rep is None and not _TRIGGER.search(line):
            return
        # the board's text, shown as our own: no terminal controls, no colours
        text = terminal_safe(line, keep_sgr=False).strip()
        if rep is not None:
            if self._collect(rep, text):
                return
            self.finish()
        self._start(text)

    def finish(self) -> None:
        """End the report being collected (output stopped, port closed)."""
        rep, self.report = self.report, None
        self._await_backtrace = False
        if rep is not None:
            self.on_report(rep)

    # -- states ----------------------------------------------------------------------
    def _start(self, text: str) -> None:
        """An idle line: does a report begin here?"""
        rep = self._trigger(text, None)
        if rep is None:
            return
        self.report = rep
        self._core = rep.core if rep.core is not None else 0
        self._tail = self._in_stack = False
        rep.lines.append(text)
        if rep.kind == "brownout":  # nothing follows but the reset
            self.finish()
            return
        self._parse(rep, text)

    def _trigger(self, text: str, rep: PanicReport | None) -> PanicReport | None:
        """A line that names a fatal error: a new report, or (when `rep`
        is given and this line adds to it) `rep` updated."""
        m = _GURU.search(text)
        if m:
            reason = m.group(2)
            return self._merge(rep, reason, kind_of(reason), int(m.group(1)))
        m = _ABORT.search(text)
        if m:
            out = self._merge(rep, m.group(0), "abort", int(m.group(2)))
            out.sites.append((int(m.group(1), 16), "abort"))
            return out
        m = _ESP_ERR.search(text)
        if m:
            out = self._merge(rep, f"ESP_ERROR_CHECK failed: {m.group(1)}", "esp_error_check")
            if m.group(2):
                out.sites.append((int(m.group(2), 16), "ESP_ERROR_CHECK"))
            return out
        m = _ASSERT.search(text)
        if m:
            return self._merge(rep, m.group(1), "assert")
        m = _OVERFLOW.search(text)
        if m:
            return self._merge(rep, f"stack overflow in task {m.group(1)}", "stack_overflow")
        if _SMASH.search(text):
            return self._merge(rep, "stack smashing protect failure", "stack_overflow")
        if _TASK_WDT.search(text):
            return self._merge(rep, "task watchdog got triggered", "task_watchdog")
        if _BROWNOUT.search(text) and rep is None:
            return PanicReport("brownout detector was triggered", "brownout")
        if rep is None:
            m = _DUMP.search(text)
            if m:
                return PanicReport("panic", "panic", int(m.group(1)))
            if _BACKTRACE.match(text):
                return PanicReport("backtrace", "backtrace")
        return None

    @staticmethod
    def _merge(
        rep: PanicReport | None, reason: str, kind: str, core: int | None = None
    ) -> PanicReport:
        if rep is None:
            return PanicReport(reason, kind, core)
        # the first, most specific line names the panic (ESP_ERROR_CHECK,
        # then its abort(); a stack overflow, then its Guru line)
        if rep.kind in ("panic", "backtrace", "task_watchdog") and kind != "task_watchdog":
            rep.reason, rep.kind = reason, kind
        else:
            rep.details.append(reason)
        if rep.core is None:
            rep.core = core
        return rep

    def _collect(self, rep: PanicReport, text: str) -> bool:
        """A line while a report is open; False when it is not part of it
        (the report ends and the line is looked at afresh)."""
        if text.startswith(_ENDS) or _ENDS[2] in text:
            rep.lines.append(text)
            self.finish()
            return True
        if self._await_backtrace:
            # ESP-IDF < 5 on Xtensa prints the backtrace after the SHA line
            self._await_backtrace = False
            if not _BACKTRACE.match(text):
                self.finish()
                return False
            rep.lines.append(text)
            self._parse(rep, text)
            self.finish()
            return True
        m = _SHA.search(text)
        if m:
            rep.elf_sha256 = m.group(1)
            rep.lines.append(text)
            if "A0" in rep.crashed.registers and not rep.crashed.backtrace:
                self._await_backtrace = True  # one report, not a second "backtrace" one
                return True
            self.finish()
            return True
        if len(rep.lines) >= MAX_REPORT_LINES:
            return True  # a report that never ends (output cut): bounded, open until its end
        is_new = _NEW_ERROR.search(text) is not None
        if is_new and self._tail:
            return False  # a second panic after this one's dump: its own report
        if self._tail and not _CONTINUES.search(text):
            return False
        rep.lines.append(text)
        if is_new:
            self._trigger(text, rep)
        self._parse(rep, text)
        return True

    def _parse(self, rep: PanicReport, text: str) -> None:
        m = _DUMP.search(text)
        if m:
            self._core = int(m.group(1))
            rep.state(self._core)
            if rep.core is None:
                rep.core = self._core
            self._tail = self._in_stack = False
            return
        m = _PRINT_CPU.search(text)
        if m:
            self._core = int(m.group(1))
            if rep.core is None:
                rep.core = self._core
            return
        bt = _BACKTRACE.match(text)
        if bt:
            st = rep.state(self._core)
            if not st.backtrace:
                st.backtrace = [int(pc, 16) for pc, _sp in _BT_PAIR.findall(bt.group(1))]
                st.corrupted = "CORRUPTED" in bt.group(1)
            self._tail = True
            return
        if text.startswith("Stack memory:"):
            self._in_stack = True
            return
        sm = _STACK.match(text)
        if sm and self._in_stack:
            st = rep.state(self._core)
            base = int(sm.group(1), 16)
            if st.stack_base is None:
                st.stack_base = base
            if base == st.stack_base + len(st.stack):  # contiguous words only
                for w in sm.group(2).split():
                    st.stack += int(w, 16).to_bytes(4, "little")
            return
        if self._in_stack:  # the blank line (or anything) after the dump
            self._in_stack = False
            self._tail = True
        m = _DETECTED.search(text)
        if m:
            rep.sites.append((int(m.group(2), 16), f"task {m.group(1)}"))
            rep.details.append(text)
            return
        m = _DEBUG_REASON.search(text)
        if m:
            rep.details.append(text)
            if "canary" in m.group(1).lower():
                rep.kind = "stack_overflow"
            rep.reason = f"{rep.reason}: {m.group(1)}"
            return
        regs = _REG.findall(text)
        if regs and _REG.match(text):
            st = rep.state(self._core)
            for name, val in regs:
                st.registers.setdefault(name, int(val, 16))
            return
        detail = "task_wdt" in text or "EPC" in text or text.startswith(("file:", "func:", "expr"))
        if detail and text not in rep.details and text != rep.lines[0]:
            rep.details.append(text)
