/* RAM app (esptool load-ram) that calls the C3 mask ROM's functions at their
   ROM addresses (romcalls.ld), the way ESP-IDF RAM apps and esptool's own
   test images do. */
#include <stdint.h>

int ets_printf(const char *fmt, ...);
void ets_install_putc1(void (*putc)(char));
void ets_install_uart_printf(void);
void ets_delay_us(uint32_t us);
int uart_tx_one_char(uint8_t c);
int uart_rx_one_char(uint8_t *c);
void uart_tx_flush(uint8_t uart_no);
uint32_t rtc_get_reset_reason(int cpu_no);
void software_reset(void);
/* the ROM's libc, named apart so the compiler cannot inline its own */
void *rom_memset(void *dst, int c, uint32_t n);
void *rom_memcpy(void *dst, const void *src, uint32_t n);
uint32_t rom_strlen(const char *s);
int rom_strcmp(const char *a, const char *b);

static char buf[32];

void _start(void) {
    /* wait for the host (esptool has closed the port by then) */
    uint8_t c;
    while (uart_rx_one_char(&c) != 0) {
    }
    ets_printf("got %c\n", c);
    ets_printf("fmt: %d %5u|%-4x|%08X|%s|%c|%%|%p|%lld\n", -42, 7u, 0xab, 0xbeefu, "str", 'Z',
               (void *)0x3fc80000, -5000000000LL);
    rom_memset(buf, 'a', 5);
    rom_memcpy(buf + 5, "bcd", 4);
    ets_printf("mem: %s %u %d %d\n", buf, rom_strlen(buf), rom_strcmp(buf, "aaaaabcd"),
               rom_strcmp(buf, "b") < 0);
    ets_printf("reset reason %u\n", rtc_get_reset_reason(0));
    ets_install_putc1(0);
    ets_printf("hidden\n");
    ets_install_uart_printf();
    uart_tx_one_char('!');
    uart_tx_one_char('\n');
    uart_tx_flush(0);
    ets_printf("delay start\n");
    ets_delay_us(300000);
    ets_printf("delay end\n");
    uart_tx_flush(0);
    software_reset();
    for (;;) {
    }
}
