"""Build backends and the build runner."""

from __future__ import annotations

from fbuild_watch.build.backends import Backend, detect_backend
from fbuild_watch.build.diagnostics import Diagnostic, parse_output
from fbuild_watch.build.runner import BuildResult, BuildRun, run_build

__all__ = [
    "Backend",
    "BuildResult",
    "BuildRun",
    "Diagnostic",
    "detect_backend",
    "parse_output",
    "run_build",
]
