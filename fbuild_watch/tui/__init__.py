"""The Textual TUI of `fbuild watch` and `fbuild monitor`."""
