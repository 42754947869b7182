"""partitions.csv -> ESP-IDF partition table binary (like gen_esp32part.py)."""

import hashlib
import struct
import sys

TYPES = {"app": 0x00, "data": 0x01}
SUBTYPES = {
    "app": {"factory": 0x00, "test": 0x20, **{f"ota_{i}": 0x10 + i for i in range(16)}},
    "data": {"ota": 0x00, "phy": 0x01, "nvs": 0x02, "coredump": 0x03, "nvs_keys": 0x04,
             "efuse": 0x05, "fat": 0x81, "spiffs": 0x82, "littlefs": 0x83},
}


def main(src: str, dst: str) -> None:
    body = b""
    for line in open(src, encoding="utf-8"):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, ptype, subtype, offset, size = [f.strip() for f in line.split(",")[:5]]
        body += struct.pack(
            "<2sBBLL16sL", b"\xaa\x50", TYPES[ptype], SUBTYPES[ptype][subtype],
            int(offset, 0), int(size, 0), name.encode()[:16], 0,
        )
    body += b"\xeb\xeb" + b"\xff" * 14 + hashlib.md5(body).digest()
    with open(dst, "wb") as f:
        f.write(body.ljust(0xC00, b"\xff"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
