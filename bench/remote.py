"""Remote boards: a one-line edit, from the write to the new firmware's first
log line, on a virtual board (realistic timing) served over RFC 2217 by
`fbuild sim serve --protocol rfc2217` (its own process: bench.boards.Server),
through a latency relay (tests/netkit.py) adding 0, 5, 20 and 50 ms to the
round trip.

* ours: `fbuild watch --json --port rfc2217://RELAY` (bench.boards.Watch),
  one session for every round trip (the relay's delay changes between
  blocks of edits; the deployer measures it again at each connect); the
  time is the `serial_line` event's, stamped when the bytes arrived.
* peer: bench.loop's `make` + esptool write-flash --diff-with (in-process
  esptool, which favours it) over the same link, then a monitor re-opened on
  it. Its monitor opens with DTR and RTS low, as esp-idf-monitor does:
  behind esptool's port manager (which `fbuild sim serve --protocol rfc2217`
  and `esp_rfc2217_server` are) a client's first DTR raise starts the reset
  into the ROM loader, so a monitor opening with pyserial's defaults (DTR
  high, as miniterm) would show nothing; with both low the port manager
  resets the chip into its app, which prints its first line again.

Where the time goes: the relay records what the client sends, and the RFC
2217 commands in it are counted per edit (line changes, port-setting
renegotiations, purges). pyserial's RFC 2217 client (the peer's) waits a
fixed time for each, whatever the link (`ign_set_control`: 0.1 s after a
line change; a 0.05 s poll for the answer to settings and purges), so their
sum is a floor under every edit that does not move with the round trip.
Ours (fbuild_watch/deploy/rfc2217.py) sends a timeout change nowhere, does
not sleep after a line change and waits for answers by the round trip.

`python -m bench.remote [--edits 5] [--peer-edits 2]` saves bench/results/remote.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import serial

from bench.boards import Server, Watch, _first_line_at, fbuild, slowest_phases
from bench.common import copy_example, save, stats_ms
from bench.loop import peer
from tests.netkit import LatencyRelay

RTTS_MS = (0, 5, 20, 50)
EDITS = 5
# esptool's CLI steps over RFC 2217 take ~0.3 s a command (see "Where the time
# goes"): ~40 s an edit, so the peer gets fewer edits to keep the run ~10 min
PEER_EDITS = 2
GOAL_SLOWDOWN_AT_20 = 1.5  # ours at 20 ms <= 1.5x ours at 0 ms
GOAL_PEER_RATIO_AT_20 = 3.0  # the peer >= 3x ours at 20 ms

# RFC 2217 (telnet COM-PORT-OPTION 44) client commands, by their code
_IAC, _SB, _COM_PORT = 0xFF, 0xFA, 44
_SETTINGS = {1: "baudrate", 2: "datasize", 3: "parity", 4: "stopsize"}
_CONTROL, _PURGE = 5, 12
# SET_CONTROL values that change DTR or RTS (8/9 DTR on/off, 11/12 RTS on/off)
_LINE_CHANGES = {8, 9, 11, 12}
# pyserial's fixed waits (serial/rfc2217.py): after a line change with
# ign_set_control; a renegotiation's answer poll plus its flow-control
# SET_CONTROL; a purge's answer poll
_WAIT_S = {"line_changes": 0.1, "renegotiations": 0.15, "purges": 0.05}


def rfc2217_commands(stream: bytes) -> dict[str, int]:
    """The RFC 2217 commands a client sent: DTR/RTS line changes, port
    setting renegotiations (pyserial sends baud, data size, parity and stop
    bits together, then the flow control), and purges."""
    counts: Counter[str] = Counter()
    i = 0
    while i < len(stream) - 1:
        if stream[i] != _IAC:
            i += 1
            continue
        if stream[i + 1] == _IAC:  # an escaped 0xFF data byte
            i += 2
            continue
        if stream[i + 1] == _SB and i + 4 < len(stream) and stream[i + 2] == _COM_PORT:
            code, value = stream[i + 3], stream[i + 4]
            if code == 1:
                counts["renegotiations"] += 1
            elif code == _CONTROL and value in _LINE_CHANGES:
                counts["line_changes"] += 1
            elif code == _PURGE:
                counts["purges"] += 1
        i += 2
    return {k: counts[k] for k in _WAIT_S}


def fixed_wait_s(commands: Mapping[str, float], *, client: str = "pyserial") -> float:
    """What the client waits for these commands on any link, round trips
    aside: pyserial's fixed waits; ours polls an answer every 2 ms."""
    if client == "ours":
        return sum(0.002 * n for k, n in commands.items() if k != "line_changes")
    return sum(_WAIT_S[k] * n for k, n in commands.items())


def open_monitor(url: str) -> serial.SerialBase:
    """A monitor's open with DTR and RTS low (see the module's text)."""
    port = serial.serial_for_url(url, baudrate=115200, timeout=0.05, do_not_open=True)
    port.dtr = False
    port.rts = False
    port.open()
    return port


def _per_edit(relay: LatencyRelay, edits: int) -> dict[str, float]:
    commands = rfc2217_commands(bytes(relay.sent))
    relay.sent.clear()
    return {k: round(n / edits, 1) for k, n in commands.items()}


def ours(project: Path, relay: LatencyRelay, env: dict[str, str], edits: int) -> dict[int, Any]:
    """One `fbuild watch` session; `edits` edits at each round trip."""
    version = project / "src" / "version.h"
    version.write_text('#define APP_VERSION "r.start"\n')
    rows: dict[int, Any] = {}
    watch = Watch(project, [relay.url], env)
    try:
        watch.until(lambda seen: bool(_first_line_at(seen, "version r.start")), "the first line")
        for rtt in RTTS_MS:
            relay.delay = rtt / 2000
            relay.sent.clear()
            runs = []
            for i in range(edits):
                text = f"r{rtt}.{i}"
                written = time.time()  # events carry Unix time
                version.write_text(f'#define APP_VERSION "{text}"\n')
                seen = watch.until(
                    lambda s, t=text: bool(_first_line_at(s, f"version {t}")), f"'{text}'"
                )
                if not any(e["type"] == "cycle_finished" for e in seen):
                    seen += watch.until(lambda s: s[-1]["type"] == "cycle_finished", "cycle end")
                deploys = [e for e in seen if e["type"] == "deploy_finished"]
                if not deploys or not all(d["ok"] for d in deploys):
                    raise RuntimeError(f"bench remote: a deploy failed: {deploys}")
                line_at = _first_line_at(seen, f"version {text}")
                runs.append({
                    "s": max(line_at.values()) - written,
                    "kind": deploys[-1]["kind"],
                    "rtt_ms": deploys[-1].get("rtt_ms"),
                    "stub": deploys[-1].get("stub_used"),
                    "phases_ms": slowest_phases(deploys),
                })  # fmt: skip
            rows[rtt] = {
                **stats_ms([r["s"] for r in runs]),
                "kinds": sorted({r["kind"] for r in runs}),
                "measured_rtt_ms": statistics.median(r["rtt_ms"] or 0.0 for r in runs),
                "stub_used": sum(bool(r["stub"]) for r in runs),
                "phases_median_ms": {
                    k: round(statistics.median(r["phases_ms"].get(k, 0.0) for r in runs), 1)
                    for k in runs[0]["phases_ms"]
                },
                "rfc2217_per_edit": _per_edit(relay, edits),
            }
            print(f"ours, +{rtt} ms: {rows[rtt]['median_ms']:.0f} ms", flush=True)
    finally:
        watch.stop()
    return rows


def peers(project: Path, relay: LatencyRelay, edits: int) -> dict[int, Any]:
    rows: dict[int, Any] = {}
    for rtt in RTTS_MS:
        relay.delay = rtt / 2000
        relay.sent.clear()
        cycles = peer(project, relay.url, edits, tag=f"p{rtt}", monitor=open_monitor)
        rows[rtt] = {
            **stats_ms([c["total_s"] for c in cycles]),
            "parts_median_ms": {
                k: round(statistics.median(c[k] for c in cycles) * 1000, 1)
                for k in ("make_s", "esptool_s", "monitor_s")
            },
            "rfc2217_per_edit": _per_edit(relay, edits),
        }
        print(f"peer, +{rtt} ms: {rows[rtt]['median_ms']:.0f} ms", flush=True)
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m bench.remote")
    ap.add_argument("--edits", type=int, default=EDITS)
    ap.add_argument("--peer-edits", type=int, default=PEER_EDITS)
    args = ap.parse_args(argv if argv is not None else [])
    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fbuild-bench-remote-") as d:
        tmp = Path(d)
        env = {**os.environ, "FBUILD_SIM_DIR": str(tmp / "sim"), "FBUILD_CACHE_DIR": str(tmp / "c")}
        project = copy_example(tmp)
        cmd, _ = fbuild()
        subprocess.run([*cmd, "build", str(project)], env=env, check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        server = Server("remote", env)
        try:
            relay = LatencyRelay(server.wait(), 0.0, record=True)
            try:
                ours_rows = ours(project, relay, env, args.edits)
                peer_rows = peers(project, relay, args.peer_edits)
            finally:
                relay.close()
        finally:
            server.stop()
    for row in ours_rows.values():
        row["rfc2217_fixed_wait_ms"] = round(
            fixed_wait_s(row["rfc2217_per_edit"], client="ours") * 1000
        )
    for row in peer_rows.values():
        row["rfc2217_fixed_wait_ms"] = round(fixed_wait_s(row["rfc2217_per_edit"]) * 1000)
    base = ours_rows[0]["median_ms"]
    for rtt, row in ours_rows.items():
        row["over_zero"] = round(row["median_ms"] / base, 2)
        row["peer_over_ours"] = round(peer_rows[rtt]["median_ms"] / row["median_ms"], 2)
    result = {
        "description": "one-line edit -> new firmware's first line over RFC 2217 with added "
        "round trip (virtual board, realistic timing, `fbuild sim serve --protocol rfc2217`)",
        "edits": args.edits,
        "peer_edits": args.peer_edits,
        "goals": {
            "ours_20_over_ours_0_max": GOAL_SLOWDOWN_AT_20,
            "peer_over_ours_at_20_min": GOAL_PEER_RATIO_AT_20,
        },
        "ours": {str(k): v for k, v in ours_rows.items()},
        "peer": {str(k): v for k, v in peer_rows.items()},
        "cpu_count": os.cpu_count(),
        "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        "bench_s": round(time.monotonic() - t_start, 1),
    }
    save("remote", result)
    return result


def render(result: dict[str, Any]) -> list[str]:
    o, p, g = result["ours"], result["peer"], result["goals"]
    lines = [
        f"A one-line edit of `examples/blink-c3` (version string), **virtual board with realistic "
        "timing** served by `fbuild sim serve --protocol rfc2217`, reached through a relay adding "
        "the round trip; from the file write to the new firmware's first line. Peer: `make` + "
        "esptool `write-flash --diff-with` (in-process) over the same link + a monitor re-opened "
        f"on it (DTR and RTS low, as esp-idf-monitor). Medians of {result['edits']} edits per "
        f"round trip for fbuild watch, {result['peer_edits']} for the peer (~40 s each); a "
        "shared 2-core machine, so noisy.",
        "",
        "| added RTT | fbuild watch | / at 0 ms | measured RTT | peer | peer / ours |",
        "|---|---|---|---|---|---|",
    ]
    for rtt, row in o.items():
        prow = p[rtt]
        lines.append(
            f"| {rtt} ms | {row['median_ms'] / 1000:.2f} s | {row['over_zero']}x "
            f"| {row['measured_rtt_ms']:.1f} ms | {prow['median_ms'] / 1000:.2f} s "
            f"| {row['peer_over_ours']}x |"
        )
    at20 = o.get("20")
    if at20 is not None:
        slow_ok = at20["over_zero"] <= g["ours_20_over_ours_0_max"]
        peer_ok = at20["peer_over_ours"] >= g["peer_over_ours_at_20_min"]
        lines += [
            "",
            f"Goals at 20 ms: ours <= {g['ours_20_over_ours_0_max']}x ours at 0 ms: "
            f"{at20['over_zero']}x, {'met' if slow_ok else 'not met'}; peer >= "
            f"{g['peer_over_ours_at_20_min']}x ours: {at20['peer_over_ours']}x, "
            f"{'met' if peer_ok else 'not met'}.",
        ]
    row20, peer20 = at20 or next(iter(o.values())), p.get("20", next(iter(p.values())))
    lines += [
        "",
        "Where the time goes: pyserial's RFC 2217 client (the peer's) waits a fixed time for "
        "each command, on any link: 0.1 s after a DTR/RTS change (`ign_set_control`), ~0.15 s "
        "for a port-setting renegotiation (esptool sets a read timeout per command and restores "
        "it after, and every timeout set renegotiates), ~0.05 s for a purge. Ours "
        "(fbuild_watch/deploy/rfc2217.py) keeps a timeout change in the client, does not sleep "
        "after a line change and polls answers every 2 ms. Counted in what each client sent, "
        f"per edit at 20 ms, with each client's fixed waits: fbuild watch {_waits(row20)}; the "
        f"peer {_waits(peer20)}.",
        "",
        "Ours at 20 ms, deploy phases (ms, median): "
        + ", ".join(f"{k.replace('_', ' ')} {v:.0f}" for k, v in row20["phases_median_ms"].items())
        + ". Peer at 20 ms (ms, median): "
        + ", ".join(f"{k.removesuffix('_s')} {v:.0f}" for k, v in peer20["parts_median_ms"].items())
        + ".",
    ]
    return lines


def _waits(row: dict[str, Any]) -> str:
    c = row["rfc2217_per_edit"]
    return (
        f"{c['line_changes']:g} line, {c['renegotiations']:g} settings, {c['purges']:g} purges "
        f"= {row['rfc2217_fixed_wait_ms'] / 1000:.2f} s"
    )


if __name__ == "__main__":
    main()
