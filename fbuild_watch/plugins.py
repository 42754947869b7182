"""Port schemes that live outside `deploy/`, loaded by the layers above it
(CLI, session): the virtual board's `sim://` when its extra is installed."""

from __future__ import annotations

import contextlib
import importlib


def load_port_schemes() -> None:
    """Make `sim://` URLs openable (pyserial) and known to the deploy side."""
    with contextlib.suppress(ImportError):  # no unicorn: real ports only
        importlib.import_module("fbuild_watch.sim")
