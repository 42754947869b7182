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
from collections.abc import Callable
from typing import Any, TextIO

from fbuild_watch.build.diagnostics import Diagnostic
from fbuild_watch.events import Event
from fbuild_watch.session import SessionOptions, WatchSession
from fbuild_watch.termsafe import terminal_safe_lines


class LineView:
    def __init__(
        self, *, json_mode: bool, out: TextIO | None = None, timestamps: bool = False
    ) -> None:
        self.json_mode = json_mode
        self.out = out or sys.stdout
        self.timestamps = timestamps
        # --plain keeps the board's colours for a person at a terminal; pipes,
        # files and CI logs get plain text
        self.colour = _isatty(self.out)
        self._lock = threading.Lock()

    def _write(self, text: str) -> None:
        with self._lock:
            try:
                self.out.write(text + "\n")
                self.out.flush()
            except (BrokenPipeError, ValueError):
                pass

    def on_serial(self, board: str, port: str, t: float, lines: list[str]) -> None:
        # Board text reaches a terminal: no title, clipboard (OSC 52), reset
        # or cursor sequences; colours stay in JSON and on a terminal.
        lines = terminal_safe_lines(lines, keep_sgr=self.json_mode or self.colour)
        if self.json_mode:
            chunk = "\n".join(
                json.dumps(
                    {
                        "type": "serial_line",
                        "port": port,
                        "board": board,
                        "text": ln,
                        "t": round(t, 6),
                    }
                )
                for ln in lines
            )
        else:
            prefix = f"[{board}] "
            # a colour the board left on must not paint our own lines
            chunk = "\n".join(prefix + ln + ("\x1b[0m" if "\x1b" in ln else "") for ln in lines)
        self._write(chunk)

    def on_event(self, ev: Event) -> None:
        if ev.type == "build_output" and not self.json_mode:
            return  # the human view shows diagnostics, not every make line
        if self.json_mode:
            self._write(json.dumps(ev.as_dict(), default=str))
            return
        text = human(ev)
        if text:
            self._write(text)


def _isatty(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):  # closed or not a real stream
        return False


def human(ev: Event) -> str | None:
    d: dict[str, Any] = ev.data
    t = ev.type
    if t == "build_started":
        what = ", ".join(d.get("changed", [])[:3]) + (" ..." if d.get("count", 0) > 3 else "")
        return f"build: started ({d['reason']}{': ' + what if what else ''})"
    if t == "build_finished":
        if d.get("cancelled"):
            return "build: cancelled (sources changed; restarting)"
        lines = [Diagnostic(**x).format() for x in d.get("diagnostics", [])]
        head = (
            f"build: ok in {d['duration_ms'] / 1000:.2f} s"
            if d["ok"]
            else f"build: FAILED in {d['duration_ms'] / 1000:.2f} s: {d['error']}"
        )
        if d.get("stale"):
            head += " (stale: sources changed meanwhile, not deployed)"
        return "\n".join([head, *lines])
    if t == "build_skipped":
        return f"build: skipped ({d['reason']})"
    if t == "deploy_started":
        return f"[{d['board']}] deploy: started" + (" (full flash)" if d.get("full") else "")
    if t == "deploy_finished":
        extra = f" ({d['flash_state']})" if not d["ok"] and d.get("flash_state") else ""
        return f"[{d['board']}] deploy: {d['summary']}{extra}"
    if t == "cycle_finished":
        ms = d.get("save_to_first_log_ms")
        tim = d.get("timings_ms", {})
        parts = [f"{k} {v:.0f} ms" for k, v in tim.items() if k != "save_to_first_log"]
        head = f"cycle: save -> first new log line {ms:.0f} ms" if ms is not None else "cycle: done"
        return f"{head} ({', '.join(parts)})" if parts else head
    if t == "crash":
        frames = d.get("decoded") or ["(no code addresses decoded: no ELF?)"]
        return "\n".join(
            [f"[{d['board']}] crash: {d['reason']}", *(f"[{d['board']}]   {f}" for f in frames)]
        )
    if t == "port_state":
        if d["state"] == "waiting":
            return f"[{d['board']}] waiting for the board: {d['message']}"
        if d["state"] == "connected":
            return f"[{d['board']}] connected to {d['port']}"
        return None
    if t in ("error", "note", "warning"):
        return f"{t}: {d['message']}"
    if t in ("paused", "resumed"):
        return f"watch: {t}"
    if t == "session_started":
        ports = ", ".join(str(b["port"]) for b in d["boards"])
        return f"watching {d['project']} -> {ports}"
    if t == "files_changed":
        return None
    if t == "reset":
        return f"[{d['board']}] reset"
    if t == "connected_ahead":
        if d["ok"]:
            return f"[{d['board']}] deploy: in the bootloader while the image is made"
        return f"[{d['board']}] deploy: could not connect ahead; connecting after the build"
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
        self.pattern = re.compile(until) if until else None
        self.monitor_only = monitor_only
        self.timeout = timeout
        self.code = 0
        self.session = WatchSession(opts, self.view.on_event, self._on_serial)
        self.session.setup(monitor_only=monitor_only)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._done: asyncio.Event | None = None

    def _on_serial(self, board: str, port: str, t: float, lines: list[str]) -> None:
        self.view.on_serial(board, port, t, lines)
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
        if self.monitor_only:
            self.session.open_boards()
            try:
                await asyncio.wait_for(done.wait(), self.timeout)
            except TimeoutError:
                if self.pattern is not None:
                    self._fail(f"no line matched {self.pattern.pattern!r} in {self.timeout:g} s")
            never = [b.info.url for b in self.session.boards if not b.ever_connected]
            if never and self.code != 130:
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
            self.view.on_event(Event("exit", {"ok": False, "error": why, "exit_code": self.code}))
        print(f"fbuild: error: {why}", file=sys.stderr, flush=True)

    def run(self) -> int:
        try:
            asyncio.run(self._main())
        except KeyboardInterrupt:
            self.session.close()
            return 130
        return self.code


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
