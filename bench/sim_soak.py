"""Soak: one-shot processes on a `sim://` board exit cleanly with the flash saved.

Each run is a fresh process whose board lives and dies with it: N x
`fbuild deploy --port sim://NAME` (the example project, full writes: a new
board name, so a new flash file, per run, and trust off) and M x
`esptool load-ram` of a RAM app. Counted: exit codes (139 = segfault),
and for each deploy whether the flash file holds every region written.

`python -m bench.sim_soak [--deploys 200] [--load-ram 100] [--timing instant]
[--jobs 2]` prints one JSON object and saves bench/results/sim_soak.json.
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.common import copy_example, save

SITE = "import fbuild_watch.sim\n"  # sim:// for esptool's own process


def _env(tmp: Path) -> dict[str, str]:
    site = tmp / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITE)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH")) if p)
    env["FBUILD_SIM_DIR"] = str(tmp / "sim")
    env["FBUILD_CACHE_DIR"] = str(tmp / "cache")
    return env


def _describe(code: int) -> str:
    if code < 0:
        return f"signal {signal.Signals(-code).name}"
    return "segfault (139)" if code == 139 else str(code)


def _soak(
    runs: int, jobs: int, one: Callable[[int], tuple[int, float, bool, str]]
) -> dict[str, Any]:
    codes: collections.Counter[str] = collections.Counter()
    durations: list[float] = []
    bad_flash = 0
    failures: list[str] = []
    with ThreadPoolExecutor(jobs) as pool:
        for code, took, flash_ok, tail in pool.map(one, range(runs)):
            codes[_describe(code)] += 1
            durations.append(took)
            bad_flash += not flash_ok
            if (code != 0 or not flash_ok) and len(failures) < 5:
                failures.append(
                    f"exit {code}, flash {'saved' if flash_ok else 'NOT saved'}: {tail}"
                )
    return {
        "runs": runs,
        "exit_codes": dict(codes),
        "crashes": runs - codes["0"],
        "flash_not_saved": bad_flash,
        "median_s": round(statistics.median(durations), 3),
        "max_s": round(max(durations), 3),
        "failures": failures,
    }


def _deploys(tmp: Path, env: dict[str, str], runs: int, jobs: int, timing: str) -> dict[str, Any]:
    from fbuild_watch.build.backends import detect_backend
    from fbuild_watch.build.runner import run_build

    project = copy_example(tmp)
    if not run_build(detect_backend(project)).ok:
        raise SystemExit("the example project did not build")
    build = project / "build"
    regions = {
        0x0: (build / "bootloader.bin").read_bytes(),
        0x8000: (build / "partition-table.bin").read_bytes(),
        0x10000: (build / "blink-c3.bin").read_bytes(),
    }

    def one(i: int) -> tuple[int, float, bool, str]:
        name = f"soak{i}"  # a new board (and flash file) per run: full writes
        image = tmp / "sim" / f"{name}.flash"
        t0 = time.perf_counter()
        res = subprocess.run(
            [sys.executable, "-m", "fbuild_watch", "deploy", "--no-trust",
             "--port", f"sim://{name}?timing={timing}", str(project)],
            check=False, capture_output=True, text=True, env=env, timeout=300,
        )  # fmt: skip
        took = time.perf_counter() - t0
        ok = image.exists() and all(
            image.read_bytes()[off : off + len(data)] == data for off, data in regions.items()
        )
        image.unlink(missing_ok=True)
        return res.returncode, took, ok, res.stderr[-500:]

    return _soak(runs, jobs, one)


def _load_rams(tmp: Path, env: dict[str, str], runs: int, jobs: int, timing: str) -> dict[str, Any]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.fwkit import FW_DIR, elf2image, zig_cc

    image = elf2image(
        zig_cc([FW_DIR / "ram.c"], FW_DIR / "ram.ld", tmp / "ram.elf"), tmp / "ram.bin"
    )

    def one(i: int) -> tuple[int, float, bool, str]:
        t0 = time.perf_counter()
        res = subprocess.run(
            [sys.executable, "-m", "esptool", "--chip", "esp32c3",
             "--port", f"sim://ram{i}?flash=&timing={timing}", "load-ram", str(image)],
            check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
            timeout=300,
        )  # fmt: skip
        return res.returncode, time.perf_counter() - t0, True, res.stdout[-500:]

    return _soak(runs, jobs, one)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m bench.sim_soak")
    ap.add_argument("--deploys", type=int, default=200)
    ap.add_argument("--load-ram", type=int, default=100)
    ap.add_argument("--timing", choices=["instant", "realistic"], default="instant")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args(argv if argv is not None else [])
    with tempfile.TemporaryDirectory(prefix="fbuild-sim-soak-") as d:
        tmp = Path(d)
        env = _env(tmp)
        result = {
            "timing": args.timing,
            "jobs": args.jobs,
            "deploy": _deploys(tmp, env, args.deploys, args.jobs, args.timing),
            "load_ram": _load_rams(tmp, env, args.load_ram, args.jobs, args.timing),
        }
    save("sim_soak", result)
    return result


def render(result: dict[str, Any]) -> list[str]:
    lines = [
        f"One-shot processes on a `sim://` board (timing {result['timing']}, "
        f"{result['jobs']} at a time): exit codes, and for deploys whether the flash file "
        "held every region afterwards.",
        "",
        "| command | runs | exit codes | crashes | flash not saved | median | max |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for key, label in (("deploy", "`fbuild deploy`"), ("load_ram", "`esptool load-ram`")):
        r = result[key]
        codes = ", ".join(f"{c}: {n}" for c, n in sorted(r["exit_codes"].items()))
        lines.append(
            f"| {label} | {r['runs']} | {codes} | {r['crashes']} | {r['flash_not_saved']} "
            f"| {r['median_s']} s | {r['max_s']} s |"
        )
    return lines


if __name__ == "__main__":
    main(sys.argv[1:])
