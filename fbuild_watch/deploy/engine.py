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
import functools
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from esptool.cmds import attach_flash, detect_chip, run_stub, write_flash
from esptool.reset import ClassicReset, HardReset, UnixTightReset, USBJTAGSerialReset

from fbuild_watch.deploy.esplog import captured
from fbuild_watch.deploy.outcome import DeployOutcome
from fbuild_watch.deploy.plan import (
    BLOCK,
    SECTOR,
    STUB_BREAK_EVEN,
    Run,
    compressed_sizes,
    estimate_s,
    sector_runs,
)
from fbuild_watch.deploy.ports import usb_serial
from fbuild_watch.deploy.progress import WriteProgress, WriteTracker
from fbuild_watch.deploy.trust import FlashCache, SessionTrust, TrustedImage
from fbuild_watch.deploy.worker import READ_TIMEOUT_S, BoardWorker, LentPort
from fbuild_watch.image.layout import APP, Region, ValidatedLayout

ROM_BAUD = 115200
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


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@functools.cache
def _erased_md5(size: int) -> str:
    """MD5 of `size` bytes of erased flash (0xFF)."""
    return _md5(b"\xff" * size)


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


def _add_run(runs: list[Run], run: Run) -> None:
    """Append, merging with the previous run when the two touch."""
    if runs and runs[-1].offset + len(runs[-1].data) == run.offset:
        runs[-1] = Run(run.region, runs[-1].offset, runs[-1].data + run.data)
    else:
        runs.append(run)


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
    ) -> None:
        """`stub`: None lets the cost model choose ROM or stub per deploy;
        True/False forces one (benchmarks measure the break-even with it)."""
        self.conn = conn
        self.baud = baud
        self.stub = stub
        self.trust = trust or SessionTrust()
        self.cache = cache
        self.log = log or (lambda _m: None)
        self.on_progress = on_progress  # called on the worker thread, <= 10 times a second
        self.identity: str | None = None
        # identity -> JEDEC flash ID, for chips whose flash esptool probed this session
        self._flash_ids: dict[str, int] = {}
        self._aborting = False
        self._connected: _Connected | None = None
        self._maybe_in_bootloader = False  # a connect ahead failed half way

    # ------------------------------------------------------------------------
    def connect_ahead(self) -> bool:
        """Enter the bootloader and connect now, ahead of a deploy that is
        known to need the serial link (the build is still producing the
        image): reset into the ROM, sync, read the MAC, raise the baud,
        attach the flash. The next `deploy` starts writing at once;
        `back_to_app` resets the board into its app if no deploy follows.
        False if the board is not there or the connect failed (the deploy
        then connects as usual). Runs on the board's worker thread."""
        return self.conn.call(self._connect_ahead)

    def _connect_ahead(self) -> bool:
        if self._connected is not None:
            return True
        if self._aborting or self.conn.port is None:
            return False
        t0 = time.monotonic()
        out = DeployOutcome(port=self.conn.url)
        stack = contextlib.ExitStack()
        try:
            with captured(out.log.append):
                use = stack.enter_context(self.conn.lend(timeout=1.0))
                self._maybe_in_bootloader = True
                esp, identity = self._connect(use, out, raise_baud=True)
                t = time.monotonic()
                esp = self._setup(esp, identity, stub=False)
                out.phases["setup"] = time.monotonic() - t
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
        )
        return True

    def back_to_app(self) -> None:
        """No deploy followed a `connect_ahead` (the build failed or produced what
        the board holds): reset the board into its app, if it is not there."""
        self.conn.call(lambda: self._reset_to_app(always=False))

    def _reset_to_app(self, *, always: bool) -> None:
        """Hard reset into the app: through the held connection if there is
        one, else through the port (`always`, or after a connect ahead that failed
        half way and may have left the board in its bootloader)."""
        held = self._take_connected()
        maybe, self._maybe_in_bootloader = self._maybe_in_bootloader, False
        if held is not None:
            self._reset_into_app(held.use)
            held.stack.close()
        elif always:
            with self.conn.lend() as use:
                self._reset_into_app(use)
        elif maybe:
            with contextlib.suppress(Exception), self.conn.lend() as use:
                self._reset_into_app(use)

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
        self, layout: ValidatedLayout, *, full: bool = False, app_only: bool = False
    ) -> DeployOutcome:
        """Runs on the board's worker thread (the caller waits)."""
        if not isinstance(layout, ValidatedLayout):
            raise TypeError("deploy() takes a ValidatedLayout: validate the layout first")
        return self.conn.call(lambda: self._deploy(layout, full=full, app_only=app_only))

    def _deploy(self, layout: ValidatedLayout, *, full: bool, app_only: bool) -> DeployOutcome:
        t0 = time.monotonic()
        out = DeployOutcome(port=self.conn.url, image_hash=layout.image_hash)
        regions = [
            r
            for r in layout.layout.regions
            if not app_only or r.name == APP or r.name.startswith(APP + ":")
        ]
        if full:
            self.trust.clear("full flash requested")
        trusted = self.effective_trust()  # first: it notices a port that went away
        held = self._take_connected()
        if trusted is not None and all(trusted.regions.get(r.offset) == r.data for r in regions):
            out.kind = "trust-skip"
            out.identity = trusted.identity
            out.regions_skipped = [r.name for r in regions]
            if held is not None:  # connected ahead for nothing: back into the app
                out.log.append("connected ahead of an image the board already holds")
                self._reset_into_app(held.use)
                held.stack.close()
                out.resets += held.resets + 1
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
        except Exception as exc:  # esptool FatalError, serial errors, ...
            self._failed(out, exc)
        self._maybe_in_bootloader = False
        out.duration_s = time.monotonic() - t0
        return out

    def effective_trust(self) -> TrustedImage | None:
        """What the next deploy will trust (clearing trust that no longer holds)."""
        return self.trust.check(
            connected=self.conn.check_alive(),
            disconnects=self.conn.disconnects,
            usb_serial=usb_serial(self.conn.info),
        )

    def abort(self) -> None:
        """Stop a deploy in progress now (the user insists on quitting): the
        port is closed under esptool, so the deploy fails at its next read
        or write and reports what is on flash. The connection stays closed."""
        self._aborting = True
        self.conn.close()

    def _failed(self, out: DeployOutcome, exc: BaseException) -> None:
        out.kind = "failed"
        text = " ".join(str(exc).split()) or type(exc).__name__
        out.error = text.split(" For troubleshooting")[0]
        if self._aborting:
            out.error = "aborted by the user"
        if out.flash_state == "writing":
            out.flash_state = "partially written: the board may not boot until the next deploy"
        elif out.flash_state is None:
            out.flash_state = "unchanged: nothing was written"
        self.trust.clear(f"deploy failed: {out.error}")

    # ------------------------------------------------------------------------
    def _enter_bootloader(self, use: LentPort, out: DeployOutcome) -> Any:
        port = use.port
        if self.conn.url.startswith("socket://"):  # raw TCP (rfc2217:// has the lines)
            strategies: list[Any] = [None]  # no modem lines over TCP: the board must already listen
        elif self.conn.info.usb_jtag:
            strategies = [USBJTAGSerialReset(port)]
        elif _has_tty(port):
            strategies = [
                UnixTightReset(port, 0.05),
                UnixTightReset(port, 0.55),
                ClassicReset(port, 0.05),
            ]
        else:
            strategies = [ClassicReset(port, 0.05), ClassicReset(port, 0.55)]
        last: Exception | None = None
        for strategy in strategies:
            port.baudrate = ROM_BAUD
            if strategy is not None:
                port.reset_input_buffer()
                strategy()
                out.resets += 1
            try:
                return detect_chip(port, ROM_BAUD, "no-reset", connect_attempts=2)
            except Exception as exc:
                last = exc
        raise last if last else RuntimeError("cannot connect")

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
        if raise_baud and self.baud != ROM_BAUD:
            esp.change_baud(self.baud)
        identity = ":".join(f"{b:02x}" for b in esp.read_mac())
        out.identity = identity
        self.identity = identity
        out.phases["connect"] = time.monotonic() - t
        return esp, identity

    def _setup(self, esp: Any, identity: str, *, stub: bool) -> Any:
        """Stub (optional), flashing baud, flash attached."""
        if stub:
            if not esp.IS_STUB and esp._port.baudrate != ROM_BAUD:
                # connected ahead at the flashing baud: the stub is uploaded at
                # the ROM's baud, as esptool does (LOOP.md, "Choosing ROM or stub")
                esp.change_baud(ROM_BAUD)
            esp = run_stub(esp)
            esp.WRITE_FLASH_ATTEMPTS = 1
        if self.baud not in (ROM_BAUD, esp._port.baudrate):
            esp.change_baud(self.baud)  # first: the set-up commands then go faster too
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
        if trusted is not None and trusted.identity != identity:
            self.trust.clear("a different chip answered on this port")
            trusted = None

        # -- plan ---------------------------------------------------------------
        known: dict[int, bytes] = dict(trusted.regions) if trusted else {}
        verified_regions: dict[int, bytes] = {}
        if full:
            out.kind = "full"
            runs = [Run(r.name, r.offset, r.data) for r in regions]
        elif trusted is not None:
            out.kind = "sector-delta"
            runs = [
                run
                for r in regions
                for run in sector_runs(r.name, r.offset, r.data, known.get(r.offset))
            ]
        else:
            out.kind = "verify-probe"
            t = time.monotonic()
            runs = self._probe(esp, regions, out, verified_regions)
            out.phases["verify"] = time.monotonic() - t

        if not runs:
            stub = False
        elif self.stub is not None:
            stub = self.stub
        elif sum(len(run.data) for run in runs) > 4 * STUB_BREAK_EVEN:
            stub = True  # far past the break-even: skip estimating (zlib of it all)
        else:
            sizes = compressed_sizes(runs)
            rom_s = estimate_s(runs, stub=False, baud=self.baud, sizes=sizes)
            stub = estimate_s(runs, stub=True, baud=self.baud, sizes=sizes) < rom_s
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
            if out.kind == "sector-delta":
                # final check of each touched region as a whole (esptool diff_with's rule)
                t = time.monotonic()
                for r in regions:
                    if r.name in out.regions_written and esp.flash_md5sum(r.offset, r.size) != _md5(
                        r.data
                    ):
                        out.log.append(
                            f"{r.name}: MD5 mismatch after delta write, rewriting the region"
                        )
                        write_flash(esp, [(r.offset, r.data)], **_WRITE_OPTS)
                        out.flash_bytes_written += r.size
                        out.sectors_written += -(-r.size // SECTOR)
                out.phases["verify"] = time.monotonic() - t
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

        # -- reset into the app, reading from the first byte ---------------------
        out.wire_bytes_sent, out.wire_bytes_received = use.port.sent, use.port.received
        t = time.monotonic()
        self._reset_into_app(use)
        out.resets += 1
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
        # the boot log is read (and handed to the monitor) on this thread
        first = self.conn.read_until_data(FIRST_BYTE_TIMEOUT_S)
        if first is not None:
            out.phases["first_boot_byte"] = max(0.0, first - reset_at)

    def _reset_into_app(self, use: LentPort) -> None:
        """Hard reset into the app with the port given back, so the worker
        reads the boot log from its first byte."""
        use.port.baudrate = self.conn.baud
        use.port.timeout = READ_TIMEOUT_S
        use.port.dtr = False  # IO0 high: boot the app (EN follows RTS only while DTR is off)
        use.give_back()
        self.trust.note_own_reset()
        self.conn.expect_reenumeration()
        HardReset(use.port._port, uses_usb=self.conn.info.usb_jtag)()

    # ------------------------------------------------------------------------
    def _probe(
        self, esp: Any, regions: list[Region], out: DeployOutcome, confirmed: dict[int, bytes]
    ) -> list[Run]:
        """Runs to write when nothing is trusted: the cached last layout
        confirmed by one MD5 per region, else MD5 probes."""
        cached = (
            self.cache.load(self.identity, out.warnings.append)
            if self.cache and self.identity
            else {}
        )
        runs: list[Run] = []
        for r in regions:
            if r.size > BLOCK:
                # an image starts in its first sector: if that is erased, the
                # image is not there and hashing the whole region would be wasted
                head = esp.flash_md5sum(r.offset, SECTOR)
                if head == _erased_md5(SECTOR) and r.data[:SECTOR] != b"\xff" * SECTOR:
                    runs.append(Run(r.name, r.offset, r.data))
                    continue
            device = esp.flash_md5sum(r.offset, r.size)
            if device == _md5(r.data):
                confirmed[r.offset] = r.data
                continue
            base = cached.get(r.offset)
            if (
                base is not None
                and len(base)
                and esp.flash_md5sum(r.offset, len(base)) == _md5(base)
            ):
                out.log.append(
                    f"{r.name}: cached last layout confirmed on the board; diffing against it"
                )
                runs += sector_runs(r.name, r.offset, r.data, base)
                continue
            runs += self._probe_blocks(esp, r, device)
        return runs

    def _probe_blocks(self, esp: Any, r: Region, region_md5: str) -> list[Run]:
        if region_md5 == _erased_md5(r.size):
            return [Run(r.name, r.offset, r.data)]  # erased: every sector differs
        runs: list[Run] = []
        for bstart in range(0, r.size, BLOCK):
            block = r.data[bstart : bstart + BLOCK]
            device = esp.flash_md5sum(r.offset + bstart, len(block))
            if device == _md5(block):
                continue
            if device == _erased_md5(len(block)):  # erased block: no per-sector probing
                _add_run(runs, Run(r.name, r.offset + bstart, block))
                continue
            for sstart in range(0, len(block), SECTOR):
                sector = block[sstart : sstart + SECTOR]
                addr = r.offset + bstart + sstart
                if esp.flash_md5sum(addr, len(sector)) != _md5(sector):
                    _add_run(runs, Run(r.name, addr, sector))
        return runs

    def reset(self) -> None:
        """Reset the board into its app (the `r` key); the monitor goes on
        reading from the first boot byte."""
        self.conn.call(lambda: self._reset_to_app(always=True))
