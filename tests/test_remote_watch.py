"""The whole watch loop on a board behind a network link (#20): `fbuild
watch --json --port rfc2217://...` on a copy of the example, through a
latency relay of the tests' own (10 ms each way), in front of

* `fbuild sim serve --protocol rfc2217` (our server: esptool's port manager
  over the virtual board), and
* esptool's own `esp_rfc2217_server`, unmodified, serving `sim://NAME`: the
  server is started with a `sitecustomize` on its PYTHONPATH that imports
  `fbuild_watch.sim`, which registers the `sim://` scheme with pyserial in
  its process (as the esptool suite's sim transport does). Its code opens
  the URL with `serial_for_url` as it opens any port, and its reset threads
  (esptool's UnixTightReset/HardReset) drive DTR/RTS through the sim port's
  descriptor, whose TIOCM* ioctls the sim port answers. A pty was the other
  way in, but a pty has no modem lines (TIOCMSET fails on it), so the
  server's resets could never reach the board.

Initial deploy, the new firmware's first line, a one-line edit of
src/version.h -> a sector-delta deploy -> the edited firmware's first line;
all over the one TCP connection the session opened, with the round trip
measured at connect."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.clikit import JsonLines, watch_json
from tests.examplekit import copy_example
from tests.netkit import LatencyRelay
from tests.simkit import sim_process_env
from tests.test_port_lending import esp_rfc2217_server

DELAY_S = 0.01  # each way: a 20 ms round trip, a board in another building
LOOP_TIMEOUT_S = 120.0  # a build and a deploy on a loaded 2-core machine


@contextlib.contextmanager
def sim_serve_rfc2217() -> Iterator[str]:
    """`fbuild sim serve --protocol rfc2217`: an erased board in its ROM loader."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "fbuild_watch", "sim", "serve", "--protocol", "rfc2217",
         "--listen", "127.0.0.1:0", "--timing", "instant", "--no-persist", "--name", "rw"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        m = re.search(r"(rfc2217://127\.0\.0\.1:\d+)", banner)
        assert m, banner + proc.stdout.read()
        yield m.group(1)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@contextlib.contextmanager
def esptools_server(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """esptool's `esp_rfc2217_server` serving a virtual board (`sim://`
    registered in its process by a sitecustomize: see the module's text)."""
    env = sim_process_env(tmp)
    monkeypatch.setenv("PYTHONPATH", env["PYTHONPATH"])  # the server inherits it
    monkeypatch.setenv("FBUILD_SIM_DIR", env["FBUILD_SIM_DIR"])
    with esp_rfc2217_server("sim://espserved?timing=instant&flash=") as tcp_port:
        yield f"rfc2217://127.0.0.1:{tcp_port}"


def the_loop(
    project: Path,
    port: str,
    env: dict[str, str],
    during: Callable[[JsonLines], None] = lambda _ev: None,
) -> dict[str, Any]:
    """`fbuild watch --json --port PORT` on the example: the initial deploy,
    its first line, `during(events)`, an edit -> sector-delta -> the new
    first line, a rebuild -> trust-skip, a full flash, quit (exit status 0,
    nothing on stderr). Returns the edit's deploy_finished event."""
    ev = watch_json(project, port, env)
    try:
        first = ev.expect(lambda e: e["type"] == "deploy_finished", LOOP_TIMEOUT_S)
        assert first["ok"], first
        ev.expect(_line("blink-c3 version 1.0.0"), LOOP_TIMEOUT_S, since=0)
        during(ev)

        since = len(ev.seen)
        version = project / "src" / "version.h"
        version.write_text(version.read_text().replace('"1.0.0"', '"1.0.7"'))
        dep = ev.expect(lambda e: e["type"] == "deploy_finished", LOOP_TIMEOUT_S)
        assert dep["ok"] and dep["kind"] == "sector-delta", dep
        assert 0 < dep["sectors_written"] <= 2, dep  # the app's version string (and its hash)
        ev.expect(_line("blink-c3 version 1.0.7"), LOOP_TIMEOUT_S, since=since)
        cycle = ev.expect(
            lambda e: e["type"] == "cycle_finished" and e.get("save_to_first_log_ms") is not None,
            LOOP_TIMEOUT_S,
            since=since,
        )
        assert cycle["save_to_first_log_ms"] > 0
        # the rest of the ladder over the link: the same image again is a
        # trust-skip (nothing sent); `f` writes everything
        since = len(ev.seen)
        ev.send("rebuild")
        skip = ev.expect(lambda e: e["type"] == "deploy_finished", LOOP_TIMEOUT_S, since=since)
        assert skip["ok"] and skip["kind"] == "trust-skip" and skip["wire_bytes"] == 0, skip
        since = len(ev.seen)
        ev.send("full-flash")
        full = ev.expect(lambda e: e["type"] == "deploy_finished", LOOP_TIMEOUT_S, since=since)
        assert full["ok"] and full["kind"] == "full", full
        ev.expect(_line("blink-c3 version 1.0.7"), LOOP_TIMEOUT_S, since=since)
        _quit(ev)
        return dep
    finally:
        ev.kill()


def _line(text: str) -> Any:
    return lambda e: e["type"] == "serial_line" and text in e["text"]


def _quit(ev: JsonLines) -> None:
    ev.send("quit")
    assert ev.proc.wait(timeout=30) == 0
    assert ev.proc.stderr is not None
    assert ev.proc.stderr.read() == ""


@pytest.mark.parametrize("server", ["fbuild sim serve", "esp_rfc2217_server"])
def test_the_loop_over_rfc2217_through_a_slow_link(
    server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = copy_example(tmp_path / "proj")
    env = {**os.environ, "FBUILD_CACHE_DIR": str(tmp_path / "cache")}
    serving = (
        sim_serve_rfc2217()
        if server == "fbuild sim serve"
        else esptools_server(tmp_path, monkeypatch)
    )
    with serving as url, LatencyRelay(url, DELAY_S) as relay:
        dep = the_loop(project, relay.url, env)
        # the round trip measured at connect is the relay's (wire time taken off)
        assert dep["rtt_ms"] is not None and dep["rtt_ms"] >= 2 * DELAY_S * 1000 * 0.9, dep
        assert dep["port"] == relay.url
        # the monitor, the connect ahead and both deploys shared the session's one
        # connection (an RFC 2217 server serves one client: a reopen could lose it)
        assert relay.connections == 1
        # then `fbuild monitor --no-reset` on the running app: it shows the app's
        # lines (behind esptool's port manager a DTR raise at open would reset
        # the chip into its ROM loader, and the monitor would show nothing)
        mon = subprocess.run(
            [sys.executable, "-m", "fbuild_watch", "monitor", "--no-reset", "--json",
             "--port", relay.url, "--until", "counter", "--timeout", "20"],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert mon.returncode == 0, mon.stdout[-2000:] + mon.stderr


def _serve(listen: str, flash: Path, env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fbuild_watch", "sim", "serve", "--protocol", "rfc2217",
         "--listen", listen, "--timing", "instant", "--flash", str(flash)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
        env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    banner = proc.stdout.readline()
    m = re.search(r"rfc2217://(127\.0\.0\.1:\d+)", banner)
    assert m, banner + proc.stdout.read()
    return proc, m.group(1)


def test_the_session_comes_back_when_the_rfc2217_server_restarts(tmp_path: Path) -> None:
    """The server restarts (a lab machine's service restarted, its flash
    kept): the port waits, reconnects to the new server and monitors again;
    trust is gone (someone could have written the board meanwhile), so the
    next edit verifies before it writes."""
    project = copy_example(tmp_path / "proj")
    env = {**os.environ, "FBUILD_CACHE_DIR": str(tmp_path / "cache"),
           "FBUILD_SIM_DIR": str(tmp_path / "sim")}  # fmt: skip
    flash = tmp_path / "board.flash"
    server, address = _serve("127.0.0.1:0", flash, env)
    ev = watch_json(project, f"rfc2217://{address}", env)
    try:
        first = ev.expect(lambda e: e["type"] == "deploy_finished", LOOP_TIMEOUT_S)
        assert first["ok"], first
        ev.expect(_line("blink-c3 version 1.0.0"), LOOP_TIMEOUT_S, since=0)
        server.terminate()  # its flash saved
        assert server.wait(timeout=10) == 0
        ev.expect(lambda e: e["type"] == "port_state" and e["state"] == "waiting", 30)
        since = len(ev.seen)
        server, _ = _serve(address, flash, env)
        ev.expect(
            lambda e: e["type"] == "port_state" and e["state"] == "connected", 60, since=since
        )
        ev.expect(_line("blink: counter"), LOOP_TIMEOUT_S, since=since)  # monitored again
        # what the board holds is not known any more: the next edit verifies
        since = len(ev.seen)
        version = project / "src" / "version.h"
        version.write_text(version.read_text().replace('"1.0.0"', '"1.0.8"'))
        again = ev.expect(lambda e: e["type"] == "deploy_finished", LOOP_TIMEOUT_S, since=since)
        assert again["ok"] and again["kind"] == "verify-probe", again
        ev.expect(_line("blink-c3 version 1.0.8"), LOOP_TIMEOUT_S, since=since)
        _quit(ev)
    finally:
        ev.kill()
        server.terminate()
        server.wait(timeout=10)
