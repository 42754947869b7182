"""Virtual board conformance: esptool's own hardware test suite
(`test/test_esptool.py`, vendored in tests/esptool_suite/upstream) with
`--chip esp32c3` against the virtual board, over `sim://` and over
`fbuild sim serve` (socket://).

`python -m bench conformance` once wired into bench/__main__.py;
`python -m bench.conformance [sim|serve]` on its own. Prints JSON counts.
"""

from __future__ import annotations

import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from bench.common import save
from tests.esptool_suite.expected import TRANSPORTS
from tests.esptool_suite.runner import CHIP, run_suite

SUITE = {
    "repository": "https://github.com/espressif/esptool",
    "commit": "bb72741ff4fadb2c6958564140e755b44288af32",
    "describe": "v5.3.1-52-gbb72741",
    "file": "test/test_esptool.py",
}


def measure(transport: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix=f"conformance-{transport}-") as tmp:
        run = run_suite(transport, Path(tmp))
        return {
            **run.counts(),
            "seconds": round(run.seconds, 1),
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


def main(transports: tuple[str, ...] = TRANSPORTS) -> dict[str, Any]:
    result = {
        "chip": CHIP,
        "suite": SUITE,
        "transports": {t: measure(t) for t in transports},
    }
    save("conformance", result)
    return result


_NAMES = {"sim": "`sim://` (board in the esptool process)", "serve": "`fbuild sim serve`"}


def render(result: dict[str, Any]) -> list[str]:
    suite = result["suite"]
    lines = [
        f"esptool's own hardware test suite (`{suite['file']}` at {suite['describe']}) with "
        f"`--chip {result['chip']}` against the **virtual board with instant timing**. Skipped: "
        "tests esptool itself skips for a USB-UART-bridge C3 (other chips, USB-JTAG, 32 MB or "
        "external flash). Expected failures are listed with their reasons in "
        "tests/esptool_suite/expected.py and README.md.",
        "",
        "| transport | collected | passed | skipped by esptool | expected failures | failed "
        "| wall time |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in result["transports"].items():
        lines.append(
            f"| {_NAMES.get(name, name)} | {r['collected']} | {r['passed']} | {r['skipped']} | "
            f"{r['expected_fail']} | {r['failed'] + r['unexpected_pass']} | {r['seconds']:.0f} s |"
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
