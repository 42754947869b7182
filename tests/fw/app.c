/* Tiny test app: prints a line through UART0 and spins. */
#include <stdint.h>

#ifndef APP_VERSION
#define APP_VERSION "1.0.0"
#endif

typedef struct {
    uint32_t magic, secure_version, reserv1[2];
    char version[32], project_name[32], time[16], date[16], idf_ver[32];
    uint8_t app_elf_sha256[32];
    uint16_t min_efuse_blk_rev_full, max_efuse_blk_rev_full;
    uint8_t mmu_page_size, reserv3[3];
    uint32_t reserv2[18];
} esp_app_desc_t;

__attribute__((section(".rodata_desc"), used)) const esp_app_desc_t esp_app_desc = {
    .magic = 0xABCD5432,
    .version = APP_VERSION,
    .project_name = "fw-test",
    .time = "12:00:00",
    .date = "Nov 21 2026",
    .idf_ver = "none",
    .mmu_page_size = 16,
};

#define UART0_FIFO (*(volatile uint32_t *)0x60000000)

static void puts_uart(const char *s) {
    while (*s) UART0_FIFO = (uint8_t)*s++;
}

int main(void) {
    /* ESP-IDF's bootloader leaves the RTC watchdog armed (9 s) for the app's
       start-up to disable, as ESP-IDF's own start-up code does */
    *(volatile uint32_t *)0x600080A8 = 0x50D83AA1; /* RTC_CNTL_WDTWPROTECT: unlock */
    *(volatile uint32_t *)0x60008090 &= ~(1u << 31); /* RTC_CNTL_WDTCONFIG0: WDT_EN off */
    *(volatile uint32_t *)0x600080A8 = 0;
    puts_uart("fw-test " APP_VERSION " up\r\n");
    for (;;) {}
}

__attribute__((naked, section(".text.entry"))) void _start(void) {
    __asm__ volatile("la sp, _stack_top\n call main\n 1: j 1b\n");
}
