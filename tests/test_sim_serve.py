"""`fbuild sim serve` as a device: sequential esptool clients on one board
that keeps its state between them (stub reuse, baud), a clean stop on
Ctrl+C / SIGTERM with the flash saved, and one board per flash file."""

from __future__ import annotations

import re
import signal
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
            second = serial.serial_for_url(s.url, timeout=1)
            with second, pytest.raises(serial.SerialException, match="socket disconnected"):
                second.read(1)  # the server closed it at once: the port is busy
        out = esptool(s, env, "flash-id")  # and the board serves the next one
        assert "Manufacturer:" in out
    finally:
        code, _, out = s.stop(signal.SIGTERM)
    assert code == 0 and "refused" in out and "busy" in out


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
