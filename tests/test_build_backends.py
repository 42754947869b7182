"""Project detection, each backend's command/outputs/layout, diagnostics and
fbuild.toml validation."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fbuild_watch.build.backends import (
    ArduinoBackend,
    CommandBackend,
    EspIdfBackend,
    PlatformIOBackend,
    detect_backend,
)
from fbuild_watch.build.diagnostics import parse_line, parse_output
from fbuild_watch.config import load_config
from fbuild_watch.errors import ConfigError
from tests.fwkit import Build


def test_esp_idf_project(tmp_path: Path, firmware: Build) -> None:
    (tmp_path / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.16)\ninclude($ENV{IDF_PATH}/tools/cmake/project.cmake)\nproject(hello)\n"
    )
    build = tmp_path / "build"
    shutil.copytree(firmware.dir, build)
    (build / "project_description.json").write_text(json.dumps({"app_elf": "app.elf"}))
    backend = detect_backend(tmp_path)
    assert isinstance(backend, EspIdfBackend)
    assert backend.command() == ["idf.py", "-C", str(tmp_path.resolve()), "build"]
    (build / "build.ninja").write_text("")
    if shutil.which("ninja"):
        assert backend.command()[:2] == ["ninja", "-C"]
    assert backend.output_dirs() == [tmp_path.resolve() / "build"]
    assert backend.elf_path() == tmp_path.resolve() / "build" / "app.elf"
    layout = backend.load_layout()
    assert layout.elf == backend.elf_path()
    layout.validate()


def test_platformio_project(tmp_path: Path, firmware: Build) -> None:
    (tmp_path / "platformio.ini").write_text(
        "[platformio]\ndefault_envs = c3\n\n[env:other]\nboard = x\n\n[env:c3]\nplatform = espressif32\n"
    )
    backend = detect_backend(tmp_path)
    assert isinstance(backend, PlatformIOBackend)
    assert backend.command() == ["pio", "run", "-d", str(tmp_path.resolve()), "-e", "c3"]
    assert backend.prepare() == [
        "pio",
        "run",
        "-d",
        str(tmp_path.resolve()),
        "-e",
        "c3",
        "-t",
        "idedata",
    ]
    env = tmp_path / ".pio" / "build" / "c3"
    env.mkdir(parents=True)
    for src, dst in ((firmware.app_elf, "firmware.elf"), (firmware.app_bin, "firmware.bin"),
                     (firmware.bootloader_bin, "bootloader.bin"), (firmware.partitions_bin, "partitions.bin")):  # fmt: skip
        shutil.copy(src, env / dst)
    (env / "idedata.json").write_text(json.dumps({
        "prog_path": str(env / "firmware.elf"),
        "extra": {"application_offset": "0x10000", "flash_images": [
            {"offset": "0x0", "path": str(env / "bootloader.bin")},
            {"offset": "0x8000", "path": str(env / "partitions.bin")}]},
    }))  # fmt: skip
    assert backend.prepare() is None
    assert backend.output_dirs() == [tmp_path.resolve() / ".pio"]
    assert backend.elf_path() == env / "firmware.elf"
    backend.load_layout().validate()


def test_arduino_project(tmp_path: Path, firmware: Build) -> None:
    (tmp_path / "Blink.ino").write_text("void setup() {}\nvoid loop() {}\n")
    with pytest.raises(ConfigError, match="no project found"):
        detect_backend(tmp_path)  # a sketch without sketch.yaml or --fqbn
    (tmp_path / "sketch.yaml").write_text("default_fqbn: esp32:esp32:esp32c3\n")
    backend = detect_backend(tmp_path)
    assert isinstance(backend, ArduinoBackend)
    out = tmp_path.resolve() / "build" / "arduino"
    assert backend.command() == [
        "arduino-cli", "compile", "--fqbn", "esp32:esp32:esp32c3", "--build-path", str(out), str(tmp_path.resolve())
    ]  # fmt: skip
    out.mkdir(parents=True)
    shutil.copy(firmware.app_bin, out / "Blink.ino.bin")
    shutil.copy(firmware.app_elf, out / "Blink.ino.elf")
    shutil.copy(firmware.bootloader_bin, out / "Blink.ino.bootloader.bin")
    shutil.copy(firmware.partitions_bin, out / "Blink.ino.partitions.bin")
    assert backend.elf_path() == out / "Blink.ino.elf"
    backend.load_layout().validate()
    assert (
        detect_backend(tmp_path, fqbn="esp32:esp32:x").command()[3] == "esp32:esp32:x"
    )  # flag wins


def test_fbuild_toml_wins_and_flash_entries(tmp_path: Path, firmware: Build) -> None:
    (tmp_path / "platformio.ini").write_text("[env:x]\n")
    (tmp_path / "fbuild.toml").write_text(
        '[build]\ncommand = ["true"]\noutputs = ["out"]\n[board]\nchip = "ESP32-C3"\n'
        f'[[flash]]\noffset = 0\nfile = "{firmware.bootloader_bin}"\n'
        f'[[flash]]\noffset = "0x8000"\nfile = "{firmware.partitions_bin}"\n'
        f'[[flash]]\noffset = 0x10000\nfile = "{firmware.app_bin}"\n'
    )
    backend = detect_backend(tmp_path)
    assert isinstance(backend, CommandBackend)
    assert backend.chip == "esp32c3"
    assert tmp_path.resolve() / "out" in backend.output_dirs()
    assert [r.offset for r in backend.load_layout().regions] == [0, 0x8000, 0x10000]


def test_no_project(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no project found"):
        detect_backend(tmp_path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[build\n", "malformed TOML"),
        ('[biuld]\ncommand = ["make"]\n', r"unknown section \[biuld\]"),
        ('[build]\ncomand = ["make"]\n', r"unknown key 'comand' in \[build\]"),
        ('[build]\ncommand = "make"\n', r"\[build\] command must be an array, got str"),
        ("[build]\ncommand = [1]\n", r"\[build\] command must be an array of strings"),
        ("[build]\ncommand = []\n", "must not be empty"),
        ('[board]\nchip = "esp99"\n', r"\[board\] chip: unknown chip 'esp99'"),
        ('[board]\nbaud = "fast"\n', r"\[board\] baud must be an integer, got str"),
        ("[watch]\ndebounce_ms = true\n", "must be an integer, got bool"),
        ('[build]\nflasher_args = "a.json"\n[[flash]]\noffset = 0\nfile = "x"\n', "either"),
        ('[[flash]]\noffset = "zz"\nfile = "x"\n', "bad offset 'zz'"),
    ],
)
def test_config_errors_name_the_file(tmp_path: Path, text: str, message: str) -> None:
    cfg = tmp_path / "fbuild.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=message) as exc:
        load_config(cfg)
    assert str(exc.value).startswith(str(cfg) + ": ")
    assert "\n" not in str(exc.value)


def test_cli_config_error_exit_2(tmp_path: Path) -> None:
    (tmp_path / "fbuild.toml").write_text("[build]\ncommand = 3\n")
    res = subprocess.run([sys.executable, "-m", "fbuild_watch", "build", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert res.returncode == 2
    assert (
        res.stderr.strip()
        == f"fbuild: error: {tmp_path / 'fbuild.toml'}: [build] command must be an array, got int"
    )


def test_cli_build_failure_exit_1(tmp_path: Path) -> None:
    (tmp_path / "fbuild.toml").write_text(
        '[build]\ncommand = ["sh", "-c", "echo \'src/a.c:3:5: error: boom\'; exit 2"]\n'
        'flasher_args = "build/flasher_args.json"\n'
    )
    res = subprocess.run([sys.executable, "-m", "fbuild_watch", "build", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert res.returncode == 1
    assert "src/a.c:3:5: error: boom" in res.stdout
    assert "build failed: sh exited with status 2" in res.stderr
    res = subprocess.run([sys.executable, "-m", "fbuild_watch", "build", "--json", str(tmp_path)],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    doc = json.loads(res.stdout)
    assert doc["ok"] is False and doc["diagnostics"][0] == {
        "file": "src/a.c",
        "line": 3,
        "column": 5,
        "severity": "error",
        "message": "boom",
    }


def test_diagnostics_parser() -> None:
    lines = [
        "src/main.c:12:5: error: expected ';' after expression",
        "\x1b[1msrc/hal.c:7:1: \x1b[0;1;35mwarning: \x1b[0munused variable 'x' [-Wunused-variable]",
        "src/x.c:3: error: old gcc without column",
        "src/y.c:1:1: fatal error: 'missing.h' file not found",
        "In file included from src/main.c:3:",
        "src/main.c:12:5: error: expected ';' after expression",  # repeated by make
        "ld.lld: error: undefined symbol: foo",
        "C:/proj/src/a.c:1:2: note: here",
        "make: *** [Makefile:3: all] Error 1",
    ]
    diags = parse_output(lines)
    assert [d.format() for d in diags] == [
        "src/main.c:12:5: error: expected ';' after expression",
        "src/hal.c:7:1: warning: unused variable 'x' [-Wunused-variable]",
        "src/x.c:3: error: old gcc without column",
        "src/y.c:1:1: error: 'missing.h' file not found",
        "error: ld.lld: undefined symbol: foo",
        "C:/proj/src/a.c:1:2: note: here",
    ]
    assert parse_line("x" * 10_000 + ":1:1: error: long") is None
