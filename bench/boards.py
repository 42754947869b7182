"""Boards at scale: N = 1, 2, 4, 8 virtual boards (realistic timing), each
served by its own `fbuild sim serve --protocol rfc2217` process, so the boards
do not share the deploying process's interpreter (nor each other's).

(a) full flash: `fbuild deploy --full --json --port P1 ... --port PN` of the
    example (built once) to freshly erased boards; wall time of the process.
(b) edit: `fbuild watch --json` on the N boards; a one-line edit of
    src/version.h, timed from the write to the new firmware's boot line on
    every board (the `serial_line` events of the run).

Each (N, scenario) runs REPEATS times (for (b): REPEATS edits in one
session); the median is reported with its ratio to N = 1. Whether the
boards' write phases overlapped comes from the `deploy_finished` events'
`write_window`s (max start < min end). CPU seconds used by the deploying
process and the board servers during each run are read from /proc, to tell
a CPU-bound result from a serialised one. (a) also runs with the code of
BEFORE_COMMIT (the commit before the per-board worker threads), from a
`git archive` of it on PYTHONPATH with this interpreter.

`python -m bench.boards [--ns 1,2,4,8] [--repeats 3] [--before COMMIT|none]`
prints one JSON object and saves bench/results/boards.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import re
import resource
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from bench.common import ROOT, copy_example, save

NS = (1, 2, 4, 8)
REPEATS = 3
BEFORE_COMMIT = "5a43278"  # the last commit with one process-wide esptool log lock
GOAL_RATIO = 1.15
SERVE_START_S = 120.0  # 8 servers importing unicorn + esptool on a loaded 2-core machine
STEP_TIMEOUT_S = 180.0
_URL = re.compile(r" on ((?:rfc2217|socket)://\S+) \(")
_TICK = os.sysconf("SC_CLK_TCK")


def fbuild(pythonpath: Path | None = None) -> tuple[list[str], dict[str, str]]:
    """The `fbuild` command (this tree's, or another tree's on PYTHONPATH).
    -P: not the current directory first on sys.path (it is this tree)."""
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    return [sys.executable, "-P", "-m", "fbuild_watch"], env


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process: its threads, and its
    children it has waited for (the build's compiler and linker)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(f) for f in fields[11:15]) / _TICK


def slowest_phases(outcomes: Sequence[dict[str, Any]]) -> dict[str, float]:
    """Each deploy phase's longest time over the boards (ms)."""
    out: dict[str, float] = {}
    for o in outcomes:
        for k, v in (o.get("phases_ms") or {}).items():
            out[k] = max(out.get(k, 0.0), v)
    return out


def overlap(windows: Sequence[Sequence[float] | None]) -> dict[str, Any]:
    """Did all the write phases run at the same time? (max start < min end)."""
    spans = [w for w in windows if w]
    if len(spans) < len(windows) or not spans:
        return {"overlapped": None, "common_s": None, "spread_s": None}
    common = min(w[1] for w in spans) - max(w[0] for w in spans)
    return {
        "overlapped": common > 0,
        "common_s": round(common, 3),  # all boards writing at once (negative: a gap)
        "spread_s": round(max(w[1] for w in spans) - min(w[0] for w in spans), 3),
    }


def protocol() -> str:
    """rfc2217 when this tree's `fbuild sim serve` offers it (esptool can
    reset the boards over it); raw TCP cannot reset a board, so (b) could
    never see the new firmware start."""
    cmd, env = fbuild()
    out = subprocess.run(
        [*cmd, "sim", "serve", "--help"], env=env, capture_output=True, text=True, check=True
    ).stdout
    if "rfc2217" not in out:
        raise SystemExit("bench boards: `fbuild sim serve` has no --protocol rfc2217")
    return "rfc2217"


class Server:
    """One `fbuild sim serve` process: one erased board, memory-only flash."""

    def __init__(self, name: str, env: dict[str, str]) -> None:
        cmd, _ = fbuild()
        self.proc = subprocess.Popen(
            [*cmd, "sim", "serve", "--listen", "127.0.0.1:0", "--protocol", "rfc2217",
             "--no-persist", "--timing", "realistic", "--name", name],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )  # fmt: skip
        self.lines: list[str] = []
        self.url = ""
        self._ready = threading.Event()
        threading.Thread(target=self._read, name=f"serve-{name}", daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # drained to the end: the pipe never fills
            self.lines.append(line.rstrip())
            m = _URL.search(line)
            if m and not self.url:
                # esptool's CLI adds ?ign_set_control to rfc2217 URLs; `fbuild` opens the
                # port itself and does not (the option ack never comes: "timeout while
                # waiting for option 'control'")
                self.url = m.group(1) + ("?ign_set_control" if m.group(1).startswith("rfc") else "")
                self._ready.set()
        self._ready.set()

    def wait(self) -> str:
        if not self._ready.wait(SERVE_START_S) or not self.url:
            raise RuntimeError(f"sim serve did not start: {self.lines[-5:]}")
        return self.url

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@contextlib.contextmanager
def servers(n: int, tag: str, env: dict[str, str]) -> Iterator[list[Server]]:
    started = [Server(f"{tag}{i}", env) for i in range(n)]  # distinct names: distinct MACs
    try:
        for s in started:
            s.wait()
        yield started
    finally:
        for s in started:
            s.stop()


def _children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def full_flash(
    project: Path, n: int, env: dict[str, str], pythonpath: Path | None, tag: str
) -> dict[str, Any]:
    """(a) once: N erased boards, one `fbuild deploy --full --json` process."""
    cmd, denv = fbuild(pythonpath)
    with servers(n, tag, env) as boards:
        ports = [a for s in boards for a in ("--port", s.url)]
        served_cpu = sum(cpu_s(s.proc.pid) for s in boards)
        load = os.getloadavg()[0]
        cpu0 = _children_cpu_s()
        t0 = time.perf_counter()
        res = subprocess.run(
            [*cmd, "deploy", "--full", "--json", *ports, str(project)],
            env={**denv, "FBUILD_CACHE_DIR": env["FBUILD_CACHE_DIR"]},
            capture_output=True, text=True, timeout=STEP_TIMEOUT_S, check=False,
        )  # fmt: skip
        wall = time.perf_counter() - t0
        cpu = _children_cpu_s() - cpu0 + sum(cpu_s(s.proc.pid) for s in boards) - served_cpu
    try:
        doc = json.loads(res.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"fbuild deploy printed no JSON: {res.stderr[-500:]}") from None
    outcomes: list[dict[str, Any]] = doc if isinstance(doc, list) else [doc]
    bad = [o for o in outcomes if not o.get("ok") or o.get("kind") != "full"]
    if res.returncode != 0 or bad or len(outcomes) != n:
        raise RuntimeError(f"deploy to {n} boards failed: {res.stderr[-500:]} {bad[:1]}")
    return {
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu, 2),
        "load_before": round(load, 2),
        "phases_ms": slowest_phases(outcomes),
        "board_deploy_s": sorted(round(o["duration_ms"] / 1000, 3) for o in outcomes),
        "write_windows": [o.get("write_window") for o in outcomes],
        **(
            overlap([o.get("write_window") for o in outcomes])
            if "write_window" in outcomes[0]
            else {}
        ),
    }


class Watch:
    """`fbuild watch --json` on N boards; its events on a queue."""

    def __init__(self, project: Path, urls: list[str], env: dict[str, str]) -> None:
        cmd, wenv = fbuild()
        ports = [a for u in urls for a in ("--port", u)]
        self.proc = subprocess.Popen(
            [*cmd, "watch", "--json", *ports, str(project)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            text=True, env={**wenv, "FBUILD_CACHE_DIR": env["FBUILD_CACHE_DIR"]},
        )  # fmt: skip
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()

    def _read(self, out: IO[str] | None) -> None:
        assert out is not None
        for line in out:
            with contextlib.suppress(json.JSONDecodeError):
                self.events.put(json.loads(line))
        self.events.put(None)

    def until(self, done: Any, what: str) -> list[dict[str, Any]]:
        """Events up to and including the one for which `done(seen)` holds."""
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + STEP_TIMEOUT_S
        while True:
            try:
                ev = self.events.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"fbuild watch: no {what} in {STEP_TIMEOUT_S:.0f} s") from None
            if ev is None:
                raise RuntimeError(f"fbuild watch exited before {what}")
            seen.append(ev)
            if ev["type"] in ("error", "exit") and not ev.get("ok", False):
                raise RuntimeError(f"fbuild watch: {ev}")
            if done(seen):
                return seen

    def stop(self) -> None:
        if self.proc.poll() is None and self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.write("q\n")
                self.proc.stdin.flush()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _lines_on_all(text: str, n: int) -> Any:
    def done(seen: list[dict[str, Any]]) -> bool:
        return len(_first_line_at(seen, text)) == n

    return done


def _first_line_at(seen: list[dict[str, Any]], text: str) -> dict[str, float]:
    at: dict[str, float] = {}
    for ev in seen:
        if ev["type"] == "serial_line" and text in ev["text"]:
            at.setdefault(ev["port"], ev["t"])
    return at


def edits(
    project: Path, n: int, env: dict[str, str], repeats: int, tag: str
) -> list[dict[str, Any]]:
    """(b): REPEATS one-line edits in one `fbuild watch` session on N boards."""
    version = project / "src" / "version.h"
    version.write_text(f'#define APP_VERSION "{tag}.start"\n')
    runs = []
    with servers(n, tag, env) as boards:
        watch = Watch(project, [s.url for s in boards], env)
        try:
            # the session's first build and deploy (erased boards: full writes)
            start = f"version {tag}.start"
            watch.until(_lines_on_all(start, n), f"'{start}' on all {n} boards")
            for i in range(repeats):
                text = f"version {tag}.{i}"
                procs = [watch.proc.pid, *(s.proc.pid for s in boards)]
                cpu0 = sum(cpu_s(p) for p in procs)
                load = os.getloadavg()[0]
                written = time.time()  # the clock starts at the write (events carry Unix time)
                version.write_text(f'#define APP_VERSION "{tag}.{i}"\n')
                seen = watch.until(_lines_on_all(text, n), f"'{text}' on all {n} boards")
                at = _first_line_at(seen, text)
                # the cycle ends when every board's deploy has (a deploy_finished may
                # follow the board's first line): the next edit starts clean
                if not any(e["type"] == "cycle_finished" for e in seen):
                    seen += watch.until(lambda s: s[-1]["type"] == "cycle_finished", "cycle end")
                cpu = sum(cpu_s(p) for p in procs) - cpu0
                deploys = [e for e in seen if e["type"] == "deploy_finished"]
                failed = [d for d in deploys if not d["ok"]]
                if failed:
                    raise RuntimeError(f"a deploy after the edit failed: {failed[0]['error']}")
                runs.append({
                    "wall_s": round(max(at.values()) - written, 3),
                    "first_board_s": round(min(at.values()) - written, 3),
                    "cpu_s": round(cpu, 2),
                    "load_before": round(load, 2),
                    "kinds": sorted({d["kind"] for d in deploys}),
                    "phases_ms": slowest_phases(deploys),
                    "progress_events": sum(e["type"] == "deploy_progress" for e in seen),
                    **overlap([d.get("write_window") for d in deploys] if len(deploys) == n else [None]),
                })  # fmt: skip
        finally:
            watch.stop()
    return runs


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median run by wall time, with every run's wall time."""
    by_wall = sorted(runs, key=lambda r: r["wall_s"])
    return {**by_wall[len(by_wall) // 2], "runs_wall_s": [r["wall_s"] for r in runs],
            "overlapped_runs": sum(bool(r.get("overlapped")) for r in runs)}  # fmt: skip


def _ratios(rows: dict[int, dict[str, Any]]) -> None:
    base = rows[min(rows)]["wall_s"]
    for row in rows.values():
        row["ratio"] = round(row["wall_s"] / base, 2)


@contextlib.contextmanager
def before_tree(commit: str) -> Iterator[Path]:
    """The package as it was at `commit` (a `git archive`, no work tree change)."""
    with tempfile.TemporaryDirectory(prefix="fbuild-bench-before-") as d:
        data = subprocess.run(
            ["git", "archive", commit, "fbuild_watch"], cwd=ROOT, capture_output=True, check=True
        ).stdout
        tar = Path(d) / "tree.tar"
        tar.write_bytes(data)
        with tarfile.open(tar) as t:
            t.extractall(d, filter="data")
        cmd, env = fbuild(Path(d))
        where = subprocess.run(
            [cmd[0], "-P", "-c", "import fbuild_watch; print(fbuild_watch.__file__)"],
            env=env, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        if not where.startswith(d):
            raise RuntimeError(f"{commit}'s tree is not what runs: fbuild_watch from {where}")
        yield Path(d)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m bench.boards")
    ap.add_argument("--ns", default=",".join(map(str, NS)))
    ap.add_argument("--repeats", type=int, default=REPEATS)
    ap.add_argument(
        "--before", default=BEFORE_COMMIT, help="commit to compare (a) with; none: skip"
    )
    args = ap.parse_args(argv if argv is not None else [])
    ns = [int(x) for x in args.ns.split(",")]
    proto = protocol()
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fbuild-bench-boards-") as d:
        tmp = Path(d)
        env = {
            **os.environ,
            "FBUILD_SIM_DIR": str(tmp / "sim"),
            "FBUILD_CACHE_DIR": str(tmp / "cache"),
        }
        project = copy_example(tmp)
        cmd, _ = fbuild()
        subprocess.run([*cmd, "build", str(project)], env=env, check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        image = sum(
            (project / "build" / f).stat().st_size
            for f in ("bootloader.bin", "partition-table.bin", "blink-c3.bin")
        )
        flash: dict[int, dict[str, Any]] = {}
        for n in ns:
            runs = [full_flash(project, n, env, None, f"f{n}r{r}x") for r in range(args.repeats)]
            flash[n] = _median(runs)
            print(f"(a) {n} boards: {flash[n]['runs_wall_s']} s", flush=True)
        _ratios(flash)
        before: dict[int, dict[str, Any]] = {}
        if args.before != "none":
            with before_tree(args.before) as old:
                for n in ns:
                    runs = [
                        full_flash(project, n, env, old, f"o{n}r{r}x") for r in range(args.repeats)
                    ]
                    before[n] = _median(runs)
                    print(f"(a) before, {n} boards: {before[n]['runs_wall_s']} s", flush=True)
            _ratios(before)
        edit: dict[int, dict[str, Any]] = {}
        for n in ns:
            edit[n] = _median(edits(project, n, env, args.repeats, f"e{n}x"))
            print(f"(b) {n} boards: {edit[n]['runs_wall_s']} s", flush=True)
        _ratios(edit)
    result = {
        "description": "N virtual boards (realistic timing), each its own `fbuild sim serve "
        f"--protocol {proto}` process: (a) `fbuild deploy --full` to erased boards, "
        "(b) one-line edit in `fbuild watch` -> new firmware's first line on every board",
        "goal_ratio": GOAL_RATIO,
        "protocol": proto,
        "image_bytes": image,
        "repeats": args.repeats,
        "cpu_count": os.cpu_count(),
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "bench_s": round(time.monotonic() - t_start, 1),
        "before_commit": None if args.before == "none" else args.before,
        "full_flash": {str(n): r for n, r in flash.items()},
        "full_flash_before": {str(n): r for n, r in before.items()},
        "edit": {str(n): r for n, r in edit.items()},
    }
    save("boards", result)
    return result


def _cores(row: dict[str, Any]) -> str:
    return f"{row['cpu_s'] / row['wall_s']:.1f}" if row["wall_s"] else "-"


def render(result: dict[str, Any]) -> list[str]:
    flash, edit, before = result["full_flash"], result["edit"], result["full_flash_before"]
    goal = result["goal_ratio"]
    lines = [
        f"N **virtual boards with realistic timing**, each served by its own `fbuild sim serve "
        f"--protocol {result['protocol']}` process (erased at the start, memory-only flash). "
        f"(a) `fbuild deploy --full --json` of the {result['image_bytes'] / 1024:.0f} KiB example "
        "image to all N boards (one process, N `--port`s; wall time of the process). (b) a one-line "
        "edit of `src/version.h` under `fbuild watch --json`: from the write to the new firmware's "
        f"boot line on the last board. Median of {result['repeats']} runs ((b): edits in one "
        "session). Overlap: the boards' `write_window`s (from `deploy_finished`) share an instant "
        "(max start < min end) in that many of the runs. CPU: seconds used by the deploying process "
        "and the board servers during the run, per second of wall time (cores busy). The boards "
        "are reached over RFC 2217 with our client (fbuild_watch/deploy/rfc2217.py: no fixed "
        "waits after line or timeout changes; see Remote boards).",
        "",
        "| N | (a) full flash | / N=1 | writes overlapped | cores busy | (b) edit -> line on all | / N=1 "
        "| writes overlapped | cores busy |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n in flash:
        a, b = flash[n], edit.get(n)
        bcols = (
            f"{b['wall_s']:.2f} s | {b['ratio']}x | {b['overlapped_runs']}/{len(b['runs_wall_s'])} | {_cores(b)}"
            if b
            else "- | - | - | -"
        )
        lines.append(
            f"| {n} | {a['wall_s']:.2f} s | {a['ratio']}x | {a['overlapped_runs']}/{len(a['runs_wall_s'])} "
            f"| {_cores(a)} | {bcols} |"
        )
    if before:
        lines += [
            "",
            f"(a) with the code before per-board worker threads (commit {result['before_commit']}, "
            "one process-wide esptool log lock, and pyserial's RFC 2217 client with its fixed "
            "waits), same servers:",
            "",
            "| N | before | / N=1 | per-board deploy times (s) | after | per-board deploy times (s) |",
            "|---|---|---|---|---|---|",
        ]
        for n, row in before.items():
            after = flash.get(n)
            lines.append(
                f"| {n} | {row['wall_s']:.2f} s | {row['ratio']}x | {', '.join(map(str, row['board_deploy_s']))} "
                f"| {after['wall_s']:.2f} s | {', '.join(map(str, after['board_deploy_s']))} |"
                if after
                else f"| {n} | {row['wall_s']:.2f} s | {row['ratio']}x | - | - | - |"
            )
    top = str(max(int(n) for n in flash))
    one = str(min(int(n) for n in flash))
    for label, rows in (("(a)", flash), ("(b)", edit)):
        if top in rows and one in rows:
            lo, hi = rows[one]["phases_ms"], rows[top]["phases_ms"]
            lines += ["", f"{label} slowest board's deploy phases, N = {one} -> N = {top} (ms): "
                      + ", ".join(f"{k.replace('_', ' ')} {lo.get(k, 0):.0f} -> {v:.0f}"
                                  for k, v in hi.items()) + "."]  # fmt: skip
    met = all(r[top]["ratio"] <= goal for r in (flash, edit) if top in r)
    lines += ["", f"Goal: N = 8 within {goal}x of N = 1 for both. "
              + ("Met." if met else _limit_text(result, top))]  # fmt: skip
    lines += ["", f"Machine: {result['cpu_count']} cores; load average at the end "
              f"{' / '.join(map(str, result['loadavg_at_end']))}; the whole benchmark took "
              f"{result['bench_s']:.0f} s."]  # fmt: skip
    return lines


def _limit_text(result: dict[str, Any], top: str) -> str:
    """What kept N = top from the goal, from the run's own numbers."""
    cores = result["cpu_count"] or 1
    parts = []
    cpu_bound = False
    for label, rows in (("(a)", result["full_flash"]), ("(b)", result["edit"])):
        if top not in rows:
            continue
        row, one = rows[top], rows[min(rows, key=int)]
        busy = row["cpu_s"] / row["wall_s"] if row["wall_s"] else 0.0
        cpu_bound |= row["ratio"] > result["goal_ratio"] and busy >= 0.75 * cores
        parts.append(
            f"{label} N = {top} is {row['ratio']}x N = 1: its writes overlapped in "
            f"{row['overlapped_runs']}/{len(row['runs_wall_s'])} runs, and it kept "
            f"{busy:.1f} of {cores} cores busy ({row['cpu_s']:.1f} CPU s against "
            f"{one['cpu_s']:.1f} for N = 1)"
        )
    why = (
        f"The deploys run side by side, so what is left is CPU: {top} simulator processes (each "
        "emulating its chip and modelling its UART timing in Python) and the deploying process "
        f"share {cores} cores here, and the modelled timing only holds while each board's "
        "process gets the CPU it asks for."
        if cpu_bound
        else "The cores were not saturated: compare the phases above to see which part grew."
    )
    return "Not met: " + "; ".join(parts) + ". " + why


if __name__ == "__main__":
    main(sys.argv[1:])
