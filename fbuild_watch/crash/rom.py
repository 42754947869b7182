"""Names for mask-ROM code addresses from ESP-IDF's ROM linker scripts
(`components/esp_rom/<chip>/ld/<chip>.rom*.ld`: `name = 0x...;`,
`PROVIDE ( name = 0x... );`, aliases `PROVIDE ( a = b );`).

ESP-IDF's ROM ELFs (with every ROM function and its unwind info) are a
separate download; these scripts come with every ESP-IDF and name the
functions the app may call. Two kinds exist:

- a jump table (ESP32-C3, C2, C6, H2, P4, S3): each name is one slot (4
  bytes, 12 on the S3) that jumps into the ROM's body, so only the slot itself is named and an
  address in the body stays unnamed (never a neighbour's name);
- real entry points (ESP32, S2): an address between two names is shown as
  `name+0xoffset`, the nearest exported function below it (gdb's form;
  a static ROM function in between has no name of its own).
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# mask ROM code on every ESP32 chip (ESP32-P4 maps it at 0x4fc00000);
# data symbols in the scripts (0x3f..., 0x3fc...) fall outside
ROM_CODE = ((0x40000000, 0x40070000), (0x4FC00000, 0x4FC40000))
_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_ASSIGN = re.compile(
    r"(?:\bPROVIDE\s*\(\s*)?([A-Za-z_.$][\w.$]*)\s*=\s*(0[xX][0-9a-fA-F]+|[A-Za-z_.$][\w.$]*)\s*\)?\s*;"
)
MAX_SLOT = 12


def in_rom(addr: int) -> bool:
    return any(lo <= addr < hi for lo, hi in ROM_CODE)


@dataclass(frozen=True)
class RomName:
    name: str
    offset: int  # from the named address

    def __str__(self) -> str:
        return f"{self.name}+0x{self.offset:x}" if self.offset else self.name


class RomSymbols:
    """ROM function names by address; empty when no script was given (a
    ROM address is still known to be ROM code, just not named)."""

    def __init__(self, names: dict[int, str] | None = None, sources: Iterable[Path] = ()) -> None:
        table = sorted((names or {}).items())
        self.addrs = [a for a, _ in table]
        self.names = [n for _, n in table]
        self.sources = list(sources)
        gaps = sorted(b - a for a, b in zip(self.addrs, self.addrs[1:], strict=False))
        # most names a few bytes apart (4 on RISC-V, 12 on the ESP32-S3): a
        # jump table, where a slot names only itself
        median = gaps[len(gaps) // 2] if gaps else 0
        self.slot = median if 0 < median <= MAX_SLOT else 0

    @classmethod
    def parse(cls, texts: Iterable[str], sources: Iterable[Path] = ()) -> RomSymbols:
        values: dict[str, int] = {}
        aliases: list[tuple[str, str]] = []
        order: dict[str, int] = {}
        for text in texts:
            for m in _ASSIGN.finditer(_COMMENT.sub("", text)):
                name, value = m.group(1), m.group(2)
                order.setdefault(name, len(order))
                if value[:2] in ("0x", "0X"):
                    values.setdefault(name, int(value, 16))
                else:
                    aliases.append((name, value))
        for name, target in aliases:  # `esp_rom_printf = ets_printf`: the same code
            if name not in values and target in values:
                values[name] = values[target]
        by_addr: dict[int, str] = {}
        # one name per address: the first one defined (the ROM's own name,
        # not a later alias of it)
        for name, addr in sorted(values.items(), key=lambda kv: order[kv[0]]):
            if in_rom(addr):
                by_addr.setdefault(addr, name)
        return cls(by_addr, sources)

    @classmethod
    def load(cls, paths: Iterable[Path]) -> RomSymbols:
        """Raises OSError naming the script that cannot be read."""
        paths = list(paths)
        texts = [p.read_text(encoding="utf-8", errors="replace") for p in paths]
        return cls.parse(texts, paths)

    def is_code(self, addr: int) -> bool:
        return in_rom(addr)

    def lookup(self, addr: int) -> RomName | None:
        """The ROM function at `addr`, if the scripts name it."""
        if not in_rom(addr):
            return None
        i = bisect.bisect_right(self.addrs, addr) - 1
        if i < 0:
            return None
        base = self.addrs[i]
        if self.slot:
            return RomName(self.names[i], addr - base) if addr - base < self.slot else None
        nxt = self.addrs[i + 1] if i + 1 < len(self.addrs) else None
        if nxt is None or not any(lo <= base and addr < hi for lo, hi in ROM_CODE):
            return None  # past the last name: where that function ends is unknown
        return RomName(self.names[i], addr - base)

    def __len__(self) -> int:
        return len(self.addrs)


def rom_scripts(idf_path: Path, chip: str) -> list[Path]:
    """ESP-IDF's ROM linker scripts for `chip` (e.g. "esp32c3"), in the
    order the build passes them; [] when this ESP-IDF has none."""
    ld = idf_path / "components" / "esp_rom" / chip / "ld"
    try:
        found = sorted(ld.glob(f"{chip}.rom*.ld"))
    except OSError:
        return []
    # the main script first: its names win over later aliases
    return sorted(found, key=lambda p: (p.name != f"{chip}.rom.ld", p.name))


__all__ = ["ROM_CODE", "RomName", "RomSymbols", "in_rom", "rom_scripts"]
