"""One virtual ESP32-C3 board: flash, reset lines, ROM loader, CPU, UART.

A device thread owns all board state; the host side (a `sim://` port object,
or the TCP server) only queues bytes and line changes and reads what the
board sent. That keeps the model single-threaded and lets a reset arrive at
any moment, as on hardware.
"""

from __future__ import annotations

import atexit
import base64
import collections
import enum
import json
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fbuild_watch.fsutil import atomic_write
from fbuild_watch.sim import boot
from fbuild_watch.sim.cpu import Cpu, SegmentError, format_panic
from fbuild_watch.sim.flash import SpiFlash
from fbuild_watch.sim.regs import ChipIdentity, RegisterFile
from fbuild_watch.sim.rom_loader import KnownStub, LoaderSession, load_known_stubs
from fbuild_watch.sim.slip import SlipDecoder, encode
from fbuild_watch.sim.timing import INSTANT, Timing

_TRACE = bool(os.environ.get("FBUILD_SIM_TRACE"))  # line changes to stderr, for debugging
ROM_BAUD = 115200
FLASH_SIZE = 4 << 20
EN_RC_DELAY_S = 0.005  # EN rises through the devkit's RC after the transistor lets go
INVALID_HEADER_INTERVAL_S = 0.05
SAVE_AFTER_IDLE_S = 0.3
UART_FIFO = 128
RX_FIFO = 128


class BoardState(enum.Enum):
    OFF = "off"  # unplugged / unpowered
    RESET = "reset"  # EN held low
    DOWNLOAD = "download"  # ROM loader or stub
    APP = "app"  # running the app on the CPU
    ROM_STUCK = "rom-stuck"  # invalid header loop
    REBOOTING = "rebooting"  # after a panic or a failed boot, before the next boot


class Disconnected(Exception):
    """The board's USB link is gone (unplug or re-enumeration)."""


@dataclass
class Faults:
    """Fault injection for reliability tests."""

    drop_after_bytes: int | None = None  # unplug once this many more bytes crossed the link
    corrupt_frames: int = 0  # flip a byte in the next N loader frames sent
    stall: bool = False  # the loader swallows requests without answering
    refuse_download: bool = False  # IO0 strap ignored: always boots the app
    drop_on_command: str | None = None  # unplug when this loader command arrives (e.g. mid-write)
    # the loader stops at this command until `release` is set (a deploy caught half way)
    hold_on_command: str | None = None
    held: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


@dataclass
class BoardCounters:
    bytes_from_host: int = 0
    bytes_to_host: int = 0
    commands: collections.Counter[str] = field(default_factory=collections.Counter)
    resets: int = 0
    app_boots: int = 0
    download_boots: int = 0
    panics: int = 0
    unplugs: int = 0
    modelled_s: float = 0.0
    stub_uploads: int = 0

    def snapshot(self, flash: SpiFlash) -> dict[str, object]:
        return {
            "bytes_from_host": self.bytes_from_host,
            "bytes_to_host": self.bytes_to_host,
            "commands": dict(self.commands),
            "resets": self.resets,
            "app_boots": self.app_boots,
            "download_boots": self.download_boots,
            "panics": self.panics,
            "unplugs": self.unplugs,
            "sectors_erased": flash.sectors_erased,
            "bytes_programmed": flash.bytes_programmed,
            "modelled_s": round(self.modelled_s, 6),
            "stub_uploads": self.stub_uploads,
        }


_STUBS: list[KnownStub] | None = None
_LIVE: weakref.WeakSet[VirtualBoard] = weakref.WeakSet()
# Interpreter exit: once set, no board creates an emulator (unicorn's weakref
# finalizers free emulators at exit; one created under them crashes).
_SHUTDOWN = threading.Event()
_EMULATOR_GATE = threading.Lock()


def _stop_all_boards() -> None:
    with _EMULATOR_GATE:
        _SHUTDOWN.set()
    for board in list(_LIVE):
        board.close()


# weakref.finalize registers its exit hook on first use; make that happen
# now, so our hook (registered after it) runs first - atexit is last-in
# first-out - and the device threads are stopped before any emulator is freed.
weakref.finalize(_stop_all_boards, lambda: None)
atexit.register(_stop_all_boards)


def _known_stubs() -> list[KnownStub]:
    global _STUBS
    if _STUBS is None:
        _STUBS = load_known_stubs()
    return _STUBS


# Commands within one flash write; any other command means the write before
# it is complete (esptool verifies with SPI_FLASH_MD5, ends with FLASH_END).
_FLASH_OP_CONTINUES = frozenset(
    ("FLASH_BEGIN", "FLASH_DATA", "FLASH_DEFL_BEGIN", "FLASH_DEFL_DATA")
)
_FLASH_OP_WHOLE = frozenset(("ERASE_FLASH", "ERASE_REGION"))  # complete in themselves


def _garble(data: bytes) -> bytes:
    """What a receiver at the wrong baud rate sees: never a SLIP delimiter."""
    return bytes(0x80 | (b & 0x3F) for b in data)


class VirtualBoard:
    def __init__(
        self,
        name: str = "board",
        *,
        flash_path: Path | None = None,
        timing: Timing = INSTANT,
        identity: ChipIdentity | None = None,
        usb_jtag: bool = False,
        start: str = "app",  # "app": powered and booting; "download": held in the ROM loader
        record_tx: bool = True,
        flash_size: int = FLASH_SIZE,
        flash_id: int | None = None,  # JEDEC id; None: GigaDevice of flash_size
    ) -> None:
        self.name = name
        self.timing = timing
        self.identity = identity or ChipIdentity()
        self.usb_jtag = usb_jtag
        # first: a flash file another board holds refuses this board (FlashInUse)
        self.flash = SpiFlash(flash_size, flash_path, flash_id)
        self.regs = RegisterFile(self.identity)
        self.counters = BoardCounters()
        self.faults = Faults()
        self.state = BoardState.OFF
        self.gpio_out = 0
        self.gpio_enable = 0
        self.gpio_history: list[tuple[float, int]] = []
        self.tx_record: bytearray | None = bytearray() if record_tx else None
        self.listeners: list[Callable[[str], None]] = []  # state-change observers (tests)
        # (reading thread's name, bytes) of every host read and input flush:
        # the soak proves the log file holds all that the monitor read
        self.host_rx_log: list[tuple[str, bytes]] | None = None

        self._lock = threading.RLock()
        self._wake = threading.Condition(self._lock)
        self._rx = bytearray()  # board -> host, waiting to be read
        self._rx_cond = threading.Condition(self._lock)
        self._inbox = bytearray()  # host -> board
        self._host_baud = ROM_BAUD
        self._uart_baud = ROM_BAUD
        self._dtr = False
        self._rts = False
        self._reset_pending: str | None = None  # reset reason latched by an EN pulse
        self._en_low = False
        self._en_release_at: float | None = None
        # Counts what ends a boot in progress (EN pulled low, power lost, a
        # reset requested): a real chip restarts at once, even mid-boot.
        self._interrupts = 0
        # (time, IO0 low) at each line change: the strap is the IO0 level at
        # EN release + RC delay, whenever the device thread gets to look.
        self._io0_history: list[tuple[float, bool]] = [(0.0, False)]
        self._force_download = start == "download"
        self._port_open = False
        self.present = True
        self.link_epoch = 0
        self._absent_until: float | None = None

        self._session: LoaderSession | None = None
        self._slip = SlipDecoder()
        self._cpu: Cpu | None = None
        self._cpu_rx: collections.deque[int] = collections.deque()
        self._elf_sha: str | None = None
        self._boot_t0 = time.monotonic()
        self._next_at: float | None = None  # ROM_STUCK / REBOOTING timer
        self._reboot_reason = "sw_sys"
        self._stuck_line = ""
        self._tx_free_at = 0.0
        self._last_flash_change = 0.0
        self._closed = False
        self._stopping = threading.Event()  # set by close(): modelled waits end early
        self._last_command = ""
        # No wire between host and UART (the TCP server): the host side
        # always runs at the board's baud, so a baud change never garbles.
        self.host_follows_uart = False
        _LIVE.add(self)
        # a RAM app esptool started (load-ram): what the chip runs until a reset
        self._ram_app: tuple[list[tuple[int, bytes]], int] | None = None
        if not self._restore_chip_state():
            self._power_on("poweron")
        self._thread = threading.Thread(target=self._run, name=f"sim-{name}", daemon=True)
        self._thread.start()

    # ===== host side (called from port objects / the TCP server) ========
    def open_port(self) -> int:
        with self._lock:
            if not self.present:
                raise Disconnected(f"{self.name} is not connected")
            if self._port_open:
                raise BlockingIOError(f"{self.name} is already open")
            self._port_open = True
            self._rx.clear()
            return self.link_epoch

    @property
    def port_open(self) -> bool:
        return self._port_open

    def close_port(self, epoch: int) -> None:
        with self._lock:
            if epoch == self.link_epoch:
                self._port_open = False
                self._rx.clear()
            # Closing a real port drops DTR and RTS (HUPCL); (0, 0) is not a reset.
            self._dtr = self._rts = False
            self._apply_lines()

    def _check_link(self, epoch: int) -> None:
        if not self.present or epoch != self.link_epoch:
            raise Disconnected(f"{self.name}: device disconnected")

    def host_write(self, epoch: int, data: bytes) -> None:
        with self._lock:
            self._check_link(epoch)
            self.counters.bytes_from_host += len(data)
            self._count_link(len(data))
            if self._host_baud != self._uart_baud and not self.host_follows_uart:
                data = _garble(data)
            self._inbox += data
            self._wake.notify_all()

    def host_read(
        self,
        epoch: int,
        size: int,
        timeout: float | None,
        cancel: threading.Event | None = None,
    ) -> bytes:
        """`cancel` set: return what is there now (pyserial's cancel_read; a
        cancel with no read in progress cuts the next read short, as on POSIX)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while True:
                self._check_link(epoch)
                if cancel is not None and cancel.is_set() and not self._rx:
                    cancel.clear()
                    return b""
                if self._rx:
                    chunk = bytes(self._rx[:size])
                    del self._rx[:size]
                    if self.host_rx_log is not None:
                        self.host_rx_log.append((threading.current_thread().name, chunk))
                    return chunk
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return b""
                self._rx_cond.wait(remaining if remaining is not None else 0.25)

    def wake_host_readers(self) -> None:
        with self._lock:
            self._rx_cond.notify_all()

    def host_in_waiting(self, epoch: int) -> int:
        with self._lock:
            self._check_link(epoch)
            return len(self._rx)

    def host_reset_input(self, epoch: int) -> None:
        with self._lock:
            self._check_link(epoch)
            if self.host_rx_log is not None and self._rx:
                name = f"flush:{threading.current_thread().name}"
                self.host_rx_log.append((name, bytes(self._rx)))
            self._rx.clear()

    def set_host_baud(self, baud: int) -> None:
        with self._lock:
            self._host_baud = baud

    def set_lines(self, epoch: int, dtr: bool, rts: bool) -> None:
        with self._lock:
            self._check_link(epoch)
            self._dtr, self._rts = dtr, rts
            self._apply_lines()

    def _apply_lines(self) -> None:
        # Auto-reset circuit (two transistors): EN is pulled low only while
        # RTS is asserted and DTR is not; IO0 only while DTR is asserted and
        # RTS is not. USB-Serial/JTAG decodes the same line pairs itself and
        # latches "download" when it sees DTR without RTS.
        en_low = self._rts and not self._dtr
        now = time.monotonic()
        if _TRACE:
            print(
                f"sim {self.name} {now:.4f} lines dtr={self._dtr} rts={self._rts} en_low={en_low} "
                f"was={self._en_low} state={self.state.value}",
                file=sys.stderr,
                flush=True,
            )
        self._io0_history.append((now, self._dtr and not self._rts))
        del self._io0_history[:-16]
        if self.usb_jtag and self._dtr and not self._rts:
            self._force_download = True
        if en_low and not self._en_low:
            self._en_low = True
            self._interrupts += 1
            self._en_release_at = None
            self._reset_pending = "usb_uart" if self.usb_jtag else "poweron"
            if self._cpu is not None:
                self._cpu.stop_requested = True
            self._wake.notify_all()
        elif not en_low and self._en_low:
            self._en_low = False
            self._en_release_at = time.monotonic()
            self._wake.notify_all()

    def _io0_low(self, at: float) -> bool:
        if self.faults.refuse_download:
            return False
        if self.usb_jtag or self._force_download:
            return self._force_download
        level = False
        for t, low in self._io0_history:
            if t <= at:
                level = low
        return level

    # ===== test / fault API ==============================================
    def unplug(self) -> None:
        """Pull the USB cable: the port vanishes and the board loses power."""
        with self._lock:
            self._drop_link()
            self.present = False
            self._interrupts += 1
            self.counters.unplugs += 1
            self._set_state(BoardState.OFF)
            self._wake.notify_all()

    def replug(self) -> None:
        with self._lock:
            self.present = True
            self._absent_until = None
            self._dtr = self._rts = False
            self._en_low = False
            self._power_on("poweron")
            self._wake.notify_all()
            self._rx_cond.notify_all()

    def reset(self, reason: str = "poweron", *, download: bool = False) -> None:
        """Press the EN button (optionally holding BOOT)."""
        with self._lock:
            self._force_download = download
            self._power_on(reason)
            self._wake.notify_all()

    def set_identity(self, identity: ChipIdentity) -> None:
        """Swap the chip on this port (a different board with another MAC)."""
        with self._lock:
            self.identity = identity
            self.regs = RegisterFile(identity)

    def close(self) -> None:
        with self._lock:
            if self._closed and not self._thread.is_alive():
                return
            self._closed = True
            self._stopping.set()
            self._wake.notify_all()
            self._rx_cond.notify_all()
        if threading.current_thread() is not self._thread:
            self._stop_thread()
        self._save_chip_state()
        self.flash.close()  # saved, and the flash file free for another board

    # -- what the chip is doing outlives the process that had its port ----------
    # A real chip stays in its loader, keeps a stub running or runs a RAM app
    # between two host processes (esptool's TestStubReuse and load-ram rely on
    # it); a virtual board lives in one process, so that state is handed on in
    # FLASH.chip beside its flash file. An app booted from flash simply boots
    # again in the next process.
    def _chip_state_path(self) -> Path | None:
        p = self.flash.path
        return None if p is None else p.with_name(p.name + ".chip")

    def _save_chip_state(self) -> None:
        path = self._chip_state_path()
        if path is None:
            return
        state: dict[str, object] | None = None
        session = self._session
        if self.state is BoardState.DOWNLOAD and session is not None:
            state = {
                "mode": "stub" if session.is_stub else "loader",
                "stub_version": session.stub_version,
                "uart_baud": self._uart_baud,
            }
        elif self.state is BoardState.APP and self._ram_app is not None:
            segments, entry = self._ram_app
            state = {
                "mode": "ram_app",
                "entry": entry,
                "segments": [[addr, base64.b64encode(data).decode()] for addr, data in segments],
            }
        try:
            if state is None:
                path.unlink(missing_ok=True)
            else:
                atomic_write(path, json.dumps(state).encode())
        except OSError:
            pass  # the next process then powers the board on: a reset, not a loss

    def _restore_chip_state(self) -> bool:
        path = self._chip_state_path()
        if path is None:
            return False
        try:
            state = json.loads(path.read_text())
            path.unlink()
            mode = state["mode"]
            if mode in ("stub", "loader"):
                session = LoaderSession(self, _known_stubs())
                if mode == "stub":
                    session.is_stub = True
                    session.stub_version = state["stub_version"]
                    self.regs.attach_flash(self.flash.jedec_id)  # the stub attached it
                self._session = session
                self._uart_baud = int(state["uart_baud"])
                self._set_state(BoardState.DOWNLOAD)
                return True
            if mode == "ram_app":
                segments = [(int(a), base64.b64decode(d)) for a, d in state["segments"]]
                self.start_ram_app(segments, int(state["entry"]))
                return True
        except (OSError, ValueError, KeyError, TypeError):
            pass  # none, or unreadable: power on as usual
        return False

    def _stop_thread(self, timeout: float = 5.0) -> None:
        """Power off: the device thread ends at its next step; an app inside
        the emulator is stopped there (it may not return on its own soon)."""
        deadline = time.monotonic() + timeout
        while self._thread.is_alive() and time.monotonic() < deadline:
            cpu = self._cpu
            if cpu is not None:
                cpu.stop_requested = True
                cpu.uc.emu_stop()  # unicorn allows this from another thread
            self._thread.join(0.05)
        cpu = self._cpu
        if self._thread.is_alive() and cpu is not None:
            # Still inside the emulator: never let unicorn's exit-time
            # finalizer free it under the running thread (a segfault).
            finalizer = getattr(cpu.uc, "_Uc__finalizer", None)
            if finalizer is not None:
                finalizer.atexit = False

    def stats(self) -> dict[str, object]:
        with self._lock:
            return self.counters.snapshot(self.flash)

    # ===== board side ======================================================
    def _drop_link(self) -> None:
        self.link_epoch += 1
        self._port_open = False
        self._rx.clear()
        self._inbox.clear()
        self._rx_cond.notify_all()

    def _count_link(self, n: int) -> None:
        f = self.faults
        if f.drop_after_bytes is not None:
            f.drop_after_bytes -= n
            if f.drop_after_bytes <= 0:
                f.drop_after_bytes = None
                self.present = False
                self.counters.unplugs += 1
                self._drop_link()
                self._set_state(BoardState.OFF)
                raise Disconnected(f"{self.name}: device disconnected")

    def _set_state(self, state: BoardState) -> None:
        if state is not self.state:
            self.state = state
            for cb in list(self.listeners):
                cb(state.value)

    def _power_on(self, reason: str) -> None:
        """Chip comes out of reset now (after the EN RC delay)."""
        self._reset_pending = reason
        self._en_release_at = time.monotonic() - EN_RC_DELAY_S
        self._interrupts += 1
        if self._cpu is not None:
            self._cpu.stop_requested = True

    def _emit(self, data: bytes) -> None:
        """Bytes leaving the board's UART towards the host."""
        if self.tx_record is not None:
            self.tx_record += data
        if not self.present or not self._port_open:
            return  # nobody has the port open: the host driver drops them
        self.counters.bytes_to_host += len(data)
        try:
            self._count_link(len(data))
        except Disconnected:
            return
        if self._host_baud != self._uart_baud and not self.host_follows_uart:
            data = _garble(data)
        self._rx += data
        self._rx_cond.notify_all()

    def _emit_text(self, text: str) -> None:
        with self._lock:
            self._emit(text.encode())

    # LoaderSession's BoardSide ------------------------------------------
    def send_frame(self, payload: bytes) -> None:
        frame = encode(payload)
        with self._lock:
            if self.faults.corrupt_frames > 0 and len(payload) > 8:
                self.faults.corrupt_frames -= 1
                body = bytearray(payload)
                body[len(body) // 2] ^= 0x5A
                frame = encode(bytes(body))
        self.pace(self.timing.wire_s(len(frame), self._uart_baud))
        with self._lock:
            self._emit(frame)

    def pace(self, seconds: float) -> None:
        if seconds <= 0:
            return
        self.counters.modelled_s += seconds
        if self.timing.realtime:
            self._stopping.wait(seconds)  # a board being closed stops waiting

    def _pace_boot(self, seconds: float, booting: int) -> bool:
        """`pace` for a boot step; False when a reset, EN pulled low or power
        lost came first, which ends the boot at once."""
        if not self.timing.realtime:
            self.pace(seconds)
            return self._interrupts == booting
        start = time.monotonic()
        deadline = start + seconds
        with self._lock:
            while self._interrupts == booting and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._wake.wait(left)
            self.counters.modelled_s += min(seconds, time.monotonic() - start)
            return self._interrupts == booting

    def set_uart_baud(self, baud: int) -> None:
        with self._lock:
            self._uart_baud = baud

    def count_command(self, name: str) -> None:
        self.counters.commands[name] += 1
        self._last_command = name
        if name not in _FLASH_OP_CONTINUES and self.flash.dirty:
            self.flash.save()  # the write before this command is complete: make it durable
        if self.faults.drop_on_command == name:
            self.faults.drop_on_command = None
            self.unplug()
            raise Disconnected(f"{self.name}: unplugged during {name}")
        if name == "stub_started":
            self.counters.stub_uploads += 1
        if self.faults.hold_on_command == name:
            self.faults.hold_on_command = None
            self.faults.held.set()
            self.faults.release.wait(60)

    def start_ram_app(self, segments: list[tuple[int, bytes]], entry: int) -> None:
        self._ram_app = (segments, entry)
        self._start_cpu(segments, entry, elf_sha=None)

    def boot_from_flash(self) -> None:
        with self._lock:
            self._force_download = False
            self._power_on("sw_sys")

    # CpuHost --------------------------------------------------------------
    def uart_tx(self, byte: int) -> None:
        if self.timing.realtime:
            # UART0 drains at the baud rate; a full FIFO stalls the CPU.
            now = time.monotonic()
            byte_s = 10 / self._uart_baud
            self._tx_free_at = max(self._tx_free_at, now) + byte_s
            backlog = self._tx_free_at - now
            if backlog > UART_FIFO * byte_s:
                time.sleep(backlog - UART_FIFO * byte_s)
        with self._lock:
            self._emit(bytes([byte]))

    def uart_tx_backlog(self) -> int:
        if not self.timing.realtime:
            return 0
        return max(0, int((self._tx_free_at - time.monotonic()) * self._uart_baud / 10))

    def uart_rx(self) -> int | None:
        return self._cpu_rx.popleft() if self._cpu_rx else None

    def uart_rx_count(self) -> int:
        return len(self._cpu_rx)

    def clock_s(self) -> float:
        return time.monotonic() - self._boot_t0

    def efuse_read(self, addr: int) -> int:
        return self.regs.read(addr)

    def gpio_changed(self, out: int, enable: int) -> None:
        self.gpio_out, self.gpio_enable = out, enable
        self.gpio_history.append((time.monotonic(), out & enable))
        del self.gpio_history[:-1000]

    # ===== the device thread ==============================================
    def _run(self) -> None:
        try:
            while self._step():
                pass
        finally:
            self.flash.save()

    def _step(self) -> bool:
        with self._lock:
            if self._closed:
                return False
            now = time.monotonic()
            if self._absent_until is not None and now >= self._absent_until:
                self._absent_until = None
                self.present = True  # re-enumerated
            if not self.present and self._absent_until is None:
                self._wake.wait(0.1)
                return True
            if self._en_low:
                if self.state is not BoardState.RESET:
                    self._enter_reset()
                self._wake.wait(0.1)
                return True
            if self._en_release_at is not None and self._reset_pending is not None:
                wait = self._en_release_at + EN_RC_DELAY_S - now
                if wait > 0:
                    self._wake.wait(wait)
                    return True
                reason = self._reset_pending
                self._reset_pending = None
                booting = self._interrupts
                download = self._io0_low(self._en_release_at + EN_RC_DELAY_S)
                self._en_release_at = None
                self._force_download = False
            else:
                reason, booting = None, 0
        if reason is not None:
            self._boot(reason, download, booting)
            return True
        if self.state in (BoardState.APP, BoardState.DOWNLOAD):
            fired = self.regs.watchdogs.expired()
            if fired is not None:  # a watchdog nobody fed resets the chip
                with self._lock:
                    self._cpu = None
                    self._power_on(fired)
                return True
        self._maybe_save()
        state = self.state
        if state is BoardState.DOWNLOAD:
            self._step_loader()
        elif state is BoardState.APP:
            self._step_app()
        elif state in (BoardState.ROM_STUCK, BoardState.REBOOTING):
            self._step_timer()
        else:
            with self._lock:
                self._wake.wait(0.1)
        return True

    def _enter_reset(self) -> None:
        self._cpu = None
        self._session = None
        self._set_state(BoardState.RESET)

    def _maybe_save(self) -> None:
        fl = self.flash
        if fl.path is not None and fl.dirty:
            if self._last_flash_change == 0.0:
                self._last_flash_change = time.monotonic()
            elif time.monotonic() - self._last_flash_change > SAVE_AFTER_IDLE_S:
                fl.save()
                self._last_flash_change = 0.0

    def _boot(self, reason: str, download: bool, booting: int) -> None:
        """ROM start-up, then the loader or the bootloader and the app;
        `booting`: `_interrupts` when this boot began (a reset mid-boot
        abandons it, as a real chip does)."""
        if _TRACE:
            print(
                f"sim {self.name} {time.monotonic():.4f} boot {reason} download={download}",
                file=sys.stderr,
                flush=True,
            )
        self.counters.resets += 1
        if self.flash.dirty:
            self.flash.save()  # a reset ends whatever flash write came before
        if not self._pace_boot(self.timing.reset_to_rom_s, booting):
            return
        with self._lock:
            self._cpu = None
            self._ram_app = None
            self._session = None
            self._slip.reset()
            self._inbox.clear()
            self._uart_baud = ROM_BAUD
            self._boot_t0 = time.monotonic()
            self.regs.watchdogs.chip_reset()
            self.regs.reset_cause = boot.reset_code(reason)
            if self.usb_jtag and reason != "poweron" and not download:
                # The USB-Serial/JTAG device re-enumerates on this reset (a
                # software, USB or watchdog reset of the chip).
                self._drop_link()
                self.present = False
                self._absent_until = time.monotonic() + self.timing.usb_reenumerate_s
        self._emit_text(boot.rom_banner(reason, download))
        if download:
            self.counters.download_boots += 1
            with self._lock:
                self._session = LoaderSession(self, _known_stubs())
                self._set_state(BoardState.DOWNLOAD)
            return
        chip_rev = (self.identity.major_rev, self.identity.minor_rev)
        outcome = boot.boot_from_flash(self.flash, reason=reason, chip_rev=chip_rev)
        if outcome.rom_stuck:
            self._stuck_line = outcome.text
            self._next_at = time.monotonic()
            self._set_state(BoardState.ROM_STUCK)
            return
        if not self._pace_boot(self.timing.bootloader_s, booting):
            return
        self._emit_text(outcome.text)
        if outcome.app is None:
            self._reboot_later("sw_sys")
            return
        self.regs.watchdogs.arm_bootloader_rwdt()  # ESP-IDF's bootloader hands over so
        self._start_cpu(outcome.app.segments, outcome.app.entry, outcome.app.elf_sha256)

    def _start_cpu(
        self, segments: list[tuple[int, bytes]], entry: int, elf_sha: str | None
    ) -> None:
        try:
            with _EMULATOR_GATE:
                if _SHUTDOWN.is_set() or self._closed:
                    return  # the process is exiting: the board is powering off
                cpu = Cpu(
                    self,
                    segments,
                    entry,
                    watchdogs=self.regs.watchdogs,
                    reset_cause=self.regs.reset_cause,
                )
        except SegmentError as exc:
            self._emit_text(f"E (0) boot: {exc}\r\n")
            self._reboot_later("sw_sys")
            return
        with self._lock:
            self._cpu = cpu
            self._cpu_rx.clear()
            self._elf_sha = elf_sha
            self.counters.app_boots += 1
            self._set_state(BoardState.APP)

    def _reboot_later(self, reason: str) -> None:
        self._reboot_reason = reason
        self._next_at = time.monotonic() + self.timing.panic_reboot_s
        self._set_state(BoardState.REBOOTING)

    def _step_timer(self) -> None:
        assert self._next_at is not None
        wait = self._next_at - time.monotonic()
        if wait > 0:
            with self._lock:
                self._wake.wait(wait)
            return
        if self.state is BoardState.ROM_STUCK:
            self._emit_text(self._stuck_line)
            self._next_at = time.monotonic() + INVALID_HEADER_INTERVAL_S
        else:
            with self._lock:
                self._power_on(self._reboot_reason)

    def _step_loader(self) -> None:
        with self._lock:
            if not self._inbox:
                self._wake.wait(0.1)
                return
            chunk = bytes(self._inbox)
            self._inbox.clear()
            session = self._session
        if self.faults.stall or session is None:
            return
        wire = self.timing.wire_s(len(chunk), self._uart_baud)
        self.pace(wire)
        session.absorb(wire)
        for frame in self._slip.feed(chunk):
            try:
                session.handle_frame(frame)
            except Disconnected:
                return
            if self._last_command in _FLASH_OP_WHOLE and self.flash.dirty:
                self.flash.save()
            with self._lock:
                if self._session is not session or self._reset_pending:
                    return  # a reset or reboot interrupted the session

    def _step_app(self) -> None:
        cpu = self._cpu
        assert cpu is not None
        with self._lock:
            if self._inbox:
                room = RX_FIFO - len(self._cpu_rx)
                self._cpu_rx.extend(self._inbox[:room])  # a full FIFO drops bytes
                self._inbox.clear()
        result = cpu.run_slice(50_000)
        if result.kind == "fault":
            assert result.fault is not None
            self.counters.panics += 1
            self._emit_text(format_panic(result.fault, self._elf_sha))
            self._cpu = None
            self._reboot_later("sw_cpu")
        elif result.kind == "reset":
            self._cpu = None
            with self._lock:
                self._power_on(result.reason or "sw_sys")
        elif result.kind == "idle":
            with self._lock:
                if not self._inbox and self._reset_pending is None and not self._en_low:
                    self._wake.wait(0.05)
