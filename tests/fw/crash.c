/* Test app that faults on purpose: a store to address 0 (unmapped). */
#include <stdint.h>

typedef struct {
    uint32_t magic, secure_version, reserv1[2];
    char version[32], project_name[32], time[16], date[16], idf_ver[32];
    uint8_t app_elf_sha256[32];
    uint8_t reserv[80];
} esp_app_desc_t;

__attribute__((section(".rodata_desc"), used)) const esp_app_desc_t esp_app_desc = {
    .magic = 0xABCD5432, .version = "crash", .project_name = "fw-crash", .idf_ver = "none",
};

#define UART0_FIFO (*(volatile uint32_t *)0x60000000)

/* The faulting store is the first instruction at this symbol. */
__attribute__((naked, noinline)) void fault_here(void) {
    __asm__ volatile("sw zero, 0(zero)\n ret\n");
}

int main(void) {
    for (const char *s = "about to crash\r\n"; *s; s++) UART0_FIFO = (uint8_t)*s;
    fault_here();
    for (;;) {}
}

__attribute__((naked, section(".text.entry"))) void _start(void) {
    __asm__ volatile("la sp, _stack_top\n call main\n 1: j 1b\n");
}
