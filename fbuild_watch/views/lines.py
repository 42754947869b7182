"""Line mode for pipes, CI, editors and agents: `--plain` (human lines) or
`--json` (one JSON object per event). Stdin lines are commands."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import TextIO

from fbuild_watch.crash.frames import AddressNote, with_address_lines
from fbuild_watch.events import (
    BoardReset,
    BuildFinished,
    BuildOutput,
    BuildProgress,
    BuildSkipped,
    BuildStarted,
    ConnectedAhead,
    CoreDumpDecoded,
    CrashDecoded,
    CycleFinished,
    DeployFinished,
    DeployProgress,
    DeployStarted,
    Event,
    Exited,
    Failed,
    Note,
    Paused,
    PortChanged,
    PortState,
    Resumed,
    SessionStarted,
    Warned,
    output_dropped_json,
    serial_line_json,
)
from fbuild_watch.logfilter import compile_filter
from fbuild_watch.logtime import format_timestamp
from fbuild_watch.monitor import CONTINUES, LinePiece
from fbuild_watch.session import SessionOptions, WatchSession
from fbuild_watch.termsafe import terminal_safe_lines
from fbuild_watch.views.output import MAX_PENDING, OutputQueue, StdoutGone


class LineView:
    """Renders events and board lines as lines. Once `start()`ed, a writer
    thread owns `out` (`views/output.py`): callers (the boards' reader
    threads, the event loop) only queue; `close()` writes what is queued."""

    def __init__(
        self,
        *,
        json_mode: bool,
        out: TextIO | None = None,
        timestamps: bool = False,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.json_mode = json_mode
        self.out = out or sys.stdout
        self.timestamps = timestamps
        # --plain keeps the board's colours for a person at a terminal; pipes,
        # files and CI logs get plain text
        self.colour = _isatty(self.out)
        self.output = OutputQueue(self.out, self._dropped_line, max_pending=max_pending)
        self.keep: Callable[[str], bool] | None = None  # --print-filter
        self.stamp_format: str | None = None  # --timestamps (human lines; JSON has `t`)

    def start(self) -> None:
        self.output.start()

    def close(self) -> None:
        self.output.close()

    def _write(self, text: str, *, board_lines: int = 0) -> None:
        """`board_lines`: serial lines, which may be dropped (and counted)
        when stdout does not keep up; events never are."""
        self.output.put(text, lines=board_lines, droppable=board_lines > 0)

    def _dropped_line(self, n: int) -> str:
        if self.json_mode:
            return json.dumps(output_dropped_json(n, time.time()))
        lines = f"{n} board line" + ("s" if n != 1 else "")
        return f"--- fbuild: {lines} not shown: stdout did not keep up ---"

    def on_serial(
        self,
        board: str,
        port: str,
        t: float,
        lines: list[str],
        notes: Sequence[Sequence[AddressNote]] = (),
    ) -> None:
        # Board text reaches a terminal: no title, clipboard (OSC 52), reset
        # or cursor sequences; colours stay in JSON and on a terminal.
        noted: list[Sequence[AddressNote]] = list(notes) if notes else [()] * len(lines)
        if self.keep is not None:
            kept = [(ln, n) for ln, n in zip(lines, noted, strict=True) if self.keep(ln)]
            lines, noted = [ln for ln, _ in kept], [n for _, n in kept]
            if not lines:
                return
        pieces = [isinstance(ln, LinePiece) for ln in lines]  # before they are copied
        lines = terminal_safe_lines(lines, keep_sgr=self.json_mode or self.colour)
        if self.json_mode:
            chunk = "\n".join(
                json.dumps(serial_line_json(board, port, ln, t, n, partial=p))
                for ln, n, p in zip(lines, noted, pieces, strict=True)
            )
        else:
            prefix = f"[{board}] "
            if self.stamp_format is not None:
                prefix += format_timestamp(t, self.stamp_format) + " "
            # a colour the board left on must not paint our own lines
            lines = [ln + CONTINUES if p else ln for ln, p in zip(lines, pieces, strict=True)]
            chunk = "\n".join(
                prefix + ln + ("\x1b[0m" if "\x1b" in ln else "")
                for ln in with_address_lines(lines, noted)
            )
        self._write(chunk, board_lines=len(lines))

    def on_event(self, ev: Event) -> None:
        if isinstance(ev, BuildOutput) and not self.json_mode:
            return  # the human view shows diagnostics, not every make line
        if self.json_mode:
            self._write(json.dumps(ev.to_json(), default=str))
            return
        text = human(ev)
        if text:
            self._write(text)


def _isatty(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):  # closed or not a real stream
        return False


def human(ev: Event, *, output_tail: bool = True) -> str | None:
    """The line a person reads for an event (`--plain`, the TUI's build
    pane); None for events only `--json` shows. `output_tail`: a failed
    build with no error found shows its last lines (not in the TUI's build
    pane, which has the output already)."""
    match ev:
        case BuildStarted(changed=changed, count=count, reason=reason):
            what = ", ".join(changed[:3]) + (" ..." if count > 3 else "")
            return f"build: started ({reason}{': ' + what if what else ''})"
        case BuildFinished(result=r, stale=stale):
            if r.cancelled:
                return "build: cancelled (sources changed; restarting)"
            took = f"{r.duration_s:.2f} s"
            head = f"build: ok in {took}" if r.ok else f"build: FAILED in {took}: {r.error}"
            if stale:
                head += " (stale: sources changed meanwhile, not deployed)"
            return "\n".join([head, *r.details(tail=output_tail)])
        case BuildSkipped(reason=reason):
            return f"build: skipped ({reason})"
        case DeployStarted(board=board, full=full):
            return f"[{board}] deploy: started" + (" (full flash)" if full else "")
        case DeployFinished(board=board, outcome=o):
            extra = f" ({o.flash_state})" if not o.ok and o.flash_state else ""
            return f"[{board}] deploy: {o.summary()}{extra}"
        case CycleFinished(timings_ms=tim, save_to_first_log_ms=ms):
            parts = [f"{k} {v:.0f} ms" for k, v in tim.items() if k != "save_to_first_log"]
            head = (
                f"cycle: save -> first new log line {ms:.0f} ms"
                if ms is not None
                else "cycle: done"
            )
            return f"{head} ({', '.join(parts)})" if parts else head
        case CrashDecoded(board=board, crash=crash):
            frames = crash.decoded() or ["(no code addresses decoded: no ELF?)"]
            return "\n".join(
                [f"[{board}] crash: {crash.reason}", *(f"[{board}]   {f}" for f in frames)]
            )
        case CoreDumpDecoded(board=board, coredump=dump):
            return "\n".join(f"[{board}] {line}" for line in dump.decoded())
        case PortChanged(board=board, state=PortState.WAITING, message=message):
            return f"[{board}] waiting for the board: {message}"
        case PortChanged(board=board, state=PortState.CONNECTED, port=port):
            return f"[{board}] connected to {port}"
        case Failed(message=message) | Note(message=message) | Warned(message=message):
            return f"{ev.type}: {message}"
        case Paused() | Resumed():
            return f"watch: {ev.type}"
        case SessionStarted(project=project, boards=boards):
            return f"watching {project} -> {', '.join(b.port for b in boards)}"
        case BoardReset(board=board):
            return f"[{board}] reset"
        case ConnectedAhead(board=board, ok=True):
            return f"[{board}] deploy: in the bootloader while the image is made"
        case ConnectedAhead(board=board, ok=False):
            return f"[{board}] deploy: could not connect ahead; connecting after the build"
        case DeployProgress(board=board, bytes_done=done, bytes_total=total):
            pct = done * 100 // max(total, 1)
            return f"[{board}] deploy: {pct}% ({done // 1024} of {total // 1024} KiB)"
        case BuildProgress(done=done, total=total, elapsed_ms=ms) if done is not None:
            return f"build: [{done}/{total}] {ms / 1000:.1f} s"
    return None


def read_commands(send: Callable[[str], None], stream: TextIO | None = None) -> threading.Thread:
    """Stdin lines are commands (the TUI's key names); EOF is not quit, so a
    pipe that closes its input does not stop the loop."""
    src = stream or sys.stdin

    def run() -> None:
        try:
            for raw in src:
                name = raw.strip()
                if not name:
                    continue
                send(name)  # unknown names reach the loop, which reports them
        except (OSError, ValueError):
            return  # no readable stdin (closed, or a detached process): no commands

    t = threading.Thread(target=run, name="stdin-commands", daemon=True)
    t.start()
    return t


class LineMode:
    """Runs a session with a LineView until quit, --until, --timeout or SIGTERM."""

    def __init__(
        self,
        opts: SessionOptions,
        *,
        json_mode: bool,
        monitor_only: bool = False,
        until: str | None = None,
        timeout: float | None = None,
    ) -> None:
        self.view = LineView(json_mode=json_mode)
        self.view.output.on_gone = self._stdout_gone  # set-up's own lines may find it closed
        self._loop: asyncio.AbstractEventLoop | None = None
        self.pattern = re.compile(until) if until else None
        self.monitor_only = monitor_only
        self.timeout = timeout
        self.code = 0
        self.session = WatchSession(opts, self.view.on_event, self._on_serial)
        self.session.setup(monitor_only=monitor_only)
        if self.session.print_filter:
            self.view.keep = compile_filter(self.session.print_filter)
        if self.session.timestamps:
            self.view.stamp_format = self.session.timestamp_format
        self._done: asyncio.Event | None = None

    def _stdout_gone(self, gone: StdoutGone) -> None:
        """Nobody reads our output any more (`| head` has what it wanted),
        or it cannot be written. The session ends as on `quit` (a deploy in
        progress is finished first): the port is released, the board left
        running."""
        if self.code == 0:
            # 141 = 128 + SIGPIPE: the status a shell shows for `yes | head`'s
            # `yes` (and `set -o pipefail` treats alike); we do not die of the
            # signal itself, which would skip closing the port
            self.code = SIGPIPE_STATUS if gone.broken_pipe else 1
        if not gone.broken_pipe:
            print(f"fbuild: error: cannot write to stdout: {gone}", file=sys.stderr, flush=True)
        with contextlib.suppress(RuntimeError):  # the loop has already ended
            self._finish()

    def _on_serial(
        self,
        board: str,
        port: str,
        t: float,
        lines: list[str],
        notes: Sequence[Sequence[AddressNote]] = (),
    ) -> None:
        self.view.on_serial(board, port, t, lines, notes)
        if self.pattern is not None and any(self.pattern.search(ln) for ln in lines):
            self._finish()

    def _finish(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._quit)

    def _quit(self) -> None:
        """Ctrl+C, `quit`, --until, SIGTERM: see `WatchSession.quit`."""
        assert self._done is not None
        self.session.quit()
        self._done.set()

    def _interrupt(self) -> None:
        self.code = 130
        self._quit()

    def _command(self, name: str) -> None:
        if name == "quit":
            self._finish()
        elif self._loop is not None:
            self._loop.call_soon_threadsafe(self.session.command, name)

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._done = done = asyncio.Event()
        with contextlib.suppress(NotImplementedError, RuntimeError):
            self._loop.add_signal_handler(signal.SIGTERM, self._quit)
            self._loop.add_signal_handler(signal.SIGINT, self._interrupt)
        read_commands(self._command)
        if self.view.output.gone is not None:  # already, while the session was set up
            self._quit()
        if self.monitor_only:
            self.session.open_boards()
            try:
                await asyncio.wait_for(done.wait(), self.timeout)
            except TimeoutError:
                if self.pattern is not None:
                    self._fail(f"no line matched {self.pattern.pattern!r} in {self.timeout:g} s")
            never = [b.info.url for b in self.session.boards if not b.ever_connected]
            if never and self.code not in (130, SIGPIPE_STATUS):
                self._fail(f"the port never opened: {', '.join(never)}")
            self.session.close()
            return
        task = asyncio.ensure_future(self.session.run())
        stop = asyncio.ensure_future(done.wait())
        await asyncio.wait([task, stop], return_when=asyncio.FIRST_COMPLETED, timeout=self.timeout)
        stop.cancel()
        self.session.stop()
        await task
        failure = self.session.failure()
        if failure is not None and self.code == 0:
            self._fail(failure)

    def _fail(self, why: str) -> None:
        """The run failed (exit status 1): said last, on stderr and in --json."""
        if self.code == 0:
            self.code = 1
        if self.view.json_mode:
            self.view.on_event(Exited(ok=False, error=why, exit_code=self.code))
        print(f"fbuild: error: {why}", file=sys.stderr, flush=True)

    def run(self) -> int:
        self.view.start()
        try:
            asyncio.run(self._main())
        except KeyboardInterrupt:
            self.session.close()
            self.code = 130
        finally:
            # everything accepted reaches stdout (as long as its reader
            # takes it; a second Ctrl+C stops waiting)
            self.view.close()
        return self.code


SIGPIPE_STATUS = 128 + 13  # signal.SIGPIPE is 13 wherever there is one (not on Windows)


def run_line_mode(
    opts: SessionOptions,
    *,
    json_mode: bool,
    monitor_only: bool = False,
    until: str | None = None,
    timeout: float | None = None,
) -> int:
    return LineMode(
        opts, json_mode=json_mode, monitor_only=monitor_only, until=until, timeout=timeout
    ).run()
