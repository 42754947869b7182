/* blink-c3: the example firmware for fbuild-watch.

   Prints a boot line with its version, then a counter every 500 ms while it
   toggles the LED. Built with CRASH=1 it writes through a NULL pointer on
   the third tick, to show panic decoding in the monitor.

   A console on UART0 (`send TEXT` / `s` in fbuild watch): `v` prints the
   version line again, `c` crashes on purpose the way CRASH=1 does; other
   bytes, such as the CR LF ending a sent line, are ignored. */
#include <stdint.h>
#include "hal.h"
#include "version.h"

#ifndef CRASH
#define CRASH 0
#endif

extern const uint8_t asset_blob[];
extern const uint8_t asset_blob_end[];

static uint32_t asset_checksum(void) {
    uint32_t sum = 0;
    for (const uint8_t *p = asset_blob; p < asset_blob_end; p++) sum = sum * 31u + *p;
    return sum;
}

__attribute__((noinline)) static void store_sample(volatile uint32_t *slot, uint32_t value) {
    *slot = value; /* with CRASH=1, slot is NULL: Store access fault here */
}

#define TICK_MS 500
#define CONSOLE_POLL_MS 10 /* a key is answered within 10 ms */

static void version_line(void) {
    log_info("blink", "blink-c3 version " APP_VERSION "\r\n");
}

/* Reads what the console has received; 1 if it asked for a crash. */
static int serve_console(void) {
    int crash = 0;
    for (int c; (c = uart_getc()) >= 0;) {
        if (c == 'v')
            version_line();
        else if (c == 'c')
            crash = 1;
    }
    return crash;
}

int main(void) {
    rtc_wdt_disable();
    led_init();
    uart_puts("\r\n");
    version_line();
    uint32_t size = (uint32_t)(asset_blob_end - asset_blob);
    if (size) {
        log_info("blink", "asset ");
        uart_putu(size);
        uart_puts(" bytes, checksum ");
        uart_puthex(asset_checksum());
        uart_puts("\r\n");
    }
    static volatile uint32_t sample;
    volatile uint32_t *slot = &sample;
    for (uint32_t n = 0;; n++) {
        led_set(n & 1);
        log_info("blink", "counter ");
        uart_putu(n);
        uart_puts(n & 1 ? " led on\r\n" : " led off\r\n");
        if (CRASH && n == 2) slot = 0;
        store_sample(slot, n);
        /* one deadline per tick, so the console polls do not stretch it */
        uint64_t end = deadline_ms(TICK_MS);
        while (systimer_ticks() < end) {
            if (serve_console()) store_sample(0, n); /* CRASH=1's fault, on demand */
            uint64_t poll = deadline_ms(CONSOLE_POLL_MS);
            delay_until(poll < end ? poll : end);
        }
    }
}

/* Entry point: the bootloader jumps here with the app's segments loaded. */
extern uint32_t _bss_start[], _bss_end[];

__attribute__((naked, section(".text.entry"))) void call_start_cpu0(void) {
    __asm__ volatile(
        "la sp, _stack_top\n"
        "la t0, _bss_start\n"
        "la t1, _bss_end\n"
        "1: bgeu t0, t1, 2f\n"
        "sw zero, 0(t0)\n"
        "addi t0, t0, 4\n"
        "j 1b\n"
        "2: call main\n"
        "3: j 3b\n");
}
