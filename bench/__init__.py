"""Benchmarks: `python -m bench [NAME ...]` (or `make bench`)."""
