"""Every ESP-IDF fatal-error format is one report, with its reason, kind,
core, registers, backtrace and crash sites. The texts are ESP-IDF v5's, as
its panic handler, abort(), assert, ESP_ERROR_CHECK, FreeRTOS hooks, the
task watchdog and the brownout ISR print them (Xtensa and RISC-V)."""

from __future__ import annotations

import pytest

from fbuild_watch.crash.report import PanicCollector, PanicReport
from fbuild_watch.decode import CrashDetector
from tests.decodekit import c3_core_dump, riscv_panic_text

XTENSA_REGS = [
    "Core  0 register dump:",
    "PC      : 0x400d1db4  PS      : 0x00060830  A0      : 0x800d5a2e  A1      : 0x3ffb5670  ",
    "A2      : 0x00000000  A3      : 0x3ffb5690  A4      : 0x00000001  A5      : 0x00000000  ",
    "EXCVADDR: 0x00000000  LBEG    : 0x40086131  LEND    : 0x40086141  LCOUNT  : 0xfffffffe  ",
]
XTENSA_BT = "Backtrace: 0x400d1db1:0x3ffb5670 0x400d5a2b:0x3ffb5690 0x40088a8d:0x3ffb56b0"
TAIL = ["", "", "ELF file SHA256: 6f1e2fd1a4b3d1c9", "", "Rebooting..."]
NEXT_BOOT = [
    "ets Jun  8 2016 00:22:57",
    "",
    "rst:0xc (SW_CPU_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)",
]


def collect(lines: list[str]) -> list[PanicReport]:
    out: list[PanicReport] = []
    c = PanicCollector(out.append)
    for line in lines:
        c.feed(line)
    return out


def one(lines: list[str]) -> PanicReport:
    reports = collect(["I (312) app: running", *lines, *NEXT_BOOT, "I (12) boot: ok"])
    assert len(reports) == 1, [r.reason for r in reports]
    return reports[0]


def test_xtensa_guru_meditation_is_one_report_not_two() -> None:
    """ESP-IDF v5 prints the backtrace, then "ELF file SHA256": the old
    decoder gave a second, empty crash at the SHA line."""
    rep = one(
        [
            "Guru Meditation Error: Core  0 panic'ed (LoadProhibited). Exception was unhandled.",
            "",
            *XTENSA_REGS,
            "",
            "",
            XTENSA_BT,
            *TAIL,
        ]
    )
    assert (rep.reason, rep.kind, rep.core) == ("LoadProhibited", "exception", 0)
    assert rep.crashed.registers["PC"] == 0x400D1DB4
    assert rep.crashed.registers["EXCVADDR"] == 0
    assert rep.crashed.backtrace == [0x400D1DB1, 0x400D5A2B, 0x40088A8D]
    assert rep.elf_sha256 == "6f1e2fd1a4b3d1c9"
    det = CrashDetector()
    results = [r for line in [*rep.lines, *NEXT_BOOT] if (r := det.feed(line))]
    assert len(results) == 1


def test_riscv_abort_without_guru_line() -> None:
    """ESP32-C3/C6/H2/P4: abort() prints its line and a register dump, no
    Guru Meditation; the abort PC (the real crash site) is kept."""
    rep = one(riscv_panic_text("abort() was called at PC 0x42009351 on core 0", c3_core_dump()))
    assert (rep.kind, rep.core) == ("abort", 0)
    assert rep.reason == "abort() was called at PC 0x42009351 on core 0"
    assert rep.sites == [(0x42009351, "abort")]
    assert rep.crashed.registers["MEPC"] == 0x40380698
    assert rep.crashed.stack_base == 0x3FC8EA60
    assert len(rep.crashed.stack) == 0x3FC8EC20 - 0x3FC8EA60


def test_xtensa_abort() -> None:
    rep = one(["", "abort() was called at PC 0x400d2b3b on core 1", "", "", XTENSA_BT, *TAIL])
    assert (rep.kind, rep.core, rep.sites) == ("abort", 1, [(0x400D2B3B, "abort")])
    assert rep.crashed.backtrace[0] == 0x400D1DB1


def test_assert_failed() -> None:
    rep = one(["", "assert failed: app_main main.c:12 (x == 1)", "", "", XTENSA_BT, *TAIL])
    assert (rep.kind, rep.reason) == ("assert", "assert failed: app_main main.c:12 (x == 1)")
    old = one(
        [
            'assertion "x == 1" failed: file "main/main.c", line 12, function: app_main',
            "abort() was called at PC 0x400d2b3b on core 0",
            "",
            XTENSA_BT,
            *TAIL,
        ]
    )
    assert old.kind == "assert" and old.sites == [(0x400D2B3B, "abort")]


def test_esp_error_check_failed() -> None:
    rep = one(
        [
            "ESP_ERROR_CHECK failed: esp_err_t 0x103 (ESP_ERR_INVALID_STATE) at 0x400d2f7d",
            'file: "./main/main.c" line 20',
            "func: app_main",
            "expression: nvs_flash_init()",
            "",
            "abort() was called at PC 0x4008a2e3 on core 0",
            "",
            XTENSA_BT,
            *TAIL,
        ]
    )
    assert rep.kind == "esp_error_check"
    assert rep.reason == "ESP_ERROR_CHECK failed: esp_err_t 0x103 (ESP_ERR_INVALID_STATE)"
    assert rep.sites == [(0x400D2F7D, "ESP_ERROR_CHECK"), (0x4008A2E3, "abort")]
    assert 'file: "./main/main.c" line 20' in rep.details


def test_stack_overflow_and_stack_protection() -> None:
    hook = one(
        ["***ERROR*** A stack overflow in task main has been detected.", "", XTENSA_BT, *TAIL]
    )
    assert (hook.kind, hook.reason) == ("stack_overflow", "stack overflow in task main")
    guard = one(
        [
            "Guru Meditation Error: Core  0 panic'ed (Stack protection fault). ",
            "",
            'Detected in task "main" at 0x42007f5e',
            "Stack pointer: 0x3fc8d0c0",
            "Stack bounds: 0x3fc8d0d0 - 0x3fc8e0c0",
            "",
            "Core  0 register dump:",
            "MEPC    : 0x42007f5e  RA      : 0x42007f60  SP      : 0x3fc8d0c0  GP      : 0x3fc8a600",
            "",
            "Stack memory:",
            "3fc8d0c0: 0x00000000 0x00000001",
            *TAIL,
        ]
    )
    assert (guard.kind, guard.sites) == ("stack_overflow", [(0x42007F5E, "task main")])
    canary = one(
        [
            "Guru Meditation Error: Core  0 panic'ed (Unhandled debug exception). ",
            "Debug exception reason: Stack canary watchpoint triggered (main) ",
            *XTENSA_REGS,
            XTENSA_BT,
            *TAIL,
        ]
    )
    assert canary.kind == "stack_overflow"
    assert canary.reason.endswith("Stack canary watchpoint triggered (main)")
    smash = one(["", "Stack smashing protect failure!", "", XTENSA_BT, *TAIL])
    assert smash.kind == "stack_overflow"


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        ("Interrupt wdt timeout on CPU1", "interrupt_watchdog"),
        ("Cache disabled but cached memory region accessed", "cache_error"),
        ("Cache error", "cache_error"),
        ("Double exception", "double_exception"),
        ("IllegalInstruction", "exception"),
    ],
)
def test_guru_kinds(reason: str, kind: str) -> None:
    rep = one(
        [
            f"Guru Meditation Error: Core  1 panic'ed ({reason}). ",
            "",
            *XTENSA_REGS,
            XTENSA_BT,
            *TAIL,
        ]
    )
    assert (rep.reason, rep.kind, rep.core) == (reason, kind, 1)


def test_task_watchdog_without_reboot_ends_at_the_next_log_line() -> None:
    """Not fatal: no SHA, no reboot; the report ends where the log goes on,
    and that line (even a new panic) is still looked at."""
    reports = collect(
        [
            "\x1b[0;31mE (10285) task_wdt: Task watchdog got triggered. The following tasks/users"
            " did not reset the watchdog in time:\x1b[0m",
            "\x1b[0;31mE (10285) task_wdt:  - IDLE0 (CPU 0)\x1b[0m",
            "\x1b[0;31mE (10285) task_wdt: Tasks currently running:\x1b[0m",
            "\x1b[0;31mE (10285) task_wdt: CPU 0: main\x1b[0m",
            "\x1b[0;31mE (10285) task_wdt: Print CPU 0 (current core) backtrace\x1b[0m",
            "",
            "",
            XTENSA_BT,
            "",
            "I (10300) app: still running",
            "Guru Meditation Error: Core  0 panic'ed (LoadProhibited). Exception was unhandled.",
            XTENSA_BT,
            *TAIL,
        ]
    )
    assert [r.kind for r in reports] == ["task_watchdog", "exception"]
    wdt = reports[0]
    assert wdt.core == 0 and wdt.crashed.backtrace[0] == 0x400D1DB1
    assert "E (10285) task_wdt: CPU 0: main" in wdt.details


def test_brownout_is_reported_at_once() -> None:
    reports = collect(["Brownout detector was triggered", ""])
    assert [(r.kind, r.reason) for r in reports] == [
        ("brownout", "brownout detector was triggered")
    ]


def test_dual_core_dump_is_one_report_with_both_cores() -> None:
    rep = one(
        [
            "Guru Meditation Error: Core  1 panic'ed (StoreProhibited). Exception was unhandled.",
            "",
            "Core  1 register dump:",
            "PC      : 0x400d7777  PS      : 0x00060830  A0      : 0x800d5a2e  A1      : 0x3ffb5670",
            "",
            "Backtrace: 0x400d7774:0x3ffb5670 0x400d5a2b:0x3ffb5690",
            "",
            "Core  0 register dump:",
            "PC      : 0x400d1db4  PS      : 0x00060830  A0      : 0x800d5a2e  A1      : 0x3ffb5670",
            "",
            "Backtrace: 0x400d1db1:0x3ffb5670 |<-CORRUPTED",
            *TAIL,
        ]
    )
    assert rep.core == 1 and set(rep.cores) == {0, 1}
    assert rep.crashed.backtrace == [0x400D7774, 0x400D5A2B]
    assert rep.cores[0].corrupted and not rep.cores[1].corrupted


def test_report_without_sha_line_ends_at_reboot_or_next_boot() -> None:
    lines = [
        "Guru Meditation Error: Core  0 panic'ed (Load access fault). ",
        "MEPC    : 0x42000010",
    ]
    assert len(collect([*lines, "Rebooting..."])) == 1
    assert len(collect([*lines, "ESP-ROM:esp32c3-api1-20210207"])) == 1
    c_reports: list[PanicReport] = []
    c = PanicCollector(c_reports.append)
    for line in lines:
        c.feed(line)
    c.finish()  # the port closed mid-report
    assert len(c_reports) == 1


def test_ordinary_lines_start_nothing() -> None:
    assert not collect(
        [
            "I (10) app: assert is a word, abort too, backtrace also",
            "W (20) wifi: stack overflow check enabled",
            "I (30) app: Guru is a word",
        ]
    )


def test_riscv_task_watchdog_prints_registers_and_goes_on() -> None:
    reports = collect(
        [
            "E (5310) task_wdt: Task watchdog got triggered. The following tasks/users did not"
            " reset the watchdog in time:",
            "E (5310) task_wdt:  - IDLE (CPU 0)",
            "E (5310) task_wdt: Tasks currently running:",
            "E (5310) task_wdt: CPU 0: main",
            "E (5310) task_wdt: Print CPU 0 (current core) registers",
            "Core  0 register dump:",
            "MEPC    : 0x42007f5e  RA      : 0x42007f60  SP      : 0x3fc8d0c0  GP      : 0x3fc8a600",
            "",
            "Stack memory:",
            "3fc8d0c0: 0x00000000 0x00000001 0x42007f60 0x3fc8d0e0",
            "",
            "I (5320) app: still running",
        ]
    )
    assert [(r.kind, r.core) for r in reports] == [("task_watchdog", 0)]
    assert reports[0].crashed.registers["MEPC"] == 0x42007F5E
    assert len(reports[0].crashed.stack) == 16
