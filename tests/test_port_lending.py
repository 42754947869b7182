"""The port a deploy lends to esptool: esptool's settings while it has it,
ours back after; and a port another client holds is "port busy" (one line)
on every port type, never an AttributeError."""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fbuild_watch.deploy import BoardDeployer, BoardWorker, describe
from fbuild_watch.deploy.worker import READ_TIMEOUT_S
from fbuild_watch.errors import RuntimeFailure
from fbuild_watch.image import load_flasher_args
from tests.clikit import run_fbuild
from tests.fwkit import Build
from tests.simkit import new_board


def _serve(tmp_path: Path, timing: str) -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fbuild_watch", "sim", "serve", "--listen", "127.0.0.1:0",
         "--timing", timing, "--no-persist"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"(socket://[\d.]+:\d+)", line)
    assert match, line + (proc.stderr.read() if proc.stderr else "")
    try:
        yield match.group(1)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def served_realistic(tmp_path: Path) -> Iterator[str]:
    """`fbuild sim serve` with realistic UART/flash timing, on loopback."""
    yield from _serve(tmp_path, "realistic")


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    yield from _serve(tmp_path, "instant")


def test_stub_deploy_over_socket_with_realistic_timing(
    served_realistic: str, firmware: Build
) -> None:
    """esptool reads the stub's OHAI outside any command, with the port's
    standing timeout: the reader's 10 ms failed every such deploy."""
    layout = load_flasher_args(firmware.flasher_args).validate()
    conn = BoardWorker(describe(served_realistic), baud=115200)
    conn.open()
    try:
        dep = BoardDeployer(conn, baud=115200, stub=True)
        out = dep.deploy(layout, full=True)
        assert out.ok, out.error
        assert out.kind == "full" and out.stub_used
        assert out.flash_state == "verified"
        # the reader has its own settings back
        assert conn.port is not None
        assert conn.port.timeout == READ_TIMEOUT_S
        assert conn.port.baudrate == 115200
        assert conn.port.write_timeout is None
    finally:
        conn.close()


def test_lent_port_has_esptools_settings_and_ours_after() -> None:
    board = new_board()
    conn = BoardWorker(describe(f"sim://{board.name}"), baud=74880)
    conn.open()
    try:

        def job() -> None:
            with conn.lend() as use:
                assert use.port.timeout == 3  # esptool's DEFAULT_TIMEOUT
                assert use.port.baudrate == 115200  # esptool's ESP_ROM_BAUD
                assert use.port.write_timeout == 10  # esptool's DEFAULT_SERIAL_WRITE_TIMEOUT
                assert use.port.inter_byte_timeout is None
                use.port.timeout = 0.5  # esptool changes them freely while it has the port

        conn.call(job)
        assert conn.port is not None
        assert (conn.port.timeout, conn.port.baudrate) == (READ_TIMEOUT_S, 74880)
        assert conn.port.write_timeout is None
    finally:
        conn.close()


def _one_line_error(res: subprocess.CompletedProcess[str]) -> str:
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("fbuild: error: "), res.stderr
    return lines[0].removeprefix("fbuild: error: ")


def test_second_client_of_a_served_board_is_port_busy(
    served: str, firmware: Build, tmp_path: Path
) -> None:
    """`fbuild deploy` while this process's monitor holds the served board."""
    project = tmp_path / "proj"
    shutil.copytree(firmware.dir, project / "build")
    (project / "fbuild.toml").write_text(
        "[build]\ncommand = ['true']\nflasher_args = 'build/flasher_args.json'\n"
    )
    monitor = BoardWorker(describe(served))
    monitor.open()
    try:
        res = run_fbuild("deploy", "--port", served, str(project), env=dict(os.environ))
        assert res.returncode == 1, res.stdout + res.stderr
        line = _one_line_error(res)
        assert "port busy" in line and served in line, line
        assert "NoneType" not in res.stderr and "Traceback" not in res.stderr
        # in-process, a second connection says the same at open
        with pytest.raises(RuntimeFailure, match="port busy"):
            BoardWorker(describe(served)).open()
        assert monitor.state == "connected"  # the holder is undisturbed
    finally:
        monitor.close()


@pytest.fixture
def late_closing_server() -> Iterator[str]:
    """A busy TCP serial server whose close comes after our open has
    returned (a slow network): accepts, then closes with no byte sent."""
    srv = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        srv.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Timer(0.3, conn.close).start()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    host, port = srv.getsockname()[:2]
    yield f"socket://{host}:{port}"
    stop.set()
    srv.close()
    t.join(timeout=2)


def test_a_late_close_is_port_busy_and_a_deploy_never_an_attribute_error(
    late_closing_server: str, firmware: Build
) -> None:
    """The close comes after our open returned: the reader says "port busy"
    (not "disappeared"), and a deploy racing the reader fails with a message,
    not `'NoneType' object has no attribute 'baudrate'`."""
    layout = load_flasher_args(firmware.flasher_args).validate()
    states: queue.Queue[tuple[str, str]] = queue.Queue()
    conn = BoardWorker(describe(late_closing_server), on_state=lambda s, m: states.put((s, m)))
    conn.open()  # the close has not come yet
    try:
        assert states.get(timeout=5) == ("connected", "")
        state, message = states.get(timeout=5)
        assert state == "waiting" and "port busy" in message, message
        out = BoardDeployer(conn, baud=115200).deploy(layout)
        assert not out.ok
        assert out.error and "NoneType" not in out.error, out.error
        assert out.flash_state == "unchanged: nothing was written"
    finally:
        conn.close()


def test_second_sim_connection_is_port_busy() -> None:
    board = new_board()
    url = f"sim://{board.name}"
    first = BoardWorker(describe(url))
    first.open()
    try:
        with pytest.raises(RuntimeFailure, match=rf"^{re.escape(url)}: port busy"):
            BoardWorker(describe(url)).open()
    finally:
        first.close()


@contextlib.contextmanager
def esp_rfc2217_server(served: str) -> Iterator[int]:
    """esptool's own RFC 2217 server in front of the served board; its port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        tcp_port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "esp_rfc2217_server", "-p", str(tcp_port), served],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "Waiting for connection" in line:
                break
        yield tcp_port
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_second_client_of_an_rfc2217_server_is_port_busy(served: str) -> None:
    """A second client waits in the server's backlog, unanswered, until
    pyserial gives up."""
    with esp_rfc2217_server(served) as tcp_port:
        url = f"rfc2217://127.0.0.1:{tcp_port}?ign_set_control"
        first = BoardWorker(describe(url))
        first.open()
        try:
            with pytest.raises(RuntimeFailure, match=rf"^{re.escape(url)}: port busy"):
                BoardWorker(describe(url)).open()
        finally:
            first.close()


def test_a_plain_rfc2217_url_works_with_esptools_server(served: str) -> None:
    """esptool's esp_rfc2217_server never confirms SET_CONTROL: pyserial
    gave up after 3 s on `rfc2217://HOST:PORT` without `?ign_set_control`."""
    with esp_rfc2217_server(served) as tcp_port:
        worker = BoardWorker(describe(f"rfc2217://127.0.0.1:{tcp_port}"))
        worker.open()
        try:
            assert worker.state == "connected"
        finally:
            worker.close()
