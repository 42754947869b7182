"""`fbuild image info` against esptool's own `image-info`, and exit codes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from tests.fwkit import Build

FBUILD = [sys.executable, "-m", "fbuild_watch"]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FBUILD, *args], capture_output=True, text=True, timeout=60)


def _esptool_image_info(path: Path) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "esptool", "image-info", str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return out.stdout


def test_json_matches_esptool_image_info(firmware: Build) -> None:
    res = _run("image", "info", "--json", str(firmware.flasher_args))
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["valid"] is True and report["chip"] == "esp32c3"
    app = next(r for r in report["regions"] if r["name"] == "app")
    text = _esptool_image_info(firmware.app_bin)

    assert f"Entry point: {app['image']['entry']:#010x}" in text
    assert f"Segments: {len(app['image']['segments'])}" in text
    rows = re.findall(r"^\s+\d+\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)\s+0x([0-9a-f]+)", text, re.M)
    assert [(int(ln, 16), int(a, 16), int(fo, 16)) for ln, a, fo in rows] == [
        (s["length"], s["load_addr"], s["file_offset"] - 8) for s in app["image"]["segments"]
    ]
    assert f"Checksum: {app['image']['checksum']:#04x} (valid)" in text
    assert f"Validation hash: {app['image']['appended_sha256']} (valid)" in text
    desc = app["app_desc"]
    assert f"Project name: {desc['project_name']}" in text
    assert f"App version: {desc['version']}" in text
    assert f"ELF file SHA256: {desc['elf_sha256']}" in text
    assert "Chip ID: 5 (ESP32-C3)" in text


def test_text_output(firmware: Build) -> None:
    res = _run("image", "info", str(firmware.dir))
    assert res.returncode == 0, res.stderr
    assert "chip:       esp32c3" in res.stdout
    assert re.search(r"0x00010000  app\s+\d+ B  sha256 [0-9a-f]{16}", res.stdout)
    assert "fw-test 1.0.0" in res.stdout
    assert res.stdout.rstrip().endswith("valid")


def test_corrupt_image_exit_1_one_line(fw_copy: Build) -> None:
    data = bytearray(fw_copy.app_bin.read_bytes())
    data[-1] ^= 0xFF
    fw_copy.app_bin.write_bytes(data)
    res = _run("image", "info", str(fw_copy.flasher_args))
    assert res.returncode == 1
    assert res.stderr.strip().count("\n") == 0
    assert res.stderr.strip() == (
        f"fbuild: error: {fw_copy.app_bin}: appended SHA-256 does not match the image contents"
    )
    res = _run("image", "info", "--json", str(fw_copy.flasher_args))
    assert res.returncode == 1
    assert json.loads(res.stdout)["valid"] is False


def test_missing_layout_exit_1(tmp_path: Path) -> None:
    res = _run("image", "info", str(tmp_path))
    assert res.returncode == 1
    assert "no flash layout found" in res.stderr


def test_pairs_and_bad_usage(firmware: Build) -> None:
    res = _run(
        "image", "info", "0x0", str(firmware.bootloader_bin), "0x10000", str(firmware.app_bin)
    )
    assert res.returncode == 0, res.stderr
    res = _run("image", "info", "0xZZ", str(firmware.app_bin), "0x0")
    assert res.returncode == 2
    assert "OFFSET FILE pairs" in res.stderr


def test_version_and_help() -> None:
    res = _run("--version")
    assert res.returncode == 0 and res.stdout.startswith("fbuild-watch ")
    res = _run("--help")
    assert res.returncode == 0 and "image" in res.stdout
