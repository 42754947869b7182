"""bench/remote.py's helpers: counting the RFC 2217 commands a client sent,
and the report text."""

from __future__ import annotations

import time

import serial

from bench.remote import fixed_wait_s, render, rfc2217_commands
from fbuild_watch.sim.server import BoardServer
from tests.netkit import LatencyRelay
from tests.simkit import new_board


def test_the_commands_pyserial_sends_are_counted() -> None:
    """What pyserial's own RFC 2217 client sends, through a recording relay
    to our RFC 2217 server: each DTR/RTS change, each renegotiation (a
    timeout set), each purge; data bytes (0xFF escaped) are not commands."""
    server = BoardServer(new_board(start="download"), protocol="rfc2217").start()
    try:
        with LatencyRelay(server.url + "?ign_set_control", 0.0, record=True) as relay:
            port = serial.serial_for_url(relay.url, baudrate=115200, timeout=0.05)
            try:
                opened = rfc2217_commands(bytes(relay.sent))
                # the open: its settings, then DTR and RTS, then both buffers purged
                assert opened == {"line_changes": 2, "renegotiations": 1, "purges": 2}
                relay.sent.clear()
                port.dtr = False
                port.rts = True
                port.timeout = 1.0  # renegotiates the port settings
                port.write(b"\xff\xfa\x2c\x05\x08")  # data that looks like a command
                port.reset_input_buffer()  # answered after the data: all of it recorded
            finally:
                port.close()
            sent = bytes(relay.sent)
    finally:
        server.stop()
    assert b"\xff\xff\xfa\x2c\x05\x08" in sent  # the data, its 0xFF escaped
    assert rfc2217_commands(sent) == {"line_changes": 2, "renegotiations": 1, "purges": 1}
    assert fixed_wait_s(rfc2217_commands(sent)) == 0.1 * 2 + 0.15 + 0.05
    assert fixed_wait_s(rfc2217_commands(sent), client="ours") == 0.002 * 2


def test_our_client_keeps_timeouts_local_and_does_not_sleep_after_line_changes() -> None:
    """fbuild's RFC 2217 client (deploy/rfc2217.py): what pyserial's sends
    and waits for above, ours does not."""
    from fbuild_watch.deploy.rfc2217 import serial_for_url

    server = BoardServer(new_board(start="download"), protocol="rfc2217").start()
    try:
        with LatencyRelay(server.url + "?ign_set_control", 0.0, record=True) as relay:
            port = serial_for_url(relay.url, baudrate=115200, timeout=0.05)
            port.open()
            try:
                relay.sent.clear()
                t0 = time.monotonic()
                for _ in range(5):
                    port.dtr = False
                    port.rts = True
                    port.timeout = 1.0
                    port.timeout = 0.05
                took = time.monotonic() - t0
                port.reset_input_buffer()
                port.baudrate = 460800  # a real change still goes to the server
            finally:
                port.close()
            sent = bytes(relay.sent)
    finally:
        server.stop()
    assert rfc2217_commands(sent) == {"line_changes": 10, "renegotiations": 1, "purges": 1}
    assert took < 0.5, took  # pyserial's: 10 x 0.1 s + 10 x 0.15 s


def _row(median_ms: float, over_zero: float, peer_over: float) -> dict[str, object]:
    return {
        "median_ms": median_ms,
        "over_zero": over_zero,
        "peer_over_ours": peer_over,
        "measured_rtt_ms": 20.3,
        "phases_median_ms": {"connect": 2400.0, "write": 300.0},
        "rfc2217_per_edit": {"line_changes": 12.0, "renegotiations": 10.0, "purges": 3.0},
        "rfc2217_fixed_wait_ms": 2850,
    }


def _peer(median_ms: float) -> dict[str, object]:
    return {
        "median_ms": median_ms,
        "parts_median_ms": {"make_s": 200.0, "esptool_s": 36000.0, "monitor_s": 700.0},
        "rfc2217_per_edit": {"line_changes": 15.0, "renegotiations": 210.0, "purges": 8.0},
        "rfc2217_fixed_wait_ms": 33400,
    }


def test_render_says_whether_each_goal_is_met() -> None:
    result = {
        "edits": 5,
        "peer_edits": 2,
        "goals": {"ours_20_over_ours_0_max": 1.5, "peer_over_ours_at_20_min": 3.0},
        "ours": {"0": _row(4000, 1.0, 9.0), "20": _row(4800, 1.2, 7.9)},
        "peer": {"0": _peer(36000), "20": _peer(38000)},
    }
    text = "\n".join(render(result))
    assert "| 20 ms | 4.80 s | 1.2x | 20.3 ms | 38.00 s | 7.9x |" in text
    assert "ours <= 1.5x ours at 0 ms: 1.2x, met; peer >= 3.0x ours: 7.9x, met." in text
    assert "fbuild watch 12 line, 10 settings, 3 purges = 2.85 s" in text
    assert "esptool 36000" in text
    result["ours"]["20"] = _row(6400, 1.6, 2.5)  # type: ignore[index]
    text = "\n".join(render(result))
    assert "1.6x, not met; peer >= 3.0x ours: 2.5x, not met." in text
