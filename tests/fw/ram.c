/* RAM app for `esptool load-ram`: says so on UART0 and spins. */
#include <stdint.h>

#define UART0_FIFO (*(volatile uint32_t *)0x60000000)

int main(void) {
    for (const char *s = "ram-app up\r\n"; *s; s++) UART0_FIFO = (uint8_t)*s;
    for (;;) {}
}

__attribute__((naked, section(".text.entry"))) void _start(void) {
    __asm__ volatile("la sp, _stack_top\n call main\n 1: j 1b\n");
}
