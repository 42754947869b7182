"""The serial download protocol of the ESP32-C3 ROM and of esptool's stub.

One `LoaderSession` lives from "waiting for download" until the next reset.
It starts as the ROM (4 status bytes, 1 KiB flash blocks, ASCII MD5) and
becomes the stub once the exact stub esptool ships has been uploaded and
started with MEM_END (2 status bytes, 16 KiB blocks, raw MD5, extra
commands). Facts: shared/notes/esp-serial-protocol.md and esptool's source.
"""

from __future__ import annotations

import base64
import json
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import esptool

from fbuild_watch.sim.flash import PAGE, SECTOR, FlashRangeError

if TYPE_CHECKING:
    from fbuild_watch.sim.flash import SpiFlash
    from fbuild_watch.sim.regs import RegisterFile
    from fbuild_watch.sim.timing import Timing

# Commands
FLASH_BEGIN, FLASH_DATA, FLASH_END = 0x02, 0x03, 0x04
MEM_BEGIN, MEM_END, MEM_DATA = 0x05, 0x06, 0x07
SYNC, WRITE_REG, READ_REG = 0x08, 0x09, 0x0A
SPI_SET_PARAMS, SPI_ATTACH, READ_FLASH_SLOW, CHANGE_BAUDRATE = 0x0B, 0x0D, 0x0E, 0x0F
FLASH_DEFL_BEGIN, FLASH_DEFL_DATA, FLASH_DEFL_END = 0x10, 0x11, 0x12
SPI_FLASH_MD5, GET_SECURITY_INFO = 0x13, 0x14
ERASE_FLASH, ERASE_REGION, READ_FLASH, RUN_USER_CODE = 0xD0, 0xD1, 0xD2, 0xD3

COMMAND_NAMES = {
    v: k
    for k, v in dict(
        FLASH_BEGIN=FLASH_BEGIN,
        FLASH_DATA=FLASH_DATA,
        FLASH_END=FLASH_END,
        MEM_BEGIN=MEM_BEGIN,
        MEM_END=MEM_END,
        MEM_DATA=MEM_DATA,
        SYNC=SYNC,
        WRITE_REG=WRITE_REG,
        READ_REG=READ_REG,
        SPI_SET_PARAMS=SPI_SET_PARAMS,
        SPI_ATTACH=SPI_ATTACH,
        READ_FLASH_SLOW=READ_FLASH_SLOW,
        CHANGE_BAUDRATE=CHANGE_BAUDRATE,
        FLASH_DEFL_BEGIN=FLASH_DEFL_BEGIN,
        FLASH_DEFL_DATA=FLASH_DEFL_DATA,
        FLASH_DEFL_END=FLASH_DEFL_END,
        SPI_FLASH_MD5=SPI_FLASH_MD5,
        GET_SECURITY_INFO=GET_SECURITY_INFO,
        ERASE_FLASH=ERASE_FLASH,
        ERASE_REGION=ERASE_REGION,
        READ_FLASH=READ_FLASH,
        RUN_USER_CODE=RUN_USER_CODE,
    ).items()
}

# Error codes (second status byte)
ERR_INVALID_MESSAGE = 0x05
ERR_FAILED_TO_ACT = 0x06
ERR_BAD_CHECKSUM = 0x07
ERR_FLASH_WRITE = 0x08
ERR_FLASH_READ = 0x09
ERR_READ_LENGTH = 0x0A
ERR_DEFLATE = 0x0B

CHECKSUM_SEED = 0xEF
ROM_SYNC_VALUE = 0x20120707  # the SYNC payload's first word, echoed by the ROM
ESP32C3_CHIP_ID = 5


class LoaderError(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class BoardSide(Protocol):
    """What the protocol needs from the board around it."""

    flash: SpiFlash
    regs: RegisterFile
    timing: Timing

    def send_frame(self, payload: bytes) -> None: ...
    def pace(self, seconds: float) -> None: ...
    def set_uart_baud(self, baud: int) -> None: ...
    def start_ram_app(self, segments: list[tuple[int, bytes]], entry: int) -> None: ...
    def boot_from_flash(self) -> None: ...
    def count_command(self, name: str) -> None: ...


@dataclass(frozen=True)
class KnownStub:
    version: str
    text_start: int
    text: bytes
    data_start: int
    data: bytes
    entry: int


def load_known_stubs() -> list[KnownStub]:
    """The ESP32-C3 stubs of the installed esptool, to recognise an upload."""
    root = Path(esptool.__file__).parent / "targets" / "stub_flasher"
    stubs = []
    for json_path in sorted(root.glob("*/esp32c3.json")):
        doc = json.loads(json_path.read_text())
        stubs.append(
            KnownStub(
                version=json_path.parent.name,
                text_start=doc["text_start"],
                text=base64.b64decode(doc["text"]),
                data_start=doc["data_start"],
                data=base64.b64decode(doc["data"]),
                entry=doc["entry"],
            )
        )
    return stubs


@dataclass
class _Download:
    """State of a FLASH_BEGIN / FLASH_DEFL_BEGIN in progress."""

    offset: int
    size: int
    block_size: int
    blocks: int
    compressed: bool
    next_seq: int = 0
    written: int = 0
    inflater: zlib._Decompress | None = None
    erased_to: int = 0  # stub erases lazily, ahead of the write pointer


@dataclass
class _MemLoad:
    addr: int
    size: int
    block_size: int
    blocks: int
    next_seq: int = 0
    data: bytearray = field(default_factory=bytearray)


@dataclass
class _FlashRead:
    offset: int
    length: int
    packet: int
    max_in_flight: int
    sent: int = 0
    acked: int = 0
    md5_sent: bool = False


class LoaderSession:
    def __init__(self, board: BoardSide, stubs: list[KnownStub]) -> None:
        self.board = board
        self.stubs = stubs
        board.regs.detach_flash()  # a reset ROM has not attached the SPI flash yet
        self.is_stub = False
        self.stub_version: str | None = None
        self._download: _Download | None = None
        self._mem: _MemLoad | None = None
        self._mem_segments: dict[int, bytes] = {}
        self._read: _FlashRead | None = None
        # Flash work the stub does in the background while the next blocks
        # are still on the wire (it acks data blocks at once).
        self.backlog_s = 0.0
        self._handlers: dict[int, Callable[[bytes], tuple[int, bytes]]] = {
            FLASH_BEGIN: self._flash_begin,
            FLASH_DATA: self._flash_data,
            FLASH_END: self._flash_end,
            MEM_BEGIN: self._mem_begin,
            MEM_DATA: self._mem_data,
            WRITE_REG: self._write_reg,
            READ_REG: self._read_reg,
            SPI_SET_PARAMS: self._spi_set_params,
            SPI_ATTACH: self._spi_attach,
            READ_FLASH_SLOW: self._read_flash_slow,
            FLASH_DEFL_BEGIN: self._flash_defl_begin,
            FLASH_DEFL_DATA: self._flash_data,
            FLASH_DEFL_END: self._flash_end,
            SPI_FLASH_MD5: self._md5,
            GET_SECURITY_INFO: self._security_info,
        }
        self._stub_only: dict[int, Callable[[bytes], tuple[int, bytes]]] = {
            ERASE_FLASH: self._erase_flash,
            ERASE_REGION: self._erase_region,
            READ_FLASH: self._read_flash,
        }

    # -- framing ---------------------------------------------------------
    @property
    def status_len(self) -> int:
        return 2 if self.is_stub else 4

    def _respond(self, op: int, value: int = 0, data: bytes = b"", error: int = 0) -> None:
        status = bytes([1 if error else 0, error]) + b"\0" * (self.status_len - 2)
        body = data + status
        self.board.send_frame(struct.pack("<BBHI", 0x01, op, len(body), value) + body)

    def handle_frame(self, frame: bytes) -> None:
        if self._read is not None:  # READ_FLASH: the host acks with raw u32 frames
            self._read_ack(frame)
            return
        if len(frame) < 8 or frame[0] != 0x00:
            return  # not a request: the ROM ignores it
        _, op, length, checksum = struct.unpack_from("<BBHI", frame)
        data = frame[8:]
        name = COMMAND_NAMES.get(op, f"0x{op:02x}")
        self.board.count_command(name)
        self.board.pace(self.board.timing.command_latency_s)
        if op not in (FLASH_DATA, FLASH_DEFL_DATA) and self.backlog_s:
            self.board.pace(self.backlog_s)  # anything else waits for the flash
            self.backlog_s = 0.0
        if len(data) != length:
            self._respond(op, error=ERR_INVALID_MESSAGE)
            return
        if op == SYNC:
            self._sync(data)
            return
        if op == CHANGE_BAUDRATE:
            self._change_baud(data)
            return
        if op == MEM_END:
            self._mem_end(data)
            return
        if op == RUN_USER_CODE and self.is_stub:
            self.board.boot_from_flash()
            return
        handler = self._handlers.get(op) or (self._stub_only.get(op) if self.is_stub else None)
        if handler is None:
            self._respond(op, error=ERR_INVALID_MESSAGE)
            return
        if op in (FLASH_DATA, FLASH_DEFL_DATA, MEM_DATA) and len(data) >= 16:
            calc = CHECKSUM_SEED
            for b in data[16:]:
                calc ^= b
            if calc != checksum & 0xFF:
                self._respond(op, error=ERR_BAD_CHECKSUM)
                return
        try:
            value, payload = handler(data)
        except LoaderError as exc:
            self._respond(op, error=exc.code)
            return
        except (struct.error, ValueError):
            self._respond(op, error=ERR_INVALID_MESSAGE)
            return
        self._respond(op, value, payload)
        if op == READ_FLASH:
            self._pump_read()

    # -- commands --------------------------------------------------------
    def _sync(self, data: bytes) -> None:
        if data != b"\x07\x07\x12\x20" + b"\x55" * 32:
            self._respond(SYNC, error=ERR_INVALID_MESSAGE)
            return
        value = 0 if self.is_stub else ROM_SYNC_VALUE
        for _ in range(8):
            self._respond(SYNC, value)

    def _change_baud(self, data: bytes) -> None:
        new, _old = struct.unpack("<II", data[:8])
        self._respond(CHANGE_BAUDRATE)  # answered at the old rate
        self.board.set_uart_baud(new)

    def _read_reg(self, data: bytes) -> tuple[int, bytes]:
        (addr,) = struct.unpack("<I", data[:4])
        return self.board.regs.read(addr), b""

    def _write_reg(self, data: bytes) -> tuple[int, bytes]:
        if len(data) % 16 or not data:
            raise LoaderError(ERR_INVALID_MESSAGE)
        for i in range(0, len(data), 16):
            addr, value, mask, delay_us = struct.unpack_from("<IIII", data, i)
            self.board.regs.write(addr, value, mask)
            if delay_us:
                self.board.pace(delay_us / 1e6)
        return 0, b""

    def _spi_set_params(self, data: bytes) -> tuple[int, bytes]:
        struct.unpack("<6I", data[:24])
        return 0, b""

    def _spi_attach(self, data: bytes) -> tuple[int, bytes]:
        if len(data) not in (4, 8):
            raise LoaderError(ERR_INVALID_MESSAGE)
        self._attach()
        return 0, b""

    def _attach(self) -> None:
        """From here on the flash answers SPI commands (JEDEC id, SFDP)."""
        self.board.regs.attach_flash(self.board.flash.jedec_id)

    def _security_info(self, data: bytes) -> tuple[int, bytes]:
        # flags, flash_crypt_cnt, 7 key purposes, chip_id, api_version
        info = struct.pack("<IBBBBBBBBII", 0, 0, 0, 0, 0, 0, 0, 0, 0, ESP32C3_CHIP_ID, 0)
        return 0, info

    # flash writes ---------------------------------------------------------
    def _begin(self, data: bytes, compressed: bool) -> _Download:
        if len(data) not in (16, 20):
            raise LoaderError(ERR_INVALID_MESSAGE)
        size, blocks, block_size, offset = struct.unpack_from("<IIII", data)
        flash = self.board.flash
        if offset >= flash.size or offset + size > flash.size:
            raise LoaderError(ERR_FAILED_TO_ACT)
        dl = _Download(offset, size, block_size, blocks, compressed)
        if compressed:
            dl.inflater = zlib.decompressobj()
        if not self.is_stub:
            # The ROM erases the whole range before it answers.
            erase = min(size, flash.size - offset)
            self._erase(offset, erase)
            dl.erased_to = offset + erase
        else:
            dl.erased_to = offset
        return dl

    def absorb(self, wire_s: float) -> None:
        """Wire time of incoming data overlaps the stub's background flash work."""
        self.backlog_s = max(0.0, self.backlog_s - wire_s)

    def _work(self, seconds: float) -> None:
        dl = self._download
        if self.is_stub and dl is not None:
            # the stub acks FLASH_DATA and FLASH_DEFL_DATA at once and does the
            # flash work while the next block arrives (stub_flasher.c cmd_loop)
            self.backlog_s += seconds
        else:
            self.board.pace(seconds)

    def _erase(self, addr: int, length: int) -> None:
        try:
            n = self.board.flash.erase(addr, length)
        except FlashRangeError:
            raise LoaderError(ERR_FAILED_TO_ACT) from None
        self._work(n * self.board.timing.sector_erase_s)

    def _flash_begin(self, data: bytes) -> tuple[int, bytes]:
        self._download = self._begin(data, compressed=False)
        return 0, b""

    def _flash_defl_begin(self, data: bytes) -> tuple[int, bytes]:
        self._download = self._begin(data, compressed=True)
        return 0, b""

    def _flash_data(self, data: bytes) -> tuple[int, bytes]:
        dl = self._download
        if dl is None:
            raise LoaderError(ERR_FAILED_TO_ACT)
        length, seq = struct.unpack_from("<II", data)
        block = data[16:]
        if length != len(block):
            raise LoaderError(ERR_INVALID_MESSAGE)
        if seq != dl.next_seq:
            raise LoaderError(ERR_INVALID_MESSAGE)
        if dl.compressed:
            assert dl.inflater is not None
            try:
                raw = dl.inflater.decompress(block)
            except zlib.error:
                raise LoaderError(ERR_DEFLATE) from None
            self._work(len(raw) / self.board.timing.inflate_bytes_per_s)
        else:
            raw = block
        self._program(dl, raw)
        dl.next_seq += 1
        return 0, b""

    def _program(self, dl: _Download, raw: bytes) -> None:
        flash = self.board.flash
        addr = dl.offset + dl.written
        if self.is_stub:
            # esptool's stub trims the final block: FLASH_DATA pads it with 0xFF
            # to the block size, and writing (erasing) that padding would wipe
            # the sectors after a partial write (stub_write_flash.c)
            raw = raw[: max(0, dl.size - dl.written)]
        if addr + len(raw) > flash.size:
            raise LoaderError(ERR_FLASH_WRITE)
        if self.is_stub and addr + len(raw) > dl.erased_to:
            # The stub erases sector by sector (or 64 KiB blocks) as data comes in.
            end = addr + len(raw)
            self._erase(dl.erased_to, end - dl.erased_to)
            dl.erased_to = -(-end // SECTOR) * SECTOR
        flash.program(addr, raw)
        dl.written += len(raw)
        pages = -(-len(raw) // PAGE)
        self._work(pages * self.board.timing.page_program_s)

    def _flash_end(self, data: bytes) -> tuple[int, bytes]:
        (stay,) = struct.unpack_from("<I", data) if len(data) >= 4 else (1,)
        self._download = None
        if not stay:
            self.board.boot_from_flash()
        return 0, b""

    # flash reads ----------------------------------------------------------
    def _md5(self, data: bytes) -> tuple[int, bytes]:
        addr, size = struct.unpack_from("<II", data)
        try:
            digest = self.board.flash.md5(addr, size)
        except FlashRangeError:
            raise LoaderError(ERR_FLASH_READ) from None
        self.board.pace(size / self.board.timing.md5_bytes_per_s)
        return 0, (digest if self.is_stub else digest.hex().encode())

    def _read_flash_slow(self, data: bytes) -> tuple[int, bytes]:
        addr, length = struct.unpack_from("<II", data)
        if length > 64:
            raise LoaderError(ERR_READ_LENGTH)
        try:
            chunk = self.board.flash.read(addr, length)
        except FlashRangeError:
            raise LoaderError(ERR_FLASH_READ) from None
        return 0, chunk.ljust(64, b"\xff")

    def _read_flash(self, data: bytes) -> tuple[int, bytes]:
        offset, length, packet, max_in_flight = struct.unpack_from("<IIII", data)
        if offset + length > self.board.flash.size or packet == 0:
            raise LoaderError(ERR_FLASH_READ)
        self._read = _FlashRead(offset, length, packet, max(1, max_in_flight))
        return 0, b""

    def _pump_read(self) -> None:
        rd = self._read
        if rd is None:
            return
        flash = self.board.flash
        while rd.sent < rd.length and (rd.sent - rd.acked) < rd.packet * rd.max_in_flight:
            n = min(rd.packet, rd.length - rd.sent)
            self.board.pace(n / self.board.timing.md5_bytes_per_s)
            self.board.send_frame(flash.read(rd.offset + rd.sent, n))
            rd.sent += n
        if rd.acked >= rd.length and not rd.md5_sent:
            rd.md5_sent = True
            self.board.send_frame(flash.md5(rd.offset, rd.length))
            self._read = None

    def _read_ack(self, frame: bytes) -> None:
        rd = self._read
        assert rd is not None
        if len(frame) != 4:
            self._read = None  # protocol broken: the stub gives up on the read
            return
        (rd.acked,) = struct.unpack("<I", frame)
        self._pump_read()

    # erase (stub only) ---------------------------------------------------
    def _erase_flash(self, data: bytes) -> tuple[int, bytes]:
        self._erase(0, self.board.flash.size)
        return 0, b""

    def _erase_region(self, data: bytes) -> tuple[int, bytes]:
        offset, size = struct.unpack_from("<II", data)
        if offset % SECTOR or size % SECTOR:
            raise LoaderError(ERR_INVALID_MESSAGE)
        self._erase(offset, size)
        return 0, b""

    # RAM loads and the stub ------------------------------------------------
    def _mem_begin(self, data: bytes) -> tuple[int, bytes]:
        size, blocks, block_size, addr = struct.unpack_from("<IIII", data)
        self._mem = _MemLoad(addr, size, block_size, blocks)
        return 0, b""

    def _mem_data(self, data: bytes) -> tuple[int, bytes]:
        mem = self._mem
        if mem is None:
            raise LoaderError(ERR_FAILED_TO_ACT)
        length, seq = struct.unpack_from("<II", data)
        block = data[16:]
        if length != len(block) or seq != mem.next_seq:
            raise LoaderError(ERR_INVALID_MESSAGE)
        mem.data += block
        mem.next_seq += 1
        if mem.next_seq == mem.blocks:
            self._mem_segments[mem.addr] = bytes(mem.data[: mem.size])
            self._mem = None
        return 0, b""

    def _mem_end(self, data: bytes) -> None:
        no_entry, entry = struct.unpack_from("<II", data)
        self._respond(MEM_END)
        if no_entry:
            return
        segments = dict(self._mem_segments)
        self._mem_segments.clear()
        for stub in self.stubs:
            if (
                entry == stub.entry
                and segments.get(stub.text_start) == stub.text
                and segments.get(stub.data_start, b"")[: len(stub.data)] == stub.data
            ):
                self.is_stub = True
                self.stub_version = stub.version
                self._attach()  # the stub attaches the flash itself at start
                self.board.count_command("stub_started")
                self.board.send_frame(b"OHAI")
                return
        # Not a stub we know: run the uploaded code as a RAM app.
        self.board.start_ram_app(sorted(segments.items()), entry)
