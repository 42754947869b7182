const char boot_banner[] = "bootloader";
__attribute__((naked, section(".text.entry"))) void _start(void) {
    __asm__ volatile("1: j 1b\n");
}
