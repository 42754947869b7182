"""Crash decoding: ESP-IDF panic reports in serial output -> reason, core,
registers and the backtrace as function at file:line, from the ELF of the
last build.

The ELF's index (`crash/symbols.py`) is built in the background when the
ELF is set (after each build) and cached on disk by its SHA-256; reports are
collected on the serial reader's thread (`crash/report.py`) and decoded on a
worker thread, so the reader never waits for DWARF. Only addresses inside
the ELF's executable sections are decoded, so printed pointers and data
values are never mistaken for code.
"""

from __future__ import annotations

import atexit
import contextlib
import queue
import subprocess
import sys
import threading
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from elftools.common.exceptions import DWARFError, ELFError, ELFParseError

from fbuild_watch.crash import coredump
from fbuild_watch.crash.appsha import ShaCheck, mismatch
from fbuild_watch.crash.coredump import CoreDumpError, CoreDumpLines, CoreDumpReport
from fbuild_watch.crash.frames import AddressNote, Frame, Symbols
from fbuild_watch.crash.report import CoreState, PanicCollector, PanicReport
from fbuild_watch.crash.rom import RomSymbols
from fbuild_watch.crash.symbols import SymbolIndex, cache_path, elf_sha256, load_or_build
from fbuild_watch.crash.unwind import dump_registers

T = TypeVar("T")
# kept for callers that bound what they hold per report
MAX_REPORT_ADDRS = 512


# what a broken or foreign ELF can raise from pyelftools: no decoding, said once
class DecodeError(Exception):
    """The ELF cannot be used for decoding (said once per crash)."""


_ELF_ERRORS = (ELFError, ELFParseError, DWARFError, OSError, ValueError, KeyError, IndexError)


class Symbolizer:
    """Code address -> frames, over one ELF's index."""

    def __init__(
        self, elf: Path, index: SymbolIndex | None = None, sha256: str | None = None
    ) -> None:
        self.elf = Path(elf)
        self.index = index if index is not None else SymbolIndex.build(self.elf)
        # the ELF file's SHA-256, as the app descriptor carries it
        self.sha256 = sha256 if sha256 is not None else elf_sha256(self.elf)
        self.symbols = Symbols(app=self.index)

    def is_code(self, addr: int) -> bool:
        return self.index.is_code(addr)

    def frames(self, addr: int, source: str, *, caller: bool = False) -> list[Frame]:
        """The inline chain at `addr`, innermost first. A `caller` address
        is a return address: looked up one byte back, in the call."""
        if not self.index.is_code(addr - 1 if caller else addr):
            return []
        return self.symbols.frames(addr, source, caller=caller)

    def lookup(self, addr: int, source: str) -> Frame | None:
        found = self.frames(addr, source)
        return found[0] if found else None

    def addresses(self, line: str) -> list[AddressNote]:
        """Every code address of this ELF printed in `line`, decoded (data
        pointers, values and addresses outside its code are left alone)."""
        return self.symbols.addresses(line)

    # -- background preparation ------------------------------------------------------
    @staticmethod
    def prepare_async(elf: Path, cache_dir: Path | None = None) -> Future[Symbolizer]:
        """Index `elf` on the indexing thread (once per ELF version, shared
        by every board); the future raises DecodeError for an unusable ELF."""
        return _prepare(Path(elf), cache_dir)


# below this an ELF's index takes well under 0.1 s: built in the indexing
# thread, without starting a process (test firmware). Anything larger (the
# example's 0.9 MB ELF takes ~0.6 s) goes to a niced child process, so it
# never holds the GIL while a freshly deployed board prints its first lines.
IN_THREAD_BYTES = 128 << 10


class _Worker:
    """One daemon thread running jobs in order: quitting never waits for an
    index being built or a crash being decoded."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, job: Callable[[], T]) -> Future[T]:
        fut: Future[T] = Future()
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
        self._jobs.put((fut, job))
        return fut

    def _run(self) -> None:
        while True:
            fut, job = self._jobs.get()
            if not fut.set_running_or_notify_cancel():
                continue  # superseded before it started
            try:
                fut.set_result(job())
            except BaseException as exc:  # kept in the future, raised to its reader
                fut.set_exception(exc)


_INDEXER = _Worker("elf-index")
_DECODER = _Worker("crash-decode")
_prepared: dict[tuple[str, int, int], Future[Symbolizer]] = {}
_prepared_lock = threading.Lock()
_children: set[subprocess.Popen[bytes]] = set()


def _prepare(elf: Path, cache_dir: Path | None) -> Future[Symbolizer]:
    try:
        st = elf.stat()
    except OSError:
        done: Future[Symbolizer] = Future()
        done.set_exception(DecodeError(f"{elf}: ELF not found"))
        return done
    key = (str(elf.resolve()), st.st_size, st.st_mtime_ns)
    with _prepared_lock:
        fut = _prepared.get(key)
        if fut is None:
            # one version per path is kept: the previous build's index goes
            # (and is not built at all if it has not started yet)
            for old in [k for k in _prepared if k[0] == key[0]]:
                _prepared.pop(old).cancel()
            fut = _prepared[key] = _INDEXER.submit(lambda: _build(elf, cache_dir))
        return fut


def _build(elf: Path, cache_dir: Path | None) -> Symbolizer:
    """The cached index, else one built by a child process (a small ELF's
    right here); a DecodeError says why an ELF cannot be used."""
    try:
        sha = elf_sha256(elf)
        if cache_dir is not None:
            with contextlib.suppress(*_ELF_ERRORS, zlib.error, TypeError):
                cached = cache_path(cache_dir, sha).read_bytes()
                return Symbolizer(elf, SymbolIndex.from_bytes(cached), sha)
        if elf.stat().st_size < IN_THREAD_BYTES:
            return Symbolizer(elf, load_or_build(elf, cache_dir), sha)
        return Symbolizer(elf, _index_in_child(elf, cache_dir), sha)
    except _ELF_ERRORS as exc:  # said with the crash: "not decoded: <why>"
        raise DecodeError(f"{elf}: cannot read its symbols ({exc})") from exc


def _index_in_child(elf: Path, cache_dir: Path | None) -> SymbolIndex:
    cmd = [sys.executable, "-m", "fbuild_watch.crash.indexer", str(elf)]
    cmd += [str(cache_dir)] if cache_dir is not None else []
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError:  # no interpreter to start (a frozen app): index here
        return load_or_build(elf, cache_dir)
    _children.add(proc)
    try:
        out, err = proc.communicate()
    finally:
        _children.discard(proc)
    if proc.returncode != 0:
        why = err.decode(errors="replace").strip().splitlines()
        raise DecodeError(f"{elf}: cannot read its symbols ({why[-1] if why else proc.returncode})")
    try:
        return SymbolIndex.from_bytes(out)
    except (ValueError, KeyError, TypeError, zlib.error) as exc:
        raise DecodeError(f"{elf}: the symbol indexer's output was unreadable ({exc})") from exc


@atexit.register
def _stop_children() -> None:
    for proc in list(_children):
        with contextlib.suppress(OSError):
            proc.kill()


def load_symbolizer(elf: Path | None) -> Symbolizer | None:
    """The symbolizer for `elf`, built now if need be (blocks)."""
    if elf is None or not Path(elf).is_file():
        return None
    try:
        return _prepare(Path(elf), None).result()
    except DecodeError:
        return None


# -- decoding a report -----------------------------------------------------------------
@dataclass
class Crash:
    """A decoded panic: what the `crash` event carries."""

    report: PanicReport
    frames: list[Frame] = field(default_factory=list)
    sites: list[Frame] = field(default_factory=list)  # abort PC, ESP_ERROR_CHECK caller, ...
    elf: Path | None = None
    error: str | None = None  # why nothing was decoded (no ELF, unreadable ELF)
    other_cores: dict[int, list[Frame]] = field(default_factory=dict)

    @property
    def reason(self) -> str:
        return self.report.reason

    def decoded(self) -> list[str]:
        """Text lines for the views: the crash site first, then the backtrace."""
        if self.error:
            return [f"(not decoded: {self.error})"]
        out = [f"crash site {f.describe()}" if not f.inlined else f.describe() for f in self.sites]
        out += [f.describe() for f in self.frames]
        for core, frames in self.other_cores.items():
            out += [f"core {core}:", *(f"  {f.describe()}" for f in frames)]
        return out

    def as_event_data(self) -> dict[str, Any]:
        rep = self.report
        return {
            "reason": rep.reason,
            "kind": rep.kind,
            "core": rep.core,
            "registers": rep.crashed.registers,
            "details": rep.details,
            "sites": [f.as_dict() for f in self.sites],
            "frames": [f.as_dict() for f in self.frames],
            "decoded": self.decoded(),
            "elf_sha256": rep.elf_sha256,
            "corrupted": rep.crashed.corrupted,
            "error": self.error,
            "other_cores": {
                str(n): [f.as_dict() for f in frames] for n, frames in self.other_cores.items()
            },
        }


def decode_report(report: PanicReport, symbols: Symbols | Symbolizer | None) -> Crash:
    """Decode a panic with one ELF (a Symbolizer) or every symbol source of
    a board (Symbols: app, bootloader, ROM)."""
    if isinstance(symbols, Symbolizer):
        crash = Crash(report, elf=symbols.elf)
        symbols = symbols.symbols
    else:
        crash = Crash(report)
    if symbols is None:
        return crash
    for addr, what in report.sites:
        crash.sites += symbols.frames(addr, what)
    crashed = report.crashed
    crash.frames = core_frames(crashed, symbols)
    for n, st in report.cores.items():
        if st is not crashed:  # dual core: what the other core was doing
            crash.other_cores[n] = core_frames(st, symbols)
    return crash


def core_frames(st: CoreState, symbols: Symbols) -> list[Frame]:
    regs = st.registers
    frames: list[Frame] = []
    if st.backtrace:  # Xtensa: ESP-IDF unwound it; its pcs already point into the call
        for i, pc in enumerate(st.backtrace):
            frames += symbols.frames(pc, "PC" if i == 0 else "backtrace")
    elif "MEPC" in regs and symbols.app is not None:  # RISC-V: unwind with the ELF's CFI
        unwound = symbols.app.unwinder.unwind(
            regs["MEPC"], dump_registers(regs), st.stack_base, bytes(st.stack), symbols.is_code
        )
        for f in unwound:
            frames += symbols.frames(f.pc, f.how, caller=f.caller)
    elif "PC" in regs:
        frames += symbols.frames(regs["PC"], "PC")
    return frames


# -- the detector a board session feeds ------------------------------------------------
class CrashDetector:
    """Feed every serial line (`take` a batch, or `feed` one).

    Panics: with `on_crash`, each is decoded on a worker thread and handed
    over when done (feeding never waits); without it, `feed` returns
    `(reason, frames)` when a report ends (decoded inline).
    UART core dumps: their base64 lines are left out of what `take` returns;
    each dump is saved under `coredump_dir` and decoded on the worker, then
    handed to `on_coredump`.
    Warnings (`on_warning`, any thread): the board runs another build than
    the ELF (once per boot), a bootloader ELF or ROM script that cannot be
    read (once per set_elf).
    `on_reply` (reader thread) gets bytes to send to the board: Enter at
    ESP-IDF's "Press Enter to print core dump to UART..." prompt."""

    def __init__(
        self,
        elf: Path | None = None,
        *,
        on_crash: Callable[[Crash], None] | None = None,
        cache_dir: Path | None = None,
        on_coredump: Callable[[CoreDumpReport], None] | None = None,
        coredump_dir: Path | None = None,
        on_warning: Callable[[str], None] | None = None,
        on_reply: Callable[[bytes], None] | None = None,
    ) -> None:
        self.on_crash = on_crash
        self.on_coredump = on_coredump
        self.on_warning = on_warning
        self.on_reply = on_reply
        self.cache_dir = cache_dir
        self.coredump_dir = coredump_dir
        self.last_coredump: CoreDumpReport | None = None  # without on_coredump
        self._collector = PanicCollector(self._on_report)
        self._dumps = CoreDumpLines(self._on_dump)
        self._sha = ShaCheck()
        self._finished: Crash | None = None
        self._elf: Path | None = None
        self._symbolizer: Future[Symbolizer] | None = None
        self._boot: Future[Symbolizer] | None = None
        self._rom: Future[RomSymbols] | None = None
        self._rom_scripts: tuple[Path, ...] = ()
        # the Symbols over the ready sources: (the futures, their results, it, all settled)
        self._ready: tuple[tuple[object, ...], tuple[object, ...], Symbols | None, bool] = (
            (),
            (),
            None,
            False,
        )
        self._gen = 0  # bumped by every new app ELF: late answers for an older one are dropped
        self._sources_gen = 0  # the same for the bootloader ELF and ROM scripts
        self.elf = elf

    @property
    def elf(self) -> Path | None:
        return self._elf

    @elf.setter
    def elf(self, elf: Path | None) -> None:
        """Point decoding at a new ELF: its index starts building now, in
        the background (call after each build)."""
        path = Path(elf) if elf is not None else None
        fut = Symbolizer.prepare_async(path, self.cache_dir) if path is not None else None
        if fut is not None and fut is self._symbolizer:
            return  # the same ELF, unchanged: this boot's SHA check stands
        self._elf, self._symbolizer = path, fut
        self._gen += 1
        self._sha.reset()

    def set_elf(
        self,
        elf: Path | None,
        cache_dir: Path | None = None,
        *,
        bootloader_elf: Path | None = None,
        rom_scripts: Sequence[Path] = (),
    ) -> None:
        """The app ELF, and the other symbol sources for addresses outside
        it: the bootloader's ELF, ESP-IDF's ROM linker scripts (see
        crash.rom.rom_scripts). Each is read in the background."""
        self.cache_dir = cache_dir
        self.elf = elf
        boot = Symbolizer.prepare_async(Path(bootloader_elf), cache_dir) if bootloader_elf else None
        scripts = tuple(Path(p) for p in rom_scripts)
        if boot is self._boot and scripts == self._rom_scripts:
            return  # called again with the same sources (before and after a deploy)
        self._sources_gen += 1
        gen = self._sources_gen
        self._boot, self._rom_scripts, self._rom = boot, scripts, None
        if boot is not None:
            boot.add_done_callback(lambda f: self._said(f, gen, "bootloader ELF"))
        if scripts:
            self._rom = _INDEXER.submit(lambda: _load_rom(list(scripts)))
            self._rom.add_done_callback(lambda f: self._said(f, gen, "ROM symbols"))

    def _said(self, fut: Future[Any], gen: int, what: str) -> None:
        if gen != self._sources_gen or fut.cancelled() or self.on_warning is None:
            return
        exc = fut.exception()
        if exc is not None:
            self.on_warning(f"{what} not used: {exc}")

    @property
    def ready(self) -> bool:
        """The ELF's index is built: decoding will not wait for it."""
        return self._symbolizer is None or self._symbolizer.done()

    # -- feeding -------------------------------------------------------------------------
    def take(self, lines: list[str]) -> list[str]:
        """Feed a batch of lines; the ones the views should show (a core
        dump's base64 body is left out: its decoded event stands for it)."""
        return [line for line in lines if not self._feed(line)]

    def feed(self, line: str) -> tuple[str, list[Frame]] | None:
        self._feed(line)
        done, self._finished = self._finished, None
        if done is None:
            return None
        return done.reason, done.frames

    def _feed(self, line: str) -> bool:
        """True when the line belongs to a core dump's body."""
        if self._dumps.feed(line):
            return True
        if self.on_reply is not None and coredump.PROMPT in line:
            self.on_reply(b"\n")  # the dump starts at once instead of after a delay
        printed = self._sha.printed(line)
        if printed is not None:
            self._check_sha(printed)
        self._collector.feed(line)
        return False

    def flush(self) -> None:
        """The output stopped (port closed): decode what was collected."""
        self._collector.finish()
        self._dumps.finish()

    # -- symbols -------------------------------------------------------------------------
    def symbols(self, *, wait: bool = False) -> Symbols | None:
        """Every symbol source that is ready (all of them with `wait`; a
        DecodeError when the app ELF cannot be used)."""
        futs = (self._symbolizer, self._boot, self._rom)
        key, parts, found, final = self._ready  # one read: other threads replace it whole
        if final and key == futs:
            return found  # every source settled: the per-line path is this test
        app = self._result(self._symbolizer, wait, raise_=True)
        boot = self._result(self._boot, wait)
        rom = self._result(self._rom, wait)
        now = (app, boot, rom)
        if app is None and boot is None and rom is None:
            found = None
        elif found is None or key != futs or parts != now:
            found = Symbols(app.index if app else None, boot.index if boot else None, rom)
        self._ready = (futs, now, found, all(f is None or f.done() for f in futs))
        return found

    @staticmethod
    def _result(fut: Future[T] | None, wait: bool, *, raise_: bool = False) -> T | None:
        if fut is None or (not wait and not fut.done()):
            return None
        try:
            return fut.result()
        except CancelledError:
            return None
        except DecodeError:
            if raise_ and wait:
                raise
            return None
        except OSError:
            return None

    def addresses(self, line: str) -> list[AddressNote]:
        """Code addresses in any line, decoded with every ready source ([]
        while the app ELF's index is still being built: never waits)."""
        if "0x" not in line and "0X" not in line:
            return []
        try:
            found = self.symbols()
        except DecodeError:
            return []
        return found.addresses(line) if found is not None else []

    # -- the board's build ---------------------------------------------------------------
    def _check_sha(self, printed: str) -> None:
        fut, gen, on_warning = self._symbolizer, self._gen, self.on_warning
        if fut is None or on_warning is None:
            return

        def compare(f: Future[Symbolizer]) -> None:
            if gen != self._gen or f.cancelled() or f.exception() is not None:
                return
            sym = f.result()
            msg = mismatch(printed, sym.sha256, sym.elf)
            if msg is not None:
                on_warning(msg)

        fut.add_done_callback(compare)  # now if built, else when it is

    # -- panics --------------------------------------------------------------------------
    def _on_report(self, report: PanicReport) -> None:
        if self.on_crash is None:
            self._finished = self._decode(report)
            return
        on_crash = self.on_crash
        _DECODER.submit(lambda: on_crash(self._decode(report)))

    def _decode(self, report: PanicReport) -> Crash:
        """Wait for the current ELF's index (a newer build's, if one came
        meanwhile) and decode; a crash is reported even when that fails."""
        for _attempt in range(3):
            fut = self._symbolizer
            if fut is None:
                return Crash(report, error="no ELF to decode with")
            try:
                fut.result()
                crash = decode_report(report, self.symbols(wait=True))
                crash.elf = self._elf
                return crash
            except CancelledError:  # superseded by a newer build's ELF
                if fut is self._symbolizer and self._elf is not None:
                    self.elf = self._elf
            except DecodeError as exc:
                return Crash(report, elf=self._elf, error=str(exc))
            except Exception as exc:  # a decoder bug must not lose the crash
                return Crash(report, elf=self._elf, error=f"decoder failed: {exc!r}")
        return Crash(report, elf=self._elf, error="the ELF kept changing")

    # -- core dumps ----------------------------------------------------------------------
    def _on_dump(self, lines: list[str], incomplete: str | None) -> None:
        directory = self.coredump_dir
        if self.on_coredump is None:
            self.last_coredump = self._decode_dump(lines, incomplete, directory)
            return
        on_coredump = self.on_coredump
        _DECODER.submit(lambda: on_coredump(self._decode_dump(lines, incomplete, directory)))

    def _decode_dump(
        self, lines: list[str], incomplete: str | None, directory: Path | None
    ) -> CoreDumpReport:
        """Save, read and decode one dump; every failure is said in the
        report, which is always made."""
        rep = CoreDumpReport(len(lines), elf=self._elf)
        if directory is not None:
            try:
                rep.file = coredump.save(lines, directory)
            except OSError as exc:
                rep.save_error = f"{directory}: {exc.strerror or exc}"
        try:
            image = coredump.parse(coredump.decode_base64(lines))
        except CoreDumpError as exc:
            rep.error = f"incomplete: {incomplete}" if incomplete else str(exc)
            return rep
        if incomplete:
            rep.warnings.append(f"incomplete: {incomplete}")
        rep.chip, rep.reason = image.chip, image.panic_reason
        if image.checksum_ok is False:
            rep.warnings.append("the dump's checksum does not match: some bytes were garbled")
        try:
            symbols = self.symbols(wait=True) or Symbols()
        except DecodeError as exc:
            rep.error = str(exc)
            symbols = Symbols()
        app = self._result(self._symbolizer, True)
        if app is None and rep.error is None:
            rep.error = "no ELF to decode with"
        if app is not None and image.app_sha256:
            msg = mismatch(image.app_sha256.lower(), app.sha256, app.elf)
            if msg is not None:
                rep.warnings.append(msg.replace("the board runs", "the dump is of"))
        try:
            rep.tasks = coredump.task_traces(image, symbols)
        except Exception as exc:  # a decoder bug must not lose the dump
            rep.error = f"decoder failed: {exc!r}"
        return rep

    # -- what the older tests look at ------------------------------------------------
    @property
    def _active(self) -> bool:
        return self._collector.report is not None

    @property
    def _reason(self) -> str:
        rep = self._collector.report
        return rep.reason if rep else ""

    @property
    def _addrs(self) -> list[int]:
        rep = self._collector.report
        if rep is None:
            return []
        out = [v for st in rep.cores.values() for v in (*st.registers.values(), *st.backtrace)]
        return out[:MAX_REPORT_ADDRS]


def _load_rom(scripts: list[Path]) -> RomSymbols:
    try:
        return RomSymbols.load(scripts)
    except OSError as exc:
        raise DecodeError(f"{exc.filename}: cannot read ({exc.strerror})") from exc


__all__ = [
    "AddressNote",
    "Crash",
    "CrashDetector",
    "DecodeError",
    "Frame",
    "Symbolizer",
    "Symbols",
    "decode_report",
    "load_symbolizer",
]
