/* Test app for the watchdogs: after "wdt-test ready" it reads one command
   byte from UART0 and sets a watchdog up the way firmware does (registers from
   ESP-IDF soc/esp32c3 rtc_cntl_reg.h and timer_group_reg.h). */
#include <stdint.h>

typedef struct {
    uint32_t magic, secure_version, reserv1[2];
    char version[32], project_name[32], time[16], date[16], idf_ver[32];
    uint8_t app_elf_sha256[32];
    uint8_t reserv[80];
} esp_app_desc_t;

__attribute__((section(".rodata_desc"), used)) const esp_app_desc_t esp_app_desc = {
    .magic = 0xABCD5432, .version = "wdt", .project_name = "fw-wdt", .idf_ver = "none",
};

#define REG(a) (*(volatile uint32_t *)(a))
#define UART0_FIFO REG(0x60000000)
#define UART0_STATUS REG(0x6000001C)
#define SYSTIMER_OP REG(0x60023004)
#define SYSTIMER_LO REG(0x60023044)
#define RWDT_CONFIG0 REG(0x60008090)
#define RWDT_CONFIG1 REG(0x60008094)
#define RWDT_FEED REG(0x600080A4)
#define RWDT_WPROTECT REG(0x600080A8)
#define SWD_CONF REG(0x600080AC)
#define SWD_WPROTECT REG(0x600080B0)
#define TIMG_CONFIG0(b) REG((b) + 0x48)
#define TIMG_CONFIG1(b) REG((b) + 0x4C)
#define TIMG_CONFIG2(b) REG((b) + 0x50)
#define TIMG_FEED(b) REG((b) + 0x60)
#define TIMG_WPROTECT(b) REG((b) + 0x64)
#define TIMG0 0x6001F000u
#define TIMG1 0x60020000u
#define WDT_WKEY 0x50D83AA1u
#define SWD_WKEY 0x8F1D312Au

static void puts_uart(const char *s) {
    while (*s) UART0_FIFO = (uint8_t)*s++;
}

static uint32_t now_ms(void) {
    SYSTIMER_OP = 1u << 30;
    return SYSTIMER_LO / 16000u;
}

static void wait_ms(uint32_t ms) {
    uint32_t end = now_ms() + ms;
    while ((int32_t)(now_ms() - end) < 0) {
    }
}

/* MWDT at 80 MHz / 40000 = 2 kHz; stage 0 acts after 200 ms */
static void mwdt_arm(uint32_t base, uint32_t action) {
    TIMG_WPROTECT(base) = WDT_WKEY;
    TIMG_CONFIG1(base) = 40000u << 16;
    TIMG_CONFIG2(base) = 400;
    TIMG_CONFIG0(base) = (1u << 31) | (action << 29) | (1u << 22);
    TIMG_FEED(base) = 1;
    TIMG_WPROTECT(base) = 0;
}

static void mwdt_feed(uint32_t base) {
    TIMG_WPROTECT(base) = WDT_WKEY;
    TIMG_FEED(base) = 1;
    TIMG_WPROTECT(base) = 0;
}

int main(void) {
    puts_uart("wdt-test ready\r\n");
    while ((UART0_STATUS & 0x3FF) == 0) {
        wait_ms(1);
    }
    char cmd = (char)UART0_FIFO;
    switch (cmd) {
    case 'h': /* TG0 stage 0 resets the system; nobody feeds it */
        mwdt_arm(TIMG0, 3);
        puts_uart("tg0 armed\r\n");
        break;
    case 'f': /* the same, fed every 50 ms for a second, then stopped */
        mwdt_arm(TIMG0, 3);
        for (int i = 0; i < 20; i++) {
            wait_ms(50);
            mwdt_feed(TIMG0);
        }
        TIMG_WPROTECT(TIMG0) = WDT_WKEY;
        TIMG_CONFIG0(TIMG0) = 1u << 22;
        TIMG_WPROTECT(TIMG0) = 0;
        puts_uart("fed and stopped\r\n");
        break;
    case 'c': /* TG1 stage 0 resets the CPU */
        mwdt_arm(TIMG1, 2);
        puts_uart("tg1 armed\r\n");
        break;
    case 'l': /* locked registers: the write is ignored, nothing fires */
        TIMG_CONFIG1(TIMG0) = 40000u << 16;
        TIMG_CONFIG2(TIMG0) = 400;
        TIMG_CONFIG0(TIMG0) = (1u << 31) | (3u << 29) | (1u << 22);
        wait_ms(600);
        puts_uart("locked write ignored\r\n");
        break;
    case 'r': /* RTC WDT stage 0 resets the system after 200 ms (hold counts twice) */
        RWDT_WPROTECT = WDT_WKEY;
        RWDT_CONFIG1 = 136000 / 5 / 2;
        RWDT_CONFIG0 = (1u << 31) | (3u << 28);
        RWDT_FEED = 1u << 31;
        RWDT_WPROTECT = 0;
        puts_uart("rwdt armed\r\n");
        break;
    case 'd': /* what ESP-IDF's start-up does: the bootloader's RTC WDT off */
        RWDT_WPROTECT = WDT_WKEY;
        RWDT_CONFIG0 = RWDT_CONFIG0 & ~(1u << 31);
        RWDT_WPROTECT = 0;
        puts_uart("rwdt disabled\r\n");
        break;
    case 's': /* super watchdog: auto-feed off and never fed */
        SWD_WPROTECT = SWD_WKEY;
        SWD_CONF = SWD_CONF & ~(1u << 31);
        SWD_WPROTECT = 0;
        puts_uart("swd not fed\r\n");
        break;
    default:
        puts_uart("unknown command\r\n");
    }
    for (;;) {
        wait_ms(10);
    }
}

__attribute__((naked, section(".text.entry"))) void _start(void) {
    __asm__ volatile("la sp, _stack_top\n call main\n 1: j 1b\n");
}
