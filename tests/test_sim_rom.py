"""The virtual C3's mask ROM functions: esptool's RAM hello-world prints as on
a real chip, RAM apps call ets_printf & co. at their ROM addresses, and every
fault reports the exact faulting pc."""

from __future__ import annotations

import re
import time
from pathlib import Path

import esptool
import pytest

from fbuild_watch.sim.board import BoardState
from fbuild_watch.sim.cpu import Cpu, format_panic
from fbuild_watch.sim.rom_functions import ROM_FUNCTIONS
from tests.fwkit import FW_DIR, elf2image, zig_cc
from tests.simkit import new_board, open_port, read_until

HELLO = Path(__file__).parent / "data" / "esptool" / "helloworld-esp32c3.bin"


def _load_ram(image: Path) -> str:
    """esptool's CLI `load-ram` onto a fresh board; returns the board name."""
    board = new_board(start="download")
    esptool.main(["--chip", "esp32c3", "--port", f"sim://{board.name}", "load-ram", str(image)])
    return board.name


def test_esptool_ram_helloworld_prints_hello_world() -> None:
    """esptool's TestLoadRAM.test_load_ram with its own test image: the image
    calls the ROM's ets_printf, which used to be zeros (an illegal instruction)."""
    board = new_board(start="download")
    esptool.main(["--chip", "esp32c3", "--port", f"sim://{board.name}", "load-ram", str(HELLO)])
    port = open_port(board, timeout=5)
    output = port.read(100)  # what esptool's verify_output reads
    assert b"Hello world!\n" in output
    assert board.state is BoardState.APP
    assert board.counters.panics == 0


@pytest.fixture(scope="module")
def romcalls(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("romcalls")
    elf = zig_cc([FW_DIR / "romcalls.c"], FW_DIR / "romcalls.ld", out / "romcalls.elf")
    return elf2image(elf, out / "romcalls.bin")


def test_ram_app_calls_rom_functions(romcalls: Path) -> None:
    board = new_board(start="download")
    esptool.main(["--chip", "esp32c3", "--port", f"sim://{board.name}", "load-ram", str(romcalls)])
    port = open_port(board)
    port.write(b"Q")  # uart_rx_one_char polls the RX FIFO
    out = read_until(port, rb"!\ndelay start\n").decode()
    assert out.startswith("got Q\n")
    assert "fmt: -42     7|ab  |0000BEEF|str|Z|%|0x3fc80000|-5000000000\n" in out
    assert "mem: aaaaabcd 8 0 1\n" in out  # ROM memset/memcpy/strlen/strcmp
    assert "reset reason 1\n" in out  # POWERON: esptool's reset into the loader
    assert "hidden" not in out  # ets_install_putc1(NULL) silences ets_printf
    t0 = time.monotonic()
    # then software_reset(): a system reset that boots from (empty) flash
    read_until(port, rb"delay end\n.*rst:0x3 \(RTC_SW_SYS_RST\),boot:0xc .*invalid header")
    assert time.monotonic() - t0 >= 0.25  # ets_delay_us(300000) takes real time


class _Host:
    def __init__(self) -> None:
        self.tx = bytearray()

    def uart_tx(self, byte: int) -> None:
        self.tx.append(byte)

    def uart_rx(self) -> int | None:
        return None

    def uart_rx_count(self) -> int:
        return 0

    def uart_tx_backlog(self) -> int:
        return 0

    def clock_s(self) -> float:
        return 0.0

    def efuse_read(self, addr: int) -> int:
        return 0

    def gpio_changed(self, out: int, enable: int) -> None:
        pass


IRAM = 0x40380000
NOP = bytes.fromhex("13000000")  # addi x0, x0, 0
C_NOP = bytes.fromhex("0100")


@pytest.mark.parametrize(
    ("code", "fault_at", "mcause"),
    [
        (NOP + C_NOP + b"\0\0", IRAM + 6, 2),  # 16-bit all-zero parcel after a 16-bit one
        (NOP + b"\0\0", IRAM + 4, 2),
        (NOP + bytes.fromhex("ffffffff"), IRAM + 4, 2),  # 32-bit illegal instruction
        (NOP + bytes.fromhex("73001000"), IRAM + 4, 3),  # ebreak
        (NOP + bytes.fromhex("0290"), IRAM + 4, 3),  # c.ebreak
        (NOP + bytes.fromhex("73000000"), IRAM + 4, 11),  # ecall from M-mode
        (NOP + bytes.fromhex("23a01000"), IRAM + 4, 7),  # sw ra, 0(x0): store fault
        (NOP + bytes.fromhex("83a00000"), IRAM + 4, 5),  # lw ra, 0(x0): load fault
    ],
    ids=["c-unimp-odd", "c-unimp", "illegal32", "ebreak", "c-ebreak", "ecall", "store", "load"],
)
def test_mepc_is_the_faulting_instruction(code: bytes, fault_at: int, mcause: int) -> None:
    cpu = Cpu(_Host(), [(IRAM, code)], IRAM)
    result = cpu.run_slice(100)
    assert result.kind == "fault" and result.fault is not None
    assert (result.fault.pc, result.fault.mcause) == (fault_at, mcause)
    panic = format_panic(result.fault, None)
    assert re.search(rf"MEPC    : 0x{fault_at:08x}", panic)


def test_unmodelled_rom_function_faults_at_its_address() -> None:
    """A ROM function with no model is zeros: the fault names its address."""
    target = 0x40000064  # UartRxString: not modelled
    assert target not in ROM_FUNCTIONS.values()
    lui_ra = ((target + 0x800) & 0xFFFFF000) | (1 << 7) | 0x37  # lui ra, %hi(target)
    jalr = ((target & 0xFFF) << 20) | (1 << 15) | (1 << 7) | 0x67  # jalr ra, %lo(target)(ra)
    code = lui_ra.to_bytes(4, "little") + jalr.to_bytes(4, "little")
    result = Cpu(_Host(), [(IRAM, code)], IRAM).run_slice(100)
    assert result.fault is not None
    assert (result.fault.pc, result.fault.mcause) == (target, 2)


def test_rom_functions_cost_app_code_nothing() -> None:
    """The ROM hook covers the ROM only: a loop in IRAM never enters Python."""
    host = _Host()
    loop = bytes.fromhex("01a0")  # c.j .
    cpu = Cpu(host, [(IRAM, loop)], IRAM)
    t0 = time.perf_counter()
    assert cpu.run_slice(2_000_000).kind == "idle"
    assert time.perf_counter() - t0 < 0.5  # millions of instructions, no per-insn hook
    assert cpu.rom.calls == {}
