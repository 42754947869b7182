"""`python -m fbuild_watch` is the same as the `fbuild` command."""

from __future__ import annotations

import sys

from fbuild_watch.cli import main

if __name__ == "__main__":
    sys.exit(main())
