"""Driving the `fbuild` command as a user does: JSON lines on stdout,
commands on stdin."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

FBUILD = [sys.executable, "-m", "fbuild_watch"]


class JsonLines:
    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.q: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.q.put(json.loads(line))

    def index(self, pred: Callable[[dict[str, Any]], bool]) -> int:
        """Position in `seen` of the first event matching `pred`."""
        return next(i for i, e in enumerate(self.seen) if pred(e))

    def expect(
        self,
        pred: Callable[[dict[str, Any]], bool],
        timeout: float = 30,
        *,
        since: int | None = None,
    ) -> dict[str, Any]:
        """The next event matching `pred`; with `since`, one already seen
        from that position on counts too (serial lines come from the reader
        thread, events from the loop: their order is not fixed)."""
        if since is not None:
            for ev in self.seen[since:]:
                if pred(ev):
                    return ev
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("expected event not seen; last: " + json.dumps(self.seen[-5:]))
            try:
                ev = self.q.get(timeout=remaining)
            except queue.Empty:
                raise AssertionError(
                    "expected event not seen; last: "
                    + json.dumps(
                        [
                            {k: e[k] for k in ("type", "message", "reason", "paths") if k in e}
                            for e in self.seen
                            if e["type"] not in ("serial_line", "build_output")
                        ]
                    )
                    + " / serial: "
                    + json.dumps([e["text"] for e in self.seen if e["type"] == "serial_line"][-6:])
                    + " / stderr: "
                    + self._stderr()
                ) from None
            self.seen.append(ev)
            if pred(ev):
                return ev

    def _stderr(self) -> str:
        import signal

        self.proc.send_signal(signal.SIGUSR1)  # fbuild dumps every thread's stack
        time.sleep(1.0)
        self.proc.kill()
        assert self.proc.stderr is not None
        return self.proc.stderr.read()[-8000:]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()


def watch_json(project: object, port: str, env: dict[str, str]) -> JsonLines:
    """`fbuild watch PROJECT --port PORT --json` with stdin for commands."""
    proc = subprocess.Popen(
        [*FBUILD, "watch", str(project), "--port", port, "--json"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    return JsonLines(proc)


def run_fbuild(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """One `fbuild` command to completion; `env` is the whole environment."""
    return subprocess.run(
        [*FBUILD, *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env=env,
    )
