#pragma once
#include <stdint.h>

void uart_putc(char c);
void uart_puts(const char *s);
void uart_putu(uint32_t v);
void uart_puthex(uint32_t v);
int uart_getc(void);
uint64_t systimer_ticks(void);
uint32_t millis(void);
void delay_ms(uint32_t ms);
uint64_t deadline_ms(uint32_t ms);
void delay_until(uint64_t ticks);
void led_init(void);
void rtc_wdt_disable(void);
void led_set(int on);
void log_info(const char *tag, const char *msg);
