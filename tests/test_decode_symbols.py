"""Symbolization equal to GNU addr2line -fiaC on Espressif's own ELFs: the
last line row at an address, inline chains, demangled C++ names with clone
suffixes cleaned for display, .symtab names where DWARF has none, every code
address in a line (and never a data pointer), the index cached by SHA-256."""

from __future__ import annotations

import bisect
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

import fbuild_watch.crash.symbols as symbols
from fbuild_watch.crash.names import demangle, display_name
from fbuild_watch.crash.symbols import SymbolIndex, cache_path, elf_sha256, load_or_build
from fbuild_watch.decode import Symbolizer
from tests.decodekit import addr2line_answers, unpack


@pytest.fixture(scope="module")
def bootloader(tmp_path_factory: pytest.TempPathFactory) -> Symbolizer:
    return Symbolizer(unpack("esp32_bootloader.elf.xz", tmp_path_factory.mktemp("bl")))


@pytest.fixture(scope="module")
def c3(tmp_path_factory: pytest.TempPathFactory) -> Symbolizer:
    return Symbolizer(unpack("esp32c3_cfi.elf.xz", tmp_path_factory.mktemp("c3")))


def _chain(sym: Symbolizer, addr: int) -> list[tuple[str | None, str | None, int | None]]:
    chain = sym.index.locate(addr)
    return [(demangle(x.symbol) if x.symbol else None, x.file, x.line) for x in chain]


def test_equal_to_addr2line_on_600_addresses(bootloader: Symbolizer) -> None:
    """Stored GNU addr2line answers (see the data README) for 600 code
    addresses of the ESP32 bootloader, among them 120 where several line
    rows share the address and 120 inside inlined functions."""
    expected = addr2line_answers("esp32_bootloader.addr2line.txt.xz")
    wrong = {hex(a): (_chain(bootloader, a), exp) for a, exp in expected.items()}
    wrong = {a: v for a, v in wrong.items() if v[0] != v[1]}
    assert not wrong
    assert sum(len(exp) > 1 for exp in expected.values()) >= 100  # inline chains compared


def test_the_last_row_at_an_address_wins(bootloader: Symbolizer) -> None:
    """Where several rows share an address, addr2line takes the last; the
    largest (file, line), what the decoder took before, is wrong there."""
    expected = addr2line_answers("esp32_bootloader.addr2line.txt.xz")
    with bootloader.elf.open("rb") as f:
        dwarf = ELFFile(f).get_dwarf_info()
        rows: dict[int, list[int]] = {}
        for cu in dwarf.iter_CUs():
            lp = dwarf.line_program_for_CU(cu)
            assert lp is not None
            for e in lp.get_entries():
                if e.state is not None and not e.state.end_sequence:
                    rows.setdefault(e.state.address, []).append(e.state.line)
    shared = [a for a in expected if len(rows.get(a, [])) > 1 and rows[a][-1] != max(rows[a])]
    assert len(shared) >= 90
    for a in shared:
        assert bootloader.index.locate(a)[0].line == expected[a][0][2] == rows[a][-1]


def test_inline_chain_frames(bootloader: Symbolizer) -> None:
    expected = addr2line_answers("esp32_bootloader.addr2line.txt.xz")
    addr = next(a for a, exp in expected.items() if len(exp) >= 3)
    frames = bootloader.frames(addr, "backtrace")
    assert [(f.function, f.line) for f in frames] == [(n, ln) for n, _f, ln in expected[addr]]
    assert [f.inlined for f in frames] == [False] + [True] * (len(frames) - 1)
    assert frames[1].describe().startswith("  (inlined by) ")


def test_cxx_names_demangled_and_clone_suffixes_cleaned(c3: Symbolizer) -> None:
    start = next(
        s
        for s, n in zip(c3.index.sym_start, c3.index.sym_name, strict=True)
        if c3.index.strings[n] == "_ZN12_GLOBAL__N_14pool4freeEPv.constprop.0"
    )
    frame = c3.frames(start + 2, "backtrace")[0]
    assert frame.symbol == "_ZN12_GLOBAL__N_14pool4freeEPv.constprop.0"  # raw, for the JSON
    assert frame.function == "(anonymous namespace)::pool::free(void*)"
    assert demangle(frame.symbol) == "(anonymous namespace)::pool::free(void*) [clone .constprop.0]"
    assert display_name("get_arg.isra.0") == "get_arg"
    assert display_name("foo.constprop.0.isra.0") == "foo"
    assert display_name("bar.part.1") == "bar"
    assert demangle("_Zbroken") == "_Zbroken"


def test_symtab_names_where_dwarf_has_none(c3: Symbolizer) -> None:
    """The trimmed ESP32-C3 ELF has no DWARF: assembly handlers and all
    functions are named from .symtab (`??` before)."""
    for name in ("_panic_handler", "_interrupt_handler", "panic_abort"):
        i = next(i for i, n in enumerate(c3.index.sym_name) if c3.index.strings[n] == name)
        addr = c3.index.sym_start[i] + 4
        assert c3.lookup(addr, "PC") is not None
        assert c3.frames(addr, "PC")[0].function == name


def test_every_code_address_in_a_line_and_no_data_pointer(c3: Symbolizer) -> None:
    idx = c3.index
    panic_abort = idx.sym_start[
        next(i for i, n in enumerate(idx.sym_name) if idx.strings[n] == "panic_abort")
    ]
    line = (
        f"I (42) app: handler 0x{panic_abort + 6:08x} queue 0x3fc8ea9c flash 0x42000000 "
        f"again 0x{panic_abort + 6:08X} len 0x00000010"
    )
    notes = c3.addresses(line)
    assert [(n.address, n.frames[0].function) for n in notes] == [(panic_abort + 6, "panic_abort")]
    assert c3.addresses("heap 0x3fc8ea9c, rodata 0x3c020120, mmio 0x60000000") == []


def test_index_cached_by_sha256_and_rebuilt_when_bad(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elf = unpack("esp32c3_cfi.elf.xz", tmp_path)
    cache = tmp_path / "build" / ".fbuild"
    first = load_or_build(elf, cache)
    path = cache_path(cache, elf_sha256(elf))
    assert path.is_file() and elf_sha256(elf)[:32] in path.name

    def no_build(_elf: Path) -> SymbolIndex:
        raise AssertionError("the cached index should have been used")

    monkeypatch.setattr(symbols.SymbolIndex, "build", staticmethod(no_build))
    again = load_or_build(elf, cache)
    assert again.doc == first.doc
    # a torn or foreign cache file is not trusted: the ELF is indexed again
    monkeypatch.undo()
    path.write_bytes(b"garbage")
    assert load_or_build(elf, cache).doc == first.doc
    assert path.read_bytes() != b"garbage"


def test_lookup_is_a_few_bisections(c3: Symbolizer) -> None:
    i = bisect.bisect_left(c3.index.sym_start, 0x42000020)
    assert c3.index.sym_start[i] >= 0x42000020
    assert c3.lookup(0x3FC8EA9C, "stack") is None  # data: never decoded
