"""bench/boards.py's helpers: write-window overlap, phases, CPU reading, the report text."""

from __future__ import annotations

import os
import time

from bench.boards import cpu_s, overlap, render, slowest_phases


def test_overlap_needs_every_board_writing_at_one_instant() -> None:
    assert overlap([[0.0, 2.0], [1.0, 3.0]]) == {
        "overlapped": True,
        "common_s": 1.0,
        "spread_s": 3.0,
    }
    # one after another (the process-wide lock before #19): a gap, not an overlap
    assert overlap([[0.0, 1.0], [1.5, 2.5]])["overlapped"] is False
    # a board without a write window says nothing either way
    assert overlap([[0.0, 1.0], None])["overlapped"] is None


def test_slowest_phases_take_each_phase_from_the_slowest_board() -> None:
    outcomes = [
        {"phases_ms": {"connect": 10.0, "write": 5.0}},
        {"phases_ms": {"connect": 7.0, "write": 9.0, "reset": 1.0}},
    ]
    assert slowest_phases(outcomes) == {"connect": 10.0, "write": 9.0, "reset": 1.0}


def test_cpu_s_counts_this_process_work() -> None:
    before = cpu_s(os.getpid())
    end = time.process_time() + 0.05
    while time.process_time() < end:
        pass
    assert cpu_s(os.getpid()) >= before + 0.03
    assert cpu_s(2**22 + 12345) == 0.0  # no such process


def _row(wall: float, ratio: float, cpu: float) -> dict[str, object]:
    return {
        "wall_s": wall,
        "ratio": ratio,
        "cpu_s": cpu,
        "runs_wall_s": [wall] * 3,
        "overlapped_runs": 3,
        "board_deploy_s": [wall],
        "phases_ms": {"connect": 100.0},
    }


def test_render_names_the_limit_when_the_goal_is_missed() -> None:
    result = {
        "protocol": "rfc2217",
        "image_bytes": 70000,
        "repeats": 3,
        "goal_ratio": 1.15,
        "cpu_count": 2,
        "loadavg_at_end": [1.0, 1.0, 1.0],
        "bench_s": 100.0,
        "before_commit": "abc",
        "full_flash": {"1": _row(6.0, 1.0, 0.5), "8": _row(9.0, 1.5, 17.0)},
        "full_flash_before": {"1": _row(6.0, 1.0, 0.5), "8": _row(42.0, 7.0, 3.0)},
        "edit": {"1": _row(4.0, 1.0, 0.3), "8": _row(4.2, 1.05, 1.0)},
    }
    text = "\n".join(render(result))
    assert "| 8 | 9.00 s | 1.5x | 3/3 | 1.9 |" in text
    assert "Not met: (a) N = 8 is 1.5x N = 1" in text
    assert "what is left is CPU: 8 simulator processes" in text
    result["full_flash"]["8"] = _row(6.3, 1.05, 1.0)  # type: ignore[index]
    assert "Met." in "\n".join(render(result))
