"""Deterministic pseudo-random asset bytes (incompressible, like a packed
image or audio file): gen_asset.py KB OUT."""

import sys


def main(kb: int, dst: str) -> None:
    x = 0x2545F491
    out = bytearray()
    for _ in range(kb * 256):
        # xorshift32: same bytes on every machine
        x ^= (x << 13) & 0xFFFFFFFF
        x ^= x >> 17
        x ^= (x << 5) & 0xFFFFFFFF
        out += x.to_bytes(4, "little")
    with open(dst, "wb") as f:
        f.write(out)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
