"""Code address -> function, file:line and inline chain, the way
`addr2line -fiaC` answers, from one index of the ELF built once.

The index (executable ranges, symbol table, line rows, DWARF function
ranges with their inline nesting) takes seconds to build on a real ESP-IDF
ELF, so it is built off the serial reader's thread and cached on disk keyed
by the ELF's SHA-256; a lookup is then a few bisections.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from elftools.dwarf.compileunit import CompileUnit
from elftools.dwarf.die import DIE
from elftools.dwarf.dwarfinfo import DWARFInfo
from elftools.dwarf.ranges import BaseAddressEntry, RangeEntry
from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from fbuild_watch.crash.names import demangle, display_name
from fbuild_watch.crash.unwind import Unwinder, cfi_table
from fbuild_watch.fsutil import atomic_write

INDEX_VERSION = 8
KEEP_CACHED = 4  # indexes kept in the cache dir (the current ELF's and older ones)
# DIEs that can hold code-bearing functions; every other subtree (types,
# variables, parameters) is skipped by its sibling pointer, unparsed.
_SCOPES = frozenset(
    {
        "DW_TAG_compile_unit",
        "DW_TAG_partial_unit",
        "DW_TAG_subprogram",
        "DW_TAG_inlined_subroutine",
        "DW_TAG_lexical_block",
        "DW_TAG_namespace",
        "DW_TAG_class_type",
        "DW_TAG_structure_type",
        "DW_TAG_union_type",
    }
)
_FUNCS = ("DW_TAG_subprogram", "DW_TAG_inlined_subroutine")
_NO_FILE = -1
# DW_LANG_* whose DW_AT_name is the symbol name (BFD's non_mangled): C89, C,
# Ada83, Cobol74/85, Fortran77, Pascal83, C99, Ada95, PLI, UPC, C11, MIPS asm
_NON_MANGLED = frozenset({0x1, 0x2, 0x3, 0x5, 0x6, 0x7, 0x9, 0xC, 0xD, 0xF, 0x12, 0x1D, 0x8001})


@dataclass(frozen=True)
class Location:
    """One level of an address's inline chain, innermost first."""

    symbol: str | None  # raw name (linkage or DWARF name, else .symtab)
    file: str | None  # full path, as addr2line prints it
    line: int | None
    short_file: str | None = None  # relative to its unit's build dir when inside it

    @property
    def function(self) -> str | None:
        """Display name: demangled, clone suffixes removed."""
        return display_name(self.symbol) if self.symbol else None


class SymbolIndex:
    """Everything a lookup needs, as plain lists (what the disk cache holds)."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.strings: list[str] = doc["strings"]
        self.ranges: list[tuple[int, int]] = [(lo, hi) for lo, hi in doc["ranges"]]
        syms = doc["syms"]  # [start, size, name, object file or -1] sorted by start
        self.sym_start: list[int] = [s[0] for s in syms]
        self.sym_size: list[int] = [s[1] for s in syms]
        self.sym_name: list[int] = [s[2] for s in syms]
        self.sym_file: list[int] = [s[3] for s in syms]
        self.row_addr: list[int] = doc["row_addr"]
        self.row_file: list[int] = doc["row_file"]
        self.row_line: list[int] = doc["row_line"]
        # functions: [lo, hi, entry] sorted by lo;
        # entry = [name, parent, call_file, call_line, first range's lo]
        funcs = doc["funcs"]
        self.fn_lo: list[int] = [f[0] for f in funcs]
        self.fn_hi: list[int] = [f[1] for f in funcs]
        self.fn_entry: list[int] = [f[2] for f in funcs]
        self.entries: list[list[int]] = doc["entries"]
        self.machine: str = doc["machine"]
        self.short: dict[int, str] = {int(k): v for k, v in doc["short"].items()}
        self.unwinder = Unwinder(doc["cfi"])
        self.doc = doc

    # -- building ----------------------------------------------------------------
    @classmethod
    def build(cls, elf_path: Path) -> SymbolIndex:
        with elf_path.open("rb") as f:
            elf = ELFFile(f)
            builder = _Builder()
            builder.sections(elf)
            builder.machine = str(elf["e_machine"])
            if elf.has_dwarf_info():
                dwarf = elf.get_dwarf_info()
                for cu in dwarf.iter_CUs():
                    builder.unit(dwarf, cu)
                if builder.machine == "EM_RISCV":  # Xtensa prints its own backtrace
                    builder.cfi = cfi_table(dwarf)
            return cls(builder.finish())

    # -- cache ---------------------------------------------------------------------
    # One JSON line of scalars and layout, then each list (and dict, as pairs)
    # in pieces of <= MAX_PIECE_BYTES, one per line: json.loads holds the GIL
    # for a whole call, and the watch process loads an index while its serial
    # readers run (one 5 MB parse, a 20 MB ELF's, would stall them ~65 ms).
    def to_bytes(self) -> bytes:
        head: dict[str, Any] = {}
        layout: list[list[Any]] = []
        pieces: list[bytes] = []
        for key, value in self.doc.items():
            if isinstance(value, list | dict):
                items = list(value.items()) if isinstance(value, dict) else value
                mine = _pieces(items)
                layout.append([key, len(mine), "dict" if isinstance(value, dict) else "list"])
                pieces += mine
            else:
                head[key] = value
        head["pieces"] = layout
        return zlib.compress(b"\n".join([_dumps(head), *pieces]), 1)

    @classmethod
    def from_bytes(cls, data: bytes) -> SymbolIndex:
        lines = zlib.decompress(data).split(b"\n")
        doc = json.loads(lines[0])
        if not isinstance(doc, dict) or doc.get("version") != INDEX_VERSION:
            raise ValueError("index version mismatch")
        pos = 1
        for key, count, kind in doc.pop("pieces"):
            items: list[Any] = []
            for line in lines[pos : pos + count]:
                part = json.loads(line)
                if not isinstance(part, list):
                    raise ValueError("index piece is not a list")
                items += part
            pos += count
            doc[key] = {str(k): v for k, v in items} if kind == "dict" else items
        if pos != len(lines):  # cut short or padded: never a partial line table
            raise ValueError("index pieces do not match its layout")
        return cls(doc)

    # -- lookups -------------------------------------------------------------------
    def is_code(self, addr: int) -> bool:
        return any(lo <= addr < hi for lo, hi in self.ranges)

    def symtab_name(self, addr: int) -> str | None:
        """addr2line's fallback: the nearest function/label symbol at or
        below `addr` in the same executable range."""
        i = self._symbol(addr)
        return self.strings[self.sym_name[i]] if i is not None else None

    def _symbol(self, addr: int) -> int | None:
        i = bisect.bisect_right(self.sym_start, addr) - 1
        if i < 0:
            return None
        for lo, hi in self.ranges:  # and in the same section
            if lo <= addr < hi:
                return i if lo <= self.sym_start[i] else None
        return None

    def _path(self, fid: int) -> str | None:
        return self.strings[fid] if fid >= 0 else None

    def _short(self, fid: int) -> str | None:
        return self.short.get(fid, self.strings[fid]) if fid >= 0 else None

    def function_at(self, addr: int) -> int | None:
        """The innermost DWARF function (inlined or not) whose range holds
        `addr`: the smallest range, as addr2line's "best fit"."""
        i = bisect.bisect_right(self.fn_lo, addr) - 1
        best: int | None = None
        best_size = 0
        # ranges nest (inline inside outer), so the holder is among the
        # nearest starts; an outer function may start far before, so scan
        # back until a function that ends before addr and is not nested.
        scanned = 0
        while i >= 0 and scanned < 4096:
            lo, hi = self.fn_lo[i], self.fn_hi[i]
            if lo <= addr < hi and (best is None or hi - lo < best_size):
                best, best_size = self.fn_entry[i], hi - lo
            if best is not None and self.entries[self.fn_entry[i]][1] == -1 and lo <= addr < hi:
                break  # reached the outermost function holding addr
            i -= 1
            scanned += 1
        return best

    def locate(self, addr: int) -> list[Location]:
        """The inline chain at `addr`, innermost first (addr2line -i order);
        empty when `addr` is not code."""
        if not self.is_code(addr):
            return []
        j = bisect.bisect_right(self.row_addr, addr) - 1
        fid = self.row_file[j] if j >= 0 else _NO_FILE
        line = self.row_line[j] if fid != _NO_FILE else None
        entry = self.function_at(addr)
        if fid == _NO_FILE and (i := self._symbol(addr)) is not None:
            fid = self.sym_file[i]  # no line: at least the object file
        if entry is None:
            return [Location(self.symtab_name(addr), self._path(fid), line, self._short(fid))]
        chain: list[Location] = []
        while entry != -1:
            name, parent, call_file, call_line, first_lo = self.entries[entry]
            sym = self.strings[name] if name >= 0 else None
            if not chain and first_lo >= 0:
                # a C++ function without a linkage name: addr2line asks
                # .symtab and takes its name when it starts where the
                # function's first range does (`_ZL...` statics, clones)
                i = bisect.bisect_right(self.sym_start, addr) - 1
                tab = self.symtab_name(addr)
                if tab is not None and (sym is None or self.sym_start[i] == first_lo):
                    sym = tab
            chain.append(Location(sym, self._path(fid), line, self._short(fid)))
            fid = call_file
            line = call_line if call_file >= 0 else None
            entry = parent
        return chain


class _Builder:
    def __init__(self) -> None:
        self.strings: list[str] = []
        self._ids: dict[str, int] = {}
        self.ranges: list[tuple[int, int]] = []
        self.syms: list[tuple[int, int, int, int]] = []
        self.rows: list[tuple[int, int, int, int]] = []  # addr, order, file, line
        self.funcs: list[tuple[int, int, int]] = []
        self.entries: list[list[int]] = []
        self.machine = ""
        self.cfi: list[list[Any]] = []
        self.short: dict[int, str] = {}

    def sid(self, s: str) -> int:
        i = self._ids.get(s)
        if i is None:
            i = self._ids[s] = len(self.strings)
            self.strings.append(s)
        return i

    def sections(self, elf: ELFFile) -> None:
        for sec in elf.iter_sections():
            if sec["sh_flags"] & SH_FLAGS.SHF_EXECINSTR and sec["sh_size"] and sec["sh_addr"]:
                self.ranges.append((sec["sh_addr"], sec["sh_addr"] + sec["sh_size"]))
        self.ranges.sort()
        for sec in elf.iter_sections():
            if not isinstance(sec, SymbolTableSection):
                continue
            file_id = -1  # the STT_FILE the local symbols that follow come from
            for sym in sec.iter_symbols():
                kind = sym["st_info"]["type"]
                name = sym.name
                if kind == "STT_FILE":
                    file_id = self.sid(name) if name else -1
                    continue
                if kind not in ("STT_FUNC", "STT_NOTYPE") or not name or not sym["st_value"]:
                    continue
                if name.startswith(("$", ".L")) or not self._in_code(sym["st_value"]):
                    continue  # mapping symbols and local labels name no function
                if not isinstance(sym["st_shndx"], int):
                    continue  # SHN_ABS linker-script markers are in no section
                if (
                    kind == "STT_NOTYPE"
                    and sym["st_size"] == 0
                    and sym["st_info"]["bind"] == "STB_LOCAL"
                    and sym["st_other"]["visibility"] == "STV_HIDDEN"
                ):
                    continue
                # addr2line names a function's object file when nothing else
                # does (binary blobs without DWARF): for local symbols only,
                # the globals come after every file's locals
                local = sym["st_info"]["bind"] == "STB_LOCAL"
                self.syms.append(
                    (sym["st_value"], sym["st_size"], self.sid(name), file_id if local else -1)
                )
        # several names at one address: the first sized one in the table
        # (the lookup takes the last of equal starts), as addr2line
        order = {id(s): i for i, s in enumerate(self.syms)}
        self.syms.sort(key=lambda s: (s[0], s[1] > 0, -order[id(s)]))

    def _in_code(self, addr: int) -> bool:
        return any(lo <= addr < hi for lo, hi in self.ranges)

    # -- one compile unit ----------------------------------------------------------
    def unit(self, dwarf: DWARFInfo, cu: CompileUnit) -> None:
        top = cu.get_top_DIE()
        comp_dir = _str(top.attributes.get("DW_AT_comp_dir"))
        files = self._line_table(dwarf, cu, comp_dir)
        base = _int(top.attributes.get("DW_AT_low_pc")) or 0
        lang = _int(top.attributes.get("DW_AT_language"))
        self._walk(dwarf, cu, top, -1, files=files, base=base, c_like=lang in _NON_MANGLED)

    def _line_table(self, dwarf: DWARFInfo, cu: CompileUnit, comp_dir: str) -> list[int]:
        lp = dwarf.line_program_for_CU(cu)
        if lp is None:
            return []
        v5 = lp.header["version"] >= 5
        dirs = [d.decode(errors="replace") for d in lp["include_directory"]]
        files: list[int] = []
        for fe in lp["file_entry"]:
            name = fe.name.decode(errors="replace")
            if not name.startswith("/"):
                di = fe.dir_index if v5 else fe.dir_index - 1
                d = dirs[di] if 0 <= di < len(dirs) else ""
                if d and not d.startswith("/") and comp_dir:
                    d = f"{comp_dir}/{d}"
                elif not d:
                    d = comp_dir
                name = f"{d}/{name}" if d else name
            fid = self.sid(name)
            if comp_dir and name.startswith(comp_dir.rstrip("/") + "/"):
                self.short[fid] = name[len(comp_dir.rstrip("/")) + 1 :]
            files.append(fid)
        # file indices in rows and DW_AT_call_file: 1-based before DWARF 5
        table = files if v5 else [_NO_FILE, *files]
        seq: list[tuple[int, int, int, int]] = []  # the current sequence's rows
        prev: tuple[int, int, int] | None = None  # held back: a later row may replace it
        for entry in lp.get_entries():
            st = entry.state
            if st is None:
                continue
            if prev is not None and (st.address != prev[0] or st.end_sequence):
                seq.append((prev[0], 1, prev[1], prev[2]))
            if st.end_sequence:
                # code the linker dropped keeps its rows, relocated to 0:
                # only sequences that start in the image's code count
                if seq and self._in_code(seq[0][0]):
                    self.rows += seq
                    self.rows.append((st.address, 0, _NO_FILE, 0))
                seq, prev = [], None
                continue
            # several rows at one address: the last one stands (addr2line)
            fid = table[st.file] if 0 <= st.file < len(table) else _NO_FILE
            prev = (st.address, fid, st.line)
        return table

    def _walk(
        self,
        dwarf: DWARFInfo,
        cu: CompileUnit,
        die: DIE,
        parent: int,
        *,
        files: list[int],
        base: int,
        c_like: bool,
    ) -> None:
        for child in cu.iter_DIE_children(die):
            tag = child.tag
            if tag not in _SCOPES:
                continue
            me = parent
            if tag in _FUNCS:
                ranges = list(_die_ranges(dwarf, cu, child, base))
                if ranges:
                    me = len(self.entries)
                    name = _function_name(child)
                    call_file = _int(child.attributes.get("DW_AT_call_file"))
                    call_line = _int(child.attributes.get("DW_AT_call_line")) or 0
                    cf = (
                        files[call_file]
                        if tag == "DW_TAG_inlined_subroutine"
                        and call_file is not None
                        and 0 <= call_file < len(files)
                        else _NO_FILE
                    )
                    # names in C-like units are final; others may be bettered
                    # from .symtab (first_lo >= 0), as BFD's non_mangled()
                    linkage = c_like or (name or "").startswith("_Z")
                    inlined = tag == "DW_TAG_inlined_subroutine"
                    first_lo = -1 if linkage or inlined else ranges[0][0]
                    self.entries.append(
                        [self.sid(name) if name else -1, parent, cf, call_line, first_lo]
                    )
                    self.funcs += [(lo, hi, me) for lo, hi in ranges if hi > lo]
            if child.has_children:
                self._walk(dwarf, cu, child, me, files=files, base=base, c_like=c_like)

    def finish(self) -> dict[str, Any]:
        self.rows.sort(key=lambda r: (r[0], r[1]))
        row_addr: list[int] = []
        row_file: list[int] = []
        row_line: list[int] = []
        for addr, _o, file, line in self.rows:
            if row_addr and row_addr[-1] == addr:
                # a sequence's end and another's start share the address:
                # the start (sorted after the end) wins
                row_file[-1], row_line[-1] = file, line
                continue
            row_addr.append(addr)
            row_file.append(file)
            row_line.append(line)
        self.funcs.sort(key=lambda f: (f[0], -f[1]))
        # lists and string keys: the document is the same after a JSON round trip
        return {
            "version": INDEX_VERSION,
            "strings": self.strings,
            "ranges": [list(r) for r in self.ranges],
            "syms": [list(x) for x in self.syms],
            "row_addr": row_addr,
            "row_file": row_file,
            "row_line": row_line,
            "funcs": [list(f) for f in self.funcs],
            "entries": self.entries,
            "machine": self.machine,
            "short": {str(k): v for k, v in self.short.items()},
            "cfi": self.cfi,
        }


MAX_PIECE_BYTES = 16 << 10  # one json.loads of this takes ~0.2 ms


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _pieces(items: list[Any]) -> list[bytes]:
    """`items` as JSON arrays of at most MAX_PIECE_BYTES each (an item larger
    than that is a piece of its own)."""
    out: list[bytes] = []

    def add(part: list[Any]) -> None:
        text = _dumps(part)
        if len(text) <= MAX_PIECE_BYTES or len(part) == 1:
            out.append(text)
            return
        add(part[: len(part) // 2])
        add(part[len(part) // 2 :])

    if not items:
        return out
    # slices sized from the average item, aiming under the limit; halved where not
    step = max(1, len(items) * MAX_PIECE_BYTES * 3 // (4 * len(_dumps(items))))
    for i in range(0, len(items), step):
        add(items[i : i + step])
    return out


def _str(attr: Any) -> str:
    if attr is None:
        return ""
    v = attr.value
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)


def _int(attr: Any) -> int | None:
    if attr is None or not isinstance(attr.value, int):
        return None
    return int(attr.value)


def _function_name(die: DIE) -> str | None:
    """Linkage name, else DWARF name, following abstract origins and
    specifications (what addr2line prints before demangling)."""
    seen = 0
    cur: DIE | None = die
    while cur is not None and seen < 8:
        attrs = cur.attributes
        for key in ("DW_AT_linkage_name", "DW_AT_MIPS_linkage_name", "DW_AT_name"):
            if key in attrs:
                return _str(attrs[key]) or None
        nxt = None
        for key in ("DW_AT_abstract_origin", "DW_AT_specification"):
            if key in attrs:
                with contextlib.suppress(Exception):  # a broken reference: no name
                    nxt = cur.get_DIE_from_attribute(key)
                break
        cur = nxt
        seen += 1
    return None


def _die_ranges(
    dwarf: DWARFInfo, cu: CompileUnit, die: DIE, base: int
) -> Iterator[tuple[int, int]]:
    attrs = die.attributes
    if "DW_AT_low_pc" in attrs:
        lo = attrs["DW_AT_low_pc"].value
        hi_attr = attrs.get("DW_AT_high_pc")
        if hi_attr is None:
            return
        hi = hi_attr.value if hi_attr.form == "DW_FORM_addr" else lo + hi_attr.value
        if lo:
            yield lo, hi
        return
    rattr = attrs.get("DW_AT_ranges")
    if rattr is None or rattr.form != "DW_FORM_sec_offset":
        return
    rl = dwarf.range_lists()
    if rl is None:
        return
    cur = base
    for e in rl.get_range_list_at_offset(rattr.value, cu=cu):
        if isinstance(e, BaseAddressEntry):
            cur = e.base_address
        elif isinstance(e, RangeEntry):
            lo, hi = (
                (e.begin_offset, e.end_offset)
                if e.is_absolute
                else (cur + e.begin_offset, cur + e.end_offset)
            )
            if lo:
                yield lo, hi


def elf_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_path(cache_dir: Path, sha: str) -> Path:
    return cache_dir / f"symbols-{sha[:32]}-v{INDEX_VERSION}.json.z"


def cached_index(elf: Path, cache_dir: Path) -> bytes:
    """The cached index's bytes for this exact ELF (OSError when none)."""
    return cache_path(cache_dir, elf_sha256(elf)).read_bytes()


def _prune(cache_dir: Path, keep: Path) -> None:
    """Keep the newest few indexes: one per build would pile up."""
    old = sorted(
        (p for p in cache_dir.glob("symbols-*.json.z") if p != keep),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for p in old[KEEP_CACHED - 1 :]:
        p.unlink(missing_ok=True)


def load_or_build(elf: Path, cache_dir: Path | None) -> SymbolIndex:
    """The cached index for this exact ELF, else build it (and cache it;
    a cache that cannot be written only costs the next start)."""
    if cache_dir is None:
        return SymbolIndex.build(elf)
    sha = elf_sha256(elf)
    path = cache_path(cache_dir, sha)
    with contextlib.suppress(OSError, ValueError, zlib.error, KeyError, TypeError):
        return SymbolIndex.from_bytes(path.read_bytes())
    index = SymbolIndex.build(elf)
    with contextlib.suppress(OSError):
        atomic_write(path, index.to_bytes())
        _prune(cache_dir, path)
    return index


__all__ = ["Location", "SymbolIndex", "demangle", "load_or_build"]
