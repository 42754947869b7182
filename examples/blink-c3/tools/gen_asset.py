"""Deterministic pseudo-random asset bytes (incompressible, like a packed
image or audio file): gen_asset.py KB OUT [PATCH_OFFSET [PATCH_KB]].

PATCH_OFFSET (bytes) replaces PATCH_KB (default 8) KiB of the asset there
with other incompressible bytes: an "asset edit" such as a changed icon, for
benchmarks."""

import sys


def xorshift(n: int, seed: int) -> bytearray:
    x = seed
    out = bytearray()
    for _ in range(n // 4):
        # xorshift32: same bytes on every machine
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        out += x.to_bytes(4, "little")
    return out


def main(kb: int, dst: str, patch: int | None = None, patch_kb: int = 8) -> None:
    out = xorshift(kb * 1024, 0x2545F491)
    size = patch_kb * 1024
    if patch is not None and patch + size <= len(out):
        out[patch : patch + size] = xorshift(size, 0x1B873593)
    with open(dst, "wb") as f:
        f.write(out)


if __name__ == "__main__":
    args = sys.argv[1:]
    main(
        int(args[0]),
        args[1],
        int(args[2]) if len(args) > 2 and args[2] else None,
        int(args[3]) if len(args) > 3 and args[3] else 8,
    )
