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
import re
import subprocess
import sys
import threading
import zlib
from collections.abc import Callable
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from elftools.common.exceptions import DWARFError, ELFError, ELFParseError

from fbuild_watch.crash.report import CoreState, PanicCollector, PanicReport
from fbuild_watch.crash.symbols import Location, SymbolIndex, cached_index, load_or_build
from fbuild_watch.crash.unwind import dump_registers

T = TypeVar("T")
HEX = re.compile(r"0x([0-9a-fA-F]{8})")
# kept for callers that bound what they hold per report
MAX_REPORT_ADDRS = 512


# what a broken or foreign ELF can raise from pyelftools: no decoding, said once
class DecodeError(Exception):
    """The ELF cannot be used for decoding (said once per crash)."""


_ELF_ERRORS = (ELFError, ELFParseError, DWARFError, OSError, ValueError, KeyError, IndexError)


@dataclass(frozen=True)
class Frame:
    address: int
    function: str | None  # for display: demangled, compiler clone suffix removed
    file: str | None  # full path, as addr2line prints it
    line: int | None
    source: str  # where the address came from: MEPC, RA, backtrace, abort, unwind, ...
    symbol: str | None = None  # the raw name (linkage name or .symtab), kept for JSON
    inlined: bool = False  # this is the caller an inlined function was expanded into
    short_file: str | None = None  # `file` relative to its build dir, for display

    def describe(self) -> str:
        where = f" at {self.short_file or self.file}:{self.line}" if self.file else ""
        if self.inlined:
            return f"  (inlined by) {self.function or '??'}{where}"
        return f"0x{self.address:08x}: {self.function or '??'}{where} ({self.source})"

    def as_dict(self) -> dict[str, object]:
        return {
            "address": self.address,
            "function": self.function,
            "symbol": self.symbol,
            "file": self.file,
            "line": self.line,
            "source": self.source,
            "inlined": self.inlined,
        }


class Symbolizer:
    """Code address -> frames, over one ELF's index."""

    def __init__(self, elf: Path, index: SymbolIndex | None = None) -> None:
        self.elf = Path(elf)
        self.index = index if index is not None else SymbolIndex.build(self.elf)

    def is_code(self, addr: int) -> bool:
        return self.index.is_code(addr)

    def frames(self, addr: int, source: str, *, caller: bool = False) -> list[Frame]:
        """The inline chain at `addr`, innermost first. A `caller` address
        is a return address: looked up one byte back, in the call."""
        chain = self.index.locate(addr - 1 if caller else addr)
        return [_frame(addr, loc, source, i > 0) for i, loc in enumerate(chain)]

    def lookup(self, addr: int, source: str) -> Frame | None:
        found = self.frames(addr, source)
        return found[0] if found else None

    def addresses(self, line: str) -> list[Frame]:
        """Every code address printed in `line`, decoded (data pointers,
        values and addresses outside this ELF's code are left alone)."""
        out: list[Frame] = []
        seen: set[int] = set()
        for h in HEX.findall(line):
            addr = int(h, 16)
            if addr not in seen and self.index.is_code(addr):
                seen.add(addr)
                out += self.frames(addr, "line")
        return out

    # -- background preparation ------------------------------------------------------
    @staticmethod
    def prepare_async(elf: Path, cache_dir: Path | None = None) -> Future[Symbolizer]:
        """Index `elf` on the indexing thread (once per ELF version, shared
        by every board); the future raises DecodeError for an unusable ELF."""
        return _prepare(Path(elf), cache_dir)


def _frame(addr: int, loc: Location, source: str, inlined: bool) -> Frame:
    return Frame(
        addr, loc.function, loc.file, loc.line, source, loc.symbol, inlined, loc.short_file
    )


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
        if cache_dir is not None:
            with contextlib.suppress(*_ELF_ERRORS, zlib.error, TypeError):
                return Symbolizer(elf, SymbolIndex.from_bytes(cached_index(elf, cache_dir)))
        if elf.stat().st_size < IN_THREAD_BYTES:
            return Symbolizer(elf, load_or_build(elf, cache_dir))
        return Symbolizer(elf, _index_in_child(elf, cache_dir))
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


def decode_report(report: PanicReport, symbolizer: Symbolizer | None) -> Crash:
    crash = Crash(report, elf=symbolizer.elf if symbolizer else None)
    if symbolizer is None:
        return crash
    for addr, what in report.sites:
        crash.sites += symbolizer.frames(addr, what)
    crashed = report.crashed
    crash.frames = core_frames(crashed, symbolizer)
    for n, st in report.cores.items():
        if st is not crashed:  # dual core: what the other core was doing
            crash.other_cores[n] = core_frames(st, symbolizer)
    return crash


def core_frames(st: CoreState, symbolizer: Symbolizer) -> list[Frame]:
    regs = st.registers
    frames: list[Frame] = []
    if st.backtrace:  # Xtensa: ESP-IDF unwound it; its pcs already point into the call
        for i, pc in enumerate(st.backtrace):
            frames += symbolizer.frames(pc, "PC" if i == 0 else "backtrace")
    elif "MEPC" in regs:  # RISC-V: unwind with the ELF's CFI
        index = symbolizer.index
        unwound = index.unwinder.unwind(
            regs["MEPC"], dump_registers(regs), st.stack_base, bytes(st.stack), index.is_code
        )
        for f in unwound:
            frames += symbolizer.frames(f.pc, f.how, caller=f.caller)
    elif "PC" in regs:
        frames += symbolizer.frames(regs["PC"], "PC")
    return frames


# -- the detector a board session feeds ------------------------------------------------
class CrashDetector:
    """Feed every serial line. With `on_crash`, each panic is decoded on a
    worker thread and handed over when done (feed never waits); without it,
    `feed` returns `(reason, frames)` when a report ends (decoded inline)."""

    def __init__(
        self,
        elf: Path | None = None,
        *,
        on_crash: Callable[[Crash], None] | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        self.on_crash = on_crash
        self.cache_dir = cache_dir
        self._collector = PanicCollector(self._on_report)
        self._finished: Crash | None = None
        self._elf: Path | None = None
        self._symbolizer: Future[Symbolizer] | None = None
        self.elf = elf

    @property
    def elf(self) -> Path | None:
        return self._elf

    @elf.setter
    def elf(self, elf: Path | None) -> None:
        """Point decoding at a new ELF: its index starts building now, in
        the background (call after each build)."""
        self._elf = Path(elf) if elf is not None else None
        self._symbolizer = (
            Symbolizer.prepare_async(self._elf, self.cache_dir) if self._elf is not None else None
        )

    def set_elf(self, elf: Path | None, cache_dir: Path | None = None) -> None:
        self.cache_dir = cache_dir
        self.elf = elf

    @property
    def ready(self) -> bool:
        """The ELF's index is built: decoding will not wait for it."""
        return self._symbolizer is None or self._symbolizer.done()

    def feed(self, line: str) -> tuple[str, list[Frame]] | None:
        self._collector.feed(line)
        done, self._finished = self._finished, None
        if done is None:
            return None
        return done.reason, done.frames

    def flush(self) -> None:
        """The output stopped (port closed): decode what was collected."""
        self._collector.finish()

    def addresses(self, line: str) -> list[Frame]:
        """Code addresses in any line, decoded if the ELF's index is ready
        ([] while it is still being built: never waits)."""
        fut = self._symbolizer
        if "0x" not in line or fut is None or not fut.done() or fut.cancelled():
            return []
        if fut.exception() is not None:
            return []
        return fut.result().addresses(line)

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
                return decode_report(report, fut.result())
            except CancelledError:  # superseded by a newer build's ELF
                if fut is self._symbolizer and self._elf is not None:
                    self.elf = self._elf
            except DecodeError as exc:
                return Crash(report, elf=self._elf, error=str(exc))
            except Exception as exc:  # a decoder bug must not lose the crash
                return Crash(report, elf=self._elf, error=f"decoder failed: {exc!r}")
        return Crash(report, elf=self._elf, error="the ELF kept changing")

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


__all__ = [
    "Crash",
    "CrashDetector",
    "DecodeError",
    "Frame",
    "Symbolizer",
    "decode_report",
    "load_symbolizer",
]
