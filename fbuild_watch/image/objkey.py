"""What a compiled object file will contribute to the image, before the link.

The loop watches the objects the last image was linked from. When the
compiler rewrites one with different loadable contents, the image is going
to change, so boards can be taken into their bootloaders then instead of at
the link (the example: ~35 ms sooner, on the save -> log path). A compile
error writes no object, so, like the link trigger, it never touches a board.

What counts, per section that will be loaded (SHF_ALLOC): its name, size,
bytes and relocations. An edit that changes only debug info (a comment, a
blank line) keeps the summary. Sections whose functions and data objects
were all left out of the last link (`--gc-sections` dropped them: code not
called yet) do not count either, so editing such code does not reset the
board for an image that stays the same.

A wrong answer costs time, never correctness: the deploy still diffs the
validated image. Same narrow scope as `linkkey`: relocatable 32-bit
little-endian ELF (every ESP toolchain), anything else gives None.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from fbuild_watch.image.linkkey import elf32_le_header

_SHDR = struct.Struct("<10I")
_SYM = struct.Struct("<IIIBBH")
_REL = struct.Struct("<II")
_RELA = struct.Struct("<IIi")
_ET_REL = 1
_SHT_SYMTAB, _SHT_RELA, _SHT_NOBITS, _SHT_REL = 2, 4, 8, 9
_SHF_ALLOC = 0x2
_STT_OBJECT, _STT_FUNC, _STT_SECTION = 1, 2, 3
_SHN_LORESERVE = 0xFF00

_Symbol = tuple[str, int, int, int, int]  # name, value, size, info, shndx


@dataclass(frozen=True)
class ObjectSummary:
    """Per loadable section, in file order: the names of the functions and
    data objects it defines, and a digest of everything the link copies."""

    sections: tuple[tuple[frozenset[str], bytes], ...]

    def key(self, kept: frozenset[str] | None) -> bytes:
        """Digest over the sections the last link kept (`kept`: the symbol
        names of the last ELF; None = count every section). A section that
        defines no named function or object (string literals, constants
        without a symbol) always counts: it cannot be told apart."""
        h = hashlib.sha256()
        for names, digest in self.sections:
            if kept is None or not names or not names.isdisjoint(kept):
                h.update(digest)
        return h.digest()


@dataclass(frozen=True)
class _Section:
    name: str
    type: int
    flags: int
    offset: int
    size: int
    link: int
    info: int
    align: int


def _parse(data: bytes, *, want_type: int | None) -> tuple[list[_Section], list[_Symbol]] | None:
    """Section headers and the symbol table, or None if `data` is not a
    complete ELF32 LE (of `want_type`, when given)."""
    header = elf32_le_header(data)
    if header is None:
        return None
    (e_type, _, _, _, _, shoff, _, _, _, _, shentsize, shnum, shstrndx) = header
    if want_type is not None and e_type != want_type:
        return None
    # The section header table is written last: if it is not all there,
    # neither is the file (a compiler still writing it in place).
    if shnum == 0 or shentsize < _SHDR.size or shoff + shnum * shentsize > len(data):
        return None
    raw = [_SHDR.unpack_from(data, shoff + i * shentsize) for i in range(shnum)]
    for _, typ, _, _, off, size, *_ in raw:
        if typ != _SHT_NOBITS and off + size > len(data):
            return None
    if shstrndx >= shnum:
        return None
    str_off = raw[shstrndx][4]

    def cstr(base: int, at: int) -> str:
        end = data.find(b"\0", base + at)
        return data[base + at : end if end >= 0 else len(data)].decode("latin-1")

    sections = [
        _Section(cstr(str_off, name), typ, flags, off, size, link, info, align)
        for name, typ, flags, _, off, size, link, info, align, _ in raw
    ]
    symbols: list[_Symbol] = []
    for s in sections:
        if s.type == _SHT_SYMTAB and s.link < len(sections):
            names_at = sections[s.link].offset
            for i in range(s.size // _SYM.size):
                name, value, size, info, _, shndx = _SYM.unpack_from(data, s.offset + i * _SYM.size)
                symbols.append((cstr(names_at, name), value, size, info, shndx))
            break
    return sections, symbols


def summarize(data: bytes) -> ObjectSummary | None:
    """The summary of a relocatable object, or None (not one, or not whole)."""
    parsed = _parse(data, want_type=_ET_REL)
    if parsed is None:
        return None
    sections, symbols = parsed
    defined: dict[int, set[str]] = {}
    for name, _, _, info, shndx in symbols:
        if info & 0xF in (_STT_OBJECT, _STT_FUNC) and 0 < shndx < _SHN_LORESERVE and name:
            defined.setdefault(shndx, set()).add(name)

    def target(index: int) -> bytes:
        # By name for globals; a local by where it is (section, value):
        # compilers number local labels file-wide (.Lpcrel_hi7), and an edit
        # elsewhere in the file renumbers them without changing this section.
        if index >= len(symbols):
            return b"?"
        name, value, _, info, shndx = symbols[index]
        where = sections[shndx].name if 0 < shndx < len(sections) else str(shndx)
        if info & 0xF == _STT_SECTION:
            return b"S" + where.encode()
        if info >> 4 == 0 and shndx != 0:
            return b"L" + where.encode() + struct.pack("<I", value)
        return b"G" + name.encode()

    # per section: (offset, entry) of its relocations, and for each the
    # section its symbol lives in (an unwind record's pc_begin names its function)
    relocs: dict[int, list[tuple[int, bytes, int]]] = {}
    for s in sections:
        if s.type not in (_SHT_REL, _SHT_RELA) or s.info >= len(sections):
            continue
        if not sections[s.info].flags & _SHF_ALLOC:
            continue  # relocations of debug info
        entry = _RELA if s.type == _SHT_RELA else _REL
        entries = relocs.setdefault(s.info, [])
        for i in range(s.size // entry.size):
            fields = entry.unpack_from(data, s.offset + i * entry.size)
            offset, r_info = fields[0], fields[1]
            addend = fields[2] if len(fields) > 2 else 0
            sym = r_info >> 8
            packed = struct.pack("<IBi", offset, r_info & 0xFF, addend) + target(sym)
            entries.append((offset, packed, symbols[sym][4] if sym < len(symbols) else 0))

    out: list[tuple[frozenset[str], bytes]] = []
    for i, s in enumerate(sections):
        if not s.flags & _SHF_ALLOC:
            continue
        body = b"" if s.type == _SHT_NOBITS else data[s.offset : s.offset + s.size]
        head = s.name.encode() + struct.pack("<III", s.type, s.flags, s.align)
        records = _eh_records(body) if s.name == ".eh_frame" else None
        if records is None:
            head += struct.pack("<I", s.size)  # NOBITS: the size is all there is
            out.append((frozenset(defined.get(i, ())), _digest(head, body, relocs.get(i, []))))
            continue
        # Unwind info covers every function in the file, dead ones too: one
        # entry per record, counted with the function it describes (the
        # linker drops the records of functions it drops), and only if the
        # last link kept an .eh_frame at all (ESP-IDF drops it unless C++
        # exceptions or eh_frame backtraces are on).
        for start, end in records:
            rel = [r for r in relocs.get(i, []) if start <= r[0] < end]
            fn = next((r[2] for r in rel if r[0] == start + 8), None)  # FDE pc_begin
            # a CIE, or a record of a function without a name: with .eh_frame
            names = (defined.get(fn) if fn is not None else None) or {".eh_frame"}
            out.append((frozenset(names), _digest(head, body[start:end], rel)))
    return ObjectSummary(tuple(out))


def _digest(head: bytes, body: bytes, relocs: list[tuple[int, bytes, int]]) -> bytes:
    h = hashlib.sha256(head)
    h.update(body)
    for _, entry, _ in relocs:
        h.update(struct.pack("<I", len(entry)) + entry)
    return h.digest()


def _eh_records(body: bytes) -> list[tuple[int, int]] | None:
    """(start, end) of each CIE/FDE in an .eh_frame, or None if it cannot
    be split (then it counts as one section)."""
    out = []
    at = 0
    while at + 4 <= len(body):
        (length,) = struct.unpack_from("<I", body, at)
        if length == 0:
            break  # terminator
        if length == 0xFFFFFFFF or at + 4 + length > len(body):
            return None  # 64-bit records are not used by 32-bit targets
        out.append((at, at + 4 + length))
        at += 4 + length
    return out


def linked_names(data: bytes) -> frozenset[str] | None:
    """What a linked ELF kept: the names of its functions and data objects
    and of its sections. None if it is not a whole ELF32 LE with symbols."""
    parsed = _parse(data, want_type=None)
    if parsed is None or not parsed[1]:
        return None
    sections, symbols = parsed
    return frozenset(
        name
        for name, _, _, info, shndx in symbols
        if info & 0xF in (_STT_OBJECT, _STT_FUNC) and shndx != 0 and name
    ) | {s.name for s in sections if s.name}
