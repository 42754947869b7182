#include <Arduino.h>

#define BLINK_VERSION "1.0.0"
static const int LED = 8;

void setup() {
    Serial.begin(115200);
    pinMode(LED, OUTPUT);
    Serial.printf("platformio-blink version %s\n", BLINK_VERSION);
}

void loop() {
    static unsigned n = 0;
    digitalWrite(LED, n & 1);
    Serial.printf("counter %u\n", n++);
    delay(500);
}
