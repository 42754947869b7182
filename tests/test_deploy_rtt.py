"""Boards behind a network link (issue #20): the round trip is measured at
connect and drives the ROM/stub choice, the MD5 probe's block size and the
outcome's estimate; raw TCP (`socket://`) never changes the baud, resets
into the app by the RTC watchdog, and says in one line what it cannot do.
Real esptool, a real TCP server in front of a virtual board, and a latency
relay of the test's own between the two."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from fbuild_watch.deploy import BoardDeployer, BoardWorker, describe
from fbuild_watch.deploy.plan import SECTOR, Run, break_even_kib, estimate_s, probe_block
from fbuild_watch.errors import RuntimeFailure
from fbuild_watch.image import FlashLayout, Region, load_flasher_args
from fbuild_watch.image.layout import ValidatedLayout
from fbuild_watch.image.settings import FlashSettings, ResolvedFlash, resolve_flash
from fbuild_watch.sim.board import VirtualBoard
from fbuild_watch.sim.server import BoardServer
from tests.fwkit import Build
from tests.netkit import LatencyRelay
from tests.simkit import new_board

DATA_AT = 0x200000


@dataclass
class Remote:
    board: VirtualBoard
    server: BoardServer
    relay: LatencyRelay
    conn: BoardWorker
    dep: BoardDeployer
    data: bytearray = field(default_factory=bytearray)

    def wait_for(self, text: str, since: int, timeout: float = 5) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = bytes(self.data[since:]).decode(errors="replace")
            if text in out:
                return out
            time.sleep(0.01)
        raise AssertionError(f"{text!r} not in the log:\n{bytes(self.data[since:])[-1500:]!r}")


@contextlib.contextmanager
def remote(delay: float = 0.0, flash: ResolvedFlash | None = None) -> Iterator[Remote]:
    """A virtual board waiting in its ROM loader behind `fbuild sim serve`'s
    raw TCP server (its own class, in this process) and a latency relay;
    our deployer on `socket://`."""
    board = new_board(start="download")
    server = BoardServer(board).start()
    relay = LatencyRelay(server.url, delay)
    data = bytearray()
    lock = threading.Lock()

    def on_data(d: bytes, _t: float) -> None:
        with lock:
            data.extend(d)

    conn = BoardWorker(describe(relay.url), on_data=on_data)
    conn.open()
    try:
        yield Remote(board, server, relay, conn, BoardDeployer(conn, flash=flash), data)
    finally:
        conn.close()
        relay.close()
        server.stop()


def settings(**values: object) -> ResolvedFlash:
    origins = tuple((name, f"flasher_args.json extra_esptool_args.{name}") for name in values)
    return resolve_flash(FlashSettings(**values, origins=origins), environ={})  # type: ignore[arg-type]


def with_data(layout: ValidatedLayout, data: bytes) -> ValidatedLayout:
    lay = layout.layout
    return FlashLayout(
        lay.chip, (*lay.regions, Region("data", DATA_AT, data)), source=lay.source
    ).validate()


@pytest.fixture
def fw(firmware: Build) -> ValidatedLayout:
    return load_flasher_args(firmware.flasher_args).validate()


# -- raw TCP -------------------------------------------------------------------------
def test_raw_tcp_keeps_the_baud_and_resets_by_watchdog(fw: ValidatedLayout) -> None:
    with remote() as r:
        out = r.dep.deploy(fw)  # asks for 460800 (the default)
        assert out.ok, out.error
        assert r.board.counters.commands["CHANGE_BAUDRATE"] == 0
        said = [line for line in out.log if "cannot carry a baud change" in line]
        assert said == [
            "raw TCP (socket://) cannot carry a baud change: writing at 115200 baud instead "
            "of 460800"
        ]
        # no modem lines: esptool's --after watchdog-reset sequence starts the app
        assert out.reset_after == "watchdog-reset"
        assert any("reset into the app by the RTC watchdog" in line for line in out.log)
        log = r.wait_for("fw-test 1.0.0 up", 0)
        assert "RTCWDT_RTC_RST" in log
        assert out.as_dict()["rtt_ms"] is not None

        # the app runs now and nothing can take it back into its loader
        assert not r.dep.connect_ahead()
        begins = r.board.counters.commands["FLASH_DEFL_BEGIN"]
        out = r.dep.deploy(with_data(fw, os.urandom(8192)))
        assert not out.ok and out.flash_state == "unchanged: nothing was written"
        assert out.error is not None and out.error.startswith(
            "the board did not answer in its ROM loader"
        )
        assert out.error.endswith(
            "; raw TCP (socket://) has no reset lines to put it there: use rfc2217:// or put "
            "the board in download mode"
        )
        assert r.board.counters.commands["FLASH_DEFL_BEGIN"] == begins
        with pytest.raises(RuntimeFailure, match="raw TCP .* carries no reset lines"):
            r.dep.reset()


def test_raw_tcp_board_left_in_its_loader_is_deployed_again(fw: ValidatedLayout) -> None:
    """`after = no-reset` over raw TCP: the next deploy syncs with the loader
    it left (at the same baud) and the `r` key resets it by watchdog."""
    with remote(flash=settings(after="no-reset")) as r:
        r.dep.stub = False  # (the virtual stub's exit to the ROM boots the app)
        assert r.dep.deploy(fw).ok
        out = r.dep.deploy(with_data(fw, os.urandom(8192)))
        assert out.ok and out.kind == "sector-delta", out.error
        assert r.board.counters.app_boots == 0
        r.dep.reset()
        r.wait_for("fw-test 1.0.0 up", 0)


# -- the round trip ------------------------------------------------------------------
def test_a_dear_round_trip_picks_the_stub_for_a_small_delta(fw: ValidatedLayout) -> None:
    """32 KiB of incompressible change: over a fast link the ROM's 1 KiB
    blocks win; with ~60 ms per command (the relay adding 30 ms each way)
    the stub's upload costs less than the ROM's 32 round trips. The board
    stays in its loader (`after = no-reset`) so raw TCP can reach it again."""
    base = os.urandom(64 * 1024)
    edits = [os.urandom(32 * 1024) + base[32 * 1024 :], base]
    chosen = []
    with remote(0.0, flash=settings(after="no-reset")) as r:
        r.dep.stub = False  # (the virtual stub's exit to the ROM boots the app)
        first = r.dep.deploy(with_data(fw, base))
        assert first.ok, first.error
        r.dep.stub = None  # the cost model chooses
        for delay, edit in zip((0.0, 0.03), edits, strict=True):
            r.relay.delay = delay  # the link gets slower; measured at the next connect
            out = r.dep.deploy(with_data(fw, edit))
            assert out.ok and out.kind == "sector-delta" and out.sectors_written == 8, out.error
            assert out.rtt_ms is not None and out.estimate_s is not None
            assert any(line.startswith("cost model: ROM ") for line in out.log)
            chosen.append((out.stub_used, out.rtt_ms))
            if out.stub_used:  # (see above) the virtual board is in its app now
                break
    assert chosen[0][0] is False, chosen
    assert chosen[1][0] is True and chosen[1][1] >= 55, chosen  # 60 less the wire time


def test_the_probe_sizes_its_blocks_for_the_measured_round_trip(fw: ValidatedLayout) -> None:
    """A board holding most of the image (no trust, no cache): one MD5 for
    its first sector, one for the region, one per block, one per sector of
    each differing block, blocks sized by `probe_block` for the round trip
    measured at connect."""
    size = 1024 * 1024
    old = os.urandom(size)
    new = bytearray(old)
    for at in (5 * SECTOR, 200 * SECTOR):  # two edits, far apart
        new[at : at + 16] = os.urandom(16)
    counts = {}
    for delay in (0.0, 0.01):
        with remote(delay, flash=settings(after="no-reset")) as r:
            r.dep.stub = False
            r.board.flash.erase(DATA_AT, size)
            r.board.flash.program(DATA_AT, old)
            md5s = r.board.counters.commands["SPI_FLASH_MD5"]
            out = r.dep.deploy(with_data(fw, bytes(new)))
            assert out.ok and out.kind == "verify-probe", out.error
            # the two edited sectors, and the rest of the image (the board holds none of it)
            rest = sum(-(-reg.size // SECTOR) for reg in fw.layout.regions)
            assert out.sectors_written == 2 + rest
            assert out.rtt_ms is not None
            block = probe_block(size, out.rtt_ms / 1000)
            data_md5s = 1 + 1 + size // block + 2 * (block // SECTOR)
            # the other regions (erased board): one MD5 each (of the first sector,
            # or of the region when it is a block or smaller); and esptool's
            # check of each run written (those regions and the two sectors)
            others = len(fw.layout.regions)
            probes = data_md5s + others
            assert r.board.counters.commands["SPI_FLASH_MD5"] - md5s == probes + others + 2
            counts[delay] = block
    assert counts[0.01] == 32 * 1024  # >= 20 ms a command: the bigger blocks


# -- the model -----------------------------------------------------------------------
def test_the_break_even_moves_with_the_round_trip() -> None:
    """The table in LOOP.md ("Choosing ROM or stub"): KiB of incompressible
    delta from which the stub always wins, per added round trip on top of a
    USB-UART bridge's 4 ms."""
    table = {
        baud: [break_even_kib(baud=baud, rtt=0.004 + ms / 1000) for ms in (0, 5, 20, 50)]
        for baud in (460800, 115200)
    }
    assert table == {460800: [56, 44, 28, 24], 115200: [104, 88, 56, 28]}
    # a C3 (and the chips whose stub keeps the ROM's baud): the stub goes up
    # at the flashing baud, so it pays off sooner
    c3 = [
        break_even_kib(baud=460800, rtt=0.004 + ms / 1000, upload_baud=460800)
        for ms in (0, 5, 20, 50)
    ]
    assert c3 == [28, 28, 24, 16]


def test_the_estimate_counts_a_round_trip_per_block() -> None:
    run = [Run("app", 0x10000, os.urandom(32 * 1024))]
    fast = estimate_s(run, stub=False, baud=460800, rtt=0.0)
    slow = estimate_s(run, stub=False, baud=460800, rtt=0.05)
    assert slow - fast == pytest.approx(0.05 * (32 + 3), rel=0.01)  # 32 blocks, begin, end, MD5
    assert probe_block(1 << 20, 0.0001) < probe_block(1 << 20, 0.05)
