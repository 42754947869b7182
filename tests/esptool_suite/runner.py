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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import fbuild_watch
from tests.esptool_suite.expected import SERVE, SIM, Expected, expected_for

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

    def ids(self, outcome: str) -> list[str]:
        return [t for t, o in self.outcomes.items() if o == outcome]

    def unexpected_failures(self) -> list[str]:
        return [t for t in self.ids("failed") if t not in self.expected]

    def unexpected_passes(self) -> list[str]:
        return [t for t in self.ids("passed") if t in self.expected]

    def unknown_expected(self) -> list[str]:
        """Listed in expected.py but not in the suite (a typo, or a rename upstream)."""
        return [t for t in self.expected if t not in self.outcomes]

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
            f"in {self.seconds:.0f} s; log {self.log}"
        ]
        lines.append(f"  skipped, by reason: {self.skip_reasons}")
        lines += [f"  FAILED {t}: {self.messages.get(t, '')}" for t in self.unexpected_failures()]
        lines += [
            f"  PASSED but listed in expected.py, remove it: {t}" for t in self.unexpected_passes()
        ]
        lines += [
            f"  expected.py names a test the suite lacks: {t}" for t in self.unknown_expected()
        ]
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
def served_board(workdir: Path, env: dict[str, str]) -> Iterator[tuple[str, ServerExit]]:
    """`fbuild sim serve` (raw TCP) on a free loopback port for the duration;
    yields its socket:// URL and, filled in on exit, how the server ended.
    (Not `--protocol rfc2217`: pyserial's RFC 2217 client sleeps 0.1-0.15 s
    for every control-line and timeout change, ~0.3 s per esptool command,
    which would take the suite past an hour.)"""
    log = workdir / "serve.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "fbuild_watch", "sim", "serve", "--listen", "127.0.0.1:0",
         "--timing", "instant", "--name", "esptool-suite",
         "--flash", str(workdir / "served.flash")],
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
        match = re.search(r"socket://[\d.]+:\d+", first)
        if match is None:
            proc.terminate()
            proc.wait(timeout=10)
            pump.join(timeout=5)
            raise RuntimeError(f"fbuild sim serve did not start: {log.read_text()!r}")
        yield match.group(0), ended
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


def run_suite(transport: str, workdir: Path, extra_args: tuple[str, ...] = ()) -> SuiteRun:
    """Run the whole suite once with --chip esp32c3 against a fresh board."""
    test_dir = stage(workdir)
    env = suite_env(workdir)
    junit = workdir / "junit.xml"
    log = workdir / "suite.log"

    def run(port: str) -> tuple[float, int]:
        cmd = [sys.executable, "-m", "pytest", "test_esptool.py",
               "-c", str(workdir / "pytest.ini"), "--rootdir", str(test_dir),
               "-p", "no:cacheprovider", "-q", "-rfEs",
               f"--junitxml={junit}", "--chip", CHIP, "--port", port, *extra_args]  # fmt: skip
        t0 = time.monotonic()
        with log.open("w") as out:
            # its own process group: on a timeout the esptool and
            # esp_rfc2217_server processes it started go with it
            proc = subprocess.Popen(
                cmd, cwd=test_dir, env=env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
            try:
                rc = proc.wait(timeout=SUITE_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                raise RuntimeError(
                    f"esptool suite over {transport} still running after {SUITE_TIMEOUT_S} s; "
                    f"log {log}"
                ) from None
        return time.monotonic() - t0, rc

    server: ServerExit | None = None
    if transport == SIM:
        port = sim_url(workdir)
        seconds, rc = run(port)
    elif transport == SERVE:
        with served_board(workdir, env) as (port, server):
            seconds, rc = run(port)
    else:
        raise ValueError(f"transport must be {SIM!r} or {SERVE!r}, got {transport!r}")
    if rc not in (0, 1) or not junit.exists():  # 0 all passed, 1 some failed; else no run
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
        raise RuntimeError(f"esptool suite did not run (pytest exit {rc}); {log}:\n{tail}")
    outcomes, messages = parse_junit(junit)
    skips: dict[str, int] = {}
    for t, o in outcomes.items():
        if o == "skipped":
            skips[messages.get(t, "")] = skips.get(messages.get(t, ""), 0) + 1
    return SuiteRun(
        transport,
        port,
        outcomes,
        messages,
        seconds,
        log,
        expected_for(transport),
        server.returncode if server else None,
        server.log if server else None,
        skips,
    )
