/* Bare-metal UART0 output and input, SYSTIMER time and the LED GPIO. */
#include "hal.h"
#include "soc.h"

#define LED_GPIO 8 /* ESP32-C3-DevKitM-1 RGB LED data pin; a plain LED here */

void uart_putc(char c) {
    while (UART_TXFIFO_CNT(UART0_STATUS_REG) >= 126) {
    }
    UART0_FIFO_REG = (uint8_t)c;
}

void uart_puts(const char *s) {
    while (*s) uart_putc(*s++);
}

void uart_putu(uint32_t v) {
    char buf[11];
    int i = 0;
    do {
        buf[i++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (i) uart_putc(buf[--i]);
}

void uart_puthex(uint32_t v) {
    static const char digits[] = "0123456789abcdef";
    uart_puts("0x");
    for (int shift = 28; shift >= 0; shift -= 4) uart_putc(digits[(v >> shift) & 0xF]);
}

/* The next byte in UART0's RX FIFO, or -1 if it is empty: the count in
   UART_STATUS_REG, then one read of the FIFO register per byte (ESP-IDF's
   uart_ll_get_rxfifo_len and uart_ll_read_rxfifo). */
int uart_getc(void) {
    if (!UART_RXFIFO_CNT(UART0_STATUS_REG)) return -1;
    return (int)(UART0_FIFO_REG & 0xFF);
}

uint64_t systimer_ticks(void) {
    SYSTIMER_UNIT0_OP_REG = SYSTIMER_UNIT0_UPDATE;
    while (!(SYSTIMER_UNIT0_OP_REG & SYSTIMER_UNIT0_VALUE_VALID)) {
    }
    uint32_t lo = SYSTIMER_UNIT0_VALUE_LO_REG;
    uint32_t hi = SYSTIMER_UNIT0_VALUE_HI_REG;
    return ((uint64_t)hi << 32) | lo;
}

uint32_t millis(void) {
    return (uint32_t)(systimer_ticks() / SYSTIMER_TICKS_PER_MS);
}

/* The SYSTIMER count `ms` from now, for delay_until. */
uint64_t deadline_ms(uint32_t ms) {
    return systimer_ticks() + (uint64_t)ms * SYSTIMER_TICKS_PER_MS;
}

void delay_ms(uint32_t ms) {
    delay_until(deadline_ms(ms));
}

void delay_until(uint64_t ticks) {
    while (systimer_ticks() < ticks) {
    }
}

void led_init(void) {
    GPIO_ENABLE_W1TS_REG = 1u << LED_GPIO;
}

void led_set(int on) {
    if (on)
        GPIO_OUT_W1TS_REG = 1u << LED_GPIO;
    else
        GPIO_OUT_W1TC_REG = 1u << LED_GPIO;
}

/* ESP-IDF log format, so monitors colour and filter it: "I (123) tag: msg" */
void log_info(const char *tag, const char *msg) {
    uart_puts("I (");
    uart_putu(millis());
    uart_puts(") ");
    uart_puts(tag);
    uart_puts(": ");
    uart_puts(msg);
}

/* ESP-IDF's 2nd stage bootloader leaves the RTC watchdog armed (9 s,
   CONFIG_BOOTLOADER_WDT_TIME_MS) for the app to disable, as ESP-IDF's own
   start-up code does; a bare-metal app that does not is reset by it. */
void rtc_wdt_disable(void) {
    RTC_CNTL_WDTWPROTECT_REG = RTC_CNTL_WDT_WKEY_VALUE;
    RTC_CNTL_WDTCONFIG0_REG &= ~RTC_CNTL_WDT_EN;
    RTC_CNTL_WDTWPROTECT_REG = 0;
}
