"""Deterministic pseudo-random asset bytes (incompressible, like a packed
image or audio file): gen_asset.py KB OUT [PATCH_OFFSET].

PATCH_OFFSET (bytes) replaces 8 KiB of the asset there with other bytes: an
"asset edit" such as a changed icon, for benchmarks."""

import sys


def main(kb: int, dst: str, patch: int | None = None) -> None:
    x = 0x2545F491
    out = bytearray()
    for _ in range(kb * 256):
        # xorshift32: same bytes on every machine
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        out += x.to_bytes(4, "little")
    if patch is not None and patch + 8192 <= len(out):
        out[patch : patch + 8192] = bytes((i * 7 + 3) & 0xFF for i in range(8192))
    with open(dst, "wb") as f:
        f.write(out)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 and sys.argv[3] else None)
