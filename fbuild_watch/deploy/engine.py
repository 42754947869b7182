"""The deploy ladder for one board, cheapest rung first:

1. trust-skip   the image equals what this session verified on this board:
                no serial traffic, no reset; the app keeps running.
2. sector-delta trusted but different: write only the 4 KiB sectors that
                differ from the trusted bytes, check each region's MD5, reset.
3. verify-probe no trust (first deploy of a session): confirm the persisted
                last layout with one MD5 per region and diff against it, or
                probe MD5s of regions, 64 KiB blocks and 4 KiB sectors;
                write only what differs.
4. full         everything (on request, or when a check fails).

Only a `ValidatedLayout` is accepted. A write that fails or is interrupted
reports `failed` with what is known to be on flash and clears trust.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from esptool.cmds import attach_flash, detect_chip, run_stub, write_flash
from esptool.reset import ClassicReset, HardReset, UnixTightReset, USBJTAGSerialReset

from fbuild_watch.deploy.compat import BoardFacts, board_facts, check_board, check_encryption
from fbuild_watch.deploy.esplog import captured
from fbuild_watch.deploy.outcome import DeployKind, DeployOutcome
from fbuild_watch.deploy.plan import (
    COMMAND_S,
    ROM_BAUD,
    STUB_BREAK_EVEN,
    STUB_KEEPS_ROM_BAUD,
    Run,
    compressed_sizes,
    estimate_s,
    sector_runs,
)
from fbuild_watch.deploy.ports import is_network, usb_serial
from fbuild_watch.deploy.probe import confirm_cached, probe_regions
from fbuild_watch.deploy.progress import WriteProgress, WriteTracker
from fbuild_watch.deploy.trust import FlashCache, SessionTrust, TrustedImage
from fbuild_watch.deploy.worker import READ_TIMEOUT_S, BoardWorker, LentPort
from fbuild_watch.errors import RuntimeFailure
from fbuild_watch.image.layout import APP, Region, ValidatedLayout
from fbuild_watch.image.settings import DEFAULT_AFTER, DEFAULT_BEFORE, ResolvedFlash

# Chips whose esptool 5.6 class resets through the RTC watchdog for
# `--after watchdog-reset` (esp32c3.py, s2, s3, p4; c5 and c61 call the
# C3's); the others (ESP32, C2, C6, H2, ...) fall back to the RTS line.
WATCHDOG_RESET_CHIPS = frozenset(
    {"ESP32-C3", "ESP32-S2", "ESP32-S3", "ESP32-C5", "ESP32-C61", "ESP32-P4"}
)
# The ESP32-C3 ROM inflates too (FLASH_DEFL_*); esptool only defaults to
# compression with its stub. Flash parameters stay as the build set them.
_WRITE_OPTS: dict[str, Any] = {
    "compress": True,
    "flash_mode": "keep",
    "flash_freq": "keep",
    "flash_size": "keep",
}
FIRST_BYTE_TIMEOUT_S = 3.0


def _has_tty(port: Any) -> bool:
    try:
        fd = port.fileno()
    except (OSError, AttributeError, ValueError):
        return False
    return isinstance(fd, int) and os.isatty(fd)


@dataclass
class _Connected:
    """A board held in its ROM bootloader by `connect_ahead`, ready for a write:
    synced, at the flashing baud, flash attached."""

    stack: contextlib.ExitStack  # holds the port lent (the worker does not read)
    use: LentPort
    esp: Any
    identity: str
    disconnects: int  # the connection's disconnect count when it was made
    resets: int
    phases: dict[str, float]
    log: list[str] = field(default_factory=list)
    # the board was already in its loader (left there by our last deploy),
    # so giving the connection up does not reset it into the app
    was_in_loader: bool = False
    # nothing trusted: the regions of the cached last layout the board was
    # found to hold while connected ahead (the deploy diffs against them)
    on_board: dict[int, bytes] = field(default_factory=dict)


class _Refused(Exception):
    """The layout must not go onto this board; nothing has been written."""


class BoardDeployer:
    def __init__(
        self,
        conn: BoardWorker,
        *,
        baud: int = 460800,
        trust: SessionTrust | None = None,
        cache: FlashCache | None = None,
        log: Callable[[str], None] | None = None,
        stub: bool | None = None,
        on_progress: Callable[[WriteProgress], None] | None = None,
        flash: ResolvedFlash | None = None,
    ) -> None:
        """`flash`: the project's flashing settings (before/after reset,
        stub allowed, baud, encrypted offsets, and where each came from);
        when given, its baud is used and `baud` is ignored. None: today's
        defaults (default-reset, hard-reset, stub allowed, `baud`).
        `stub`: None lets the cost model choose ROM or stub per deploy;
        True/False forces one (benchmarks measure the break-even with it);
        a project that forbids the stub (`flash.stub` False) is never
        given one."""
        self.conn = conn
        self.baud = baud
        self.flash = flash
        self.stub = stub
        self.trust = trust or SessionTrust()
        self.cache = cache
        self.log = log or (lambda _m: None)
        self.on_progress = on_progress  # called on the worker thread, <= 10 times a second
        self.identity: str | None = None
        # identity -> JEDEC flash ID, for chips whose flash esptool probed this session
        self._flash_ids: dict[str, int] = {}
        # identity -> what the chip is (name, revision, encryption): it does not change
        self._facts: dict[str, BoardFacts] = {}
        self._rtt: float | None = None  # measured at the last connect
        self._aborting = False
        self._connected: _Connected | None = None
        self._maybe_in_bootloader = False  # a connect ahead failed half way
        # what our last deploy left the board running when it did not reset
        # it ("rom" or "stub", `after = no-reset[-stub]`), and the
        # disconnect count then (an unplug or power cycle ends it)
        self._left_in: str | None = None
        self._left_at = 0
        self._left_baud = ROM_BAUD  # the loader's baud then (we may have raised it)
        # the last connect reset the board into its loader (else it was there)
        self._entered_by_reset = False

    # -- settings -------------------------------------------------------------------
    @property
    def before(self) -> str:
        return self.flash.before if self.flash else DEFAULT_BEFORE

    @property
    def after(self) -> str:
        return self.flash.after if self.flash else DEFAULT_AFTER

    @property
    def flash_baud(self) -> int:
        return self.flash.baud if self.flash else self.baud

    @property
    def raw_tcp(self) -> bool:
        """`socket://`: raw TCP (ser2net, `fbuild sim serve`) carries neither
        modem lines nor baud changes (rfc2217:// carries both)."""
        return self.conn.url.startswith("socket://")

    @property
    def link_baud(self) -> int:
        """The baud writes run at: the flashing baud, except on a link whose
        far end cannot follow a change (raw TCP: the server's UART stays at
        its baud and esptool's change would wedge the link)."""
        return ROM_BAUD if self.raw_tcp else self.flash_baud

    @property
    def rtt(self) -> float | None:
        """The link's round trip per command beyond wire time (seconds),
        measured at the last connect; None before the first."""
        return self._rtt

    def _origin(self, name: str) -> str:
        where = self.flash.origins.get(name) if self.flash else None
        return f" (from {where})" if where else ""

    def _stub_allowed(self) -> bool:
        if self.flash is not None and not self.flash.stub:
            return False
        # esptool's soft reset runs the app from the ROM only ("only
        # supported on ESP8266" with a stub): keep the ROM for it
        return self.after != "soft-reset"

    def _stub_upload_baud(self, esp: Any) -> int:
        """The baud to upload the stub at: the flashing baud where the stub
        keeps the ROM's UART setting (plan.STUB_KEEPS_ROM_BAUD; over
        USB-Serial/JTAG the baud means nothing), else the ROM's, as esptool."""
        if (
            esp.CHIP_NAME in STUB_KEEPS_ROM_BAUD
            and not self.conn.info.usb_jtag
            and not esp.secure_download_mode
        ):
            return self.link_baud
        return ROM_BAUD

    def _can_reset_into_loader(self) -> bool:
        return self.before in ("default-reset", "usb-reset") and not self.raw_tcp

    def _leave_in_loader(self, esp: Any) -> None:
        """The board stays in the loader `esp` talks to (at its baud)."""
        self._left_in = "stub" if esp.IS_STUB else "rom"
        self._left_at = len(self.conn.disconnects)
        self._left_baud = esp._port.baudrate

    def _release(self, held: _Connected) -> None:
        """Give a held connection up without a write: a board that was in its
        loader before stays there; one we took out of its app goes back."""
        if held.was_in_loader:
            self._leave_in_loader(held.esp)
        else:
            with contextlib.suppress(Exception):
                self._reset_through(held.esp, held.use)
        held.stack.close()

    def _left_in_loader(self) -> str | None:
        """The loader ("rom" or "stub") our last deploy left the board in, if
        nothing has happened to the board since."""
        if self._left_in is not None and len(self.conn.disconnects) != self._left_at:
            self._left_in = None
        return self._left_in

    # ------------------------------------------------------------------------
    def connect_ahead(self) -> bool:
        """Enter the bootloader and connect now, ahead of a deploy that is
        known to need the serial link (the build is still producing the
        image): reset into the ROM, sync, read the MAC, raise the baud,
        attach the flash. The next `deploy` starts writing at once;
        `back_to_app` resets the board into its app if no deploy follows.
        False if the board is not there, cannot be taken into its loader
        without a reset we may not do (`before = no-reset`, raw TCP), or the
        connect failed (the deploy then connects as usual). Runs on the
        board's worker thread."""
        return self.conn.call(self._connect_ahead)

    def _connect_ahead(self) -> bool:
        if self._connected is not None:
            return True
        if self._aborting or self.conn.port is None:
            return False
        if self._left_in_loader() is None and not self._can_reset_into_loader():
            return False  # the deploy says why, once
        t0 = time.monotonic()
        out = DeployOutcome(port=self.conn.url)
        stack = contextlib.ExitStack()
        try:
            with captured(out.log.append):
                use = stack.enter_context(self.conn.lend(timeout=1.0))
                self._maybe_in_bootloader = self._can_reset_into_loader()
                esp, identity = self._connect(use, out, raise_baud=True)
                t = time.monotonic()
                esp = self._setup(esp, identity, stub=False)
                out.phases["setup"] = time.monotonic() - t
                on_board = self._confirm_cache_ahead(esp, identity, out)
        except Exception as exc:
            stack.close()
            self.log(f"{self.conn.url}: early connect failed ({exc}); the deploy connects")
            return False
        self._connected = _Connected(
            stack,
            use,
            esp,
            identity,
            len(self.conn.disconnects),
            out.resets,
            {**out.phases, "connect_ahead": time.monotonic() - t0},
            out.log,
            was_in_loader=not self._entered_by_reset,
            on_board=on_board,
        )
        return True

    def _confirm_cache_ahead(self, esp: Any, identity: str, out: DeployOutcome) -> dict[int, bytes]:
        """Nothing trusted for this board: its cached last layout, confirmed
        now by one MD5 per region while the build still runs, so the deploy
        (verify-probe) can diff at once. Trusted: nothing to ask."""
        trusted = self.effective_trust()
        if self.cache is None or (trusted is not None and trusted.identity == identity):
            return {}
        t = time.monotonic()
        cached = self.cache.load(identity)  # (the deploy loads it again and warns)
        on_board = confirm_cached(esp.flash_md5sum, cached)
        if cached:
            out.phases["verify_ahead"] = time.monotonic() - t
            out.log.append(
                f"connected ahead: {len(on_board)} of {len(cached)} regions of the cached "
                "last layout confirmed on the board"
            )
        return on_board

    def back_to_app(self) -> None:
        """No deploy followed a `connect_ahead` (the build failed or produced what
        the board holds): reset the board into its app, if it is not there."""
        self.conn.call(lambda: self._reset_to_app(always=False))

    def _reset_to_app(self, *, always: bool) -> None:
        """Into the app: through the held connection if there is one, else
        through the port (`always`, or after a connect ahead that failed
        half way and may have left the board in its bootloader). A board
        that was in its loader before we held it stays there."""
        held = self._take_connected()
        maybe, self._maybe_in_bootloader = self._maybe_in_bootloader, False
        if held is not None:
            if always:
                self._reset_through(held.esp, held.use)
                held.stack.close()
            else:
                self._release(held)
        elif always:
            if self.raw_tcp:
                self._reset_over_raw_tcp()
                return
            with self.conn.lend() as use:
                self._reset_into_app(use)
        elif maybe and not self.raw_tcp:
            with contextlib.suppress(Exception), self.conn.lend() as use:
                self._reset_into_app(use)

    def _reset_over_raw_tcp(self) -> None:
        """The `r` key over raw TCP: no reset lines; a board we left in its
        loader can still be reset through it (RTC watchdog)."""
        if self._left_in_loader() is None:
            raise RuntimeFailure(
                "raw TCP (socket://) carries no reset lines: reset the board by hand, "
                "or serve it over rfc2217://"
            )
        out = DeployOutcome(port=self.conn.url)
        with captured(out.log.append), self.conn.lend() as use:
            esp, _identity = self._connect(use, out)
            self._reset_through(esp, use)

    def _take_connected(self) -> _Connected | None:
        """The connection made ahead if it is still good (no disconnect since)."""
        held, self._connected = self._connected, None
        if held is not None and (
            len(self.conn.disconnects) != held.disconnects
            or self.conn.port is not held.use.port._port
        ):
            held.stack.close()
            return None
        return held

    # ------------------------------------------------------------------------
    def deploy(
        self,
        layout: ValidatedLayout,
        *,
        full: bool = False,
        app_only: bool = False,
        flash: ResolvedFlash | None = None,
    ) -> DeployOutcome:
        """Runs on the board's worker thread (the caller waits). `flash`:
        this build's resolved settings (they come with its layout); kept for
        the connects and resets that follow."""
        if not isinstance(layout, ValidatedLayout):
            raise TypeError("deploy() takes a ValidatedLayout: validate the layout first")
        return self.conn.call(
            lambda: self._deploy(layout, full=full, app_only=app_only, flash=flash)
        )

    def _deploy(
        self,
        layout: ValidatedLayout,
        *,
        full: bool,
        app_only: bool,
        flash: ResolvedFlash | None = None,
    ) -> DeployOutcome:
        t0 = time.monotonic()
        if flash is not None:
            self.flash = flash
        out = DeployOutcome(port=self.conn.url, image_hash=layout.image_hash)
        regions = [
            r
            for r in layout.layout.regions
            if not app_only or r.name == APP or r.name.startswith(APP + ":")
        ]
        # never in plaintext what the build says must be encrypted: refused
        # before anything is connected, let alone written
        encrypted = self.flash.encrypted if self.flash else None
        problem = check_encryption(layout, can_encrypt=False, encrypted=encrypted)
        if problem is not None:
            self._refused(out, problem)
            self._give_up_held()
            out.duration_s = time.monotonic() - t0
            return out
        if full:
            self.trust.clear("full flash requested")
        trusted = self.effective_trust()  # first: it notices a port that went away
        held = self._take_connected()
        if trusted is not None and all(trusted.regions.get(r.offset) == r.data for r in regions):
            out.kind = DeployKind.TRUST_SKIP
            out.identity = trusted.identity
            out.regions_skipped = [r.name for r in regions]
            if held is not None:  # connected ahead for nothing: back into the app
                out.log.append("connected ahead of an image the board already holds")
                out.resets += held.resets + (0 if held.was_in_loader else 1)
                self._release(held)
            out.duration_s = time.monotonic() - t0
            return out
        try:
            if self._aborting:
                raise RuntimeError("aborted before it started")
            with contextlib.ExitStack() as stack, captured(out.log.append):
                if held is not None:
                    stack.push(held.stack)
                    use = held.use
                    out.log[:0] = held.log
                    out.resets += held.resets
                    out.phases.update(held.phases)
                else:
                    use = stack.enter_context(self.conn.lend())
                self._deploy_connected(
                    use=use,
                    layout=layout,
                    regions=regions,
                    trusted=trusted,
                    full=full,
                    out=out,
                    held=held,
                )
        except _Refused as exc:
            self._refused(out, str(exc))
        except Exception as exc:  # esptool FatalError, serial errors, ...
            self._failed(out, exc)
        self._maybe_in_bootloader = False
        if self.rtt is not None:
            out.rtt_ms = self.rtt * 1000
        out.duration_s = time.monotonic() - t0
        return out

    def _give_up_held(self) -> None:
        """A deploy that will not write: the board held in its loader goes
        back to where it was."""
        held = self._take_connected()
        if held is not None:
            self._release(held)

    def effective_trust(self) -> TrustedImage | None:
        """What the next deploy will trust (clearing trust that no longer holds)."""
        return self.trust.check(
            connected=self.conn.check_alive(),
            disconnects=self.conn.disconnects,
            usb_serial=usb_serial(self.conn.info),
            network=is_network(self.conn.info.url),
        )

    def abort(self) -> None:
        """Stop a deploy in progress now (the user insists on quitting): the
        port is closed under esptool, so the deploy fails at its next read
        or write and reports what is on flash. The connection stays closed."""
        self._aborting = True
        self.conn.close()

    def _failed(self, out: DeployOutcome, exc: BaseException) -> None:
        out.kind = DeployKind.FAILED
        text = " ".join(str(exc).split()) or type(exc).__name__
        out.error = text.split(" For troubleshooting")[0]
        if self._aborting:
            out.error = "aborted by the user"
        if out.flash_state == "writing":
            out.flash_state = "partially written: the board may not boot until the next deploy"
        elif out.flash_state is None:
            out.flash_state = "unchanged: nothing was written"
        self.trust.clear(f"deploy failed: {out.error}")
        # the next deploy attaches the flash as esptool does, flash reset
        # included: an app can leave the flash in a state the ROM cannot use
        self._flash_ids.clear()

    def _refused(self, out: DeployOutcome, problem: str) -> None:
        """Refused before the first byte: failed, but the flash is what it
        was, so trust stays."""
        out.kind = DeployKind.FAILED
        out.error = problem
        out.flash_state = "unchanged: nothing was written"

    # ------------------------------------------------------------------------
    def _strategies(self, port: Any) -> list[Any]:
        """Ways into the ROM loader, tried in turn; None: no reset, sync only."""
        if self.raw_tcp or self.before in ("no-reset", "no-reset-no-sync"):
            return [None]  # raw TCP has no modem lines: the board must already listen
        if self.before == "usb-reset" or self.conn.info.usb_jtag:
            return [USBJTAGSerialReset(port)]
        if _has_tty(port):
            return [
                UnixTightReset(port, 0.05),
                UnixTightReset(port, 0.55),
                ClassicReset(port, 0.05),
            ]
        return [ClassicReset(port, 0.05), ClassicReset(port, 0.55)]

    def _enter_bootloader(self, use: LentPort, out: DeployOutcome) -> Any:
        port = use.port
        left = self._left_in_loader()
        self._left_in = None  # whatever happens now, the board is ours again
        self._entered_by_reset = False
        if self.before == "no-reset-no-sync":
            # esptool's pass-through mode: no sync, at the flashing baud (or
            # the one we left the loader at); a stub we left running is used
            baud = self._left_baud if left is not None else self.link_baud
            esp = detect_chip(port, baud, "no-reset-no-sync", connect_attempts=1)
            if left == "stub" and esp.STUB_CLASS is not None:
                esp = esp.STUB_CLASS(esp)
            return esp
        last: Exception | None = None
        strategies = self._strategies(port)
        if left is not None and strategies != [None]:
            strategies = [None, *strategies]  # left in its loader by us: sync first
        for i, strategy in enumerate(strategies):
            # a loader we left may still be at the baud we raised it to
            baud = self._left_baud if left is not None and i == 0 else ROM_BAUD
            port.baudrate = ROM_BAUD
            if strategy is not None:
                port.reset_input_buffer()
                strategy()
                out.resets += 1
            try:
                esp = detect_chip(port, baud, "no-reset", connect_attempts=2)
            except Exception as exc:
                last = exc
                continue
            self._entered_by_reset = strategy is not None
            return esp
        if all(strategy is None for strategy in strategies):
            raise RuntimeFailure(self._no_loader_message(last))
        raise last if last else RuntimeError("cannot connect")

    def _no_loader_message(self, exc: BaseException | None) -> str:
        why = " ".join(str(exc).split()).split(" For troubleshooting")[0] if exc else ""
        head = "the board did not answer in its ROM loader"
        head += f" ({why})" if why else ""
        if self.raw_tcp:
            return (
                f"{head}; raw TCP (socket://) has no reset lines to put it there: "
                "use rfc2217:// or put the board in download mode"
            )
        return (
            f"{head}; before = {self.before}{self._origin('before')} does not reset it: "
            "put the board in download mode"
        )

    def _connect(
        self, use: LentPort, out: DeployOutcome, *, raise_baud: bool = False
    ) -> tuple[Any, str]:
        """Into the ROM bootloader, synced; returns esptool's loader and the MAC.
        `raise_baud`: switch to the flashing baud right after the sync (when
        the ROM, not the stub, is going to be used)."""
        t = time.monotonic()
        esp = self._enter_bootloader(use, out)
        # esptool's own recovery from a lost link closes the port and reopens
        # it for 7 s; we own the port, so that cannot work. Fail at once: the
        # outcome says "failed", trust is cleared, and the session redeploys
        # when the board is back.
        esp.WRITE_FLASH_ATTEMPTS = 1
        if self.raw_tcp and self.flash_baud != ROM_BAUD:
            out.log.append(
                f"raw TCP (socket://) cannot carry a baud change: writing at {ROM_BAUD} baud "
                f"instead of {self.flash_baud}"
            )
        if raise_baud and self.link_baud != esp._port.baudrate:
            esp.change_baud(self.link_baud)
        identity = ":".join(f"{b:02x}" for b in self._timed_read_mac(esp, use))
        out.identity = identity
        self.identity = identity
        out.phases["connect"] = time.monotonic() - t
        return esp, identity

    def _timed_read_mac(self, esp: Any, use: LentPort) -> Any:
        """esptool's read_mac, each of its register reads timed: the link's
        round trip per command, less the wire time of its bytes, at no cost
        in commands (LOOP.md, "Choosing ROM or stub")."""
        read_reg = esp.read_reg
        samples: list[float] = []

        def timed(*args: Any, **kwargs: Any) -> Any:
            port = use.port
            before = port.sent + port.received
            t = time.perf_counter()
            value = read_reg(*args, **kwargs)
            took = time.perf_counter() - t
            wire = (port.sent + port.received - before) * 10 / port.baudrate
            samples.append(max(0.0, took - wire))
            return value

        esp.read_reg = timed
        try:
            mac = esp.read_mac()
        finally:
            del esp.read_reg  # the class's method again
        if samples:
            # the fastest read: a busy host only ever makes one slower
            self._rtt = min(samples)
        return mac

    def _check_board(self, esp: Any, identity: str, layout: ValidatedLayout) -> None:
        """The chip, its revision and its flash encryption against the
        layout, before the first byte is written (once per chip: they do
        not change)."""
        facts = self._facts.get(identity)
        if facts is None:
            facts = board_facts(esp)
            self._facts[identity] = facts
        problem = check_board(layout, facts)
        if problem is None and facts.flash_encryption:
            encrypted = self.flash.encrypted if self.flash else None
            problem = check_encryption(
                layout, can_encrypt=False, board_encrypted=True, encrypted=encrypted
            )
        if problem is not None:
            raise _Refused(problem)

    def _setup(self, esp: Any, identity: str, *, stub: bool) -> Any:
        """Stub (optional), flashing baud, flash attached."""
        if stub and not esp.IS_STUB:
            upload_baud = self._stub_upload_baud(esp)
            if esp._port.baudrate != upload_baud:
                # the ROM changes baud first: to the flashing baud, or back to
                # its own where the stub would not keep it (LOOP.md, "Choosing
                # ROM or stub")
                esp.change_baud(upload_baud)
            esp = run_stub(esp)
            esp.WRITE_FLASH_ATTEMPTS = 1
        if self.link_baud != esp._port.baudrate:
            esp.change_baud(self.link_baud)  # first: the set-up commands then go faster too
        if identity in self._flash_ids:
            # esptool's full attach probes the flash (XMC start-up fix, SFDP,
            # flash reset, ID: ~60 register commands), and write_flash reads
            # the ID again to size the flash (~12 more, ~60 ms at 460800).
            # The flash is soldered to the chip this MAC names: once per
            # session is enough.
            if not esp.IS_STUB and not esp.cache.get("attached"):
                esp.flash_spi_attach(0)
                esp.cache["attached"] = True
            esp.cache["flash_id"] = self._flash_ids[identity]
        else:
            attach_flash(esp)
            esp.cache["attached"] = True
            self._flash_ids[identity] = esp.flash_id()
        return esp

    def _choose_stub(
        self, esp: Any, runs: list[Run], held: _Connected | None, out: DeployOutcome
    ) -> bool:
        """ROM or stub for these runs, and the model's estimate in `out`."""
        if not runs:
            return False
        rtt = COMMAND_S if self.rtt is None else self.rtt
        stub_running = bool(esp.IS_STUB)
        upload_baud = self._stub_upload_baud(esp)
        rebaud = held is not None and esp._port.baudrate != upload_baud
        sizes = compressed_sizes(runs)

        def estimate(stub: bool) -> float:
            return estimate_s(
                runs,
                stub=stub,
                baud=self.link_baud,
                rtt=rtt,
                sizes=sizes,
                stub_running=stub_running,
                rebaud=rebaud,
                upload_baud=upload_baud,
            )

        if stub_running:
            stub = True  # left running by our last deploy: no upload to pay
        elif not self._stub_allowed():
            stub = False
        elif self.stub is not None:
            stub = self.stub
        elif sum(len(run.data) for run in runs) > 4 * STUB_BREAK_EVEN:
            stub = True  # far past the break-even at any round trip
        else:
            rom_s, stub_s = estimate(False), estimate(True)
            stub = stub_s < rom_s
            out.log.append(
                f"cost model: ROM {rom_s:.2f} s, stub {stub_s:.2f} s at {self.link_baud} baud, "
                f"{rtt * 1000:.1f} ms per command: {'stub' if stub else 'ROM'}"
            )
        out.estimate_s = estimate(stub)
        return stub

    def _deploy_connected(
        self,
        *,
        use: LentPort,
        layout: ValidatedLayout,
        regions: list[Region],
        trusted: TrustedImage | None,
        full: bool,
        out: DeployOutcome,
        held: _Connected | None,
    ) -> None:
        if held is not None:
            esp, identity = held.esp, held.identity
            out.identity = self.identity = identity
        else:
            esp, identity = self._connect(use, out)
        try:
            self._check_board(esp, identity, layout)
        except _Refused:
            # nothing written: the board goes back to where it was, as if
            # no deploy had come (our own reset: trust stays)
            if not (held.was_in_loader if held is not None else not self._entered_by_reset):
                self._reset_through(esp, use)
                out.resets += 1
            raise
        if trusted is not None and trusted.identity != identity:
            self.trust.clear("a different chip answered on this port")
            trusted = None

        # -- plan ---------------------------------------------------------------
        known: dict[int, bytes] = dict(trusted.regions) if trusted else {}
        verified_regions: dict[int, bytes] = {}
        if full:
            out.kind = DeployKind.FULL
            runs = [Run(r.name, r.offset, r.data) for r in regions]
        elif trusted is not None:
            out.kind = DeployKind.SECTOR_DELTA
            runs = [
                run
                for r in regions
                for run in sector_runs(r.name, r.offset, r.data, known.get(r.offset))
            ]
        else:
            out.kind = DeployKind.VERIFY_PROBE
            t = time.monotonic()
            on_board = held.on_board if held is not None else {}
            runs = self._probe(esp, regions, out, verified_regions, on_board)
            out.phases["verify"] = time.monotonic() - t

        stub = self._choose_stub(esp, runs, held, out)
        if runs:
            t = time.monotonic()
            if stub or held is None:
                esp = self._setup(esp, identity, stub=stub)
            if stub:
                out.stub_used = True
                out.phases["stub"] = time.monotonic() - t
            elif held is None:
                out.phases["setup"] = time.monotonic() - t
            t = time.monotonic()
            self.trust.clear("write in progress")
            out.flash_state = "writing"
            # one esptool call for all runs: it verifies each run's MD5 after writing it
            started = time.time()
            tracker = (
                WriteTracker([len(run.data) for run in runs], self.on_progress)
                if self.on_progress is not None
                else None
            )
            with captured(out.log.append, progress=tracker):
                write_flash(esp, [(run.offset, run.data) for run in runs], **_WRITE_OPTS)
            out.write_window = (started, time.time())
            for run in runs:
                out.flash_bytes_written += len(run.data)
                out.sectors_written += run.sectors
                if run.region not in out.regions_written:
                    out.regions_written.append(run.region)
            out.phases["write"] = time.monotonic() - t
            # Verified: esptool checks each written run's MD5 on the board, and
            # the bytes around them are what this session verified (trust) or
            # just probed. (A whole-region MD5 after a delta, esptool
            # --diff-with's rule for a base it cannot vouch for, cost ~0.11 s
            # an edit on an 870 KiB app and checked nothing trust does not.)
        out.regions_skipped = [r.name for r in regions if r.name not in out.regions_written]
        out.flash_state = "verified"

        # -- trust and cache --------------------------------------------------
        new_known = {**known, **verified_regions, **{r.offset: r.data for r in regions}}
        for off in list(new_known):  # drop regions the new layout overlaps
            if any(r.offset != off and r.offset <= off < r.end for r in regions):
                del new_known[off]
        serial_number = usb_serial(self.conn.info)
        self.trust.set(
            TrustedImage(identity, new_known, layout.image_hash, usb_serial=serial_number)
        )

        # -- the project's after-write action; the boot log from its first byte --
        out.wire_bytes_sent, out.wire_bytes_received = use.port.sent, use.port.received
        t = time.monotonic()
        reset = self._after_write(esp, use, out)
        reset_at = time.monotonic()
        out.phases["reset"] = reset_at - t
        if self.cache is not None:
            # After the reset (it overlaps the boot) and never fatal: the
            # cache only spares the next session some MD5 probes.
            warning = self.cache.save(
                identity,
                {r.offset: r.data for r in layout.layout.regions if r in regions} | new_known,
            )
            if warning:
                out.warnings.append(warning)
        if reset:
            # the boot log is read (and handed to the monitor) on this thread
            first = self.conn.read_until_data(FIRST_BYTE_TIMEOUT_S)
            if first is not None:
                out.phases["first_boot_byte"] = max(0.0, first - reset_at)

    # -- after the write ------------------------------------------------------------
    def _after_write(self, esp: Any, use: LentPort, out: DeployOutcome) -> bool:
        """Do what the project asks after a write (`after`); True if the
        board was reset into its app."""
        after = self.after
        if after in ("no-reset", "no-reset-stub"):
            self._leave_in_loader(esp)
            if after == "no-reset" and esp.IS_STUB:
                # out of the stub, back to the ROM loader (esptool's way: the
                # stub's reboot restarts the ROM, at its own baud)
                esp.soft_reset(True)
                self._left_in, self._left_baud = "rom", ROM_BAUD
            use.give_back()
            left = self._left_in
            out.reset_after = after
            where = "flasher stub" if left == "stub" else "ROM loader"
            out.stays_in_loader = (
                f"the board stays in its {where} (after = {after}{self._origin('after')}): "
                "the app starts when the board is reset"
            )
            return False
        if after == "soft-reset" and not esp.IS_STUB:
            esp.soft_reset(False)  # esptool's "run user code" from the ROM
            self._left_in = None
            self._hand_back(use)
            out.reset_after = "soft-reset"
            out.resets += 1
            return True
        out.reset_after = self._reset_through(esp, use, out=out)
        out.resets += 1
        return True

    def _reset_through(self, esp: Any, use: LentPort, out: DeployOutcome | None = None) -> str:
        """Reset into the app, the port given back first so that the boot log
        is read from its first byte: the RTS line, or where there is none
        (raw TCP) or the project asks for it, the RTC watchdog through the
        loader. Returns the reset used."""
        watchdog = self.after == "watchdog-reset" or self.raw_tcp
        if watchdog and esp.CHIP_NAME in WATCHDOG_RESET_CHIPS and not esp.secure_download_mode:
            if self.raw_tcp and out is not None:
                out.log.append(
                    "raw TCP (socket://) has no reset lines: reset into the app by the RTC "
                    "watchdog (esptool's --after watchdog-reset)"
                )
            self._watchdog_reset(esp)
            self._left_in = None
            self.trust.note_own_reset()
            self.conn.expect_reenumeration()
            self._hand_back(use)
            return "watchdog-reset"
        if self.raw_tcp:
            # no lines and no watchdog reset on this chip: nothing can reset it
            if out is not None:
                out.warnings.append(
                    f"raw TCP (socket://) has no reset lines and esptool has no watchdog reset "
                    f"for the {esp.CHIP_NAME}: reset the board by hand to start the app"
                )
            use.give_back()
            self._leave_in_loader(esp)
            return "no-reset"
        if watchdog and out is not None:
            out.log.append(
                f"esptool has no watchdog reset for the {esp.CHIP_NAME}: hard reset instead"
            )
        self._reset_into_app(use)
        return "hard-reset"

    @staticmethod
    def _watchdog_reset(esp: Any) -> None:
        """esptool 5.6's `watchdog_reset` register sequence (esp32c3.py):
        the RTC watchdog armed to reset the system in ~2000 slow-clock
        cycles. Without its 0.5 s sleep: the reader takes over at once and
        reads the boot log as it comes."""
        esp.write_reg(esp.RTC_CNTL_WDTWPROTECT_REG, esp.RTC_CNTL_WDT_WKEY)  # unlock
        esp.write_reg(esp.RTC_CNTL_WDTCONFIG1_REG, 2000)  # stage 0 timeout
        # enabled, stage 0 resetting the chip (esptool's value)
        esp.write_reg(esp.RTC_CNTL_WDTCONFIG0_REG, (1 << 31) | (5 << 28) | (1 << 8) | 2)
        esp.write_reg(esp.RTC_CNTL_WDTWPROTECT_REG, 0)  # lock

    def _hand_back(self, use: LentPort) -> None:
        """The port back to the reader at the console's settings."""
        use.port.baudrate = self.conn.baud
        use.port.timeout = READ_TIMEOUT_S
        use.give_back()

    def _reset_into_app(self, use: LentPort) -> None:
        """Hard reset into the app with the port given back, so the worker
        reads the boot log from its first byte."""
        use.port.dtr = False  # IO0 high: boot the app (EN follows RTS only while DTR is off)
        self._left_in = None
        self._hand_back(use)
        self.trust.note_own_reset()
        self.conn.expect_reenumeration()
        HardReset(use.port._port, uses_usb=self.conn.info.usb_jtag)()

    # ------------------------------------------------------------------------
    def _probe(
        self,
        esp: Any,
        regions: list[Region],
        out: DeployOutcome,
        confirmed: dict[int, bytes],
        on_board: dict[int, bytes],
    ) -> list[Run]:
        """Runs to write when nothing is trusted (deploy/probe.py)."""
        cached = (
            self.cache.load(self.identity, out.warnings.append)
            if self.cache and self.identity
            else {}
        )
        rtt = COMMAND_S if self.rtt is None else self.rtt
        return probe_regions(
            esp.flash_md5sum,
            regions,
            cached,
            rtt=rtt,
            log=out.log,
            confirmed=confirmed,
            on_board=on_board,
        )

    def reset(self) -> None:
        """Reset the board into its app (the `r` key); the monitor goes on
        reading from the first boot byte."""
        self.conn.call(lambda: self._reset_to_app(always=True))
