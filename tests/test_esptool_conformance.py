"""esptool's own hardware test suite (`test/test_esptool.py`, vendored in
tests/esptool_suite/upstream) with `--chip esp32c3` against the virtual
board: every test passes, is skipped by esptool itself (a feature a
UART-bridge C3 does not have), or is listed with its reason in
tests/esptool_suite/expected.py.

Over `sim://` and raw TCP the whole suite runs. Over RFC 2217 the tests that
fail over raw TCP for want of reset lines run, spread over RFC2217_SHARDS
boards: pyserial's RFC 2217 client sleeps ~0.3 s around every esptool
command, which makes the whole suite 80 minutes of waiting (`python -m bench
conformance` runs all of it, on 12 boards at once)."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.esptool_suite.expected import (
    ESPTOOL_SKIPS,
    RFC2217,
    SERVE,
    SIM,
    TRANSPORTS,
    reset_dependent,
)
from tests.esptool_suite.runner import SuiteRun, blocks, deal, merge_shards, parse_junit, run_suite

# Boards the RFC 2217 run is spread over. It mostly waits (pyserial's client
# sleeps ~0.3 s per esptool command), so boards side by side cost little CPU.
RFC2217_SHARDS = 6

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


_ORDER = [f"test_esptool.py::{t}" for t in (
    "TestA::test_1", "TestA::test_2", "TestA::test_3[x]", "TestA::test_3[y]",
    "TestB::test_4", "TestB::test_5", "TestB::test_6",
)]  # fmt: skip


def test_plans_split_the_suite_into_shards() -> None:
    assert blocks(3)(_ORDER) == [_ORDER[0:3], _ORDER[3:6], _ORDER[6:]]
    assert blocks(1)(_ORDER) == [_ORDER]
    # dealt round-robin, in suite order within each shard
    shards = deal(["TestB::test_6", "TestA::test_1", "TestA::test_3", "TestB::test_4"], 2)(_ORDER)
    assert shards == [[_ORDER[0], _ORDER[3], _ORDER[6]], [_ORDER[2], _ORDER[4]]]
    assert deal(["TestA::test_1"], 4)(_ORDER) == [[_ORDER[0]]]
    with pytest.raises(RuntimeError, match="not in esptool's suite: TestC::test_9"):
        deal(["TestA::test_1", "TestC::test_9"], 2)(_ORDER)


def test_shards_merge_to_one_outcome_per_test() -> None:
    outcomes, messages = merge_shards(
        [
            ({"A::a": "passed", "A::b": "passed"}, {}),
            ({"A::a": "failed", "A::c": "skipped"}, {"A::a": "boom", "A::c": "ESP32 only"}),
            ({"A::a": "passed"}, {}),
        ]
    )
    assert outcomes == {"A::a": "failed", "A::b": "passed", "A::c": "skipped"}
    assert messages == {"A::a": "boom", "A::c": "ESP32 only"}


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
    on esptool processes, so they take about the wall time of the longest."""
    wanted = sorted(
        {
            item.callspec.params["transport"]
            for item in request.session.items
            if getattr(item, "originalname", "") == "test_esptool_suite"
            and hasattr(item, "callspec")
        }
    )
    with ThreadPoolExecutor(max(1, len(wanted))) as pool:
        futures = {
            t: pool.submit(
                run_suite,
                t,
                tmp_path_factory.mktemp(t),
                deal(reset_dependent(), RFC2217_SHARDS) if t == RFC2217 else None,
            )
            for t in wanted
        }
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
    assert not run.unexpected_failures(), run.summary()
    assert not run.unexpected_passes(), run.summary()
    assert not run.unknown_expected(), run.summary()
    if transport == RFC2217:
        assert run.selected is not None
        assert not run.not_run(), run.summary()  # every test the plan chose ran
        # what raw TCP cannot do for want of reset lines, RFC 2217 does (but
        # for what fails for RFC 2217's own reasons, listed for it)
        assert {t: run.outcomes.get(t) for t in reset_dependent()} == {
            t: "failed" if t in run.expected else "passed" for t in reset_dependent()
        }, run.summary()
        for reason, n in run.skip_reasons.items():  # skipped by esptool, nothing else
            assert n <= ESPTOOL_SKIPS.get(reason, 0), run.summary()
    else:
        assert counts["collected"] >= 100, run.summary()  # the whole suite ran, not a stub of it
        assert run.skip_reasons == ESPTOOL_SKIPS, run.summary()  # skipped by esptool only
    if transport in (SERVE, RFC2217):
        assert run.server_returncode == 0, run.summary()
    else:
        assert transport == SIM
