"""Loading a cached symbol index never parses it in one piece: json.loads
holds the GIL for the whole call (~12 ms for a 3.7 MB ELF's index, several
times that for a 20 MB one, longer on a busy machine), and the load runs in
the watch process while its serial reader thread is reading."""

from __future__ import annotations

import json
import zlib
from pathlib import Path
from typing import Any

import pytest

import fbuild_watch.crash.symbols as symbols
from fbuild_watch.crash.symbols import SymbolIndex
from tests.decodekit import unpack


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory) -> SymbolIndex:
    # full DWARF (line rows, inline chains) and, from the C3 ELF, CFI rows
    return SymbolIndex.build(unpack("esp32_bootloader.elf.xz", tmp_path_factory.mktemp("bl")))


def test_loaded_in_small_pieces(index: SymbolIndex, monkeypatch: pytest.MonkeyPatch) -> None:
    blob = index.to_bytes()
    whole = len(json.dumps(index.doc, separators=(",", ":")))
    assert whole > 100_000  # a real index: several pieces' worth
    sizes: list[int] = []
    real = json.loads

    def recording(text: str | bytes, **kw: Any) -> Any:
        sizes.append(len(text))
        return real(text, **kw)

    monkeypatch.setattr(symbols.json, "loads", recording)
    loaded = SymbolIndex.from_bytes(blob)
    assert loaded.doc == index.doc  # the same document after the round trip
    assert max(sizes) <= symbols.MAX_PIECE_BYTES < whole / 4, sizes


def test_cfi_index_round_trip(tmp_path: Path) -> None:
    idx = SymbolIndex.build(unpack("esp32c3_cfi.elf.xz", tmp_path))
    assert idx.doc["cfi"]
    assert SymbolIndex.from_bytes(idx.to_bytes()).doc == idx.doc


def test_a_cut_or_padded_index_is_refused(index: SymbolIndex) -> None:
    """A cache that decompresses but lost or gained pieces is not used (the
    ELF is indexed again): never a shorter line table taken for the whole."""
    text = zlib.decompress(index.to_bytes()).split(b"\n")
    for bad in (text[:-1], [*text, text[-1]], text[:1]):
        with pytest.raises(ValueError):
            SymbolIndex.from_bytes(zlib.compress(b"\n".join(bad)))
    # the old single-document format (a cache of an older version): refused too
    old = zlib.compress(json.dumps({**index.doc, "version": 7}).encode())
    with pytest.raises(ValueError):
        SymbolIndex.from_bytes(old)
