"""Helpers for tests that talk to virtual boards."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import serial

import fbuild_watch.sim as sim
from fbuild_watch.sim.board import VirtualBoard
from tests.fwkit import Build

_names = itertools.count()


def new_board(prefix: str = "t", **kwargs: object) -> VirtualBoard:
    """A fresh in-memory board with instant timing, registered for sim://."""
    kwargs.setdefault("timing", sim.INSTANT)
    board = VirtualBoard(f"{prefix}{next(_names)}", **kwargs)  # type: ignore[arg-type]
    return sim.add_board(board)


def preload(board: VirtualBoard, build: Build) -> None:
    """Put a build on the board's flash directly (as if flashed earlier)."""
    for off, f in (
        (0, build.bootloader_bin),
        (0x8000, build.partitions_bin),
        (0x10000, build.app_bin),
    ):
        data = f.read_bytes()
        board.flash.erase(off, len(data))
        board.flash.program(off, data)


def open_port(board: VirtualBoard, **kwargs: object) -> serial.SerialBase:
    kwargs.setdefault("baudrate", 115200)
    kwargs.setdefault("timeout", 0.05)
    return serial.serial_for_url(f"sim://{board.name}", **kwargs)


def read_until(port: serial.SerialBase, pattern: str | bytes, timeout: float = 5.0) -> bytes:
    """Read until `pattern` (regex) matches the accumulated bytes."""
    rx = re.compile(pattern.encode() if isinstance(pattern, str) else pattern, re.S)
    buf = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        buf += port.read(4096)
        if rx.search(buf):
            return buf
    raise AssertionError(
        f"pattern {rx.pattern!r} not seen in {timeout}s; got:\n{buf.decode(errors='replace')[-2000:]}"
    )


# -- esptool and fbuild as separate processes on sim:// ports -----------------
_SITECUSTOMIZE = '''\
"""Test-only: sim:// ports for this process, and the boards' counters at exit."""
import atexit
import json
import os

import fbuild_watch.sim  # registers sim:// with pyserial
from fbuild_watch.sim import registry

_states = {}
_make_board = registry.make_board


def _make_and_watch(opts):  # every state the board passes through, in order
    board = _make_board(opts)
    _states[board.name] = seen = [board.state.value]
    board.listeners.append(seen.append)
    return board


registry.make_board = _make_and_watch


def _dump() -> None:  # registered after the registry's: runs before it closes them
    out = {
        name: {
            **b.stats(),
            "state": b.state.value,
            "states": _states.get(name, []),
            "tx": bytes(b.tx_record or b"").decode("latin-1"),
        }
        for name, b in registry._boards.items()
    }
    with open(os.environ["SIM_STATS"], "w") as f:
        json.dump(out, f)


if os.environ.get("SIM_STATS"):
    atexit.register(_dump)
'''


def sim_process_env(tmp: Path) -> dict[str, str]:
    """Environment for a child process (esptool, fbuild) that opens sim://
    ports: boards' flash files under tmp/sim, and with SIM_STATS set, each
    board's counters written there as JSON when the process exits."""
    site = tmp / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["FBUILD_SIM_DIR"] = str(tmp / "sim")
    env["FBUILD_CACHE_DIR"] = str(tmp / "cache")
    return env


def esptool_run(
    *args: str, env: dict[str, str], cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`python -m esptool ARGS` to completion (stdout and stderr together)."""
    return subprocess.run(
        [sys.executable, "-m", "esptool", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )
