"""The ESP32-C3's hardware watchdogs: RTC WDT, TG0/TG1 MWDT, super WDT.

Registers, write-protect keys and bit fields are ESP-IDF's
components/soc/esp32c3/register/soc/rtc_cntl_reg.h and timer_group_reg.h;
stage actions are hal/wdt_types.h (0 off, 1 interrupt, 2 CPU reset,
3 system reset, 4 RTC reset, RWDT only). Time is the board's real clock, so a
timeout takes as long as on the chip. The interrupt action is not modelled
(no interrupt controller): such a stage passes and the next one acts.
Both sides of the board reach these registers: the ROM loader's
READ_REG/WRITE_REG (esptool's `--after watchdog-reset`) and app code.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

RTC_CNTL = 0x60008000
RWDT_CONFIG0 = RTC_CNTL + 0x90
RWDT_CONFIG1 = RTC_CNTL + 0x94  # stage 0..3 hold: CONFIG1..CONFIG4
RWDT_FEED = RTC_CNTL + 0xA4
RWDT_WPROTECT = RTC_CNTL + 0xA8
SWD_CONF = RTC_CNTL + 0xAC
SWD_WPROTECT = RTC_CNTL + 0xB0
TIMG_BASES = (0x6001F000, 0x60020000)
TIMG_WDTCONFIG0 = 0x48
TIMG_WDTCONFIG1 = 0x4C  # prescaler in bits 31:16
TIMG_WDTCONFIG2 = 0x50  # stage 0..3 hold: CONFIG2..CONFIG5
TIMG_WDTFEED = 0x60
TIMG_WDTWPROTECT = 0x64

WDT_WKEY = 0x50D83AA1  # RTC_CNTL_WDT_WKEY_VALUE, also the TIMG key
SWD_WKEY = 0x8F1D312A  # RTC_CNTL_SWD_WKEY_VALUE
WDT_EN = 1 << 31
RWDT_FEED_BIT = 1 << 31
RWDT_CHIP_RESET_EN = 1 << 8
SWD_AUTO_FEED_EN = 1 << 31
SWD_DISABLE = 1 << 30
SWD_FEED = 1 << 29
TIMG_WDT_USE_XTAL = 1 << 21

STAGE_OFF, STAGE_INT, STAGE_RESET_CPU, STAGE_RESET_SYSTEM, STAGE_RESET_RTC = range(5)

# RTC_SLOW_CLK from the internal RC oscillator: ESP-IDF's
# SOC_CLK_RC_SLOW_FREQ_APPROX for the C3 (136 kHz).
SLOW_CLK_HZ = 136_000
APB_HZ = 80_000_000
XTAL_HZ = 40_000_000
# The hardware counts RWDT stage 0 for hold << (1 + EFUSE_WDT_DELAY_SEL)
# cycles (ESP-IDF rwdt_ll_config_stage compensates); the eFuse is 0 here.
RWDT_STAGE0_SHIFT = 1
# The super watchdog's fixed timeout (ESP32-C3 TRM, "Super Watchdog": about
# one second when neither fed nor auto-fed).
SWD_TIMEOUT_S = 1.0
# ESP-IDF's 2nd stage bootloader arms the RTC WDT for the app's start-up
# (CONFIG_BOOTLOADER_WDT_ENABLE, CONFIG_BOOTLOADER_WDT_TIME_MS = 9000, stage 0
# RESET_RTC, bootloader_init.c bootloader_config_wdt); ESP-IDF's app start-up
# disables it unless CONFIG_BOOTLOADER_WDT_DISABLE_IN_USER_CODE.
BOOTLOADER_WDT_MS = 9000
# Register reset values that matter (the headers' "default:" fields).
_RWDT_HOLD_DEFAULTS = (200000, 80000, 0xFFF, 0xFFF)
_TIMG_HOLD_DEFAULTS = (26000000, 0x7FFFFFF, 0xFFFFF, 0xFFFFF)
_TIMG_PRESCALE_DEFAULT = 1 << 16

# reset reason keys (boot.RESET_REASONS) per timer and stage action
_RESET_KEYS = {
    ("rwdt", STAGE_RESET_CPU): "rtcwdt_cpu",
    ("rwdt", STAGE_RESET_SYSTEM): "rtcwdt_sys",
    ("rwdt", STAGE_RESET_RTC): "rtcwdt_rtc",
    ("tg0", STAGE_RESET_CPU): "tg0wdt_cpu",
    ("tg0", STAGE_RESET_SYSTEM): "tg0wdt_sys",
    ("tg1", STAGE_RESET_CPU): "tg1wdt_cpu",
    ("tg1", STAGE_RESET_SYSTEM): "tg1wdt_sys",
}


@dataclass
class _Timer:
    """One staged watchdog (RWDT or a timer group's MWDT)."""

    name: str
    config0: int = 0
    holds: list[int] = field(default_factory=list)
    prescale_reg: int = _TIMG_PRESCALE_DEFAULT
    wprotect: int = WDT_WKEY  # the key is the register's reset value: unlocked
    fed_at: float = 0.0

    @property
    def unlocked(self) -> bool:
        return self.wprotect == WDT_WKEY

    def stage_actions(self) -> list[int]:
        c = self.config0
        if self.name == "rwdt":
            acts = [(c >> s) & 7 for s in (28, 25, 22, 19)]
            if c & RWDT_CHIP_RESET_EN:
                # Values past RESET_RTC are undefined; esptool's watchdog_reset
                # writes 5 with CHIP_RESET_EN, which resets the whole chip.
                acts = [STAGE_RESET_RTC if a > STAGE_RESET_RTC else a for a in acts]
            return [a if a <= STAGE_RESET_RTC else STAGE_OFF for a in acts]
        return [(c >> s) & 3 for s in (29, 27, 25, 23)]

    def tick_hz(self) -> float:
        if self.name == "rwdt":
            return float(SLOW_CLK_HZ)
        src = XTAL_HZ if self.config0 & TIMG_WDT_USE_XTAL else APB_HZ
        return src / max(1, self.prescale_reg >> 16)

    def deadline(self) -> tuple[float, str] | None:
        """When the first resetting stage acts, and the reset reason."""
        if not self.config0 & WDT_EN:
            return None
        t = self.fed_at
        hz = self.tick_hz()
        for i, action in enumerate(self.stage_actions()):
            hold = self.holds[i]
            if i == 0 and self.name == "rwdt":
                hold <<= RWDT_STAGE0_SHIFT
            t += hold / hz
            key = _RESET_KEYS.get((self.name, action))
            if key is not None:
                return t, key
        return None


class Watchdogs:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.rwdt = _Timer("rwdt")
        self.tg = [_Timer("tg0"), _Timer("tg1")]
        self.swd_conf = 0
        self.swd_wprotect = SWD_WKEY
        self.swd_fed_at = 0.0
        self.chip_reset()

    # -- what each reset and boot path leaves ---------------------------------
    def chip_reset(self) -> None:
        """Every register back to its reset value: all timers stopped and the
        super watchdog fed automatically (the ROM's UART download mode and
        flash boot both leave it so)."""
        now = self.clock()
        self.rwdt = _Timer("rwdt", holds=list(_RWDT_HOLD_DEFAULTS), fed_at=now)
        self.tg = [_Timer(f"tg{i}", holds=list(_TIMG_HOLD_DEFAULTS), fed_at=now) for i in range(2)]
        self.swd_conf = SWD_AUTO_FEED_EN
        self.swd_wprotect = SWD_WKEY
        self.swd_fed_at = now

    def arm_bootloader_rwdt(self, ms: int | None = None) -> None:
        """ESP-IDF's bootloader_config_wdt(): RWDT stage 0 resets the RTC after
        `ms` (default BOOTLOADER_WDT_MS), flash-boot protection off, the
        registers locked again."""
        if ms is None:
            ms = BOOTLOADER_WDT_MS
        r = self.rwdt
        r.config0 = WDT_EN | (STAGE_RESET_RTC << 28) | (7 << 16) | (7 << 13) | (1 << 11) | (1 << 9)
        r.holds[0] = (ms * SLOW_CLK_HZ // 1000) >> RWDT_STAGE0_SHIFT
        r.fed_at = self.clock()
        r.wprotect = 0
        for t in self.tg:
            t.wprotect = 0

    # -- registers --------------------------------------------------------------
    @staticmethod
    def owns(addr: int) -> bool:
        if RWDT_CONFIG0 <= addr <= SWD_WPROTECT:
            return True
        return any(b + TIMG_WDTCONFIG0 <= addr <= b + TIMG_WDTWPROTECT for b in TIMG_BASES)

    def read(self, addr: int) -> int:
        r = self.rwdt
        if addr == RWDT_CONFIG0:
            return r.config0
        if RWDT_CONFIG1 <= addr < RWDT_FEED:
            return r.holds[(addr - RWDT_CONFIG1) // 4]
        if addr == RWDT_WPROTECT:
            return r.wprotect
        if addr == SWD_CONF:
            return self.swd_conf
        if addr == SWD_WPROTECT:
            return self.swd_wprotect
        t, off = self._timg(addr)
        if t is None:
            return 0
        if off == TIMG_WDTCONFIG0:
            return t.config0
        if off == TIMG_WDTCONFIG1:
            return t.prescale_reg
        if TIMG_WDTCONFIG2 <= off < TIMG_WDTFEED:
            return t.holds[(off - TIMG_WDTCONFIG2) // 4]
        if off == TIMG_WDTWPROTECT:
            return t.wprotect
        return 0  # feed registers are write-only

    def write(self, addr: int, value: int) -> None:
        value &= 0xFFFFFFFF
        now = self.clock()
        r = self.rwdt
        if addr == RWDT_WPROTECT:
            r.wprotect = value
        elif addr == SWD_WPROTECT:
            self.swd_wprotect = value
        elif addr == SWD_CONF:
            if self.swd_wprotect == SWD_WKEY:
                if value & SWD_FEED:
                    self.swd_fed_at = now
                if self.swd_conf & SWD_AUTO_FEED_EN and not value & SWD_AUTO_FEED_EN:
                    self.swd_fed_at = now  # auto-feed kept it fed until now
                self.swd_conf = value & ~(SWD_FEED | (1 << 28))  # write-only bits
        elif RWDT_CONFIG0 <= addr <= RWDT_FEED:
            if not r.unlocked:
                return
            if addr == RWDT_CONFIG0:
                if value & WDT_EN and not r.config0 & WDT_EN:
                    r.fed_at = now  # enabling starts the count from zero
                r.config0 = value
            elif addr == RWDT_FEED:
                if value & RWDT_FEED_BIT:
                    r.fed_at = now
            else:
                r.holds[(addr - RWDT_CONFIG1) // 4] = value
        else:
            t, off = self._timg(addr)
            if t is None:
                return
            if off == TIMG_WDTWPROTECT:
                t.wprotect = value
            elif not t.unlocked:
                return
            elif off == TIMG_WDTCONFIG0:
                if value & WDT_EN and not t.config0 & WDT_EN:
                    t.fed_at = now
                t.config0 = value & ~(1 << 22)  # CONF_UPDATE_EN is write-only
            elif off == TIMG_WDTCONFIG1:
                t.prescale_reg = value
            elif off == TIMG_WDTFEED:
                t.fed_at = now
            elif TIMG_WDTCONFIG2 <= off < TIMG_WDTFEED:
                t.holds[(off - TIMG_WDTCONFIG2) // 4] = value

    def _timg(self, addr: int) -> tuple[_Timer | None, int]:
        for i, base in enumerate(TIMG_BASES):
            if base <= addr < base + 0x100:
                return self.tg[i], addr - base
        return None, 0

    # -- time -------------------------------------------------------------------
    def next_deadline(self) -> tuple[float, str] | None:
        """The earliest reset any watchdog will cause if nobody feeds it."""
        found = [d for t in (self.rwdt, *self.tg) if (d := t.deadline()) is not None]
        if not self.swd_conf & (SWD_AUTO_FEED_EN | SWD_DISABLE):
            found.append((self.swd_fed_at + SWD_TIMEOUT_S, "super_wdt"))
        return min(found) if found else None

    def expired(self) -> str | None:
        """The reset reason if a watchdog has fired by now."""
        d = self.next_deadline()
        if d is not None and self.clock() >= d[0]:
            return d[1]
        return None
