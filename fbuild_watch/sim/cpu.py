"""Runs ESP32-C3 app code: unicorn's RV32IMC with the C3 memory map.

Peripherals are callbacks into a `CpuHost` (the board): UART0 and the
USB-Serial/JTAG FIFO to the serial stream, SYSTIMER from the board's clock,
GPIO out/enable, the RTC software-reset bit, eFuse reads. The watchdogs are
the board's (`Watchdogs`, shared with the ROM loader); the mask ROM's
functions are `RomFunctions`. Any other peripheral register stores what is
written and reads it back.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

from unicorn import (
    UC_ARCH_RISCV,
    UC_HOOK_INTR,
    UC_HOOK_MEM_UNMAPPED,
    UC_MEM_FETCH_UNMAPPED,
    UC_MEM_WRITE_UNMAPPED,
    UC_MODE_RISCV32,
    UC_PROT_ALL,
    UC_PROT_EXEC,
    UC_PROT_READ,
    Uc,
    UcError,
)
from unicorn import riscv_const as rv

from fbuild_watch.sim.rom_functions import RomFunctions
from fbuild_watch.sim.watchdog import Watchdogs

# name, start, end, protection
MEMORY_MAP = (
    ("DROM", 0x3C000000, 0x3C800000, UC_PROT_READ),
    ("DRAM", 0x3FC80000, 0x3FCE0000, UC_PROT_ALL),
    ("IROM_MASK", 0x40000000, 0x40060000, UC_PROT_READ | UC_PROT_EXEC),
    ("IRAM", 0x4037C000, 0x403E0000, UC_PROT_ALL),
    ("IROM", 0x42000000, 0x42800000, UC_PROT_READ | UC_PROT_EXEC),
    ("RTC", 0x50000000, 0x50002000, UC_PROT_ALL),
)
PERIPH_BASE = 0x60000000
PERIPH_SIZE = 0x000D1000

UART0 = 0x60000000
UART_FIFO = 0x00
UART_STATUS = 0x1C
GPIO = 0x60004000
RTC_CNTL = 0x60008000
RTC_SW_SYS_RST = 1 << 31
RTC_SW_PROCPU_RST = 1 << 5  # RTC_CNTL_SW_PROCPU_RST: a CPU-only software reset
RTC_RESET_STATE = RTC_CNTL + 0x38
EFUSE = 0x60008800
SYSTIMER = 0x60023000
SYSTIMER_OP = 0x04
SYSTIMER_UPDATE = 1 << 30
SYSTIMER_VALID = 1 << 29
SYSTIMER_HI = 0x40
SYSTIMER_LO = 0x44
USB_JTAG = 0x60043000
USB_EP1 = 0x00
USB_EP1_CONF = 0x04
SYSTIMER_HZ = 16_000_000
INITIAL_SP = 0x3FCDE000  # the 2nd stage bootloader's stack, still live at entry

MCAUSE_NAMES = {
    0: "Instruction address misaligned",
    1: "Instruction access fault",
    2: "Illegal instruction",
    3: "Breakpoint",
    4: "Load address misaligned",
    5: "Load access fault",
    6: "Store address misaligned",
    7: "Store access fault",
    11: "Environment call from M-mode",
}

# ESP-IDF register dump order and labels (MEPC is the faulting pc)
_DUMP_NAMES = [
    "MEPC",
    "RA",
    "SP",
    "GP",
    "TP",
    "T0",
    "T1",
    "T2",
    "S0/FP",
    "S1",
    "A0",
    "A1",
    "A2",
    "A3",
    "A4",
    "A5",
    "A6",
    "A7",
    "S2",
    "S3",
    "S4",
    "S5",
    "S6",
    "S7",
    "S8",
    "S9",
    "S10",
    "S11",
    "T3",
    "T4",
    "T5",
    "T6",
]
DUMP_REGS: tuple[tuple[str, int | None], ...] = tuple(
    (n, None if n == "MEPC" else getattr(rv, f"UC_RISCV_REG_{n.split('/')[0]}"))
    for n in _DUMP_NAMES
)


class CpuHost(Protocol):
    def uart_tx(self, byte: int) -> None: ...
    def uart_rx(self) -> int | None: ...
    def uart_rx_count(self) -> int: ...
    def uart_tx_backlog(self) -> int: ...
    def clock_s(self) -> float: ...
    def efuse_read(self, addr: int) -> int: ...
    def gpio_changed(self, out: int, enable: int) -> None: ...


class SegmentError(Exception):
    pass


@dataclass(frozen=True)
class Fault:
    mcause: int
    pc: int
    mtval: int
    regs: dict[str, int]
    stack: bytes

    @property
    def name(self) -> str:
        return MCAUSE_NAMES.get(self.mcause, f"Exception {self.mcause}")


@dataclass(frozen=True)
class SliceResult:
    kind: str  # "ran", "idle", "fault", "reset"
    fault: Fault | None = None
    reason: str = ""  # "reset": the reset reason key (boot.RESET_REASONS)


_EBREAKS = (b"\x73\x00\x10\x00", b"\x02\x90")  # ebreak, c.ebreak
# unicorn's interrupt hook sees the pc 4 bytes past the faulting instruction
# whatever its length (it advances pc as for an ecall it could resume after)
_INTR_PC_SKEW = 4
_UNICORN_ECALL_U = 8  # unicorn reports ecall as from U-mode; the C3 runs in M-mode


_SELF_JUMPS = (b"\x01\xa0", b"\x6f\x00\x00\x00")  # c.j . / jal x0, .
# A firmware busy-waiting on SYSTIMER: after this many timer reads with no
# other peripheral access, sleep NAP_S of real time (the clock is real time,
# so delays still end when they should, within about a millisecond).
_POLLS_BEFORE_NAP = 16
NAP_S = 0.001
# A slice that naps ends after this much real time, so the board delivers
# UART input and checks its watchdogs while the firmware busy-waits.
SLICE_NAP_LIMIT_S = 0.02


class Cpu:
    def __init__(
        self,
        host: CpuHost,
        segments: list[tuple[int, bytes]],
        entry: int,
        *,
        watchdogs: Watchdogs | None = None,
        reset_cause: int = 1,
    ) -> None:
        self.host = host
        self.watchdogs = watchdogs or Watchdogs()
        self.reset_cause = reset_cause  # ROM RESET_REASON code, for the app to read
        self.uc = Uc(UC_ARCH_RISCV, UC_MODE_RISCV32)
        for _name, start, end, prot in MEMORY_MAP:
            self.uc.mem_map(start, end - start, prot)
        for addr, data in segments:
            if not any(s <= addr and addr + len(data) <= e for _n, s, e, _p in MEMORY_MAP):
                raise SegmentError(f"segment 0x{addr:08x}+0x{len(data):x} is outside RAM/flash")
            self.uc.mem_write(addr, data)
        self.uc.mmio_map(PERIPH_BASE, PERIPH_SIZE, self._mmio_read, None, self._mmio_write, None)
        self.uc.hook_add(UC_HOOK_MEM_UNMAPPED, self._on_unmapped)
        self.uc.hook_add(UC_HOOK_INTR, self._on_intr)
        self.rom = RomFunctions(self)
        self.rom.install(self.uc)  # after the segments: ROM is not loadable
        self.uc.reg_write(rv.UC_RISCV_REG_SP, INITIAL_SP)
        self.pc = entry
        self.regs: dict[int, int] = {}
        self.gpio_out = 0
        self.gpio_enable = 0
        self._latched = 0
        self._polls = 0
        self.naps = 0  # busy-wait polls turned into real sleeps (host CPU spared)
        self._fault: tuple[int, int] | None = None  # (mcause, mtval)
        self._fault_pc: int | None = None  # exact pc when the hook's pc is skewed
        self._reset_requested = ""  # the reason key once the firmware asked for a reset
        self._slice_t0 = 0.0
        self.stop_requested = False  # set by the board (EN low, reset): leave the slice early

    # -- running ---------------------------------------------------------
    def run_slice(self, count: int = 200_000) -> SliceResult:
        self._fault = None
        self._fault_pc = None
        self._slice_t0 = time.monotonic()
        start_pc = self.pc
        try:
            self.uc.emu_start(self.pc, 0xFFFFFFFF, count=count)
        except UcError:
            if self._fault is None:
                # unicorn stops on ebreak without the interrupt hook
                pc = self.uc.reg_read(rv.UC_RISCV_REG_PC)
                self._fault = (3 if self._is_ebreak(pc) else 2, 0)
        self.pc = self.uc.reg_read(rv.UC_RISCV_REG_PC)
        if self._fault_pc is not None:
            self.pc = self._fault_pc
        if self._reset_requested:
            return SliceResult("reset", reason=self._reset_requested)
        if self._fault is not None:
            return SliceResult("fault", self._make_fault(*self._fault))
        if self.pc == start_pc and self._is_self_jump(self.pc):
            return SliceResult("idle")
        return SliceResult("ran")

    def _is_ebreak(self, pc: int) -> bool:
        try:
            code = bytes(self.uc.mem_read(pc, 4))
        except UcError:
            return False
        return code == _EBREAKS[0] or code[:2] == _EBREAKS[1]

    def request_reset(self, reason: str) -> None:
        """The firmware reset the chip (RTC register or ROM software_reset)."""
        self._reset_requested = reason
        self.uc.emu_stop()

    # RomHost: the ROM's UART functions reach the same console
    def uart_tx(self, byte: int) -> None:
        self.host.uart_tx(byte)

    def uart_rx(self) -> int | None:
        return self.host.uart_rx()

    def uart_tx_backlog(self) -> int:
        return self.host.uart_tx_backlog()

    def _is_self_jump(self, pc: int) -> bool:
        try:
            code = bytes(self.uc.mem_read(pc, 4))
        except UcError:
            return False
        return code[:2] == _SELF_JUMPS[0] or code == _SELF_JUMPS[1]

    def _make_fault(self, mcause: int, mtval: int) -> Fault:
        regs = {"MEPC": self.pc}
        for name, reg in DUMP_REGS[1:]:
            assert reg is not None
            regs[name] = self.uc.reg_read(reg)
        sp = regs["SP"]
        try:
            stack = bytes(self.uc.mem_read(sp, 256))
        except UcError:
            stack = b""
        return Fault(mcause, self.pc, mtval, regs, stack)

    def _on_unmapped(
        self, uc: Any, access: int, address: int, size: int, value: int, _ud: Any
    ) -> bool:
        if access == UC_MEM_FETCH_UNMAPPED:
            self._fault = (1, address)
        elif access == UC_MEM_WRITE_UNMAPPED:
            self._fault = (7, address)
        else:
            self._fault = (5, address)
        return False

    def _on_intr(self, uc: Any, intno: int, _ud: Any) -> None:
        self._fault_pc = (uc.reg_read(rv.UC_RISCV_REG_PC) - _INTR_PC_SKEW) & 0xFFFFFFFF
        self._fault = (11 if intno == _UNICORN_ECALL_U else intno, 0)
        uc.emu_stop()

    # -- peripherals -----------------------------------------------------
    def _mmio_read(self, uc: Any, offset: int, size: int, _ud: Any) -> int:
        addr = PERIPH_BASE + offset
        if self.stop_requested:
            uc.emu_stop()
        if addr == SYSTIMER + SYSTIMER_OP:
            return SYSTIMER_VALID
        if addr in (SYSTIMER + SYSTIMER_LO, SYSTIMER + SYSTIMER_HI):
            self._polls += 1
            if self._polls >= _POLLS_BEFORE_NAP:
                # A busy-wait on the timer: let real time pass instead of
                # burning a host core (the firmware sees the same clock).
                self._polls = 0
                self.naps += 1
                time.sleep(NAP_S)
                if time.monotonic() - self._slice_t0 > SLICE_NAP_LIMIT_S:
                    uc.emu_stop()
            if addr == SYSTIMER + SYSTIMER_LO:
                return self._latched & 0xFFFFFFFF
            return (self._latched >> 32) & 0xFFFFF
        self._polls = 0
        if addr == UART0 + UART_FIFO:
            b = self.host.uart_rx()
            return 0 if b is None else b
        if addr == UART0 + UART_STATUS:
            return (self.host.uart_rx_count() & 0x3FF) | (
                (self.host.uart_tx_backlog() & 0x3FF) << 16
            )
        if addr == USB_JTAG + USB_EP1_CONF:
            return 0b10  # SERIAL_IN_EP_DATA_FREE
        if EFUSE <= addr < EFUSE + 0x200:
            return self.host.efuse_read(addr)
        if Watchdogs.owns(addr):
            return self.watchdogs.read(addr)
        if addr == RTC_RESET_STATE:
            return self.reset_cause & 0x3F
        if addr == GPIO + 0x04:
            return self.gpio_out
        if addr == GPIO + 0x20:
            return self.gpio_enable
        return self.regs.get(addr, 0)

    def _mmio_write(self, uc: Any, offset: int, size: int, value: int, _ud: Any) -> None:
        addr = PERIPH_BASE + offset
        if self.stop_requested:
            uc.emu_stop()
        if addr == SYSTIMER + SYSTIMER_OP:
            # latching the timer is part of a busy-wait's poll, not other work
            if value & SYSTIMER_UPDATE:
                self._latched = int(self.host.clock_s() * SYSTIMER_HZ)
            return
        self._polls = 0
        if addr == UART0 + UART_FIFO or addr == USB_JTAG + USB_EP1:
            self.host.uart_tx(value & 0xFF)
            return
        if GPIO <= addr < GPIO + 0x30:
            self._gpio_write(addr - GPIO, value)
            return
        if addr == RTC_CNTL and value & (RTC_SW_SYS_RST | RTC_SW_PROCPU_RST):
            self.request_reset("sw_sys" if value & RTC_SW_SYS_RST else "sw_cpu")
            return
        if Watchdogs.owns(addr):
            self.watchdogs.write(addr, value)
            return
        self.regs[addr] = value

    def _gpio_write(self, off: int, value: int) -> None:
        out, en = self.gpio_out, self.gpio_enable
        if off == 0x04:
            out = value
        elif off == 0x08:
            out |= value
        elif off == 0x0C:
            out &= ~value
        elif off == 0x20:
            en = value
        elif off == 0x24:
            en |= value
        elif off == 0x28:
            en &= ~value
        if (out, en) != (self.gpio_out, self.gpio_enable):
            self.gpio_out, self.gpio_enable = out & 0x3FFFFF, en & 0x3FFFFF
            self.host.gpio_changed(self.gpio_out, self.gpio_enable)


def format_panic(fault: Fault, elf_sha256: str | None) -> str:
    """ESP-IDF's RISC-V panic output (panic_handler / panic_arch)."""
    lines = [
        f"Guru Meditation Error: Core  0 panic'ed ({fault.name}). Exception was unhandled.",
        "",
        "Core  0 register dump:",
    ]
    items = [(name, fault.regs[name]) for name, _ in DUMP_REGS]
    items += [
        ("MSTATUS", 0x00001881),
        ("MTVEC", 0x40380001),
        ("MCAUSE", fault.mcause),
        ("MTVAL", fault.mtval),
        ("MHARTID", 0),
    ]
    for i in range(0, len(items), 4):
        lines.append("".join(f"{n:<8}: 0x{v:08x}  " for n, v in items[i : i + 4]))
    lines += ["", "Stack memory:"]
    sp = fault.regs["SP"]
    for off in range(0, len(fault.stack), 32):
        words = fault.stack[off : off + 32]
        vals = " ".join(
            f"0x{int.from_bytes(words[i : i + 4], 'little'):08x}" for i in range(0, len(words), 4)
        )
        lines.append(f"{sp + off:08x}: {vals}")
    lines += [""]
    if elf_sha256:
        lines += [f"ELF file SHA256: {elf_sha256[:16]}", ""]
    lines += ["Rebooting..."]
    return "\r\n".join(lines) + "\r\n"
