"""The example firmware builds with the real compiler, validates, flashes
through esptool into a virtual board and runs."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest
from esptool.cmds import attach_flash, detect_chip, reset_chip, run_stub, write_flash

from fbuild_watch.build import BuildRun, detect_backend, run_build
from tests.examplekit import copy_example
from tests.simkit import new_board, open_port, read_until


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_example(tmp_path_factory.mktemp("ex") / "blink-c3")


def test_clean_build_flash_and_run(example: Path) -> None:
    backend = detect_backend(example)
    assert backend.kind == "command"
    assert backend.output_dirs() == [example.resolve() / "build"]
    lines: list[str] = []
    result = run_build(backend, lines.append)
    assert result.ok, "\n".join(result.output)
    assert lines == result.output and any("elf2image" in ln for ln in lines)
    assert result.layout is not None
    layout = result.layout.layout
    assert layout.elf == example.resolve() / "build" / "blink-c3.elf"
    assert [r.name for r in layout.regions] == ["bootloader", "partition-table", "app"]
    desc = result.layout.app_image.app_desc  # type: ignore[union-attr]
    assert desc is not None and desc.project_name == "blink-c3" and desc.version == "1.0.0"

    board = new_board()
    port = open_port(board)
    esp = run_stub(detect_chip(port, 115200, "default-reset"))
    attach_flash(esp)
    write_flash(esp, [(r.offset, r.data) for r in layout.regions])
    port.baudrate = 115200
    reset_chip(esp, "hard-reset")
    out = read_until(port, r"counter 1 led on\r\n", timeout=10).decode()
    assert "I (" in out and "blink: blink-c3 version 1.0.0" in out
    stamps = [int(m) for m in re.findall(r"I \((\d+)\) blink: counter \d", out)]
    assert len(stamps) == 2 and 450 <= stamps[1] - stamps[0] <= 700  # SYSTIMER-timed 500 ms
    assert any(level for _t, level in board.gpio_history)  # the LED went on


def test_noop_and_incremental_builds(example: Path) -> None:
    backend = detect_backend(example)
    assert run_build(backend).ok
    noop = run_build(backend)
    assert noop.ok and not any("zig" in ln or "cc " in ln for ln in noop.output)
    version = example / "src" / "version.h"
    version.write_text(version.read_text().replace('"1.0.0"', '"1.0.1"'))
    inc = run_build(backend)
    assert inc.ok
    compiled = [ln for ln in inc.output if " -c src/" in ln]
    assert compiled and all("app_desc.c" in ln or "main.c" in ln for ln in compiled)
    assert inc.layout is not None and inc.layout.app_image.app_desc.version == "1.0.1"  # type: ignore[union-attr]
    assert inc.layout.image_hash != noop.layout.image_hash  # type: ignore[union-attr]


def test_failed_build_reports_diagnostic_and_no_layout(tmp_path: Path) -> None:
    project = copy_example(tmp_path / "broken")
    main_c = project / "src" / "main.c"
    lines = main_c.read_text().splitlines()
    target = next(i for i, ln in enumerate(lines) if "led_init();" in ln)
    lines[target] = "    led_init()  /* missing semicolon */"
    main_c.write_text("\n".join(lines) + "\n")
    result = run_build(detect_backend(project))
    assert not result.ok and result.layout is None
    assert result.exit_code not in (0, None)
    errors = [d for d in result.diagnostics if d.severity == "error"]
    assert errors, result.output
    assert errors[0].file == "src/main.c"
    assert errors[0].line in (target + 1, target + 2)  # clang points at the next token
    assert "expected ';'" in errors[0].message
    assert result.error and result.error.startswith("build failed: make exited with status")


def test_invalid_layout_after_build_is_not_deployable(tmp_path: Path) -> None:
    project = copy_example(tmp_path / "tiny-part")
    parts = project / "partitions.csv"
    parts.write_text(parts.read_text().replace("0x180000", "0x1000"))
    result = run_build(detect_backend(project))
    assert not result.ok and result.layout is None
    assert result.error is not None and "larger than partition 'factory'" in result.error
    assert "blink-c3.bin" in result.error


def test_cancel_kills_the_whole_process_group(tmp_path: Path) -> None:
    (tmp_path / "fbuild.toml").write_text(
        '[build]\ncommand = ["sh", "-c", "sleep 31.25 & echo started; wait"]\n'
        'flasher_args = "build/flasher_args.json"\n'
    )
    started = threading.Event()
    run = BuildRun(detect_backend(tmp_path), lambda ln: started.set() if ln == "started" else None)
    box: list[object] = []
    t = threading.Thread(target=lambda: box.append(run.run()))
    t.start()
    assert started.wait(10)
    t0 = time.monotonic()
    run.cancel()
    t.join(10)
    assert not t.is_alive() and time.monotonic() - t0 < 5
    result = box[0]
    assert result.cancelled and not result.ok  # type: ignore[attr-defined]
    import subprocess

    left = subprocess.run(["pgrep", "-f", "sleep 31.25"], capture_output=True, text=True).stdout
    assert not left.strip()
