"""Run esptool's own hardware test suite (vendored in `upstream/`) against a
virtual ESP32-C3 and sort its results against `expected.py`.

The suite runs in its own pytest process, on a private copy of `upstream/`
(it writes beside its test file), with esptool's conftest as the root
conftest: none of this project's pytest configuration applies to it. Every
Python process it starts (esptool, esp_rfc2217_server, pytest itself) gets
the `sim://` scheme from a generated `sitecustomize`, as a real user's
Python would get a driver.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import fbuild_watch
from tests.esptool_suite.expected import (
    RFC2217,
    SERVE,
    SIM,
    TRANSPORTS,
    Expected,
    expected_for,
)

UPSTREAM = Path(__file__).resolve().parent / "upstream"
CHIP = "esp32c3"
PER_TEST_TIMEOUT_S = 300  # one hung esptool call fails its test, not the run
SUITE_TIMEOUT_S = 3600
SERVER_START_TIMEOUT_S = 60

_SITECUSTOMIZE = "import fbuild_watch.sim  # registers sim:// with pyserial\n"
_PYTEST_INI = f"[pytest]\ntimeout = {PER_TEST_TIMEOUT_S}\n"


@dataclass
class SuiteRun:
    transport: str
    port: str
    outcomes: dict[str, str]  # test id -> passed | failed | skipped
    messages: dict[str, str]  # test id -> failure / skip message (first line)
    seconds: float
    log: Path
    expected: dict[str, Expected]
    server_returncode: int | None = None
    server_log: Path | None = None
    skip_reasons: dict[str, int] = field(default_factory=dict)
    selected: list[str] | None = None  # node ids, when a plan chose them
    shards: int = 1  # boards the run was spread over, each with its own pytest

    def ids(self, outcome: str) -> list[str]:
        return [t for t, o in self.outcomes.items() if o == outcome]

    def unexpected_failures(self) -> list[str]:
        return [t for t in self.ids("failed") if t not in self.expected]

    def unexpected_passes(self) -> list[str]:
        return [t for t in self.ids("passed") if t in self.expected]

    def unknown_expected(self) -> list[str]:
        """Listed in expected.py but not in the suite (a typo, or a rename upstream)."""
        if self.selected is not None:  # only part of it may have run: that part can tell
            ran = {test_id(n) for n in self.selected}
            return [t for t in self.expected if t in ran and t not in self.outcomes]
        return [t for t in self.expected if t not in self.outcomes]

    def not_run(self) -> list[str]:
        """Node ids a plan chose that have no outcome (pytest did not find them)."""
        chosen = {n.split("::", 1)[1] for n in self.selected or []}
        return sorted(chosen - set(self.outcomes))

    def counts(self) -> dict[str, int]:
        failed = self.ids("failed")
        return {
            "collected": len(self.outcomes),
            "passed": len(self.ids("passed")),
            "skipped": len(self.ids("skipped")),
            "expected_fail": sum(t in self.expected for t in failed),
            "failed": len(self.unexpected_failures()),
            "unexpected_pass": len(self.unexpected_passes()),
        }

    def summary(self) -> str:
        lines = [
            f"esptool suite over {self.transport} ({self.port}): {self.counts()} "
            f"in {self.seconds:.0f} s on {self.shards} board(s); log {self.log}"
        ]
        lines.append(f"  skipped, by reason: {self.skip_reasons}")
        lines += [f"  FAILED {t}: {self.messages.get(t, '')}" for t in self.unexpected_failures()]
        lines += [
            f"  PASSED but listed in expected.py, remove it: {t}" for t in self.unexpected_passes()
        ]
        lines += [
            f"  expected.py names a test the suite lacks: {t}" for t in self.unknown_expected()
        ]
        lines += [f"  chosen but not run: {t}" for t in self.not_run()]
        if self.server_returncode not in (None, 0):
            lines.append(
                f"  fbuild sim serve exited {self.server_returncode} on SIGTERM; log "
                f"{self.server_log}"
            )
        return "\n".join(lines)


@dataclass
class ServerExit:
    log: Path
    returncode: int | None = None


def stage(workdir: Path) -> Path:
    """A private copy of the suite laid out as in esptool's repository: the
    test directory, with `esp_rfc2217_server` (which the suite runs as
    `test/../esp_rfc2217_server`) beside it. Returns the test directory."""
    test_dir = workdir / "test"
    shutil.copytree(UPSTREAM, test_dir, ignore=shutil.ignore_patterns("__pycache__"))
    spec = importlib.util.find_spec("esp_rfc2217_server")
    assert spec is not None and spec.submodule_search_locations, "esptool is not installed"
    (workdir / "esp_rfc2217_server").symlink_to(next(iter(spec.submodule_search_locations)))
    site = workdir / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    (workdir / "pytest.ini").write_text(_PYTEST_INI)
    for d in ("tmp", "sim", "cache"):
        (workdir / d).mkdir()
    return test_dir


def suite_env(workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(fbuild_watch.__file__).resolve().parent.parent)
    paths = [str(workdir / "site"), env.get("PYTHONPATH", ""), root]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    # The suite runs `esptool.py -h` and friends from PATH: this interpreter's.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["TMPDIR"] = str(workdir / "tmp")  # the suite's tempfile.* files
    env["FBUILD_SIM_DIR"] = str(workdir / "sim")
    env["FBUILD_CACHE_DIR"] = str(workdir / "cache")
    for var in ("ESPTOOL_PY", "ESPTOOL_TEST_USB_OTG", "ESPTOOL_TEST_SPI_CONN", "ESPTOOL_CFGFILE"):
        env.pop(var, None)  # a developer's settings would change what the suite tests
    return env


def sim_url(workdir: Path) -> str:
    """One board for the whole run; its flash file carries the flash from one
    esptool process to the next, as a real chip's flash does."""
    flash = quote(str(workdir / "board.flash"), safe="/")
    return f"sim://esptool-suite?flash={flash}&timing=instant"


@contextlib.contextmanager
def served_board(
    workdir: Path, env: dict[str, str], protocol: str = "raw"
) -> Iterator[tuple[str, ServerExit]]:
    """`fbuild sim serve --protocol PROTOCOL` on a free loopback port for the
    duration; yields the URL esptool is given (socket://, or rfc2217://
    with `?ign_set_control` as esptool's docs give it for its own RFC 2217
    server) and, filled in on exit, how the server ended."""
    log = workdir / "serve.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fbuild_watch", "sim", "serve", "--listen", "127.0.0.1:0",
         "--timing", "instant", "--name", "esptool-suite",
         "--flash", str(workdir / "served.flash"), "--protocol", protocol],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        text=True, env=env,
    )  # fmt: skip
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:  # the server announces its URL once listening
        sel.register(proc.stdout, selectors.EVENT_READ)
        ready = sel.select(timeout=SERVER_START_TIMEOUT_S)
    first = proc.stdout.readline() if ready else ""
    out = proc.stdout

    def drain() -> None:  # the rest to a file, so a chatty server never blocks on its pipe
        with log.open("w") as f:
            f.write(first)
            for line in out:
                f.write(line)
                f.flush()

    pump = threading.Thread(target=drain, daemon=True)
    pump.start()
    ended = ServerExit(log)
    try:
        match = re.search(r"(?:socket|rfc2217)://[\d.]+:\d+", first)
        if match is None:
            proc.terminate()
            proc.wait(timeout=10)
            pump.join(timeout=5)
            raise RuntimeError(f"fbuild sim serve did not start: {log.read_text()!r}")
        url = match.group(0) + ("?ign_set_control" if protocol == "rfc2217" else "")
        yield url, ended
    finally:
        proc.terminate()
        try:
            ended.returncode = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            ended.returncode = proc.wait()
        pump.join(timeout=5)


def parse_junit(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    outcomes: dict[str, str] = {}
    messages: dict[str, str] = {}
    for case in ET.parse(path).iter("testcase"):
        test_id = f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}"
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
            elif child.tag == "skipped" and outcome != "failed":
                outcome = "skipped"
            else:
                continue
            msg = (child.get("message") or "").strip()
            messages.setdefault(test_id, msg.splitlines()[0][:300] if msg else "")
        outcomes[test_id] = outcome
    return outcomes, messages


def _pytest(workdir: Path, *args: str) -> list[str]:
    test_dir = workdir / "test"
    return [sys.executable, "-m", "pytest", "-c", str(workdir / "pytest.ini"),
            "--rootdir", str(test_dir), "-p", "no:cacheprovider", "--chip", CHIP, *args]  # fmt: skip


def collect(workdir: Path, env: dict[str, str]) -> list[str]:
    """The suite's tests in its own order, as pytest node ids relative to the
    test directory (`test_esptool.py::TestX::test_y[param]`)."""
    res = subprocess.run(
        _pytest(workdir, "test_esptool.py", "--collect-only", "-q"),
        cwd=workdir / "test", env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    ids = [line for line in res.stdout.splitlines() if line.startswith("test_esptool.py::")]
    if res.returncode != 0 or not ids:
        raise RuntimeError(f"cannot collect esptool's suite (exit {res.returncode}): {res.stdout}")
    return ids


def test_id(node_id: str) -> str:
    """`test_esptool.py::TestX::test_y[p]` -> `TestX::test_y` (expected.py's ids)."""
    return node_id.split("::", 1)[1].split("[", 1)[0]


# A plan splits the suite's node ids (in order) into shards: each runs in its
# own pytest process against its own board, all at once.
Plan = Callable[[list[str]], list[list[str]]]


def blocks(n: int) -> Plan:
    """The whole suite in `n` consecutive blocks: every test once, each after
    the test before it in the suite, as in one run (the first of each block
    finds a fresh board)."""

    def plan(order: list[str]) -> list[list[str]]:
        size = -(-len(order) // n)
        return [order[i : i + size] for i in range(0, len(order), size)]

    return plan


def deal(tests: Collection[str], n: int) -> Plan:
    """`tests` (test ids) dealt round-robin into at most `n` shards, in suite
    order within each."""

    def plan(order: list[str]) -> list[list[str]]:
        missing = set(tests) - {test_id(node) for node in order}
        if missing:
            raise RuntimeError(f"not in esptool's suite: {', '.join(sorted(missing))}")
        picked = [node for node in order if test_id(node) in tests]
        return [picked[k::n] for k in range(min(n, len(picked)))]

    return plan


def merge_shards(
    outcomes: list[tuple[dict[str, str], dict[str, str]]],
) -> tuple[dict[str, str], dict[str, str]]:
    """One outcome per test over shards (a test run in several: its worst)."""
    rank = {"failed": 2, "passed": 1, "skipped": 0}
    merged: dict[str, str] = {}
    messages: dict[str, str] = {}
    for outs, msgs in outcomes:
        for t, o in outs.items():
            if t not in merged or rank[o] > rank[merged[t]]:
                merged[t] = o
                if t in msgs:
                    messages[t] = msgs[t]
    return merged, messages


def _run_pytest(
    transport: str, workdir: Path, env: dict[str, str], port: str, args: list[str]
) -> None:
    junit = workdir / "junit.xml"
    log = workdir / "suite.log"
    cmd = _pytest(workdir, *args, "-q", "-rfEs", f"--junitxml={junit}", "--port", port)
    with log.open("w") as out:
        # its own process group: on a timeout the esptool and
        # esp_rfc2217_server processes it started go with it
        proc = subprocess.Popen(
            cmd, cwd=workdir / "test", env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        try:
            rc = proc.wait(timeout=SUITE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise RuntimeError(
                f"esptool suite over {transport} still running after {SUITE_TIMEOUT_S} s; log {log}"
            ) from None
    if rc not in (0, 1) or not junit.exists():  # 0 all passed, 1 some failed; else no run
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"esptool suite did not run (pytest exit {rc}); {log}:\n{tail}")


@dataclass
class _Shard:
    workdir: Path
    args: list[str]  # node ids, or the whole test file
    port: str = ""
    server: ServerExit | None = None


def _run_shard(transport: str, shard: _Shard) -> tuple[dict[str, str], dict[str, str]]:
    env = suite_env(shard.workdir)
    if transport == SIM:
        shard.port = sim_url(shard.workdir)
        _run_pytest(transport, shard.workdir, env, shard.port, shard.args)
    elif transport in (SERVE, RFC2217):
        protocol = "raw" if transport == SERVE else "rfc2217"
        with served_board(shard.workdir, env, protocol) as (port, server):
            shard.port, shard.server = port, server
            _run_pytest(transport, shard.workdir, env, port, shard.args)
    else:
        raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
    return parse_junit(shard.workdir / "junit.xml")


def run_suite(transport: str, workdir: Path, plan: Plan | None = None) -> SuiteRun:
    """Run esptool's suite with --chip esp32c3 against fresh boards: the
    whole of it in one process against one board, or as `plan` splits it."""
    t0 = time.monotonic()
    stage(workdir)
    if plan is None:
        shards = [_Shard(workdir, ["test_esptool.py"])]
    else:
        node_sets = plan(collect(workdir, suite_env(workdir)))
        shards = []
        for k, nodes in enumerate(node_sets):
            stage(workdir / f"shard-{k:02d}")
            shards.append(_Shard(workdir / f"shard-{k:02d}", nodes))
    with ThreadPoolExecutor(len(shards)) as pool:
        results = list(pool.map(lambda sh: _run_shard(transport, sh), shards))
    outcomes, messages = merge_shards(results)
    skips: dict[str, int] = {}
    for t, o in outcomes.items():
        if o == "skipped":
            skips[messages.get(t, "")] = skips.get(messages.get(t, ""), 0) + 1
    # the server that failed to stop cleanly, if any, else the first
    servers = sorted((sh.server for sh in shards if sh.server), key=lambda e: e.returncode == 0)
    return SuiteRun(
        transport,
        shards[0].port if len(shards) == 1 else f"{shards[0].port} and {len(shards) - 1} more",
        outcomes,
        messages,
        time.monotonic() - t0,
        shards[0].workdir / "suite.log" if len(shards) == 1 else workdir / "shard-*/suite.log",
        expected_for(transport),
        servers[0].returncode if servers else None,
        servers[0].log if servers else None,
        skips,
        None if plan is None else [n for sh in shards for n in sh.args],
        len(shards),
    )
