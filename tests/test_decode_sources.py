"""Symbol sources tried in order (app ELF, bootloader ELF, ROM names from
ESP-IDF's linker scripts), and code addresses in any log line decoded the
way esp-idf-monitor prints them, cheaply enough for every line."""

from __future__ import annotations

import queue
from pathlib import Path

import pytest

from fbuild_watch.crash.frames import Symbols
from fbuild_watch.crash.rom import RomSymbols, rom_scripts
from fbuild_watch.crash.symbols import Location, SymbolIndex
from fbuild_watch.decode import CrashDetector
from tests.decodekit import DATA, addr2line_answers, unpack

FAIL_ONCE_RA = 0x400D66BC  # esp32 app: fail_once, a return address in gdb's backtrace


@pytest.fixture(scope="module")
def esp32(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("esp32")
    return {
        "app": unpack("esp32_app_symtab.elf.xz", tmp),
        "bootloader": unpack("esp32_bootloader.elf.xz", tmp),
        "rom": unpack("esp32.rom.ld.xz", tmp),
    }


@pytest.fixture(scope="module")
def sources(esp32: dict[str, Path]) -> Symbols:
    return Symbols(
        SymbolIndex.build(esp32["app"]),
        SymbolIndex.build(esp32["bootloader"]),
        RomSymbols.load([esp32["rom"]]),
    )


def test_c3_rom_jump_table_names_its_slots_only() -> None:
    rom = RomSymbols.load([DATA / "esp32c3.rom.ld", DATA / "esp32c3.rom.api.ld"])
    assert rom.slot == 4 and len(rom) > 600
    assert str(rom.lookup(0x40000040)) == "ets_printf"  # not its alias esp_rom_printf
    assert str(rom.lookup(0x40000043)) == "ets_printf+0x3"
    assert str(rom.lookup(0x40000044)) == "ets_install_putc1"
    # a return address into the ROM's body (gdb: ets_vprintf): no name, not a neighbour's
    assert rom.lookup(0x400485E4) is None
    assert rom.lookup(0x3FCDFFFC) is None  # ets_ops_table_ptr: data, not code


def test_rom_scripts_found_in_an_esp_idf_tree(tmp_path: Path) -> None:
    ld = tmp_path / "components" / "esp_rom" / "esp32c3" / "ld"
    ld.mkdir(parents=True)
    for name in ("esp32c3.rom.api.ld", "esp32c3.rom.ld", "esp32c3.rom.libgcc.ld"):
        (ld / name).write_text("")
    (ld / "other.ld").write_text("")
    assert [p.name for p in rom_scripts(tmp_path, "esp32c3")] == [
        "esp32c3.rom.ld",
        "esp32c3.rom.api.ld",
        "esp32c3.rom.libgcc.ld",
    ]
    assert rom_scripts(tmp_path, "esp32s3") == []


def test_app_then_bootloader_then_rom(sources: Symbols) -> None:
    answers = addr2line_answers("esp32_bootloader.addr2line.txt.xz")
    # bootloader-only code (0x40078000..): the bootloader ELF's answer, as addr2line's
    addr, chain = next((a, c) for a, c in answers.items() if a < 0x4007C316 and c[0][0])
    frames = sources.frames(addr, "line")
    assert [(f.function, f.line, f.origin) for f in frames] == [
        (fn, ln, "bootloader") for fn, _file, ln in chain
    ]
    # code both ELFs have at the same address (IRAM): the app's
    both = next(a for a in answers if 0x40080404 <= a < 0x40081353)
    assert {f.origin for f in sources.frames(both, "line")} == {"app"}
    assert sources.frames(FAIL_ONCE_RA, "backtrace", caller=True)[0].function == "fail_once"
    # ROM: the linker script's name, with the offset from it
    (rom,) = sources.frames(0x4000BFF0, "PC")
    assert (rom.function, rom.symbol, rom.origin) == (
        "_xtos_set_intlevel+0x14",
        "_xtos_set_intlevel",
        "rom",
    )
    assert rom.describe() == "0x4000bff0: _xtos_set_intlevel+0x14 [ROM] (PC)"
    assert sources.frames(0x3FFB4F0B, "line") == []  # data


def test_addresses_in_a_line_rendered_as_esp_idf_monitor(sources: Symbols) -> None:
    answers = addr2line_answers("esp32_bootloader.addr2line.txt.xz")
    inlined = next(a for a, c in answers.items() if a < 0x4007C316 and len(c) > 1)
    line = (
        f"I (5) app: cb=0x{FAIL_ONCE_RA:08x} ctx=0x3ffb4f0b rom=0x4000bff0 "
        f"boot=0x{inlined:08X} again 0x{FAIL_ONCE_RA:08x} long 0x400d66bc12 empty 0x4006f000"
    )
    notes = sources.addresses(line)
    assert [n.address for n in notes] == [FAIL_ONCE_RA, 0x4000BFF0, inlined]
    assert notes[0].lines() == ["0x400d66bc: fail_once"]
    assert notes[1].lines() == ["0x4000bff0: _xtos_set_intlevel+0x14 [ROM]"]
    (fn, path, ln), (caller, cpath, cln) = answers[inlined]
    assert notes[2].lines() == [  # addr2line -fiaC's chain (paths outside the build dir)
        f"0x{inlined:08x}: {fn} at {path}:{ln} [bootloader]",
        f"(inlined by) {caller} at {cpath}:{cln} [bootloader]",
    ]
    assert notes[2].as_dict()["inlined_by"] == [{"function": caller, "file": cpath, "line": cln}]
    # an unnamed ROM address (register dumps are full of them) is not reported
    assert sources.addresses("past the last ROM name: 0x4006f000") == []
    assert sources.addresses("no hex here") == []


def test_each_address_is_looked_up_once(esp32: dict[str, Path]) -> None:
    app = SymbolIndex.build(esp32["app"])
    calls: list[int] = []
    real = app.locate

    def counting(addr: int) -> list[Location]:
        calls.append(addr)
        return real(addr)

    app.locate = counting  # type: ignore[method-assign]
    sources = Symbols(app)
    for _ in range(100):
        line = "Backtrace: 0x400d66bc:0x3ffb5df0 0x400e40a3:0x3ffb5e10 0x400D66BC"
        assert [n.address for n in sources.addresses(line)] == [0x400D66BC, 0x400E40A3]
    assert sorted(calls) == [0x400D66BC, 0x400E40A3]


def test_detector_reads_every_source_in_the_background(esp32: dict[str, Path]) -> None:
    warnings: queue.Queue[str] = queue.Queue()
    det = CrashDetector(on_warning=warnings.put)
    det.set_elf(esp32["app"], bootloader_elf=esp32["bootloader"], rom_scripts=[esp32["rom"]])
    found = det.symbols(wait=True)
    assert found is not None and found.bootloader is not None and len(found.rom) > 1000
    notes = det.addresses("at 0x4000bff0 from 0x400d66bc")
    assert [n.frames[0].origin for n in notes] == ["rom", "app"]
    assert warnings.empty()
    # a missing bootloader ELF or ROM script: said once, the rest still decodes
    det.set_elf(
        esp32["app"],
        bootloader_elf=esp32["app"].parent / "missing.elf",
        rom_scripts=[esp32["app"].parent / "missing.rom.ld"],
    )
    found = det.symbols(wait=True)
    assert found is not None and found.bootloader is None and len(found.rom) == 0
    said = sorted([warnings.get(timeout=30), warnings.get(timeout=30)])
    assert said[0].startswith("ROM symbols not used: ") and "missing.rom.ld: cannot read" in said[0]
    assert said[1].startswith("bootloader ELF not used: ") and "missing.elf" in said[1]
    assert [n.frames[0].function for n in det.addresses("0x400d66bc")] == ["fail_once"]
