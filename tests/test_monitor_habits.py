"""esp-idf-monitor's habits, UI-free: the ELF SHA-256 check against what
the board prints at boot (once per boot), and strftime line timestamps."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import fbuild_watch.decode as decode
from fbuild_watch.crash.appsha import ShaCheck, mismatch
from fbuild_watch.crash.symbols import elf_sha256
from fbuild_watch.decode import CrashDetector
from fbuild_watch.logtime import DEFAULT_FORMAT, check_format, format_timestamp
from tests.decodekit import unpack

# ESP-IDF v5's boot log (app_init) and v4's (cpu_start); the panic handler's line
V5 = "I (181) app_init: ELF file SHA256:  {}..."
V4 = "I (223) cpu_start: ELF file SHA256:  {}..."
PANIC = "ELF file SHA256: {}"
BANNER = "ESP-ROM:esp32c3-api1-20210207"


@pytest.fixture(scope="module")
def elf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return unpack("esp32c3_cfi.elf.xz", tmp_path_factory.mktemp("sha"))


def detector(elf: Path) -> tuple[CrashDetector, queue.Queue[str]]:
    said: queue.Queue[str] = queue.Queue()
    det = CrashDetector(elf, on_warning=said.put)
    det.symbols(wait=True)  # indexed: the check answers on the feeding thread
    return det, said


def drained(q: queue.Queue[str]) -> list[str]:
    out = []
    while not q.empty():
        out.append(q.get_nowait())
    return out


def test_another_build_on_the_board_is_said_once_per_boot(elf: Path) -> None:
    det, said = detector(elf)
    other = "83cfeb53c9c00c61"
    det.take([BANNER, V5.format(other), "I (300) main: hello", PANIC.format(other + "c4e5")])
    det.set_elf(elf)  # the same ELF again (before and after a deploy): still this boot
    det.take([PANIC.format(other)])
    (msg,) = drained(said)
    assert msg == (
        f"the board runs a different build than {elf}: it says ELF SHA-256 {other}..., "
        f"the file is {elf_sha256(elf)[:16]}...; decoded addresses may name the wrong code"
    )
    det.take([BANNER, "rst:0xc (RTC_SW_CPU_RST),boot:0x8 (SPI_FAST_FLASH_BOOT)", V4.format(other)])
    assert len(drained(said)) == 1  # the next boot: said again


def test_the_same_build_or_no_sha_is_not_a_warning(elf: Path) -> None:
    det, said = detector(elf)
    sha = elf_sha256(elf)
    det.take([BANNER, V5.format(sha[:9]), PANIC.format(sha)])
    det.take([BANNER, V5.format(sha[:16].upper())])
    det.take([BANNER, V5.format("0000000000000000")])  # the image carries no SHA
    det.take([BANNER, V5.format("83cf")])  # too short to tell
    assert drained(said) == []


def test_checked_when_the_index_is_ready_without_waiting(
    elf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fresh = tmp_path / "app.elf"  # not indexed yet by an earlier test
    fresh.write_bytes(elf.read_bytes())
    gate = threading.Event()
    real = decode._build

    def slow(path: Path, cache_dir: Path | None) -> decode.Symbolizer:
        assert gate.wait(60)
        return real(path, cache_dir)

    monkeypatch.setattr(decode, "_build", slow)
    said: queue.Queue[str] = queue.Queue()
    det = CrashDetector(on_warning=said.put)
    det.set_elf(fresh)
    started = time.monotonic()
    det.take([BANNER, V5.format("83cfeb53c9c00c61")])
    assert time.monotonic() - started < 5 and said.empty()
    gate.set()
    assert "it says ELF SHA-256 83cfeb53c9c00c61..." in said.get(timeout=60)


def test_a_new_elf_is_checked_at_the_next_sha_line(elf: Path, tmp_path: Path) -> None:
    det, said = detector(elf)
    det.take([BANNER, V5.format(elf_sha256(elf)[:9])])
    copy = tmp_path / "app.elf"
    copy.write_bytes(elf.read_bytes() + b"\0")  # a rebuilt ELF: another SHA
    det.set_elf(copy)
    det.symbols(wait=True)
    det.take([PANIC.format(elf_sha256(elf))])  # the board still runs the old build
    assert "different build than" in said.get(timeout=30)


def test_sha_check_unit() -> None:
    check = ShaCheck()
    assert check.printed(V5.format("7d946a8e8")) == "7d946a8e8"
    assert check.printed(V5.format("7d946a8e8")) is None  # once per boot
    assert check.printed("ets Jun  8 2016 00:22:57") is None
    assert check.printed(PANIC.format("7D946A8E8CD5")) == "7d946a8e8cd5"
    assert mismatch("7d946a8e8", "7d946a8e8cd5e419", Path("a.elf")) is None


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


T = 1700000000.123456  # 2023-11-14 22:13:20.123456 UTC


@pytest.mark.usefixtures("utc")
def test_timestamps_as_esp_idf_monitor() -> None:
    assert DEFAULT_FORMAT == "%Y-%m-%d %H:%M:%S"
    assert format_timestamp(T) == "2023-11-14 22:13:20"
    assert format_timestamp(T, "%H:%M:%S.%3f") == "22:13:20.123"
    assert format_timestamp(T, "%H:%M:%S.%f") == "22:13:20.123456"
    assert format_timestamp(T, "[%d/%m %%3f %%]") == "[14/11 %3f %]"
    assert format_timestamp(T + 0.9, "%S.%3f") == "21.023"


def test_timestamp_format_errors() -> None:
    assert check_format("%H:%M") == "%H:%M"
    with pytest.raises(ValueError, match="^empty timestamp format$"):
        check_format("")
    # glibc formats anything; what cannot become bytes for it is refused
    with pytest.raises(ValueError, match=r"^bad timestamp format '%H\\ud800': "):
        check_format("%H\ud800")
