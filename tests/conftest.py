from __future__ import annotations

from pathlib import Path

import pytest

from tests.fwkit import Build, build_firmware


@pytest.fixture(scope="session")
def firmware(tmp_path_factory: pytest.TempPathFactory) -> Build:
    """One real ESP32-C3 build shared by the session (read-only)."""
    return build_firmware(tmp_path_factory.mktemp("fw") / "build")


@pytest.fixture
def fw_copy(firmware: Build, tmp_path: Path) -> Build:
    """A private copy of the build that a test may corrupt."""
    import shutil

    dst = tmp_path / "build"
    shutil.copytree(firmware.dir, dst)
    return Build(
        dst,
        dst / "app.elf",
        dst / "app.bin",
        dst / "bootloader.bin",
        dst / "partition-table.bin",
        dst / "flasher_args.json",
    )
