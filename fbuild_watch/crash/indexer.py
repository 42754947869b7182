"""`python -m fbuild_watch.crash.indexer ELF [CACHE_DIR]`: build an ELF's
symbol index in a process of its own and write it to stdout (and the cache).

pyelftools is pure Python: seconds of it in a thread of the watch process
would hold the GIL against the serial reader and the UI.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from elftools.common.exceptions import DWARFError, ELFError, ELFParseError

from fbuild_watch.crash.symbols import load_or_build


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (1, 2):
        print("usage: python -m fbuild_watch.crash.indexer ELF [CACHE_DIR]", file=sys.stderr)
        return 2
    elf = Path(args[0])
    cache = Path(args[1]) if len(args) == 2 else None
    # background work: the build, the boards and the UI come first
    with contextlib.suppress(OSError):
        os.nice(10)
    try:
        index = load_or_build(elf, cache)
    except (ELFError, ELFParseError, DWARFError, OSError, ValueError, KeyError, IndexError) as e:
        print(f"{type(e).__name__}: {e}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(index.to_bytes())
    return 0


if __name__ == "__main__":
    sys.exit(main())
