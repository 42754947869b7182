"""Run one build: a child process in its own process group, output streamed
line by line, the flash layout read and validated right after it exits."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from fbuild_watch.build.backends import Backend
from fbuild_watch.build.diagnostics import Diagnostic, parse_output
from fbuild_watch.errors import FbuildError, RuntimeFailure
from fbuild_watch.image.layout import ValidatedLayout

KILL_GRACE_S = 2.0


@dataclass
class BuildResult:
    ok: bool
    duration_s: float
    exit_code: int | None
    output: list[str]
    diagnostics: list[Diagnostic]
    layout: ValidatedLayout | None = None
    error: str | None = None  # one line: why the result is not deployable
    cancelled: bool = False
    command: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "duration_ms": round(self.duration_s * 1000, 1),
            "exit_code": self.exit_code,
            "cancelled": self.cancelled,
            "error": self.error,
            "command": self.command,
            "diagnostics": [d.as_dict() for d in self.diagnostics],
            "image_hash": self.layout.image_hash if self.layout else None,
            "elf": str(self.layout.layout.elf) if self.layout and self.layout.layout.elf else None,
        }


class BuildCancelled(Exception):
    pass


class BuildRun:
    """One build in progress; `cancel()` from any thread kills its group."""

    def __init__(
        self,
        backend: Backend,
        on_line: Callable[[str], None] | None = None,
        *,
        pointers: Callable[[], Iterable[str]] | None = None,
    ) -> None:
        """`pointers` lists the project's `.lnk` files (the watch loop knows
        them from its watch set); without it they are found by a walk."""
        self.backend = backend
        self.on_line = on_line
        self.pointers = pointers
        self._proc: subprocess.Popen[bytes] | None = None
        self._cancelled = threading.Event()
        self._lock = threading.Lock()

    def cancel(self) -> None:
        self._cancelled.set()
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            _kill_group(proc)

    def _run_command(self, cmd: list[str], output: list[str]) -> int | None:
        env = {
            **os.environ,
            **self.backend.env,
            "FBUILD_RESOURCE_DIR": str(self.backend.resource_dir()),
        }
        try:
            proc = subprocess.Popen(
                cmd,
                cwd=self.backend.project_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # own process group: cancel kills make's children too
            )
        except FileNotFoundError:
            line = f"fbuild: build command not found: {cmd[0]}"
            output.append(line)
            if self.on_line:
                self.on_line(line)
            return None
        with self._lock:
            self._proc = proc
        if self._cancelled.is_set():
            _kill_group(proc)
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            output.append(line)
            if self.on_line:
                self.on_line(line)
        return proc.wait()

    def _resolve_resources(self, output: list[str]) -> None:
        """Fetch and materialize `.lnk` blobs before the build reads them."""
        from fbuild_watch.lnk.fetch import Fetcher  # noqa: PLC0415 - httpx only when needed
        from fbuild_watch.lnk.resolve import Resources, find_pointers  # noqa: PLC0415

        backend = self.backend
        if self.pointers is not None:
            rels = list(self.pointers())
        else:
            rels = find_pointers(backend.project_dir, backend.ignore_rules(), backend.watch_paths())

        def say(line: str) -> None:
            output.append(line)
            if self.on_line:
                self.on_line(line)

        def progress(_rel: str, _done: int, _total: int | None) -> None:
            if self._cancelled.is_set():
                raise RuntimeFailure("build cancelled during a download")

        Resources(
            backend.project_dir,
            backend.resource_dir(),
            fetcher=Fetcher(backend.fetch_policy()),
            on_line=say,
            progress=progress,
        ).sync(rels)

    def run(self) -> BuildResult:
        t0 = time.monotonic()
        output: list[str] = []
        cmd: list[str] = []
        try:
            self._resolve_resources(output)
            prep = self.backend.prepare()
            if prep:
                self._run_command(prep, output)
            cmd = self.backend.command()
            code = self._run_command(cmd, output)
        except FbuildError as exc:
            return BuildResult(False, time.monotonic() - t0, None, output, [], error=str(exc))
        duration = time.monotonic() - t0
        diags = parse_output(output)
        if self._cancelled.is_set():
            return BuildResult(False, duration, code, output, diags, error="build cancelled",
                               cancelled=True, command=cmd)  # fmt: skip
        if code != 0:
            what = "not found" if code is None else f"exited with status {code}"
            return BuildResult(False, duration, code, output, diags,
                               error=f"build failed: {cmd[0]} {what}", command=cmd)  # fmt: skip
        try:
            validated = self.backend.load_layout().validate()
        except FbuildError as exc:
            return BuildResult(False, duration, code, output, diags, error=str(exc), command=cmd)
        return BuildResult(True, duration, code, output, diags, validated, command=cmd)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_build(backend: Backend, on_line: Callable[[str], None] | None = None) -> BuildResult:
    return BuildRun(backend, on_line).run()
