/* Stand-in second-stage bootloader image (a valid ESP32-C3 image). The
   virtual board models what ESP-IDF's bootloader does instead of running
   this; on a real board use ESP-IDF's bootloader.bin. */
const char bootloader_id[] = "blink-c3 stand-in bootloader";

__attribute__((naked, section(".text.entry"))) void call_start_cpu0(void) {
    __asm__ volatile("1: j 1b\n");
}
