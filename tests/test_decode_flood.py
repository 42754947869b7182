"""A crash loop at 2,000,000-baud pacing into `fbuild monitor --json
--log-file` over a pty and over raw TCP (bench/decode.py's flood, 5 s of it): no byte is
lost from the log file, every crash is decoded, and the serial reader keeps
up (it never waits for decoding)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.decode import crash_loop_bytes, flood, render_flood
from tests.decodekit import unpack


@pytest.mark.parametrize("transport", ["pty", "socket"])
def test_crash_flood_loses_no_byte_and_decodes_every_crash(tmp_path: Path, transport: str) -> None:
    # Espressif's ESP32-C3 test ELF (symbols and CFI: enough to unwind) and
    # the panic its real core dump makes, in a loop with a reboot log
    elf = unpack("esp32c3_cfi.elf.xz", tmp_path)
    # (socket://: pyserial's in_waiting says 0 or 1 there; the reader asks the socket)
    fl = flood(elf, 5.0, workdir=tmp_path, transport=transport)
    assert fl["bytes_sent"] >= 5 * 190_000
    assert fl["log_equals_sent"], (fl["bytes_in_log_file"], fl["bytes_sent"])
    assert (
        fl["crash_events"] == fl["crashes_sent"] == fl["bytes_sent"] // len(crash_loop_bytes(elf))
    )
    assert fl["crashes_with_error"] == 0
    assert fl["crashes_without_frames"] == 0
    assert fl["lines"] == fl["turn_lines"] * fl["crashes_sent"]
    # the reader keeps pace with the line: no lag that grows over the run (a
    # loose bound on the worst line: CI shares its cores)
    assert fl["reader_lag_last_tenth_median_ms"] < 100, fl["reader_lag"]
    assert fl["reader_lag"]["max_ms"] < 1000, fl["reader_lag"]
    assert fl["monitor_exit"] == 0
    assert "(identical)" in render_flood(fl, 1000)
