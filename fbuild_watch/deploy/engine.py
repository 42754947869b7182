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

import functools
import hashlib
import os
import time
from collections.abc import Callable
from typing import Any

from esptool.cmds import attach_flash, detect_chip, run_stub, write_flash
from esptool.reset import ClassicReset, HardReset, UnixTightReset, USBJTAGSerialReset

from fbuild_watch.deploy.connection import BoardConnection, ExclusiveUse
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
from fbuild_watch.deploy.simport import sim_usb_serial
from fbuild_watch.deploy.trust import FlashCache, SessionTrust, TrustedImage
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


def _usb_serial(conn: BoardConnection) -> str | None:
    if conn.url.startswith("sim://"):
        return sim_usb_serial(conn.url)
    return conn.info.serial_number


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


def _add_run(runs: list[Run], run: Run) -> None:
    """Append, merging with the previous run when the two touch."""
    if runs and runs[-1].offset + len(runs[-1].data) == run.offset:
        runs[-1] = Run(run.region, runs[-1].offset, runs[-1].data + run.data)
    else:
        runs.append(run)


class BoardDeployer:
    def __init__(
        self,
        conn: BoardConnection,
        *,
        baud: int = 460800,
        trust: SessionTrust | None = None,
        cache: FlashCache | None = None,
        log: Callable[[str], None] | None = None,
        stub: bool | None = None,
    ) -> None:
        """`stub`: None lets the cost model choose ROM or stub per deploy;
        True/False forces one (benchmarks measure the break-even with it)."""
        self.conn = conn
        self.baud = baud
        self.stub = stub
        self.trust = trust or SessionTrust()
        self.cache = cache
        self.log = log or (lambda _m: None)
        self.identity: str | None = None
        # identity -> JEDEC flash ID, for chips whose flash esptool probed this session
        self._flash_ids: dict[str, int] = {}
        self._aborting = False

    # ------------------------------------------------------------------------
    def deploy(
        self, layout: ValidatedLayout, *, full: bool = False, app_only: bool = False
    ) -> DeployOutcome:
        if not isinstance(layout, ValidatedLayout):
            raise TypeError("deploy() takes a ValidatedLayout: validate the layout first")
        t0 = time.monotonic()
        out = DeployOutcome(port=self.conn.url, image_hash=layout.image_hash)
        regions = [
            r
            for r in layout.layout.regions
            if not app_only or r.name == APP or r.name.startswith(APP + ":")
        ]
        if full:
            self.trust.clear("full flash requested")
        trusted = self.effective_trust()
        if trusted is not None and all(trusted.regions.get(r.offset) == r.data for r in regions):
            out.kind = "trust-skip"
            out.identity = trusted.identity
            out.regions_skipped = [r.name for r in regions]
            out.duration_s = time.monotonic() - t0
            return out
        try:
            if self._aborting:
                raise RuntimeError("aborted before it started")
            with captured(out.log.append), self.conn.exclusive() as use:
                self._deploy_connected(
                    use=use, layout=layout, regions=regions, trusted=trusted, full=full, out=out
                )
        except Exception as exc:  # esptool FatalError, serial errors, ...
            self._failed(out, exc)
        out.duration_s = time.monotonic() - t0
        return out

    def effective_trust(self) -> TrustedImage | None:
        """What the next deploy will trust (clearing trust that no longer holds)."""
        return self.trust.check(
            connected=self.conn.check_alive(),
            disconnects=self.conn.disconnects,
            usb_serial=_usb_serial(self.conn),
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
    def _enter_bootloader(self, use: ExclusiveUse, out: DeployOutcome) -> Any:
        port = use.port
        if self.conn.url.startswith("socket://"):
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

    def _deploy_connected(
        self,
        *,
        use: ExclusiveUse,
        layout: ValidatedLayout,
        regions: list[Region],
        trusted: TrustedImage | None,
        full: bool,
        out: DeployOutcome,
    ) -> None:
        t = time.monotonic()
        esp = self._enter_bootloader(use, out)
        # esptool's own recovery from a lost link closes the port and reopens
        # it for 7 s; we own the port, so that cannot work. Fail at once: the
        # outcome says "failed", trust is cleared, and the session redeploys
        # when the board is back.
        esp.WRITE_FLASH_ATTEMPTS = 1
        identity = ":".join(f"{b:02x}" for b in esp.read_mac())
        out.identity = identity
        self.identity = identity
        out.phases["connect"] = time.monotonic() - t
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
            if stub:
                esp = run_stub(esp)
                esp.WRITE_FLASH_ATTEMPTS = 1
                out.stub_used = True
            if self.baud != ROM_BAUD:
                esp.change_baud(self.baud)  # first: the set-up commands then go faster too
            if identity in self._flash_ids:
                # esptool's full attach probes the flash (XMC start-up fix, SFDP,
                # flash reset, ID: ~60 register commands), and write_flash reads
                # the ID again to size the flash (~12 more, ~60 ms at 460800).
                # The flash is soldered to the chip this MAC names: once per
                # session is enough.
                if not esp.IS_STUB:
                    esp.flash_spi_attach(0)
                esp.cache["flash_id"] = self._flash_ids[identity]
            else:
                attach_flash(esp)
                self._flash_ids[identity] = esp.flash_id()
            out.phases["stub" if stub else "setup"] = time.monotonic() - t
            t = time.monotonic()
            self.trust.clear("write in progress")
            out.flash_state = "writing"
            # one esptool call for all runs: it verifies each run's MD5 after writing it
            write_flash(esp, [(run.offset, run.data) for run in runs], **_WRITE_OPTS)
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
        self.trust.set(
            TrustedImage(identity, new_known, layout.image_hash, usb_serial=_usb_serial(self.conn))
        )
        if self.cache is not None:
            self.cache.save(
                identity,
                {r.offset: r.data for r in layout.layout.regions if r in regions} | new_known,
            )

        # -- reset into the app, reading from the first byte ---------------------
        t = time.monotonic()
        use.port.baudrate = self.conn.baud
        use.port.timeout = 0.05
        before = self.conn.last_data_at
        out.wire_bytes_sent, out.wire_bytes_received = use.port.sent, use.port.received
        use.resume()
        self.trust.note_own_reset()
        self.conn.expect_reenumeration()
        HardReset(use.port._port, uses_usb=self.conn.info.usb_jtag)()
        out.resets += 1
        reset_at = time.monotonic()
        out.phases["reset"] = reset_at - t
        while (
            self.conn.last_data_at <= before and time.monotonic() - reset_at < FIRST_BYTE_TIMEOUT_S
        ):
            time.sleep(0.002)
        if self.conn.last_data_at > before:
            out.phases["first_boot_byte"] = max(0.0, self.conn.last_data_at - reset_at)

    # ------------------------------------------------------------------------
    def _probe(
        self, esp: Any, regions: list[Region], out: DeployOutcome, confirmed: dict[int, bytes]
    ) -> list[Run]:
        """Runs to write when nothing is trusted: the cached last layout
        confirmed by one MD5 per region, else MD5 probes."""
        cached = self.cache.load(self.identity) if self.cache and self.identity else {}
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
        """Reset the board into its app (the `r` key); the reader keeps reading."""
        with self.conn.exclusive() as use:
            use.port.baudrate = self.conn.baud
            use.port.dtr = False  # IO0 high: boot the app (EN follows RTS only while DTR is off)
            use.resume()
            self.trust.note_own_reset()
            self.conn.expect_reenumeration()
            HardReset(use.port._port, uses_usb=self.conn.info.usb_jtag)()
