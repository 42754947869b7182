"""esptool's own hardware test suite (`test/test_esptool.py`, vendored in
tests/esptool_suite/upstream) with `--chip esp32c3` against the virtual
board: every test passes, is skipped by esptool itself (a feature a
UART-bridge C3 does not have), or is listed with its reason in
tests/esptool_suite/expected.py."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.esptool_suite.expected import ESPTOOL_SKIPS, SERVE, SIM, TRANSPORTS
from tests.esptool_suite.runner import SuiteRun, parse_junit, run_suite

_JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite>
<testcase classname="test_esptool.TestA" name="test_ok" time="1.0"/>
<testcase classname="test_esptool.TestA" name="test_bad" time="1.0">
  <failure message="assert 1 == 2&#10;more">trace</failure></testcase>
<testcase classname="test_esptool.TestB" name="test_skip" time="0">
  <skipped type="pytest.skip" message="ESP32 only">x</skipped></testcase>
<testcase classname="test_esptool.TestB" name="test_teardown" time="0">
  <error message="teardown failed">x</error></testcase>
</testsuite></testsuites>"""


def test_junit_results_are_sorted_by_outcome(tmp_path: Path) -> None:
    path = tmp_path / "j.xml"
    path.write_text(_JUNIT)
    outcomes, messages = parse_junit(path)
    assert outcomes == {
        "TestA::test_ok": "passed",
        "TestA::test_bad": "failed",
        "TestB::test_skip": "skipped",
        "TestB::test_teardown": "failed",
    }
    assert messages["TestA::test_bad"] == "assert 1 == 2"
    assert messages["TestB::test_skip"] == "ESP32 only"


def test_project_run_does_not_collect_the_vendored_suite() -> None:
    """The project's own `pytest` (testpaths = tests) must skip esptool's
    suite: collected there, it would run against /dev/ttyUSB0."""
    root = Path(__file__).resolve().parent.parent
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "tests/esptool_suite"],
        cwd=root, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 5, res.stdout + res.stderr  # 5: no tests collected
    assert "test_esptool" not in res.stdout + res.stderr


@pytest.fixture(scope="module")
def suite_runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, SuiteRun | BaseException]:
    """The selected transports' runs, started together: the suite mostly waits
    on esptool processes, so two at once take the wall time of one."""
    wanted = sorted(
        {
            item.callspec.params["transport"]
            for item in request.session.items
            if getattr(item, "originalname", "") == "test_esptool_suite"
            and hasattr(item, "callspec")
        }
    )
    with ThreadPoolExecutor(max(1, len(wanted))) as pool:
        futures = {t: pool.submit(run_suite, t, tmp_path_factory.mktemp(t)) for t in wanted}
        runs: dict[str, SuiteRun | BaseException] = {}
        for t, f in futures.items():
            exc = f.exception()
            runs[t] = exc if exc is not None else f.result()
    return runs


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_esptool_suite(transport: str, suite_runs: dict[str, SuiteRun | BaseException]) -> None:
    run = suite_runs[transport]
    if isinstance(run, BaseException):
        raise run
    print(run.summary())
    counts = run.counts()
    assert counts["collected"] >= 100, run.summary()  # the whole suite ran, not a stub of it
    assert run.skip_reasons == ESPTOOL_SKIPS, run.summary()  # skipped by esptool, nothing else
    assert not run.unexpected_failures(), run.summary()
    assert not run.unexpected_passes(), run.summary()
    assert not run.unknown_expected(), run.summary()
    if transport == SERVE:
        assert run.server_returncode == 0, run.summary()
    else:
        assert transport == SIM
