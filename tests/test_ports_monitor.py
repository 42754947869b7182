"""Port discovery and `fbuild monitor`."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest

from fbuild_watch.deploy import BoardWorker, describe, ports
from fbuild_watch.errors import RuntimeFailure
from tests.simkit import new_board, open_port, read_until


def _fake(device: str, vid: int | None, pid: int | None) -> SimpleNamespace:
    return SimpleNamespace(device=device, vid=vid, pid=pid, serial_number="SN" + device[-1], location="1-1",
                           description="usb serial")  # fmt: skip


def test_port_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ESPPORT", raising=False)
    found = [_fake("/dev/ttyUSB0", 0x10C4, 0xEA60), _fake("/dev/ttyS0", None, None)]
    monkeypatch.setattr(ports.list_ports, "comports", lambda: found)
    only = ports.resolve_ports(None)
    assert [p.url for p in only] == ["/dev/ttyUSB0"] and only[
        0
    ].description == "Silicon Labs CP210x"
    found.append(_fake("/dev/ttyACM1", 0x303A, 0x1001))
    with pytest.raises(
        RuntimeFailure,
        match=r"several possible ESP ports: /dev/ttyUSB0 \(Silicon Labs CP210x\), /dev/ttyACM1 \(Espressif USB-Serial/JTAG\)",
    ):
        ports.resolve_ports(None)
    monkeypatch.setenv("ESPPORT", "sim://x")
    assert [p.url for p in ports.resolve_ports(None)] == ["sim://x"]
    assert [p.url for p in ports.resolve_ports(["/dev/ttyACM1"])] == ["/dev/ttyACM1"]
    assert ports.resolve_ports(["/dev/ttyACM1"])[0].usb_jtag
    found.clear()
    monkeypatch.delenv("ESPPORT")
    with pytest.raises(RuntimeFailure, match="no ESP board found"):
        ports.resolve_ports(None)


def test_monitor_until_and_timeout(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # an erased virtual board: the ROM's invalid-header loop is the log
    cmd = [
        sys.executable,
        "-m",
        "fbuild_watch",
        "monitor",
        "--port",
        "sim://m?timing=instant&flash=",
        "--plain",
    ]
    res = subprocess.run([*cmd, "--until", "invalid header", "--timeout", "20"], capture_output=True, text=True,
                         timeout=60, stdin=subprocess.DEVNULL)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "[m] invalid header: 0xffffffff" in res.stdout
    res = subprocess.run([*cmd, "--until", "never printed", "--timeout", "1"], capture_output=True, text=True,
                         timeout=60, stdin=subprocess.DEVNULL)  # fmt: skip
    assert res.returncode == 1


def test_deploy_to_missing_port_is_one_line_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from fbuild_watch.build import detect_backend, run_build
    from tests.examplekit import copy_example

    project = copy_example(tmp_path / "p")
    assert run_build(detect_backend(project)).ok
    res = subprocess.run([sys.executable, "-m", "fbuild_watch", "deploy", "--port", "/dev/does-not-exist",
                          str(project)], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert res.returncode == 1
    assert res.stderr.strip().count("\n") == 0 and "/dev/does-not-exist" in res.stderr


def test_cancel_read_like_pyserial_posix() -> None:
    board = new_board()
    port = open_port(board, timeout=5)
    board.reset(download=True)  # then quiet, waiting for a command
    read_until(port, r"waiting for download")
    port.reset_input_buffer()
    # a blocked read returns at once when cancelled from another thread
    timer = threading.Timer(0.05, port.cancel_read)
    timer.start()
    t0 = time.monotonic()
    assert port.read(1) == b""
    assert time.monotonic() - t0 < 2
    # a cancel with no read in progress cuts the next read short ...
    port.cancel_read()
    t0 = time.monotonic()
    assert port.read(1) == b"" and time.monotonic() - t0 < 2
    # ... unless it is cleared first (what a deploy does once the reader paused)
    port.cancel_read()
    port.clear_cancel_read()  # type: ignore[attr-defined]
    port.timeout = 0.2
    t0 = time.monotonic()
    assert port.read(1) == b"" and time.monotonic() - t0 >= 0.15
    port.close()


def test_jobs_run_on_the_worker_thread_with_the_port_lent() -> None:
    """The worker that reads the port runs the jobs: no hand-over, no read to
    cancel; a foreign thread cannot take the port."""
    board = new_board()
    conn = BoardWorker(describe(f"sim://{board.name}"))
    conn.open()
    try:
        for _ in range(20):  # the worker is caught in and between reads

            def job() -> str:
                with conn.lend() as use:
                    assert not use.port._port._cancel.is_set()
                    return threading.current_thread().name

            # the reader's thread, named for what it does while the port is lent
            assert conn.call(job) == f"esptool-sim://{board.name}"
        with pytest.raises(RuntimeError, match="lend"), conn.lend():
            pass
    finally:
        conn.close()
