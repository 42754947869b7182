"""Shared benchmark plumbing: machine facts, statistics, result files."""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from importlib.metadata import version

    def v(name: str) -> str:
        try:
            return version(name)
        except Exception:
            return "-"

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "esptool": v("esptool"),
        "unicorn": v("unicorn"),
        "ziglang": v("ziglang"),
        "watchfiles": v("watchfiles"),
        "textual": v("textual"),
        "fbuild-watch": v("fbuild-watch"),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def stats_ms(samples_s: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples_s)
    p90 = ms[min(len(ms) - 1, round(0.9 * (len(ms) - 1)))]
    return {
        "median_ms": round(statistics.median(ms), 6),
        "p90_ms": round(p90, 6),
        "min_ms": round(ms[0], 6),
        "n": len(ms),
    }


def timeit(fn: Callable[[], object], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def copy_example(parent: Path) -> Path:
    """A private copy of examples/blink-c3 under `parent`, without build
    outputs or materialized resources."""
    project = parent / "blink-c3"
    shutil.copytree(
        ROOT / "examples" / "blink-c3", project, ignore=shutil.ignore_patterns("build", ".fbuild")
    )
    return project


def run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
    subprocess.run(cmd, cwd=cwd, env={**os.environ, **(env or {})}, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip


def save(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {"benchmark": name, "machine": machine(), **result}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    sys.stdout.flush()
    return path
