"""Registers the ROM loader exposes through READ_REG/WRITE_REG.

Only what esptool reads for an ESP32-C3 is modelled: eFuse words (MAC,
revision, flash capacity), SPI1 user commands (flash id, SFDP, status; the
flash answers only once the ROM has attached it, as on a real C3), the
watchdogs (shared with the app's CPU) and the reset cause. Everything else
is a plain 32-bit store that reads back what was written (0 if never
written), which is what the silicon does for RW registers.
"""

from __future__ import annotations

from dataclasses import dataclass

from fbuild_watch.sim.watchdog import Watchdogs

EFUSE_BASE = 0x60008800
MAC0 = EFUSE_BASE + 0x44
MAC1 = EFUSE_BASE + 0x48
BLK1_W3 = EFUSE_BASE + 0x50
BLK1_W4 = EFUSE_BASE + 0x54
BLK1_W5 = EFUSE_BASE + 0x58
SPI0 = 0x60002000
SPI_CMD = SPI0 + 0x00
SPI_ADDR = SPI0 + 0x04
SPI_USR2 = SPI0 + 0x20
SPI_W0 = SPI0 + 0x58
SPI_CMD_USR = 1 << 18
UART_CLKDIV = 0x60000014
RTC_CNTL_RESET_STATE = 0x60008038  # RESET_CAUSE_PROCPU in bits 5:0


@dataclass(frozen=True)
class ChipIdentity:
    """What makes one virtual board distinguishable from another."""

    mac: bytes = bytes.fromhex("58cf79a1b2c3")  # Espressif OUI 58:cf:79
    major_rev: int = 0
    minor_rev: int = 4

    def efuse_words(self) -> dict[int, int]:
        m = self.mac
        return {
            MAC0: int.from_bytes(m[2:6], "big"),
            MAC1: int.from_bytes(m[0:2], "big"),
            BLK1_W3: (self.minor_rev & 0x7) << 18,
            BLK1_W4: 2,  # flash vendor GD
            BLK1_W5: ((self.major_rev & 0x3) << 24) | (((self.minor_rev >> 3) & 1) << 23),
        }


# A minimal SFDP header: signature "SFDP", revision 1.6, one parameter header.
_SFDP = b"SFDP\x06\x01\x00\xff\x00\x06\x01\x10\x30\x00\x00\xff"


class RegisterFile:
    def __init__(self, identity: ChipIdentity) -> None:
        self.identity = identity
        self.values: dict[int, int] = dict(identity.efuse_words())
        self.values[UART_CLKDIV] = 0x15B  # 40 MHz APB / 115200
        self.status_reg = 0
        self.watchdogs = Watchdogs()
        self.reset_cause = 1  # the ROM's RESET_REASON code (boot.RESET_REASONS)
        # JEDEC id of the attached flash, None until SPI_ATTACH (or the
        # stub's own attach): the ROM leaves the SPI pins unconfigured.
        self.attached_jedec: int | None = None

    def attach_flash(self, jedec_id: int) -> None:
        self.attached_jedec = jedec_id & 0xFFFFFF

    def detach_flash(self) -> None:
        self.attached_jedec = None

    def read(self, addr: int) -> int:
        addr &= ~3
        if Watchdogs.owns(addr):
            return self.watchdogs.read(addr)
        if addr == RTC_CNTL_RESET_STATE:
            return self.reset_cause & 0x3F
        return self.values.get(addr, 0)

    def write(self, addr: int, value: int, mask: int = 0xFFFFFFFF) -> None:
        addr &= ~3
        if Watchdogs.owns(addr):
            old_wdt = self.watchdogs.read(addr)
            self.watchdogs.write(addr, (old_wdt & ~mask) | (value & mask))
            return
        old = self.values.get(addr, 0)
        new = (old & ~mask) | (value & mask)
        self.values[addr] = new & 0xFFFFFFFF
        if addr == SPI_CMD and new & SPI_CMD_USR:
            self._spi_user_command()

    def _spi_user_command(self) -> None:
        opcode = self.values.get(SPI_USR2, 0) & 0xFF
        addr = self.values.get(SPI_ADDR, 0)
        jedec = self.attached_jedec
        if jedec is None:
            # No flash on the bus yet: MISO idles high (esptool then reports
            # "Device: ffff" and "Detected flash size: Unknown").
            result = 0xFFFFFFFF
        elif opcode == 0x9F:  # RDID: bytes on the wire in order, mfr first
            result = (jedec >> 16) | (jedec & 0xFF00) | ((jedec & 0xFF) << 16)
        elif opcode == 0x5A:  # RDSFDP
            chunk = (
                (_SFDP + b"\xff" * 64)[addr & 0x3F : (addr & 0x3F) + 4]
                if addr < 64
                else b"\xff" * 4
            )
            result = int.from_bytes(chunk, "little")
        elif opcode in (0x05, 0x35, 0x15):  # RDSR, RDSR2, RDSR3
            result = 0
        else:
            result = self.values.get(SPI_W0, 0)
        self.values[SPI_W0] = result
        self.values[SPI_CMD] &= ~SPI_CMD_USR  # the controller finished the command
