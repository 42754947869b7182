"""The ESP32-C3 mask ROM functions that RAM apps and simple firmware call.

Each function sits at its real ROM address (ESP-IDF
components/esp_rom/esp32c3/ld/esp32c3.rom.ld, esp32c3.rom.newlib.ld and
esp32c3.rom.libc-suboptimal_for_misaligned_mem.ld, commit 102122904ade).
The address holds a `c.jr ra` parcel so the return runs natively; a code
hook over the ROM range only (never over app code, which stays at full
speed) does the function's work in Python first and sets a0. A ROM address
with no model here holds zeros: calling it is an illegal instruction there,
with MEPC at that address, which says which function is missing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from unicorn import UC_HOOK_CODE, Uc, UcError
from unicorn import riscv_const as rv

from fbuild_watch.sim.watchdog import Watchdogs

ROM_START = 0x40000000
ROM_END = 0x40060000
_RET = b"\x82\x80"  # c.jr ra

ETS_OK = 0
ETS_FAILED = 1

_ARG_REGS = (
    rv.UC_RISCV_REG_A0,
    rv.UC_RISCV_REG_A1,
    rv.UC_RISCV_REG_A2,
    rv.UC_RISCV_REG_A3,
    rv.UC_RISCV_REG_A4,
    rv.UC_RISCV_REG_A5,
    rv.UC_RISCV_REG_A6,
    rv.UC_RISCV_REG_A7,
)
_MAX_STR = 4096
_DELAY_SLICE_S = 0.01  # a long ets_delay_us still notices a reset this often


class RomHost(Protocol):
    """What the ROM functions need from the CPU around them."""

    uc: Uc
    stop_requested: bool
    reset_cause: int  # the ROM's RESET_REASON code of the last reset
    watchdogs: Watchdogs

    def uart_tx(self, byte: int) -> None: ...
    def uart_rx(self) -> int | None: ...
    def uart_tx_backlog(self) -> int: ...
    def request_reset(self, reason: str) -> None: ...


class _Args:
    """Integer arguments of a call in the RISC-V ilp32 convention: a0..a7,
    then the caller's stack (where varargs past a7 go)."""

    def __init__(self, uc: Uc, first: int = 0) -> None:
        self.uc = uc
        self.i = first
        self.sp = uc.reg_read(rv.UC_RISCV_REG_SP)

    def next(self) -> int:
        i = self.i
        self.i += 1
        if i < len(_ARG_REGS):
            return int(self.uc.reg_read(_ARG_REGS[i]))
        addr = self.sp + 4 * (i - len(_ARG_REGS))
        return int.from_bytes(self.uc.mem_read(addr, 4), "little")

    def next64(self) -> int:
        if self.i % 2:  # 64-bit varargs take an aligned register pair
            self.i += 1
        lo = self.next()
        return lo | (self.next() << 32)


def read_cstr(uc: Uc, addr: int, limit: int = _MAX_STR) -> bytes:
    out = bytearray()
    while len(out) < limit:
        chunk = bytes(uc.mem_read(addr + len(out), min(64, limit - len(out))))
        nul = chunk.find(b"\0")
        if nul >= 0:
            out += chunk[:nul]
            break
        out += chunk
    return bytes(out)


def _safe_cstr(uc: Uc, addr: int) -> bytes:
    try:
        return read_cstr(uc, addr)
    except UcError:
        return b"(bad ptr)"


def format_printf(fmt: bytes, args: _Args, uc: Uc) -> bytes:
    """ets_printf's formatting: flags '-' and '0', a width, 'l'/'ll', and
    d i u x X o c s p %."""
    out = bytearray()
    i = 0
    n = len(fmt)
    while i < n:
        ch = fmt[i]
        i += 1
        if ch != 0x25:  # '%'
            out.append(ch)
            continue
        left = zero = False
        while i < n and fmt[i] in b"-0":
            left |= fmt[i] == 0x2D
            zero |= fmt[i] == 0x30
            i += 1
        width = 0
        while i < n and 0x30 <= fmt[i] <= 0x39:
            width = width * 10 + fmt[i] - 0x30
            i += 1
        longs = 0
        while i < n and fmt[i] == 0x6C:  # 'l'
            longs += 1
            i += 1
        if i >= n:
            break
        conv = chr(fmt[i])
        i += 1
        if conv == "%":
            out.append(0x25)
            continue
        if conv == "s":
            text = _safe_cstr(uc, args.next())
        elif conv == "c":
            text = bytes([args.next() & 0xFF])
        elif conv in "diuxXop":
            value = args.next64() if longs >= 2 else args.next()
            bits = 64 if longs >= 2 else 32
            if conv in "di" and value >> (bits - 1):
                value -= 1 << bits
            if conv in "di" or conv == "u":
                text = str(value).encode()
            elif conv == "o":
                text = f"{value:o}".encode()
            elif conv == "X":
                text = f"{value:X}".encode()
            elif conv == "p":
                text = f"0x{value:08x}".encode()
            else:
                text = f"{value:x}".encode()
        else:  # unknown conversion: printed as written
            text = b"%" + conv.encode()
        pad = max(0, width - len(text))
        if left:
            out += text + b" " * pad
        elif zero and conv not in "sc":
            sign = text[:1] if text[:1] == b"-" else b""
            out += sign + b"0" * pad + text[len(sign) :]
        else:
            out += b" " * pad + text
    return bytes(out)


class RomFunctions:
    """The ROM's functions on one CPU: installed into its memory and hooked."""

    def __init__(self, host: RomHost) -> None:
        self.host = host
        self.putc1: int | None = _PUTC_UART  # ets_install_putc1 target (None: off)
        self.putc2: int | None = None
        self.ticks_per_us = 160  # ets_update_cpu_frequency; the app runs at 160 MHz
        self.calls: dict[str, int] = {}
        self._table: dict[int, tuple[str, Callable[[], int | None]]] = {
            addr: (name, getattr(self, f"_{name}")) for name, addr in ROM_FUNCTIONS.items()
        }

    def install(self, uc: Uc) -> None:
        for addr in self._table:
            uc.mem_write(addr, _RET)
        uc.hook_add(UC_HOOK_CODE, self._on_code, begin=ROM_START, end=ROM_END - 1)

    def _on_code(self, uc: Any, address: int, size: int, _ud: Any) -> None:
        entry = self._table.get(address)
        if entry is None:
            return  # the `ret` parcel itself, or unmodelled ROM code
        name, fn = entry
        self.calls[name] = self.calls.get(name, 0) + 1
        result = fn()
        if result is not None:
            uc.reg_write(rv.UC_RISCV_REG_A0, result & 0xFFFFFFFF)

    # -- helpers ------------------------------------------------------------
    def _arg(self, i: int) -> int:
        return int(self.host.uc.reg_read(_ARG_REGS[i]))

    def _emit(self, data: bytes) -> None:
        if self.putc1 is None:
            return
        # A putc1 installed by the app is app code; its bytes reach the same
        # console (UART0 or USB-Serial/JTAG) as ROM output does here.
        for b in data:
            self.host.uart_tx(b)

    # -- printf family --------------------------------------------------------
    def _ets_printf(self) -> int:
        uc = self.host.uc
        args = _Args(uc, first=1)
        text = format_printf(_safe_cstr(uc, self._arg(0)), args, uc)
        self._emit(text)
        return len(text)

    def _ets_install_putc1(self) -> None:
        fn = self._arg(0)
        self.putc1 = fn or None

    def _ets_install_putc2(self) -> None:
        fn = self._arg(0)
        self.putc2 = fn or None

    def _ets_install_uart_printf(self) -> None:
        self.putc1 = _PUTC_UART

    # -- time -----------------------------------------------------------------
    def _ets_delay_us(self) -> None:
        end = time.monotonic() + self._arg(0) / 1e6
        # a reset (EN, or a watchdog the delay starves) ends the wait early
        while not self.host.stop_requested and self.host.watchdogs.expired() is None:
            left = end - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, _DELAY_SLICE_S))
        self.host.uc.emu_stop()

    def _ets_get_cpu_frequency(self) -> int:
        return self.ticks_per_us

    def _ets_update_cpu_frequency(self) -> None:
        self.ticks_per_us = self._arg(0)

    # -- UART -----------------------------------------------------------------
    def _uart_tx_one_char(self) -> int:
        self.host.uart_tx(self._arg(0) & 0xFF)
        return ETS_OK

    def _uart_rx_one_char(self) -> int:
        b = self.host.uart_rx()
        if b is None:
            return ETS_FAILED
        self.host.uc.mem_write(self._arg(0), bytes([b]))
        return ETS_OK

    def _uart_tx_flush(self) -> None:
        self._drain()

    def _uart_tx_wait_idle(self) -> None:
        self._drain()

    def _drain(self) -> None:
        while self.host.uart_tx_backlog() and not self.host.stop_requested:
            time.sleep(0.001)

    # -- reset ------------------------------------------------------------------
    def _rtc_get_reset_reason(self) -> int:
        return self.host.reset_cause

    def _software_reset(self) -> None:
        self.host.request_reset("sw_sys")

    def _software_reset_cpu(self) -> None:
        self.host.request_reset("sw_cpu")

    # -- libc in ROM ------------------------------------------------------------
    def _memset(self) -> int:
        dst, c, n = self._arg(0), self._arg(1), self._arg(2)
        if n:
            self.host.uc.mem_write(dst, bytes([c & 0xFF]) * n)
        return dst

    def _bzero(self) -> None:
        dst, n = self._arg(0), self._arg(1)
        if n:
            self.host.uc.mem_write(dst, bytes(n))

    def _memcpy(self) -> int:
        uc = self.host.uc
        dst, src, n = self._arg(0), self._arg(1), self._arg(2)
        if n:
            uc.mem_write(dst, bytes(uc.mem_read(src, n)))
        return dst

    def _memmove(self) -> int:
        return self._memcpy()  # the whole source is read before any write

    def _memcmp(self) -> int:
        uc = self.host.uc
        a, b, n = self._arg(0), self._arg(1), self._arg(2)
        return _cmp(bytes(uc.mem_read(a, n)) if n else b"", bytes(uc.mem_read(b, n)) if n else b"")

    def _strlen(self) -> int:
        return len(read_cstr(self.host.uc, self._arg(0), 1 << 20))

    def _strcpy(self) -> int:
        uc = self.host.uc
        dst, src = self._arg(0), self._arg(1)
        uc.mem_write(dst, read_cstr(uc, src, 1 << 20) + b"\0")
        return dst

    def _strncpy(self) -> int:
        uc = self.host.uc
        dst, src, n = self._arg(0), self._arg(1), self._arg(2)
        if n:
            uc.mem_write(dst, read_cstr(uc, src, n).ljust(n, b"\0"))
        return dst

    def _strcmp(self) -> int:
        uc = self.host.uc
        a = read_cstr(uc, self._arg(0), 1 << 20) + b"\0"
        return _cmp(a, read_cstr(uc, self._arg(1), 1 << 20) + b"\0")

    def _strncmp(self) -> int:
        uc = self.host.uc
        n = self._arg(2)
        a = (read_cstr(uc, self._arg(0), n) + b"\0")[:n]
        b = (read_cstr(uc, self._arg(1), n) + b"\0")[:n]
        return _cmp(a, b)


def _cmp(a: bytes, b: bytes) -> int:
    for x, y in zip(a, b, strict=False):
        if x != y:
            return x - y
    return 0


# Addresses from ESP-IDF's esp32c3.rom.ld (ROM ECO0 onwards). The esp_rom_*
# names ESP-IDF code calls are aliases of these (esp32c3.rom.api.ld):
# esp_rom_printf = ets_printf, esp_rom_delay_us = ets_delay_us,
# esp_rom_output_tx_one_char / esp_rom_uart_tx_one_char = uart_tx_one_char,
# esp_rom_output_rx_one_char = uart_rx_one_char, esp_rom_output_flush_tx =
# uart_tx_flush, esp_rom_output_tx_wait_idle = uart_tx_wait_idle,
# esp_rom_get_reset_reason = rtc_get_reset_reason, esp_rom_software_reset_system
# = software_reset, esp_rom_software_reset_cpu = software_reset_cpu,
# esp_rom_get_cpu_ticks_per_us = ets_get_cpu_frequency,
# esp_rom_set_cpu_ticks_per_us = ets_update_cpu_frequency.
ROM_FUNCTIONS: dict[str, int] = {
    "rtc_get_reset_reason": 0x40000018,
    "ets_printf": 0x40000040,
    "ets_install_putc1": 0x40000044,
    "ets_install_uart_printf": 0x40000048,
    "ets_install_putc2": 0x4000004C,
    "ets_delay_us": 0x40000050,
    "uart_tx_one_char": 0x40000068,
    "uart_rx_one_char": 0x40000070,
    "uart_tx_flush": 0x40000080,
    "uart_tx_wait_idle": 0x40000084,
    "software_reset": 0x40000090,
    "software_reset_cpu": 0x40000094,
    # esp32c3.rom.newlib.ld / esp32c3.rom.libc-suboptimal_for_misaligned_mem.ld
    "memset": 0x40000354,
    "memcpy": 0x40000358,
    "memmove": 0x4000035C,
    "memcmp": 0x40000360,
    "strcpy": 0x40000364,
    "strncpy": 0x40000368,
    "strcmp": 0x4000036C,
    "strncmp": 0x40000370,
    "strlen": 0x40000374,
    "bzero": 0x4000037C,
    "ets_get_cpu_frequency": 0x40000584,
    "ets_update_cpu_frequency": 0x40000588,
}
_PUTC_UART = ROM_FUNCTIONS["uart_tx_one_char"]
