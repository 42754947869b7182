"""`fbuild sim serve`: its arguments and its run. cli.py either builds the
subcommand with `add_arguments` (then `run`), or hands it its arguments
unparsed (`main`), which keeps the emulator and esptool out of every other
command's start: importing anything under `fbuild_watch.sim` loads both.

One board (`--listen`, `--name`, `--flash`, `--mac`) or several from one
command (`--board NAME=HOST:PORT`, repeatable; each its own flash file and
MAC, as `sim://NAME` would have).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from fbuild_watch.errors import RuntimeFailure, UsageError
from fbuild_watch.sim import registry
from fbuild_watch.sim.board import VirtualBoard
from fbuild_watch.sim.flash import FlashImageError, FlashInUse
from fbuild_watch.sim.registry import SimOptions
from fbuild_watch.sim.server import BoardServer

HELP = "serve virtual boards over TCP (socket:// or rfc2217://) for a separate esptool"
DESCRIPTION = (
    "Expose virtual ESP32-C3 boards over TCP. esptool reaches a board as socket://HOST:PORT "
    "(raw TCP: no reset lines, so esptool uses no-reset and the board starts in download "
    "mode) or, with --protocol rfc2217, as rfc2217://HOST:PORT?ign_set_control (DTR/RTS "
    "and baud changes travel, as with esptool's esp_rfc2217_server). One client per board "
    "at a time; a board keeps its state between clients (a stub left running, its baud "
    "rate) as a real chip does. A flash image persists between runs and belongs to one "
    "board at a time: a second server or a sim://NAME on the same file is refused as busy. "
    "Ctrl+C or SIGTERM stops every board with its flash saved."
)
DEFAULT_LISTEN = "127.0.0.1:5555"
DEFAULT_NAME = "served"
_ONE_BOARD = ("listen", "name", "flash", "mac")  # options that describe a single board


def main(argv: Sequence[str]) -> int:
    """`fbuild sim serve ARGV...` parsed here, with the same options and errors."""
    parser = argparse.ArgumentParser(prog="fbuild sim serve")
    add_arguments(parser)
    return run(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.add_argument(
        "--listen", metavar="HOST:PORT", help=f"one board's address (default: {DEFAULT_LISTEN})"
    )
    parser.add_argument(
        "--board",
        action="append",
        metavar="NAME=HOST:PORT",
        help="serve board NAME on HOST:PORT (repeat for more boards; port 0: any free port); "
        "each has its own flash file, NAME.flash in the sim dir ($FBUILD_SIM_DIR, default: "
        "the user cache dir), and its own MAC, as sim://NAME has. Not with --listen, --name, "
        "--flash or --mac",
    )
    parser.add_argument(
        "--protocol",
        choices=["raw", "rfc2217"],
        default="raw",
        help="raw TCP (socket://, no reset lines: the default) or RFC 2217 (rfc2217://: "
        "DTR/RTS and baud changes travel, as with esptool's esp_rfc2217_server)",
    )
    parser.add_argument(
        "--name", help=f"one board's name (its flash file's name; default: {DEFAULT_NAME})"
    )
    parser.add_argument(
        "--flash",
        metavar="FILE",
        help="one board's flash image file (default: NAME.flash in the sim dir)",
    )
    parser.add_argument("--no-persist", action="store_true", help="keep flash in memory only")
    parser.add_argument("--timing", choices=["realistic", "instant"], default="realistic")
    parser.add_argument(
        "--boot",
        choices=["download", "app"],
        default="download",
        help="start in the ROM loader (default) or boot the app",
    )
    parser.add_argument("--mac", help="one board's MAC (default: derived from its name)")
    parser.add_argument("--flash-size", metavar="SIZE", help="2MB, 4MB (default), 8MB or 16MB")
    parser.add_argument(
        "--flash-id", metavar="JEDEC", help="flash JEDEC id in hex, e.g. c84016 (GigaDevice 4MB)"
    )
    parser.set_defaults(func=run)


@dataclass(frozen=True)
class Served:
    """One board to serve: where, and as what."""

    opts: SimOptions
    host: str
    port: int
    listen: str  # as given, for messages


def parse_address(text: str, what: str) -> tuple[str, int]:
    """HOST:PORT (HOST may be empty for loopback, or [v6] in brackets)."""
    host, sep, port_text = text.rpartition(":")
    try:
        port = int(port_text)
    except ValueError:
        port = -1
    if not sep or not 0 <= port <= 65535:
        raise UsageError(f"{what} expects HOST:PORT, got {text!r}")
    return host.removeprefix("[").removesuffix("]") or "127.0.0.1", port


def plan(args: argparse.Namespace) -> list[Served]:
    """The boards the arguments ask for, or a UsageError naming what is wrong."""
    try:
        flash_size, flash_id = registry.flash_part(args.flash_size, args.flash_id)
        base = registry.SimOptions(
            DEFAULT_NAME, None, args.timing, False, args.boot, None, flash_size, flash_id
        )
        if not args.board:
            name = registry.check_name(args.name or DEFAULT_NAME)
            flash = Path(args.flash) if args.flash else registry.default_flash_path(name)
            mac = registry.parse_mac(args.mac) if args.mac else None
            listen = args.listen or DEFAULT_LISTEN
            host, port = parse_address(listen, "--listen")
            opts = replace(base, name=name, flash=None if args.no_persist else flash, mac=mac)
            return [Served(opts, host, port, listen)]
        clash = [f"--{o}" for o in _ONE_BOARD if getattr(args, o) is not None]
        if clash:
            raise UsageError(
                f"{', '.join(clash)} describe a single board; with --board each board is "
                "NAME=HOST:PORT, with its own flash file and MAC"
            )
        boards: list[Served] = []
        for item in args.board:
            name, eq, listen = item.partition("=")
            if not eq:
                raise UsageError(f"--board expects NAME=HOST:PORT, got {item!r}")
            name = registry.check_name(name)
            host, port = parse_address(listen, f"--board {name}")
            if any(b.opts.name == name for b in boards):
                raise UsageError(f"board '{name}' is given twice")
            if port and any((b.host, b.port) == (host, port) for b in boards):
                raise UsageError(f"two boards on {host}:{port}")
            path = None if args.no_persist else registry.default_flash_path(name)
            boards.append(Served(replace(base, name=name, flash=path), host, port, listen))
        return boards
    except registry.SimUrlError as exc:
        raise UsageError(str(exc)) from None


def _open(planned: list[Served], protocol: str, many: bool) -> list[BoardServer]:
    """Each board with its server listening; all or none (a failure closes
    those already open and names the board)."""
    servers: list[BoardServer] = []
    try:
        for s in planned:
            name = s.opts.name
            try:
                board = registry.make_board(s.opts)  # holds the flash file: one board per file
            except FlashInUse as exc:
                raise RuntimeFailure(
                    f"board '{name}' is busy: its flash {exc.path} is held by {exc.holder}"
                ) from None
            except FlashImageError as exc:
                raise RuntimeFailure(str(exc)) from None
            except OSError as exc:
                raise RuntimeFailure(
                    f"board '{name}': cannot use flash file {s.opts.flash}: {exc.strerror}"
                ) from None
            prefix = f"{name}: " if many else ""
            try:
                server = BoardServer(
                    board,
                    s.host,
                    s.port,
                    on_event=_printer(prefix),
                    protocol=protocol,
                )
            except OSError as exc:
                board.close()
                what = f"board '{name}': " if many else ""
                raise RuntimeFailure(f"{what}cannot listen on {s.listen}: {exc.strerror}") from None
            servers.append(server)
    except BaseException:
        _close_all(servers)
        raise
    return servers


_say_lock = threading.Lock()


def _say(text: str) -> None:
    """One line to stdout. A reader that went away (`| head -1` took the
    address) must not stop the serving: the rest goes to /dev/null."""
    with _say_lock:
        try:
            print(text, flush=True)
        except BrokenPipeError:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # (also spares the flush at exit)
            os.close(devnull)


def _printer(prefix: str) -> Callable[[str], None]:
    return lambda text: _say(f"{prefix}{text}")


def _close_all(servers: list[BoardServer]) -> None:
    """Every server stopped and every board closed (flash saved), side by
    side: a stop signal is answered within a second however many boards."""
    for server in servers:
        server.request_stop()

    def close(server: BoardServer) -> None:
        server.stop()
        server.board.close()  # saves the flash image and frees the file

    threads = [threading.Thread(target=close, args=(s,), name="sim-serve-stop") for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _describe(board: VirtualBoard, url: str, timing: str, boot: str) -> str:
    flash = board.flash.path or "memory only"
    return (
        f"virtual ESP32-C3 '{board.name}' on {url} (flash: {flash}, timing: {timing}, "
        f"boot: {boot}, mac: {board.identity.mac.hex(':')})"
    )


def run(args: argparse.Namespace) -> int:
    planned = plan(args)
    many = bool(args.board)
    # Stop signals are taken synchronously (sigwait) by this thread: blocked
    # before the boards' and servers' threads start, so they inherit the mask
    # (no other thread takes the signal) and no handler runs mid-shutdown.
    stop_signals = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    try:
        servers = _open(planned, args.protocol, many)
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        raise
    for server in servers:  # every address first, so a script can read them all
        _say(_describe(server.board, server.url, args.timing, args.boot))
    for server in servers:
        server.start()
    try:
        signal.sigwait(stop_signals)
    finally:
        _close_all(servers)
    for server in servers:
        path = server.board.flash.path
        saved = f"flash saved to {path}" if path else "flash was memory only"
        _say(f"stopped '{server.board.name}' ({saved})" if many else f"stopped ({saved})")
    return 0
