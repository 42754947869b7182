/* esp_app_desc_t, where ESP-IDF tools look for it: the first 256 bytes of
   the first DROM segment. esptool elf2image --elf-sha256-offset 0xb0 patches
   the ELF's SHA-256 into app_elf_sha256. */
#include <stdint.h>
#include "version.h"

typedef struct {
    uint32_t magic_word;
    uint32_t secure_version;
    uint32_t reserv1[2];
    char version[32];
    char project_name[32];
    char time[16];
    char date[16];
    char idf_ver[32];
    uint8_t app_elf_sha256[32];
    uint16_t min_efuse_blk_rev_full;
    uint16_t max_efuse_blk_rev_full;
    uint8_t mmu_page_size;
    uint8_t reserv3[3];
    uint32_t reserv2[18];
} esp_app_desc_t;

_Static_assert(sizeof(esp_app_desc_t) == 256, "esp_app_desc_t is 256 bytes");

__attribute__((section(".rodata_desc"), used)) const esp_app_desc_t esp_app_desc = {
    .magic_word = 0xABCD5432,
    .version = APP_VERSION,
    .project_name = "blink-c3",
    /* fixed, not __DATE__/__TIME__: identical sources give identical images */
    .time = "00:00:00",
    .date = "Jan  1 2026",
    .idf_ver = "bare-metal",
    .mmu_page_size = 16, /* log2(64 KiB) */
};
