"""The flash answers SPI commands only once the ROM has attached it, as on a
real C3 (esptool's TestESPObjectOperations.test_attach_flash), and then with
the board's own JEDEC id."""

from __future__ import annotations

import pytest
from esptool.cmds import attach_flash, detect_chip, flash_id, read_flash_sfdp, run_stub

from tests.simkit import new_board, open_port


def test_flash_silent_before_spi_attach(capsys: pytest.CaptureFixture[str]) -> None:
    board = new_board()
    esp = detect_chip(open_port(board), 115200, "default-reset")
    flash_id(esp)
    read_flash_sfdp(esp, 0, 4)
    pre = capsys.readouterr().out
    attach_flash(esp)
    flash_id(esp)
    read_flash_sfdp(esp, 0, 4)
    post = capsys.readouterr().out
    assert "Detected flash size: Unknown" in pre
    assert "Device: ffff" in pre
    assert "SFDP[0..3]: 0xff 0xff 0xff 0xff" in pre
    assert "Detected flash size: Unknown" not in post
    assert "Manufacturer: c8" in post and "Device: 4016" in post
    assert "Detected flash size: 4MB" in post
    assert "SFDP[0..3]: 0x53 0x46 0x44 0x50" in post


def test_stub_attaches_flash_itself(capsys: pytest.CaptureFixture[str]) -> None:
    board = new_board()
    esp = run_stub(detect_chip(open_port(board), 115200, "default-reset"))
    flash_id(esp)
    assert "Device: 4016" in capsys.readouterr().out


def test_jedec_id_follows_the_flash(capsys: pytest.CaptureFixture[str]) -> None:
    board = new_board()
    board.flash.jedec_id = 0xEF4018  # a W25Q128 (16 MB)
    esp = detect_chip(open_port(board), 115200, "default-reset")
    attach_flash(esp)
    flash_id(esp)
    out = capsys.readouterr().out
    assert "Manufacturer: ef" in out and "Device: 4018" in out
    assert "Detected flash size: 16MB" in out
