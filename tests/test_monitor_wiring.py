"""The monitor core wired into `fbuild monitor`: a real ESP32 console log
with a panic and its UART core dump (esp-idf-monitor's own test input, see
tests/data/idf_monitor/README.md) served on a loopback port, as
esp-idf-monitor's host tests serve theirs."""

from __future__ import annotations

import lzma
import os
import queue
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clikit import FBUILD, JsonLines

DATA = Path(__file__).parent / "data" / "idf_monitor"


class LogServer:
    """A TCP "serial port" that sends what the test hands it. (pyserial's
    socket:// open discards what arrived before it finished: the test sends
    once `fbuild monitor` says the port is connected.)"""

    def __init__(self) -> None:
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.url = f"socket://127.0.0.1:{self.srv.getsockname()[1]}"
        self.chunks: queue.Queue[bytes | None] = queue.Queue()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.srv.accept()
        with conn:
            while (chunk := self.chunks.get()) is not None:
                conn.sendall(chunk)

    def close(self) -> None:
        self.chunks.put(None)
        self.srv.close()


@pytest.fixture
def server() -> Iterator[LogServer]:
    s = LogServer()
    yield s
    s.close()


def test_core_dump_is_one_event_and_addresses_are_decoded_under_their_line(
    server: LogServer, tmp_path: Path
) -> None:
    elf = tmp_path / "esp32.elf"
    elf.write_bytes(lzma.decompress((DATA / "esp32_app_symtab.elf.xz").read_bytes()))
    proc = subprocess.Popen(
        [*FBUILD, "monitor", "--port", server.url, "--elf", str(elf), "--json", "--timeout", "60"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "FBUILD_CACHE_DIR": str(tmp_path / "cache")},
    )
    ev = JsonLines(proc)
    try:
        ev.expect(lambda e: e["type"] == "port_state" and e["state"] == "connected")
        server.chunks.put((DATA / "esp32_uart_coredump.txt").read_bytes())
        # the dump itself is one event, every task's backtrace decoded
        dump = ev.expect(lambda e: e["type"] == "coredump")
        assert len(dump["tasks"]) == 8 and dump["chip"]
        # (the dump is decoded off the reader: the log may have got there first)
        ev.expect(lambda e: e["type"] == "serial_line" and "Rebooting" in e["text"], since=0)
        lines = [e for e in ev.seen if e["type"] == "serial_line"]
        # the base64 body is collapsed out of the log; the markers stay
        assert any("CORE DUMP START" in e["text"] for e in lines)
        assert len(lines) < 80, "the dump's base64 lines reached the log"
        # code addresses in any line are decoded as esp-idf-monitor does
        # (the ELF is indexed by now: the dump was decoded with it)
        server.chunks.put(b"I (5) app: handler at 0x400e37f4 failed\r\n")
        line = ev.expect(lambda e: e["type"] == "serial_line" and "handler at" in e["text"])
        (note,) = line["addresses"]
        assert note["address"] == 0x400E37F4 and note["function"]
        # no project: the index is kept in the user cache dir (by the ELF's
        # SHA-256), so the next `fbuild monitor --elf` decodes at once
        assert any((tmp_path / "cache" / "symbols").iterdir())
    finally:
        ev.kill()


def test_an_esp_idf_4_xtensa_panic_is_one_crash_with_its_backtrace() -> None:
    """ESP-IDF v4.2 prints `ELF file SHA256` before `Backtrace:` (v5 after
    it): one report, not a second, empty "backtrace" one."""
    from fbuild_watch.crash.report import PanicCollector, PanicReport

    reports: list[PanicReport] = []
    collector = PanicCollector(reports.append)
    text = (DATA / "esp32_uart_coredump.txt").read_text(errors="replace")
    for line in text.splitlines():
        collector.feed(line)
    collector.finish()
    (report,) = reports
    assert report.reason == "StoreProhibited" and report.elf_sha256
    assert report.crashed.backtrace == [0x400E37F4, 0x400D0C2E, 0x40087015]
