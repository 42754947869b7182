"""What a linked ELF will put on flash, as one hash, before its image exists.

The loop compares it with the ELF of what a board holds while the build is
still turning the ELF into an image (esptool elf2image: ~0.1 s of Python):
when it differs, the image will differ too, so the board can be taken into
its bootloader right away instead of after the build. Only the loadable
bytes count (PT_LOAD segments' file contents and addresses, the entry
point): an edit that changes only debug info keeps the key, so it costs no
early reset.

A wrong answer costs time, never correctness: the deploy still diffs the
validated image itself. Hence the narrow scope: 32-bit little-endian ELF
(every ESP chip), anything else gives None.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
from pathlib import Path

_EHDR = struct.Struct("<16sHHIIIIIHHHHHH")
_PHDR = struct.Struct("<8I")
_PT_LOAD = 1

_memo: dict[tuple[str, int, int, int], str | None] = {}
# Real ESP-IDF ELFs are 5-30 MB; anything past this is not an ELF of ours
# (an output path symlinked to /dev/zero must not be read until memory ends).
MAX_ELF_BYTES = 512 << 20


def read_regular(path: Path, limit: int = MAX_ELF_BYTES) -> bytes | None:
    """The file's bytes if it is a regular file of at most `limit` bytes,
    else None (a device, FIFO or directory is never read)."""
    try:
        with path.open("rb") as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
                return None
            data = f.read(limit + 1)
    except OSError:
        return None
    return data if len(data) <= limit else None


def file_stamp(path: Path) -> tuple[int, int, int] | None:
    """(inode, size, mtime_ns), or None if the file is not there."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def link_key(path: Path) -> str | None:
    """Hash of the loadable contents of the ELF at `path`; None when it is
    missing, not a 32-bit little-endian ELF, or not completely written yet
    (a linker still writing it)."""
    stamp = file_stamp(path)
    if stamp is None:
        return None
    memo_key = (str(path), *stamp)
    if memo_key in _memo:
        return _memo[memo_key]
    data = read_regular(path)
    if data is None:
        return None
    key = _key(data)
    if key is not None:  # a partial file may still become whole under the same stamp
        if len(_memo) > 64:
            _memo.clear()
        _memo[memo_key] = key
    return key


def elf32_le_header(data: bytes) -> tuple[int, ...] | None:
    """The ELF header's fields after e_ident (e_type ... e_shstrndx) if
    `data` starts as a 32-bit little-endian ELF, else None."""
    if len(data) < _EHDR.size or data[:4] != b"\x7fELF" or data[4] != 1 or data[5] != 1:
        return None
    return tuple(_EHDR.unpack_from(data)[1:])


def _key(data: bytes) -> str | None:
    header = elf32_le_header(data)
    if header is None:
        return None
    (_, machine, _, entry, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum, _) = header
    # Linkers write the section header table last: if it is not all there,
    # neither is the file.
    if phnum == 0 or phentsize < _PHDR.size or shoff + shnum * shentsize > len(data):
        return None
    if phoff + phnum * phentsize > len(data):
        return None
    h = hashlib.sha256(struct.pack("<HI", machine, entry))
    for i in range(phnum):
        p_type, offset, vaddr, paddr, filesz, *_ = _PHDR.unpack_from(data, phoff + i * phentsize)
        if p_type != _PT_LOAD or filesz == 0:
            continue
        if offset + filesz > len(data):
            return None
        h.update(struct.pack("<III", vaddr, paddr, filesz))
        h.update(data[offset : offset + filesz])
    return h.hexdigest()
