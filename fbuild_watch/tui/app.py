"""`fbuild watch` in a terminal pane: status line, build pane, one serial
log tab per board (the monitor), keys for the loop's commands."""

from __future__ import annotations

import collections
import gc
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from textual import events
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.css.query import NoMatches
from textual.message import Message
from textual.widgets import Input, Log, TabbedContent, TabPane
from textual.worker import Worker

from fbuild_watch.crash.frames import AddressNote, with_address_lines
from fbuild_watch.events import (
    BuildFinished,
    BuildOutput,
    BuildProgress,
    BuildStarted,
    CoreDumpDecoded,
    CrashDecoded,
    CycleFinished,
    DeployFinished,
    DeployProgress,
    DeployStarted,
    Event,
    Failed,
    Note,
    Paused,
    PortChanged,
    PortState,
    Resumed,
    Warned,
)
from fbuild_watch.failures import one_line
from fbuild_watch.logtime import format_timestamp
from fbuild_watch.monitor import CONTINUES, LinePiece
from fbuild_watch.termsafe import terminal_safe_lines
from fbuild_watch.tui.filters import compile_filter
from fbuild_watch.tui.keybar import KeyBar
from fbuild_watch.tui.session_api import SessionAPI
from fbuild_watch.tui.status import BoardStatus, StatusLine, progress_bar
from fbuild_watch.tui.widgets import BuildLog, SerialLog
from fbuild_watch.views.lines import human

MAX_PANE_LINES = 20_000
FLUSH_HZ = 30


# The cycle's phases on the status line, short enough for one 100-column line
# (the JSON view has the full names).
_TIMING_LABELS = {
    "change_to_build_start": "quiet",
    "connected_ahead": "connected ahead",
    "deploy_to_first_log": "boot",
    "save_to_first_log": "save→log",
}


CHORD_HELP = (
    "Ctrl+T, then: Ctrl+F full flash, Ctrl+A app flash, Ctrl+R reset, Ctrl+P hold in "
    "bootloader, Ctrl+Y mute output, Ctrl+I timestamps, Ctrl+L log file, Ctrl+H this help, "
    "Ctrl+X quit, Ctrl+T send Ctrl+T. Ctrl+] quits too."
)


class SessionEvent(Message):
    """A session event, delivered as a Textual message (thread-safe)."""

    def __init__(self, event: Event) -> None:
        super().__init__()
        self.event = event


class WatchApp(App[int]):
    CSS_PATH = Path(__file__).with_name("app.tcss")  # also for subclasses elsewhere
    TITLE = "fbuild watch"
    # Ctrl+P is esp-idf-monitor's (Ctrl+T Ctrl+P: hold in the bootloader)
    ENABLE_COMMAND_PALETTE = False
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("f", "command('full-flash')", "full flash", priority=True),
        Binding("b", "command('rebuild')", "rebuild", priority=True),
        Binding("r", "command('reset')", "reset", priority=True),
        Binding("a", "command('app-flash')", "app flash", priority=True),
        Binding("p", "command('pause')", "pause", priority=True),
        Binding("t", "toggle_timestamps", "times", priority=True),
        Binding("c", "clear", "clear", priority=True),
        Binding("l", "toggle_log_file", "log file", priority=True),
        Binding("slash", "filter", "filter", priority=True),
        Binding("s", "send", "send", priority=True),
        Binding("q", "quit_key", "quit", priority=True),
        Binding("ctrl+c", "interrupt", "quit", show=False, priority=True),
        Binding("ctrl+t", "chord", "Ctrl+T chords", show=False, priority=True),
        # esp-idf-monitor's exit key
        Binding("ctrl+right_square_bracket", "quit", "quit", show=False, priority=True),
        # Ctrl+I and Ctrl+H arrive as Tab and Backspace: chords after Ctrl+T
        Binding("tab", "chord_key('tab')", show=False, priority=True),
        Binding("backspace", "chord_key('backspace')", show=False, priority=True),
    ]
    # esp-idf-monitor habits: Ctrl+T then Ctrl+F / Ctrl+A / Ctrl+R / Ctrl+P
    CHORDS: ClassVar[dict[str, str]] = {
        "ctrl+f": "full-flash",
        "ctrl+a": "app-flash",
        "ctrl+r": "reset",
        "ctrl+p": "bootloader",  # hold the board in its ROM loader (r: back to the app)
    }
    # ... and the monitor's own: Ctrl+T Ctrl+Y mutes the output (Ctrl+T Ctrl+T sends Ctrl+T)
    # (Ctrl+I and Ctrl+H reach a terminal app as Tab and Backspace)
    CHORD_ACTIONS: ClassVar[dict[str, str]] = {
        "ctrl+y": "toggle_mute",
        "ctrl+i": "toggle_timestamps",
        "tab": "toggle_timestamps",
        "ctrl+l": "toggle_log_file",
        "ctrl+h": "chord_help",
        "backspace": "chord_help",
        "ctrl+x": "quit",
    }

    def __init__(
        self, session: SessionAPI, *, monitor_only: bool = False, timeout: float | None = None
    ) -> None:
        """`session` is set up (its errors came before the screen opened).
        `timeout`: quit after that many seconds, as `q` would (--timeout)."""
        super().__init__()
        self.session = session
        self._timeout = timeout
        session.listen(self._post_event, self._on_serial)
        self.monitor_only = monitor_only
        self._pending: collections.deque[tuple[str, float, list[str]]] = collections.deque()
        # per board: arrival times and lines, kept apart so that the history
        # is two deques of untracked floats and strs, not 20k GC-tracked tuples
        self._history: dict[str, tuple[collections.deque[float], collections.deque[str]]] = {}
        self._timestamps = session.timestamps
        self._stamp_format = session.timestamp_format
        self._filter: Any = compile_filter(session.print_filter) if session.print_filter else None
        self._muted = False  # Ctrl+T Ctrl+Y: lines are kept, not shown
        self._chord_pending = False
        self._quitting = False
        self._left = False  # _leave ran: the exit status is decided
        self._interrupted = False  # Ctrl+C: exit status 130, as in the line modes
        self._problems: dict[str, str] = {}  # part -> message (failure model)
        self.exit_report: list[str] = []  # printed after the screen is restored
        self._unmounted = False  # events after this go to exit_report
        self._log_path: Path | None = session.log_path
        self.lines_shown = 0  # serial lines rendered (the flood benchmark reads it)

    # -- layout ------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield StatusLine(id="status")
        yield BuildLog(id="build", max_lines=2000)
        with TabbedContent(id="tabs"):
            for b in self.session.boards:
                with TabPane(b.label, id=f"tab-{b.label}"):
                    yield SerialLog(id=f"log-{b.label}", max_lines=MAX_PANE_LINES, auto_scroll=True)
        hint = (
            'filter: tag:level as esp-idf-monitor (wifi:W *:E), /regex/ or "text"; '
            "Enter applies, Esc closes"
        )
        with Vertical(id="bottom"):  # the boxes above the keys, none over another
            yield Input(placeholder=hint, id="filter", value=self.session.print_filter or "")
            yield Input(
                placeholder="send to the board (Enter sends it and its end of line, Esc closes)",
                id="send",
            )
            yield KeyBar()

    def on_mount(self) -> None:
        # The start-up objects (Textual, esptool, unicorn, ...) never die:
        # keep them out of every later GC pass, which would stall keys.
        gc.freeze()
        for b in self.session.boards:
            self._history[b.label] = (
                collections.deque(maxlen=MAX_PANE_LINES),
                collections.deque(maxlen=MAX_PANE_LINES),
            )
        self.set_interval(1 / FLUSH_HZ, self._flush_serial)
        if self._timeout is not None:
            self.set_timer(self._timeout, self.action_quit)
        if self.session.boards:  # PageUp/Up/End scroll the log at once, no Tab first
            first = self._log_widget(self.session.boards[0].label)
            if first is not None:
                first.focus()
        status = self.query_one("#status", StatusLine)
        status.project = self.session.project_name
        status.boards = tuple(BoardStatus(b.label, b.url) for b in self.session.boards)
        self._show_modes()
        if self.monitor_only:
            self.run_worker(self._monitor(), exclusive=True, group="session", exit_on_error=False)
        else:
            # its failure is ours to report (on_worker_state_changed), not a traceback
            self.run_worker(
                self.session.run(), exclusive=True, group="session", exit_on_error=False
            )

    async def _monitor(self) -> None:
        self.session.open_boards()

    # -- data in ---------------------------------------------------------------------
    def _on_serial(
        self,
        board: str,
        port: str,
        t: float,
        lines: list[str],
        notes: Sequence[Sequence[AddressNote]] = (),
    ) -> None:
        # reader thread: append only (deque.append is atomic), the timer
        # renders; the board's title/clipboard/reset sequences never reach
        # the terminal (Rich passes ESC c and OSC through), its colours do
        if any(type(ln) is LinePiece for ln in lines):  # a line too long to keep whole
            lines = [ln + CONTINUES if type(ln) is LinePiece else ln for ln in lines]
        lines = with_address_lines(lines, notes)
        self._pending.append((board, t, terminal_safe_lines(lines)))

    def _flush_serial(self) -> None:
        if not self._pending:
            return
        per_board: dict[str, list[str]] = collections.defaultdict(list)
        plain = self._filter is None and not self._timestamps
        while self._pending:
            board, t, lines = self._pending.popleft()
            hist = self._history.get(board)
            if hist is not None:
                hist[0].extend([t] * len(lines))
                hist[1].extend(lines)
            if self._muted:
                continue  # kept in the history (a filter or `t` shows them again)
            if plain:  # the flood path: no per-line Python work
                per_board[board].extend(lines)
                continue
            for line in lines:
                if self._filter is None or self._filter(line):
                    per_board[board].append(self._decorate(t, line))
        for board, lines in per_board.items():
            log = self._log_widget(board)
            if log is not None and lines:
                log.write_lines(lines)
                self.lines_shown += len(lines)
                log.follow()

    def _board_lines(self, board: str, lines: list[str]) -> None:
        """Our lines in a board's log (a decoded crash): after the board's own
        lines that came before them (the panic waits for the next frame), and
        in the history, so `t` and filters redraw them in place."""
        self._flush_serial()
        self._pending.append((board, time.time(), lines))
        self._flush_serial()

    def _decorate(self, t: float, line: str) -> str:
        if self._timestamps:
            return format_timestamp(t, self._stamp_format) + " " + line
        return line

    def _log_widget(self, board: str) -> SerialLog | None:
        try:
            return self.query_one(f"#log-{board}", SerialLog)
        except Exception:
            return None

    def _post_event(self, ev: Event) -> None:
        if self._unmounted:  # closing (a labgrid place not given back): said after the screen
            if isinstance(ev, Warned):
                self.exit_report.append(f"fbuild: warning: {ev.message}")
            elif isinstance(ev, Failed):
                self.exit_report.append(f"fbuild: error: {ev.message}")
            return
        self.post_message(SessionEvent(ev))

    def on_session_event(self, message: SessionEvent) -> None:
        self._on_event(message.event)

    def _on_event(self, ev: Event) -> None:
        try:
            build = self.query_one("#build", Log)
            status = self.query_one("#status", StatusLine)
        except NoMatches:  # the screen is gone (quitting): nothing left to draw
            return
        match ev:
            case BuildStarted():
                status.state = "building"
                status.progress = ""
                build.clear()
            case BuildOutput(line=line):
                build.write_line(line)
            case BuildProgress(done=done, total=total, elapsed_ms=ms):
                status.progress = progress_bar(done, total) + f" {ms / 1000:.0f}s"
            case BuildFinished(result=result):
                # a failure stays in the state word until the next build
                status.state = "idle" if result.ok or result.cancelled else "build failed"
                status.progress = ""
                if result.ok:
                    build.remove_class("visible")  # collapsed while green
                else:
                    build.add_class("visible")
                    build.write_line("")
                    text = human(ev, output_tail=False)
                    if text:
                        build.write_lines(text.splitlines())
            case DeployStarted(board=board):
                status.state = "deploying"
                status.set_board(board, outcome="deploying...")
            case DeployProgress(board=board, bytes_done=done, bytes_total=total):
                status.set_board(board, outcome=f"writing {progress_bar(done, total)}")
                self._tab_title(board, f"{board} {done * 100 // max(total, 1)}%")
            case DeployFinished(board=board, outcome=o):
                self._tab_title(board, board)
                status.state = "monitoring" if o.ok else "deploy failed"
                status.set_board(board, outcome=o.summary())
                if self._quitting:
                    flash = o.flash_state if not o.ok else None
                    state = f" (flash {flash})" if flash else ""
                    self.exit_report.append(f"{board}: deploy {o.summary()}{state}")
            case CycleFinished(timings_ms=ms):
                status.timings = "  ".join(
                    f"{_TIMING_LABELS.get(k, k.replace('_', ' '))} {v:.0f}ms"
                    for k, v in ms.items()
                    if k not in ("linked", "compiled")
                )
            case CoreDumpDecoded(board=board, coredump=dump):
                self._board_lines(board, [f"  => {line}" for line in dump.decoded()])
            case CrashDecoded(board=board, crash=crash):
                lines = [f"  => {f}" for f in crash.decoded()] or [
                    "  => (no code addresses decoded)"
                ]
                self._board_lines(board, [f"  => crash decoded: {crash.reason}", *lines])
            case PortChanged(board=board, state=state):
                status.set_board(board, port=state)
                shown = status.board(board)
                if state == PortState.WAITING:
                    status.set_board(board, outcome="waiting for the board")
                elif shown is not None and shown.outcome == "waiting for the board":
                    status.set_board(board, outcome="-")  # back: "-" until a deploy
            case Paused():
                status.state = "paused"
            case Resumed():
                status.state = "idle"
            case Failed(part=part, message=message):
                if part is not None:
                    self._problems[part] = message  # stays on screen, not only in a toast
                    status.problems = tuple(self._problems.values())
                self.notify(message, severity="error")
            case Warned(message=message):
                self.notify(message, severity="warning")
                self._show_modes()  # a log file that failed says so there
            case Note(message=message):
                self.notify(message, severity="information")

    def _tab_title(self, board: str, title: str) -> None:
        """A board's tab shows its write's progress."""
        try:
            self.query_one("#tabs", TabbedContent).get_tab(f"tab-{board}").label = title
        except (NoMatches, ValueError):
            pass

    def _show_modes(self) -> None:
        modes = []
        if self._timestamps:
            modes.append("timestamps")
        if self._muted:
            modes.append("output muted (Ctrl+T Ctrl+Y)")
        if self._filter is not None:
            modes.append("filtered")
        if self._log_path is not None:
            broken = [b.log_failed for b in self.session.boards if b.log_failed]
            modes.append(f"log file off: {broken[0]}" if broken else f"logging to {self._log_path}")
        self.query_one("#status", StatusLine).modes = tuple(modes)

    # -- keys ------------------------------------------------------------------------
    def action_command(self, name: str) -> None:
        self._chord_pending = False
        self.session.command(name)

    def action_chord(self) -> None:
        # like esp-idf-monitor: the next key completes the chord, however late
        if self._chord_pending:  # Ctrl+T Ctrl+T: the board gets a Ctrl+T
            self._chord_pending = False
            self.action_send_ctrl_t()
            return
        self._chord_pending = True
        self.notify(CHORD_HELP, timeout=3)

    async def action_chord_key(self, key: str) -> None:
        """Tab/Backspace: a chord's second key after Ctrl+T, else what they do."""
        if self._chord_pending:
            self._chord_pending = False
            await self.run_action(self.CHORD_ACTIONS[key])
        elif key == "tab":
            self.action_focus_next()

    def action_chord_help(self) -> None:
        self.notify(CHORD_HELP, timeout=8)

    # what still works while a box has the keys: Ctrl+C, Ctrl+], Ctrl+T chords
    _TYPING_SAFE = frozenset({"quit", "interrupt", "chord"})

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # what is typed into the filter or send box is text ('q', '/', 'r'), not commands
        return not (isinstance(self.focused, Input) and action not in self._TYPING_SAFE)

    async def action_quit_key(self) -> None:
        """`q`: quit, unless it is typed into a box."""
        await self.action_quit()

    async def on_key(self, event: events.Key) -> None:
        if event.key == "escape" and isinstance(self.focused, Input):
            event.stop()
            self.focused.remove_class("visible")
            self.set_focus(None)
            return
        if self._chord_pending and event.key != "ctrl+t":
            self._chord_pending = False
            if event.key in self.CHORDS:
                event.stop()
                self.session.command(self.CHORDS[event.key])
            elif event.key in self.CHORD_ACTIONS:
                event.stop()
                await self.run_action(self.CHORD_ACTIONS[event.key])

    def action_toggle_mute(self) -> None:
        self._muted = not self._muted
        self.notify("output muted (Ctrl+T Ctrl+Y again to show it)" if self._muted else "output on")
        self._show_modes()

    def action_send_ctrl_t(self) -> None:
        self._send_bytes("\x14")

    def action_send(self) -> None:
        box = self.query_one("#send", Input)
        box.add_class("visible")
        box.focus()

    def _active_board(self) -> str | None:
        active = self.query_one("#tabs", TabbedContent).active
        return active.removeprefix("tab-") if active else None

    def _send_bytes(self, text: str) -> None:
        self.session.send(text, self._active_board())

    def action_toggle_timestamps(self) -> None:
        self._timestamps = not self._timestamps
        self._rerender()
        self._show_modes()

    def action_clear(self) -> None:
        for times, texts in self._history.values():
            times.clear()
            texts.clear()
        for b in self.session.boards:
            log = self._log_widget(b.label)
            if log is not None:
                log.clear()

    def action_toggle_log_file(self) -> None:
        if self._log_path is None:
            self._log_path = self.session.log_dir() / time.strftime("monitor-%Y%m%d-%H%M%S.log")
            self.session.set_log_file(self._log_path)
            self.notify(f"logging every byte to {self._log_path}")
        else:
            self.session.set_log_file(None)
            self.notify(f"log file closed: {self._log_path}")
            self._log_path = None
        self._show_modes()

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.add_class("visible")
        box.focus()

    def on_input_submitted(self, message: Input.Submitted) -> None:
        if message.input.id == "send":
            # the line to the board in the active tab; the box stays for the next one
            self._send_bytes(message.value)
            self.notify(f"sent to {self._active_board()}: {message.value!r}", timeout=1.5)
            message.input.value = ""
            return
        try:
            self._filter = compile_filter(message.value)
        except ValueError as exc:
            self.notify(str(exc), severity="error")
            return
        message.input.remove_class("visible")
        self.set_focus(None)
        self._rerender()
        self._show_modes()

    def _rerender(self) -> None:
        for label, (times, texts) in self._history.items():
            log = self._log_widget(label)
            if log is None:
                continue
            log.clear()
            keep = self._filter
            lines = [
                self._decorate(t, ln)
                for t, ln in zip(times, texts, strict=True)
                if keep is None or keep(ln)
            ]
            if lines:
                log.write_lines(lines)

    async def action_quit(self) -> None:
        # Never leave a half-written flash unreported: a deploy in progress is
        # finished first; quitting again interrupts it, and it reports what is
        # on flash (the app leaves when the session has stopped).
        what = self.session.quit()
        if what == "done":
            self._leave()
            return
        if what == "aborting":
            self.notify("aborting the deploy", severity="warning")
        self._quitting = True
        status = self.query_one("#status", StatusLine)
        status.state = "quitting after the deploy (q or Ctrl+C again: abort it)"

    async def action_interrupt(self) -> None:
        self._interrupted = True
        await self.action_quit()

    def _leave(self) -> None:
        """Exit with the contract's status (README, "Exit status"): 130
        after Ctrl+C, 1 when the run failed (said after the screen is gone),
        else 0. Once: the quit key and the session's end both lead here."""
        if self._left:
            return
        self._left = True
        if self._interrupted:
            self.exit(130)
            return
        failure = None if self.monitor_only else self.session.failure()
        if failure is None:
            self.exit(0)
            return
        self.exit_report.append(f"fbuild: error: {failure}")
        self.exit(1)

    def on_worker_state_changed(self, event: Worker.StateChanged) -> None:
        # the session has stopped (after the deploy it waited for, or because
        # a part of the loop failed for good): leave now
        if event.worker.group != "session" or not event.worker.is_finished:
            return
        if event.worker.error is not None:
            self.exit_report.append(f"fbuild: error: {one_line(event.worker.error)}")
            self.exit(1)
        elif self._quitting or not self.monitor_only:
            self._leave()

    def on_unmount(self) -> None:
        self._unmounted = True
        self.session.stop()
        self.session.close()
