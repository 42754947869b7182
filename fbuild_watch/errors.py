"""The project's own exceptions.

Every error a user can cause (bad image, bad config, missing port) is one of
these, so the CLI can print a single line and pick the exit status without a
traceback.
"""

from __future__ import annotations

from pathlib import Path


class FbuildError(Exception):
    """Base class: a one-line message meant for the user.

    `exit_code` follows the CLI convention: 2 for usage and configuration
    errors, 1 for runtime failures.
    """

    exit_code = 1

    def __init__(self, message: str, *, source: str | Path | None = None) -> None:
        self.source = str(source) if source is not None else None
        self.problem = " ".join(message.split())  # always one line
        text = f"{self.source}: {self.problem}" if self.source else self.problem
        super().__init__(text)


class ImageError(FbuildError):
    """A flash image or layout that must not be flashed."""


class ConfigError(FbuildError):
    """Malformed or ill-typed project configuration."""

    exit_code = 2


class UsageError(FbuildError):
    """Bad command-line arguments."""

    exit_code = 2


class RuntimeFailure(FbuildError):
    """Something failed at run time (port busy, build failed, ...)."""
