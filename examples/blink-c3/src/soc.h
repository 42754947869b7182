/* ESP32-C3 registers used by the example (ESP32-C3 TRM / ESP-IDF soc/). */
#pragma once
#include <stdint.h>

#define REG(addr) (*(volatile uint32_t *)(addr))

#define UART0_FIFO_REG       REG(0x60000000)
#define UART0_STATUS_REG     REG(0x6000001C)
#define UART_RXFIFO_CNT(s)   ((s) & 0x3FF)          /* UART_STATUS_REG bits 0..9 */
#define UART_TXFIFO_CNT(s)   (((s) >> 16) & 0x3FF)  /* bits 16..25 */

#define GPIO_OUT_W1TS_REG    REG(0x60004008)
#define GPIO_OUT_W1TC_REG    REG(0x6000400C)
#define GPIO_ENABLE_W1TS_REG REG(0x60004024)

#define SYSTIMER_UNIT0_OP_REG       REG(0x60023004)
#define SYSTIMER_UNIT0_UPDATE       (1u << 30)
#define SYSTIMER_UNIT0_VALUE_VALID  (1u << 29)
#define SYSTIMER_UNIT0_VALUE_HI_REG REG(0x60023040)
#define SYSTIMER_UNIT0_VALUE_LO_REG REG(0x60023044)
#define SYSTIMER_TICKS_PER_MS       16000u /* 16 MHz */

#define RTC_CNTL_OPTIONS0_REG REG(0x60008000)
#define RTC_CNTL_SW_SYS_RST   (1u << 31)

/* RTC watchdog (ESP-IDF soc/esp32c3/register/soc/rtc_cntl_reg.h) */
#define RTC_CNTL_WDTCONFIG0_REG   REG(0x60008090)
#define RTC_CNTL_WDT_EN           (1u << 31)
#define RTC_CNTL_WDTWPROTECT_REG  REG(0x600080A8)
#define RTC_CNTL_WDT_WKEY_VALUE   0x50D83AA1u
