from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fwkit import Build, build_firmware


@pytest.fixture(autouse=True)
def _close_boards_after_test() -> Iterator[None]:
    """Boards a test created stop when it ends: their apps would otherwise
    keep running and load the machine for every later test."""
    from fbuild_watch.sim import registry

    before = set(registry._boards)
    yield
    for name in set(registry._boards) - before:
        registry.remove_board(name)


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
