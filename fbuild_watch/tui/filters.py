"""Moved to fbuild_watch/logfilter.py (UI-free); kept for the TUI's import."""

from fbuild_watch.logfilter import compile_filter

__all__ = ["compile_filter"]
