"""Crash decoding: ESP-IDF panic reports detected in serial output, their
code addresses symbolized (like addr2line -fiaC) and RISC-V stacks unwound
with the ELF's call-frame information."""
