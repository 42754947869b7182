"""The short soak (bench/soak.py has the long one): 30 seeded random steps of
edits and faults, every invariant checked after each quiet point."""

from __future__ import annotations

import os
from pathlib import Path

from bench.soak import run_soak


def test_short_soak(tmp_path: Path) -> None:
    seed = int(os.environ.get("FBUILD_SOAK_SEED", "7"))
    result = run_soak(30, seed, tmp_path)  # raises SoakFailure naming the broken invariant
    assert sum(result["actions"].values()) == 30
    assert result["builds"] >= 10 and result["log_bytes"] > 0
    assert result["fds"]["end"] <= result["fds"]["after_warmup"]
    assert result["rss_kib"]["end"] - result["rss_kib"]["after_warmup"] < 20_000
