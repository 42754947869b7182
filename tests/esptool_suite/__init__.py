"""esptool's own hardware test suite, run against the virtual board."""
