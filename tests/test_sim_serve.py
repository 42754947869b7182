"""`fbuild sim serve` as a device: sequential esptool clients on one board
that keeps its state between them (stub reuse, baud), a clean stop on
Ctrl+C / SIGTERM with the flash saved, one board per flash file, and
several boards from one command (`--board NAME=HOST:PORT`)."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial

from tests.fwkit import Build
from tests.simkit import esptool_run, sim_process_env

FBUILD = [sys.executable, "-m", "fbuild_watch"]


class Served:
    def __init__(self, proc: subprocess.Popen[str], url: str, banner: str) -> None:
        self.proc = proc
        self.url = url
        self.banner = banner

    def stop(self, sig: int) -> tuple[int, float, str]:
        """Send `sig`; (exit code, seconds to exit, the rest of stdout)."""
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        out, _ = self.proc.communicate(timeout=10)
        return self.proc.returncode, time.monotonic() - t0, out


def serve(env: dict[str, str], *args: str) -> Served:
    proc = subprocess.Popen(
        [*FBUILD, "sim", "serve", "--listen", "127.0.0.1:0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    banner = proc.stdout.readline()
    m = re.search(r"(socket|rfc2217)://\S+", banner)
    if m is None:
        proc.kill()
        raise AssertionError(f"no server: {banner}{proc.communicate()[0]}")
    url = m.group(0) + ("?ign_set_control" if m.group(1) == "rfc2217" else "")
    return Served(proc, url, banner)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    yield sim_process_env(tmp_path)


def esptool(served: Served, env: dict[str, str], *args: str) -> str:
    res = esptool_run("--chip", "esp32c3", "--port", served.url, *args, env=env)
    assert res.returncode == 0, res.stdout
    return res.stdout


@pytest.mark.parametrize("baud", ["115200", "460800"])
def test_stub_reuse_across_clients(env: dict[str, str], baud: str) -> None:
    """esptool's TestStubReuse against the served board, also after a baud
    change: the stub a client left running serves the next client."""
    s = serve(env, "--no-persist", "--timing", "instant")
    try:
        out = esptool(s, env, "--baud", baud, "--after", "no-reset-stub", "flash-id")
        assert "Manufacturer:" in out and "Uploading stub flasher" in out
        # sync first: it answers as the stub, which esptool then keeps using
        out = esptool(s, env, "--baud", baud, "--before", "no-reset", "flash-id")
        assert "Manufacturer:" in out and "Uploading stub flasher" not in out
        # (that client's --after hard-reset cannot reach the board over TCP)
        out = esptool(s, env, "--baud", baud, "--before", "no-reset-no-sync", "flash-id")
        assert "Manufacturer:" in out and "Uploading stub flasher" not in out
        out = esptool(s, env, "--baud", "115200", "--before", "no-reset", "flash-id")
        assert "Manufacturer:" in out
    finally:
        code, _, out = s.stop(signal.SIGTERM)
    assert code == 0, out
    assert out.count("connected") == 4 and out.count("left") == 4


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_stop_after_a_client_saves_the_flash(
    env: dict[str, str], firmware: Build, tmp_path: Path, sig: int
) -> None:
    image = tmp_path / "served.flash"
    s = serve(env, "--flash", str(image), "--timing", "instant")
    app = firmware.app_bin.read_bytes()
    # the client writes, verifies and "resets" (nothing over TCP), and leaves
    esptool(s, env, "--baud", "460800", "write-flash", "0x10000", str(firmware.app_bin))
    code, took, out = s.stop(sig)
    assert code == 0 and took < 1.0, (code, took, out)
    assert f"stopped (flash saved to {image})" in out
    assert image.read_bytes()[0x10000 : 0x10000 + len(app)] == app


def test_a_second_server_on_one_flash_is_refused(env: dict[str, str], tmp_path: Path) -> None:
    image = tmp_path / "one.flash"
    first = serve(env, "--name", "one", "--flash", str(image), "--timing", "instant")
    try:
        res = subprocess.run(
            [*FBUILD, "sim", "serve", "--listen", "127.0.0.1:0", "--name", "two",
             "--flash", str(image)],
            capture_output=True, text=True, env=env, timeout=30,
        )  # fmt: skip
        assert res.returncode == 1
        line = res.stderr.strip().splitlines()[-1]
        assert "busy" in line and str(image) in line and f"process {first.proc.pid}" in line
    finally:
        assert first.stop(signal.SIGTERM)[0] == 0


def test_sim_port_beside_a_served_board_of_that_name_is_busy(env: dict[str, str]) -> None:
    s = serve(env, "--name", "demo", "--timing", "instant")
    try:
        res = esptool_run("--chip", "esp32c3", "--port", "sim://demo", "flash-id", env=env)
        assert res.returncode != 0
        assert "Device or resource busy" in res.stdout and f"process {s.proc.pid}" in res.stdout
    finally:
        assert s.stop(signal.SIGTERM)[0] == 0
    # the server is gone: the name is free again
    res = esptool_run("--chip", "esp32c3", "--port", "sim://demo", "flash-id", env=env)
    assert res.returncode == 0, res.stdout


def test_second_client_at_once_is_refused(env: dict[str, str]) -> None:
    s = serve(env, "--no-persist", "--timing", "instant")
    try:
        first = serial.serial_for_url(s.url, timeout=1)
        with first:
            second = serial.serial_for_url(s.url, timeout=5)
            with second, pytest.raises(serial.SerialException, match="socket disconnected"):
                second.read(1)  # the server closed it: the port is busy
        out = esptool(s, env, "flash-id")  # and the board serves the next one
        assert "Manufacturer:" in out
    finally:
        code, _, out = s.stop(signal.SIGTERM)
    assert code == 0 and "refused" in out and "busy" in out


SYNC = b"\xc0\x00\x08\x24\x00\x00\x00\x00\x00\x07\x07\x12\x20" + b"\x55" * 32 + b"\xc0"


def synced(port: serial.SerialBase) -> bytes:
    """SYNC until the loader answers, as esptool does; what came back."""
    seen = b""
    for _ in range(25):
        port.write(SYNC)
        seen += port.read(4096)
        if b"\xc0\x01\x08" in seen:
            break
    return seen


def _drop(port: serial.SerialBase) -> None:
    """The client's end of the connection closed at once, as when its process
    exits (pyserial's own close() of an RFC 2217 port then waits 0.3 s)."""
    sock = getattr(port, "_socket", None)
    if sock is not None:
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()


@pytest.mark.parametrize("protocol", ["raw", "rfc2217"])
def test_a_client_right_after_the_last_one_left_is_served(
    env: dict[str, str], protocol: str
) -> None:
    """One process's port closes and the next opens it at once, as esptool's
    suite does between tests: the server may still be tearing the first
    connection down, and must not refuse the second as busy (esptool's
    esp_rfc2217_server queues it; a closed serial port is free at once)."""
    s = serve(env, "--no-persist", "--timing", "instant", "--protocol", protocol)
    old: list[serial.SerialBase] = []
    try:
        for _ in range(5):
            port = serial.serial_for_url(s.url, baudrate=115200, timeout=0.2)
            old.append(port)
            assert b"\xc0\x01\x08" in synced(port)  # served, not closed as busy
            _drop(port)
    finally:
        for each in old:
            each.close()
        code, _, out = s.stop(signal.SIGTERM)
    assert code == 0 and "refused" not in out, out


def test_serve_rejects_bad_names_and_options(env: dict[str, str]) -> None:
    for args, message in (
        (["--name", "../x"], "board name must be"),
        (["--flash-size", "3MB"], "flash_size must be one of"),
        (["--mac", "12"], "mac must be 6 bytes"),
    ):
        res = subprocess.run(
            [*FBUILD, "sim", "serve", "--listen", "127.0.0.1:0", *args],
            capture_output=True, text=True, env=env, timeout=30,
        )  # fmt: skip
        assert res.returncode == 2 and message in res.stderr, (args, res.stderr)


def test_served_flash_part_and_mac(env: dict[str, str]) -> None:
    s = serve(
        env, "--no-persist", "--timing", "instant", "--flash-id", "ef4018",
        "--mac", "58:cf:79:00:00:09",
    )  # fmt: skip
    try:
        out = esptool(s, env, "flash-id")
        assert "Detected flash size: 16MB" in out and "Manufacturer: ef" in out
        assert "58:cf:79:00:00:09" in out
    finally:
        assert s.stop(signal.SIGTERM)[0] == 0


def test_stop_while_a_client_is_connected(env: dict[str, str], tmp_path: Path) -> None:
    s = serve(env, "--flash", str(tmp_path / "busy.flash"))
    client = serial.serial_for_url(s.url, timeout=0.2)
    sync = b"\x00\x08\x24\x00\x00\x00\x00\x00\x07\x07\x12\x20" + b"\x55" * 32
    try:
        seen = b""
        for _ in range(25):  # as esptool does: SYNC until the loader answers
            client.write(b"\xc0" + sync + b"\xc0")
            seen += client.read(4096)
            if b"\xc0\x01\x08" in seen:
                break
        assert b"\xc0\x01\x08" in seen, seen  # the client is being served
        code, took, out = s.stop(signal.SIGINT)
    finally:
        client.close()
    assert code == 0 and took < 1.0, (code, took, out)
    assert "stopped (flash saved to" in out


def test_a_closed_stdout_does_not_stop_the_server(env: dict[str, str]) -> None:
    """`fbuild sim serve | head -1` (a script that reads the address and
    goes away): the board is still served, and the stop is clean, with no
    traceback from the lines nobody reads."""
    proc = subprocess.Popen(
        [*FBUILD, "sim", "serve", "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    m = re.search(r"socket://\S+", proc.stdout.readline())
    assert m is not None
    proc.stdout.close()
    client = serial.serial_for_url(m.group(0), timeout=0.2)
    sync = b"\x00\x08\x24\x00\x00\x00\x00\x00\x07\x07\x12\x20" + b"\x55" * 32
    try:
        seen = b""
        for _ in range(25):
            client.write(b"\xc0" + sync + b"\xc0")
            seen += client.read(4096)
            if b"\xc0\x01\x08" in seen:
                break
        assert b"\xc0\x01\x08" in seen, seen
    finally:
        client.close()
    proc.send_signal(signal.SIGTERM)
    err = proc.stderr.read()
    assert proc.wait(timeout=10) == 0, err
    assert "Traceback" not in err and "Exception ignored" not in err, err


def test_rfc2217_carries_resets_and_the_baud(env: dict[str, str]) -> None:
    """Served over RFC 2217 the board is reset into its loader by esptool's
    own reset sequence (no stub left over from the client before) and
    follows the flashing baud, as behind esptool's esp_rfc2217_server."""
    s = serve(env, "--no-persist", "--timing", "instant", "--protocol", "rfc2217")
    try:
        assert s.url.startswith("rfc2217://")
        out = esptool(s, env, "--baud", "460800", "--after", "no-reset-stub", "flash-id")
        assert "Manufacturer:" in out and "Changing baud rate to 460800" in out
        # the next client resets the chip: a fresh ROM, so the stub is uploaded again
        out = esptool(s, env, "--baud", "460800", "flash-id")
        assert "Uploading stub flasher" in out and "Manufacturer:" in out
    finally:
        code, _, out = s.stop(signal.SIGTERM)
    assert code == 0, out
    assert out.count("connected (RFC 2217)") == 2


def serve_boards(env: dict[str, str], *args: str) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """`fbuild sim serve --board ...`: the process and each board's URL, from
    the banner lines it prints before serving."""
    names = [args[i + 1].split("=", 1)[0] for i, a in enumerate(args) if a == "--board"]
    proc = subprocess.Popen(
        [*FBUILD, "sim", "serve", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        text=True, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    urls: dict[str, str] = {}
    for _ in names:
        line = proc.stdout.readline()
        m = re.search(r"virtual ESP32-C3 '([^']+)' on ((?:socket|rfc2217)://\S+)", line)
        if m is None:
            proc.kill()
            raise AssertionError(f"no server: {line}{proc.communicate()[0]}")
        urls[m.group(1)] = m.group(2)
    assert sorted(urls) == sorted(names), urls
    return proc, urls


def esptool_start(env: dict[str, str], url: str, image: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "esptool", "--chip", "esp32c3", "--port", url,
         "--baud", "460800", "write-flash", "0x10000", image],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )  # fmt: skip


def stop(proc: subprocess.Popen[str], sig: int) -> tuple[int, float, str]:
    t0 = time.monotonic()
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=10)
    return proc.returncode, time.monotonic() - t0, out


def test_two_boards_from_one_command_flashed_at_once(env: dict[str, str], tmp_path: Path) -> None:
    """`--board NAME=HOST:PORT` twice: two boards, each its own flash file in
    the sim directory, flashed by two esptool processes at the same time;
    SIGTERM stops both at once with both flashes saved."""
    import random

    images = {n: tmp_path / f"{n}.bin" for n in ("left", "right")}
    for i, path in enumerate(images.values()):
        path.write_bytes(random.Random(i).randbytes(0x8000))
    proc, urls = serve_boards(
        env, "--board", "left=127.0.0.1:0", "--board", "right=127.0.0.1:0",
        "--timing", "instant",
    )  # fmt: skip
    try:
        assert urls["left"] != urls["right"]
        clients = {n: esptool_start(env, urls[n], str(images[n])) for n in urls}
        for n, c in clients.items():
            out, _ = c.communicate(timeout=120)
            assert c.returncode == 0 and "Hash of data verified" in out, (n, out)
    finally:
        code, took, out = stop(proc, signal.SIGTERM)
    assert code == 0 and took < 1.0, (code, took, out)
    sim_dir = Path(env["FBUILD_SIM_DIR"])
    for n, image in images.items():
        assert f"stopped '{n}' (flash saved to {sim_dir / f'{n}.flash'})" in out, out
        assert f"{n}: client" in out  # each board's events carry its name
        flash = (sim_dir / f"{n}.flash").read_bytes()
        assert flash[0x10000:0x18000] == image.read_bytes(), n


def test_several_boards_stop_within_a_second_with_clients_connected(
    env: dict[str, str],
) -> None:
    names = ("a", "b", "c")
    args = [x for n in names for x in ("--board", f"{n}=127.0.0.1:0")]
    proc, urls = serve_boards(env, *args, "--protocol", "rfc2217")
    sync = b"\xc0\x00\x08\x24\x00\x00\x00\x00\x00\x07\x07\x12\x20" + b"\x55" * 32 + b"\xc0"
    ports = [
        serial.serial_for_url(f"{urls[n]}?ign_set_control", baudrate=115200, timeout=0.2)
        for n in names
    ]
    try:
        for port in ports:  # each client is being served (its board answers SYNC)
            seen = b""
            for _ in range(25):
                port.write(sync)
                seen += port.read(4096)
                if b"\xc0\x01\x08" in seen:
                    break
            assert b"\xc0\x01\x08" in seen, seen
        code, took, out = stop(proc, signal.SIGINT)
    finally:
        for port in ports:
            port.close()
    assert code == 0 and took < 1.0, (code, took, out)
    sim_dir = Path(env["FBUILD_SIM_DIR"])
    for n in names:
        assert f"stopped '{n}' (flash saved to {sim_dir / f'{n}.flash'})" in out, out
        assert (sim_dir / f"{n}.flash").stat().st_size == 4 << 20


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--board", "a=127.0.0.1:0", "--name", "x"], "--name describe a single board"),
        (["--board", "a=127.0.0.1:0", "--listen", "127.0.0.1:0"], "--listen describe"),
        (["--board", "a=127.0.0.1:0", "--board", "a=127.0.0.1:0"], "board 'a' is given twice"),
        (["--board", "a=127.0.0.1:7", "--board", "b=127.0.0.1:7"], "two boards on 127.0.0.1:7"),
        (["--board", "a"], "--board expects NAME=HOST:PORT, got 'a'"),
        (["--board", "a=127.0.0.1:x"], "--board a expects HOST:PORT"),
        (["--board", "../a=127.0.0.1:0"], "board name must be"),
    ],
)
def test_board_option_errors(env: dict[str, str], args: list[str], message: str) -> None:
    res = subprocess.run(
        [*FBUILD, "sim", "serve", *args], capture_output=True, text=True, env=env, timeout=30
    )
    assert res.returncode == 2 and message in res.stderr, res.stderr


def test_one_busy_board_refuses_the_command(env: dict[str, str]) -> None:
    """All or none: a board whose flash another server holds fails the whole
    command, naming that board, before any board is served."""
    holder = serve(env, "--name", "b", "--timing", "instant")
    try:
        res = subprocess.run(
            [*FBUILD, "sim", "serve", "--board", "a=127.0.0.1:0", "--board", "b=127.0.0.1:0"],
            capture_output=True, text=True, env=env, timeout=30,
        )  # fmt: skip
        assert res.returncode == 1, res.stdout + res.stderr
        line = res.stderr.strip().splitlines()[-1]
        assert "board 'b' is busy" in line and f"process {holder.proc.pid}" in line, line
        assert "virtual ESP32-C3" not in res.stdout  # nothing was served
    finally:
        assert holder.stop(signal.SIGTERM)[0] == 0
