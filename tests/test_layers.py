"""Each layer imported alone, in a fresh interpreter: what it pulls in.
(import-linter's contracts in pyproject.toml check the import graph; this
checks what really loads, lazy imports included.)"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import fbuild_watch

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


# The CLI and the views print; nothing below them does (its lines reach the
# user as events or through a callback the CLI gives). Debug traces behind
# an `if _TRACE:` and the command-line entry points of their own are exempt.
PRINTERS = {"cli.py", "cli_lnk.py", "views/lines.py", "sim/serve_cli.py", "crash/indexer.py"}


def _prints(tree: ast.AST) -> list[int]:
    found: list[int] = []

    def visit(node: ast.AST, traced: bool) -> None:
        if (
            isinstance(node, ast.If)
            and isinstance(node.test, ast.Name)
            and node.test.id == "_TRACE"
        ):
            traced = True
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "print"
            and not traced
        ):
            found.append(node.lineno)
        for child in ast.iter_child_nodes(node):
            visit(child, traced)

    visit(tree, False)
    return found


def test_only_the_cli_and_the_views_print() -> None:
    root = Path(fbuild_watch.__file__).parent
    offenders = [
        f"{path.relative_to(root)}:{line}"
        for path in sorted(root.rglob("*.py"))
        if path.relative_to(root).as_posix() not in PRINTERS
        for line in _prints(ast.parse(path.read_text()))
    ]
    assert offenders == []
