"""Run one build: a child process in its own process group, output streamed
(bounded: see `output`), the flash layout read and validated right after it
exits.

The build is over when its main process has exited: a background process it
left holding stdout gets EOF_GRACE_S to let go, then the group is killed.
Cancelling, Ctrl+C and `[build] timeout` end the whole group: SIGTERM, then
SIGKILL after KILL_GRACE_S."""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from fbuild_watch.build.backends import Backend
from fbuild_watch.build.diagnostics import Diagnostic
from fbuild_watch.build.output import BuildOutput
from fbuild_watch.errors import FbuildError, RuntimeFailure
from fbuild_watch.image.layout import ValidatedLayout
from fbuild_watch.termsafe import terminal_safe_lines

KILL_GRACE_S = 2.0  # SIGTERM -> SIGKILL (make gets to delete its half-written targets)
EOF_GRACE_S = 0.5  # main process gone -> its leftovers' hold on stdout ends
_POLL_S = 0.05  # how often a blocked read looks at exits, cancels and the deadline
_CHUNK = 1 << 16
DETAIL_TAIL_LINES = 20  # of a failed build's output, shown when no error was found in it


@dataclass
class BuildResult:
    ok: bool
    duration_s: float
    exit_code: int | None
    output: list[str]  # the tail (see output.KEEP_LINES); the whole output is in `log`
    diagnostics: list[Diagnostic]
    layout: ValidatedLayout | None = None
    error: str | None = None  # one line: why the result is not deployable
    cancelled: bool = False
    command: list[str] = field(default_factory=list)
    timed_out: bool = False
    log: Path | None = None  # the build's whole output
    output_lines: int = 0  # lines of output in all (`output` may hold only the last)
    # the failure is the project's configuration (a malformed `.lnk` or
    # fbuild.toml, no flash layout): `fbuild build` exits 2, not 1
    config_error: bool = False

    def details(self, *, tail: bool = True) -> list[str]:
        """What a person reads under the build's head line: its diagnostics
        and, when it failed and no error was found in its output, the last
        DETAIL_TAIL_LINES lines of that output (where the failure is; not
        with `tail=False`, for a view that shows the output anyway)."""
        lines = [d.format() for d in self.diagnostics if not d.summary]
        ran = self.exit_code not in (0, None) or self.timed_out
        if not tail or self.ok or self.cancelled or not ran:
            return lines
        if any(d.severity == "error" and not d.summary for d in self.diagnostics):
            return lines
        last = list(self.output)
        while last and not last[-1].strip():
            last.pop()
        if not last:
            return [*lines, "build: it printed nothing"]
        last = last[-DETAIL_TAIL_LINES:]
        where = f" (all of it in {self.log})" if self.log is not None else ""
        head = f"build: no error found in the output; its last {len(last)} lines{where}:"
        return [*lines, head, *("  " + ln for ln in terminal_safe_lines(last, keep_sgr=False))]

    def as_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "duration_ms": round(self.duration_s * 1000, 1),
            "exit_code": self.exit_code,
            "cancelled": self.cancelled,
            "timed_out": self.timed_out,
            "error": self.error,
            "command": self.command,
            "diagnostics": [d.as_dict() for d in self.diagnostics],
            "image_hash": self.layout.image_hash if self.layout else None,
            "elf": str(self.layout.layout.elf) if self.layout and self.layout.layout.elf else None,
            "log": str(self.log) if self.log else None,
            "output_lines": self.output_lines,
            "config_error": self.config_error,
        }


class BuildCancelled(Exception):
    pass


class BuildRun:
    """One build in progress; `cancel()` from any thread (or a signal
    handler) ends its process group."""

    def __init__(
        self,
        backend: Backend,
        on_line: Callable[[str], None] | None = None,
        *,
        pointers: Callable[[], Iterable[str]] | None = None,
        rate_limited: bool = True,
    ) -> None:
        """`pointers` lists the project's `.lnk` files (the watch loop knows
        them from its watch set); without it they are found by a walk.
        `rate_limited`: `on_line` gets a flood's first lines, a sample and
        its last lines (a terminal can take them all: False)."""
        self.backend = backend
        self.on_line = on_line
        self.pointers = pointers
        self.rate_limited = rate_limited
        self._proc: subprocess.Popen[bytes] | None = None
        self._cancelled = threading.Event()
        self._timed_out = False
        self._lock = threading.Lock()
        self._not_run: dict[str, str] = {}  # program -> why it could not be started

    def cancel(self) -> None:
        """Non-blocking: SIGTERM to the group now; the thread running the
        build sends SIGKILL if it is still there after KILL_GRACE_S."""
        self._cancelled.set()
        with self._lock:
            proc = self._proc
        if proc is not None:
            _signal_group(proc, signal.SIGTERM)  # the group, even if its leader has exited

    def _run_command(self, cmd: list[str], out: BuildOutput, deadline: float | None) -> int | None:
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
        except OSError as exc:  # not found, not executable, a directory, ...
            # said once, in the result's error; the log file keeps it too
            self._not_run[cmd[0]] = why = self._cannot_run(cmd[0], exc)
            out.record(f"fbuild: {why}")
            return None
        with self._lock:
            self._proc = proc
        try:
            self._read(proc, out, deadline)
        finally:
            with self._lock:
                self._proc = None
            out.end_command()
        return proc.returncode

    def _cannot_run(self, program: str, exc: OSError) -> str:
        """One line: why `program` did not start, and the next step."""
        if not isinstance(exc, FileNotFoundError):
            return f"cannot run {program}: {exc.strerror or exc}"
        if os.sep in program or (os.altsep and os.altsep in program):
            path = self.backend.project_dir / program
            if path.exists():  # the file is there: its #! interpreter is not
                return f"cannot run {program}: the interpreter on its #! line was not found"
            return f"{program} not found; {self.backend.missing_tool_hint()}"
        return f"{program} not found on PATH; {self.backend.missing_tool_hint()}"

    def _read(
        self, proc: subprocess.Popen[bytes], out: BuildOutput, deadline: float | None
    ) -> None:
        """Stream the output until the main process has exited and stdout is
        at EOF, or EOF_GRACE_S after it exited; end the group on cancel or at
        the deadline."""
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        sel = selectors.DefaultSelector()
        sel.register(fd, selectors.EVENT_READ)
        eof = False
        exited_at: float | None = None
        term_at: float | None = None  # when the group got SIGTERM from us
        killed = False
        try:
            while True:
                if eof:  # stdout closed, the main process not yet gone
                    try:
                        proc.wait(_POLL_S)
                    except subprocess.TimeoutExpired:
                        pass
                elif sel.select(_POLL_S):
                    chunk = os.read(fd, _CHUNK)
                    if chunk:
                        out.feed(chunk)
                    else:
                        eof = True
                now = time.monotonic()
                if exited_at is None and proc.poll() is not None:
                    exited_at = now
                if eof and exited_at is not None:
                    return
                if not self._timed_out and deadline is not None and now >= deadline:
                    self._timed_out = True
                if (self._cancelled.is_set() or self._timed_out) and term_at is None:
                    term_at = now
                    _signal_group(proc, signal.SIGTERM)
                if exited_at is not None and now - exited_at >= EOF_GRACE_S:
                    # what is left holds stdout open (`server &`): it is not the build
                    _signal_group(proc, signal.SIGTERM)
                    if not _drain(sel, fd, out):
                        killed = True
                        _signal_group(proc, signal.SIGKILL)
                        _drain(sel, fd, out)  # a holder outside the group: given up on
                    return
                if term_at is not None and not killed and now - term_at >= KILL_GRACE_S:
                    killed = True
                    _signal_group(proc, signal.SIGKILL)
        finally:
            sel.close()
            proc.stdout.close()
            if proc.poll() is None:  # an exception (KeyboardInterrupt) got us here
                killed = True
                _signal_group(proc, signal.SIGKILL)
            proc.wait()
            if term_at is not None and not killed:  # group members that ignored SIGTERM
                _signal_group(proc, signal.SIGKILL)

    def _resolve_resources(self, out: BuildOutput) -> None:
        """Fetch and materialize `.lnk` blobs before the build reads them."""
        from fbuild_watch.lnk.fetch import Fetcher  # noqa: PLC0415 - httpx only when needed
        from fbuild_watch.lnk.resolve import Resources, find_pointers  # noqa: PLC0415

        backend = self.backend
        if self.pointers is not None:
            rels = list(self.pointers())
        else:
            rels = find_pointers(backend.project_dir, backend.ignore_rules(), backend.watch_paths())

        def progress(_rel: str, _done: int, _total: int | None) -> None:
            if self._cancelled.is_set():
                raise RuntimeFailure("build cancelled during a download")

        Resources(
            backend.project_dir,
            backend.resource_dir(),
            fetcher=Fetcher(backend.fetch_policy()),
            on_line=out.say,
            progress=progress,
        ).sync(rels)

    def run(self) -> BuildResult:
        t0 = time.monotonic()
        backend = self.backend
        out = BuildOutput(
            backend.build_log_path(),
            self.on_line,
            project_dir=backend.project_dir,
            rate_limited=self.rate_limited,
        )
        timeout = backend.build_timeout_s()
        cmd: list[str] = []
        code: int | None = None
        try:
            try:
                self._resolve_resources(out)
                prep = backend.prepare()
                deadline = time.monotonic() + timeout if timeout is not None else None
                if prep:
                    self._run_command(prep, out, deadline)
                if not self._timed_out and not self._cancelled.is_set():
                    cmd = backend.command()
                    if cmd[0] not in self._not_run:  # not twice (pio's prepare is pio)
                        code = self._run_command(cmd, out, deadline)
            finally:
                out.close()
        except FbuildError as exc:
            return self._result(
                False, t0, None, out, error=str(exc), config_error=exc.exit_code == 2
            )
        if self._cancelled.is_set():
            return self._result(False, t0, code, out, error="build cancelled", cancelled=True,
                                command=cmd)  # fmt: skip
        if self._timed_out:
            assert timeout is not None
            return self._result(False, t0, code, out, error=f"build timed out after {timeout:g} s",
                                command=cmd)  # fmt: skip
        if code != 0:
            if code is None:
                what = self._not_run.get(cmd[0], f"{cmd[0]} did not start")
            else:
                what = f"{cmd[0]} exited with status {code}"
            return self._result(False, t0, code, out, error=f"build failed: {what}",
                                command=cmd)  # fmt: skip
        try:
            validated = backend.load_layout().validate()
        except FbuildError as exc:
            return self._result(
                False, t0, code, out, error=str(exc), command=cmd, config_error=exc.exit_code == 2
            )
        return self._result(True, t0, code, out, layout=validated, command=cmd)

    def _result(
        self,
        ok: bool,
        t0: float,
        code: int | None,
        out: BuildOutput,
        *,
        layout: ValidatedLayout | None = None,
        error: str | None = None,
        cancelled: bool = False,
        command: list[str] | None = None,
        config_error: bool = False,
    ) -> BuildResult:
        return BuildResult(
            ok,
            time.monotonic() - t0,
            code,
            out.kept(),
            out.diagnostics.result(),
            layout,
            error,
            cancelled,
            command or [],
            timed_out=self._timed_out,
            log=out.log_path,
            output_lines=out.lines,
            config_error=config_error,
        )


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """`proc` leads its group (start_new_session), so its pid is the group's
    id; Linux does not reuse a pid while a group of that id is alive."""
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # nobody left (or a member became another user's: not ours to end)


def _drain(sel: selectors.BaseSelector, fd: int, out: BuildOutput, wait_s: float = 0.2) -> bool:
    """Read what is left for up to `wait_s`; True at EOF."""
    end = time.monotonic() + wait_s
    while (left := end - time.monotonic()) > 0:
        if sel.select(left):
            chunk = os.read(fd, _CHUNK)
            if not chunk:
                return True
            out.feed(chunk)
    return False


def run_build(backend: Backend, on_line: Callable[[str], None] | None = None) -> BuildResult:
    return BuildRun(backend, on_line).run()
