"""Build times of examples/blink-c3: clean, no-op and one-file incremental,
through fbuild (build + read + validate the layout) against plain `make`
(the build system alone) in the same run."""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import copy_example, run, save, stats_ms, timeit
from fbuild_watch.build import detect_backend, run_build

REPEAT = 7


def _case(project: Path, asset_kb: int) -> dict[str, Any]:
    env = {"PYTHON": sys.executable, "ASSET_KB": str(asset_kb)}
    make = ["make", f"ASSET_KB={asset_kb}"]
    backend = detect_backend(project)
    backend.env.update({"ASSET_KB": str(asset_kb)})
    version = project / "src" / "version.h"
    counter = [0]

    def edit() -> None:
        counter[0] += 1
        version.write_text(f'#define APP_VERSION "1.0.{counter[0]}"\n')

    def clean() -> None:
        shutil.rmtree(project / "build", ignore_errors=True)

    def ours() -> None:
        assert run_build(backend).ok

    def peer() -> None:
        run(make, project, env)

    out: dict[str, Any] = {"asset_kb": asset_kb}
    for label, fn in (("fbuild", ours), ("make", peer)):
        clean_t = []
        for _ in range(3):
            clean()
            clean_t += timeit(fn, 1)
        noop_t = timeit(fn, REPEAT)
        inc_t = []
        for _ in range(REPEAT):
            edit()
            inc_t += timeit(fn, 1)
        out[label] = {
            "clean": stats_ms(clean_t),
            "noop": stats_ms(noop_t),
            "incremental": stats_ms(inc_t),
        }
    lay = run_build(backend).layout
    assert lay is not None
    out["image_bytes"] = lay.layout.total_size
    for phase in ("clean", "noop", "incremental"):
        ours_ms = out["fbuild"][phase]["median_ms"]
        peer_ms = out["make"][phase]["median_ms"]
        out.setdefault("ratio_fbuild_over_make", {})[phase] = round(ours_ms / peer_ms, 3)
    return out


def main() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        project = copy_example(Path(tmp))
        # warm zig's global cache (compiler-rt) so "clean" means the project's own build
        run(["make"], project, {"PYTHON": sys.executable})
        cases = [_case(project, 0), _case(project, 768)]
    result = {
        "description": "examples/blink-c3 build times (wall clock, zig cache warm)",
        "goal": "clean build in seconds; no-op and one-file incremental fast",
        "cases": cases,
    }
    save("build", result)
    return result


def render(result: dict[str, Any]) -> list[str]:
    lines = [
        "Wall-clock build times of `examples/blink-c3` on this machine (zig cache warm). "
        "`fbuild` = the build command plus reading, hashing and validating the flash "
        "layout; `make` = the build system alone (the peer floor).",
        "",
        "| image | phase | fbuild median (p90) | make median (p90) | fbuild / make |",
        "|---|---|---|---|---|",
    ]
    for case in result["cases"]:
        size = f"{case['image_bytes'] / 1024:.0f} KiB (ASSET_KB={case['asset_kb']})"
        for phase in ("clean", "noop", "incremental"):
            ours, peer = case["fbuild"][phase], case["make"][phase]
            lines.append(
                f"| {size} | {phase} | {ours['median_ms']:.0f} ms ({ours['p90_ms']:.0f}) "
                f"| {peer['median_ms']:.0f} ms ({peer['p90_ms']:.0f}) "
                f"| {case['ratio_fbuild_over_make'][phase]:.2f}x |"
            )
    lines += ["", f"Goal: {result['goal']}."]
    return lines


if __name__ == "__main__":
    main()
