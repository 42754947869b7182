/* Test app that crashes on purpose, one way per build (CRASH_KIND), under a
   real call chain main -> level1 -> level2 so that the decoder's unwinding
   can be checked frame by frame:
     1 abort(): prints ESP-IDF's "abort() was called at PC ..." line, then
       executes an illegal instruction (the virtual board's panic dump)
     2 illegal instruction in level2
     3 load access fault in level2 (a read through a NULL pointer)
     4 stack overflow: unbounded recursion until the stack runs out */
#include <stdint.h>

#ifndef CRASH_KIND
#define CRASH_KIND 1
#endif

typedef struct {
    uint32_t magic, secure_version, reserv1[2];
    char version[32], project_name[32], time[16], date[16], idf_ver[32];
    uint8_t app_elf_sha256[32];
    uint8_t reserv[80];
} esp_app_desc_t;

__attribute__((section(".rodata_desc"), used)) const esp_app_desc_t esp_app_desc = {
    .magic = 0xABCD5432, .version = "crashes", .project_name = "fw-crashes", .idf_ver = "none",
};

#define UART0_FIFO (*(volatile uint32_t *)0x60000000)

static void puts_uart(const char *s) {
    for (; *s; s++) UART0_FIFO = (uint8_t)*s;
}

static void put_hex(uint32_t v) {
    for (int i = 28; i >= 0; i -= 4) UART0_FIFO = (uint8_t)"0123456789abcdef"[(v >> i) & 0xf];
}

volatile int sink;
volatile int *volatile null_ptr;

/* ESP-IDF's abort(): the PC printed is the caller's, 3 bytes back into the call */
__attribute__((noinline, noreturn)) void abort(void) {
    uint32_t pc = (uint32_t)(uintptr_t)__builtin_return_address(0) - 3;
    puts_uart("abort() was called at PC 0x");
    put_hex(pc);
    puts_uart(" on core 0\r\n");
    __asm__ volatile("unimp");
    __builtin_unreachable();
}

__attribute__((noinline)) int recurse(int n) {
    volatile char pad[64];
    pad[0] = (char)n;
    return recurse(n + 1) + pad[0];
}

__attribute__((noinline)) void level2(int k) {
    if (CRASH_KIND == 1) abort();
    if (CRASH_KIND == 2) __asm__ volatile("unimp");
    if (CRASH_KIND == 3) sink = *null_ptr;
    if (CRASH_KIND == 4) sink = recurse(k);
    sink += k;
}

__attribute__((noinline)) void level1(int k) {
    level2(k + 1);
    sink += 2;
}

int main(void) {
    puts_uart("about to crash\r\n");
    level1(sink);
    for (;;) {}
}

__attribute__((naked, section(".text.entry"))) void _start(void) {
    __asm__ volatile("la sp, _stack_top\n call main\n 1: j 1b\n");
}
