"""Virtual board conformance: esptool's own hardware test suite
(`test/test_esptool.py`, vendored in tests/esptool_suite/upstream) with
`--chip esp32c3` against the virtual board, over `sim://`, over `fbuild sim
serve` (socket://) and over `fbuild sim serve --protocol rfc2217`.

The whole suite on every transport, the transports side by side. Over RFC
2217 pyserial's client sleeps ~0.3 s around every esptool command, so the
suite is spread over RFC2217_BLOCKS boards (consecutive blocks of it, each
with its own pytest and board), which mostly wait.

`python -m bench conformance`; `python -m bench.conformance [sim|serve|rfc2217]`
on its own.
"""

from __future__ import annotations

import sys
import tempfile
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.common import save
from tests.esptool_suite.expected import RFC2217, TRANSPORTS
from tests.esptool_suite.runner import CHIP, blocks, run_suite

RFC2217_BLOCKS = 12

SUITE = {
    "repository": "https://github.com/espressif/esptool",
    "commit": "bb72741ff4fadb2c6958564140e755b44288af32",
    "describe": "v5.3.1-52-gbb72741",
    "file": "test/test_esptool.py",
}


def measure(transport: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"conformance-{transport}-") as tmp:
        plan = blocks(RFC2217_BLOCKS) if transport == RFC2217 else None
        run = run_suite(transport, Path(tmp), plan)
        return {
            **run.counts(),
            "seconds": round(run.seconds, 1),
            "boards": run.shards,
            "failures": {t: run.messages.get(t, "") for t in run.unexpected_failures()},
            "expected_failures": {
                t: run.expected[t].reason for t in run.ids("failed") if t in run.expected
            },
            "expected_kinds": dict(
                Counter(run.expected[t].kind for t in run.ids("failed") if t in run.expected)
            ),
            "unexpected_passes": run.unexpected_passes(),
            "skip_reasons": run.skip_reasons,
            "server_returncode": run.server_returncode,
        }


def pool_map(func: Callable[[str], dict[str, Any]], items: tuple[str, ...]) -> list[dict[str, Any]]:
    """The transports side by side: each mostly waits on esptool processes."""
    with ThreadPoolExecutor(len(items)) as pool:
        return list(pool.map(func, items))


def main(transports: tuple[str, ...] = TRANSPORTS) -> dict[str, Any]:
    result = {
        "chip": CHIP,
        "suite": SUITE,
        "transports": dict(zip(transports, pool_map(measure, transports), strict=True)),
    }
    save("conformance", result)
    return result


_NAMES = {
    "sim": "`sim://` (board in the esptool process)",
    "serve": "`fbuild sim serve` (raw TCP, no reset lines)",
    "rfc2217": "`fbuild sim serve --protocol rfc2217`",
}


def render(result: dict[str, Any]) -> list[str]:
    suite = result["suite"]
    lines = [
        f"esptool's own hardware test suite (`{suite['file']}` at {suite['describe']}) with "
        f"`--chip {result['chip']}` against the **virtual board with instant timing**. Skipped: "
        "tests esptool itself skips for a USB-UART-bridge C3 (other chips, USB-JTAG, 32 MB or "
        "external flash). Expected failures are listed with their reasons in "
        "tests/esptool_suite/expected.py and README.md. Over RFC 2217 pyserial's client "
        "renegotiates the port settings around every esptool command (~0.3 s each, as "
        "against esptool's own esp_rfc2217_server), so that run is spread over several "
        "boards at once, in consecutive blocks of the suite. The three transports run side by "
        "side, so each wall time is under the others' load.",
        "",
        "| transport | collected | passed | skipped by esptool | expected failures | failed "
        "| wall time |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in result["transports"].items():
        boards = r.get("boards", 1)
        on = f" on {boards} boards at once" if boards > 1 else ""
        lines.append(
            f"| {_NAMES.get(name, name)} | {r['collected']} | {r['passed']} | {r['skipped']} | "
            f"{r['expected_fail']} | {r['failed'] + r['unexpected_pass']} | "
            f"{r['seconds']:.0f} s{on} |"
        )
    lines.append("")
    for name, r in result["transports"].items():
        kinds = ", ".join(f"{n} {k}" for k, n in r.get("expected_kinds", {}).items())
        if kinds:
            lines.append(f"- {name}: expected failures: {kinds}.")
        for test, msg in r["failures"].items():
            lines.append(f"- {name}: `{test}` failed: {msg}")
        for test in r["unexpected_passes"]:
            lines.append(f"- {name}: `{test}` passed but is listed as an expected failure")
    return lines


if __name__ == "__main__":
    args = tuple(sys.argv[1:]) or TRANSPORTS
    bad = [a for a in args if a not in TRANSPORTS]
    if bad:
        sys.exit(f"unknown transport(s) {', '.join(bad)}; known: {', '.join(TRANSPORTS)}")
    main(args)
