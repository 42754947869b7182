"""Every error a user can cause from the command line is one line naming
the problem (and the file, for configuration), with exit status 2 for usage
and configuration errors and 1 for runtime failures."""

from __future__ import annotations

import os
import pty
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial

from tests.clikit import run_fbuild

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "blink-c3"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return run_fbuild(*args, env={**os.environ, **(env or {})})


def one_line_error(res: subprocess.CompletedProcess[str]) -> str:
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("fbuild: error: "), res.stderr
    return lines[0].removeprefix("fbuild: error: ")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    p = tmp_path / "proj"
    p.mkdir()
    return p


@pytest.mark.parametrize(
    ("toml", "problem"),
    [
        ("[build]\ncommand = ['make']\ncolour = 1\n", "unknown key 'colour' in [build]"),
        ("[biuld]\ncommand = ['make']\n", "unknown section [biuld]"),
        ("[build]\ncommand = 'make'\n", "[build] command must be an array, got str"),
        ("[build]\ncommand = ['make']\n[board]\nbaud = '460800'\n", "[board] baud must be an"),
        ("[build]\ncommand = ['make']\n[lnk]\nallow_http = 1\n", "[lnk] allow_http must be true"),
        ("[build]\ncommand = ['make'\n", "malformed TOML"),
        ("[build]\ncommand = ['make']\n[board]\nchip = 'esp32c9000'\n", "[board] chip"),
    ],
)
def test_config_errors_exit_2_naming_the_file(project: Path, toml: str, problem: str) -> None:
    (project / "fbuild.toml").write_text(toml)
    for cmd in (["build"], ["deploy"], ["watch", "--plain", "--timeout", "5"]):
        res = run(*cmd, str(project))
        assert res.returncode == 2, (cmd, res.stderr)
        msg = one_line_error(res)
        assert msg.startswith(f"{project / 'fbuild.toml'}: ") and problem in msg, msg


@pytest.mark.parametrize(
    ("args", "env", "problem"),
    [
        (["build", "/no/such/dir"], {}, "/no/such/dir: project directory does not exist"),
        (["deploy", "/no/such/dir"], {}, "project directory does not exist"),
        (["image", "info", "0x0", "a.bin", "0x1000"], {}, "expected PATH, or OFFSET FILE pairs"),
        (["image", "info", "zz", "a.bin"], {}, "bad offset 'zz'"),
        (
            ["deploy", "--port", "sim://e?flash=", str(EXAMPLE)],
            {"ESPBAUD": "fast"},
            "ESPBAUD: expected a positive integer, got 'fast'",
        ),
        (["lnk", "ls", "/no/such/dir"], {}, "/no/such/dir is not a directory"),
    ],
)
def test_usage_errors_exit_2(args: list[str], env: dict[str, str], problem: str) -> None:
    res = run(*args, env=env)
    assert res.returncode == 2, res.stderr
    assert problem in one_line_error(res)


def test_argparse_errors_exit_2() -> None:
    for args in (["deploy", "--baud", "fast"], ["watch", "--on-busy", "never"], ["frobnicate"]):
        res = run(*args)
        assert res.returncode == 2 and "error:" in res.stderr


def test_missing_files_are_runtime_failures(project: Path) -> None:
    res = run("image", "info", str(project / "nope.bin"))
    assert res.returncode in (1, 2) and str(project / "nope.bin") in one_line_error(res)
    (project / "fbuild.toml").write_text(
        "[build]\ncommand = ['true']\nflasher_args = 'build/flasher_args.json'\n"
    )
    res = run("build", str(project))  # the build "succeeds" but produced nothing to flash
    assert res.returncode == 1
    assert "build/flasher_args.json" in res.stderr.strip().splitlines()[-1]


@pytest.fixture
def busy_port() -> Iterator[str]:
    """A tty another program holds exclusively (as a running monitor does)."""
    master, slave = pty.openpty()
    name = os.ttyname(slave)
    holder = serial.Serial(name, exclusive=True)
    try:
        yield name
    finally:
        holder.close()
        os.close(master)
        os.close(slave)


def test_missing_and_busy_ports(tmp_path: Path, busy_port: str) -> None:
    from tests.examplekit import copy_example

    project = copy_example(tmp_path / "blink")
    assert run("build", str(project)).returncode == 0
    res = run("deploy", "--port", "/dev/ttyNOPE9", str(project))
    assert res.returncode == 1 and "/dev/ttyNOPE9" in one_line_error(res)
    res = run("deploy", "--port", busy_port, str(project))
    assert res.returncode == 1
    assert one_line_error(res) == f"{busy_port}: port busy: another program has it open"
    # the monitor and the loop wait instead (the other program may let go), and say why
    res = run("monitor", "--port", busy_port, "--plain", "--timeout", "1")
    assert f"waiting for the board: {busy_port}: port busy" in res.stdout
