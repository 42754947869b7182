"""Each layer imported alone, in a fresh interpreter: what it pulls in.
(import-linter's contracts in pyproject.toml check the import graph; this
checks what really loads, lazy imports included.)"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("esptool", "serial", "textual", "unicorn", "fbuild_watch.sim", "fbuild_watch.deploy")


def loaded(module: str) -> set[str]:
    code = (
        f"import sys, json, {module}\n"
        f"print(json.dumps(sorted({{m.split('.')[0] if not m.startswith('fbuild_watch.') "
        f"else '.'.join(m.split('.')[:2]) for m in sys.modules}})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return {m for m in json.loads(out) if m in HEAVY}


@pytest.mark.parametrize(
    ("module", "allowed"),
    [
        # the loop schedules builds and deploys: no ports, no esptool, no UI
        ("fbuild_watch.loop", set()),
        ("fbuild_watch.events", set()),
        ("fbuild_watch.watch", set()),
        # the deploy side talks to boards, but never loads the virtual board
        ("fbuild_watch.deploy", {"esptool", "serial", "fbuild_watch.deploy"}),
        # the session owns boards; the views are above it
        ("fbuild_watch.session", {"esptool", "serial", "fbuild_watch.deploy"}),
        ("fbuild_watch.views.lines", {"esptool", "serial", "fbuild_watch.deploy"}),
    ],
)
def test_a_layer_loads_only_what_it_needs(module: str, allowed: set[str]) -> None:
    assert loaded(module) <= allowed
