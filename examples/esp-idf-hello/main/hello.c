/* Prints a counter every 500 ms; edit the version and save while
   `fbuild watch --port /dev/ttyUSB0` runs. */
#include <stdio.h>
#include "esp_log.h"
#include "freertos/FreeRTOS.h"
#include "freertos/task.h"

static const char *TAG = "hello";
#define HELLO_VERSION "1.0.0"

void app_main(void)
{
    ESP_LOGI(TAG, "esp-idf-hello version %s", HELLO_VERSION);
    for (int n = 0;; n++) {
        ESP_LOGI(TAG, "counter %d", n);
        vTaskDelay(pdMS_TO_TICKS(500));
    }
}
