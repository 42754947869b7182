"""The `fbuild` command.

Exit status (README, "Exit status"), the same in the TUI and the line modes:
0 success; 1 runtime failure (invalid image, build failed, port missing, busy
or never opened, a deploy that did not complete, a part of the loop that
stopped); 2 usage or configuration error; 130 interrupted (Ctrl+C); 141
stdout closed by its reader (line modes, `| head`). With
--json a failure is also one JSON object on stdout: {"ok": false, "error":
..., "exit_code": N} (`watch`/`monitor` add "type": "exit").
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import json
import math
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fbuild_watch import __version__
from fbuild_watch.errors import FbuildError, UsageError

if TYPE_CHECKING:
    from fbuild_watch.build.backends import Backend
    from fbuild_watch.deploy.ports import PortInfo
    from fbuild_watch.deploy.trust import FlashCache
    from fbuild_watch.image.layout import FlashLayout, ValidatedLayout
    from fbuild_watch.image.settings import ResolvedFlash
    from fbuild_watch.session import SessionOptions


def _layout_from_args(items: list[str], chip: str | None) -> FlashLayout:
    """PATH (layout file, build dir, project dir, single .bin) or OFFSET FILE pairs."""
    from fbuild_watch.image.chips import DEFAULT_APP_OFFSET
    from fbuild_watch.image.loaders import load_layout, load_pairs

    if len(items) <= 1:
        path = Path(items[0] if items else ".")
        if path.suffix == ".bin" and path.is_file():
            return load_pairs([(DEFAULT_APP_OFFSET, path)], chip=chip)
        return load_layout(path, chip=chip)
    if len(items) % 2:
        raise UsageError(
            "expected PATH, or OFFSET FILE pairs (e.g. 0x0 bootloader.bin 0x10000 app.bin)"
        )
    pairs = []
    for off, file in zip(items[::2], items[1::2], strict=True):
        try:
            pairs.append((int(off, 0), Path(file)))
        except ValueError:
            raise UsageError(f"bad offset {off!r} (expected e.g. 0x10000)") from None
    return load_pairs(pairs, chip=chip)


def _image_info(args: argparse.Namespace) -> int:
    from fbuild_watch.image.info import layout_report, render_text

    layout = _layout_from_args(args.paths, args.chip)
    report, validated = layout_report(layout)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render_text(report))
    if validated is None:
        print(f"fbuild: error: {report['error']}", file=sys.stderr)
        return 1
    return 0


def _build(args: argparse.Namespace) -> int:
    from fbuild_watch.build import BuildRun, detect_backend

    backend = detect_backend(Path(args.project), fqbn=args.fqbn)
    if args.explain:  # which build system, why, what else it could have been
        info = backend.explain()
        if args.json:
            print(json.dumps(info, indent=2))
        else:
            for key, value in info.items():
                print(f"{key}: {value}")
        return 0
    on_line = None if args.json else (lambda line: print(line, flush=True))
    run = BuildRun(backend, on_line, rate_limited=False)  # a terminal takes every line
    signals: list[int] = []

    def interrupted(signum: int, _frame: object) -> None:
        # The build has its own process group, which the terminal's Ctrl+C
        # does not reach: end it here (the run returns once it is gone).
        signals.append(signum)
        run.cancel()

    previous = {sig: signal.signal(sig, interrupted) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        result = run.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    error = "build interrupted (its processes were ended)" if signals else result.error
    if args.json:
        doc = result.as_dict()
        doc["ok"] = result.ok and not signals
        doc["error"] = error
        doc["project"] = str(backend.project_dir)
        doc["backend"] = backend.kind
        doc["output"] = result.output
        print(json.dumps(doc, indent=2))
    else:
        for d in result.diagnostics:
            if d.severity in ("error", "warning") and not d.summary:
                print(d.format())
        if result.ok and result.layout is not None:
            lay = result.layout.layout
            print(
                f"fbuild: build ok in {result.duration_s:.2f} s: {len(lay.regions)} regions, "
                f"{lay.total_size / 1024:.1f} KiB, image {lay.image_hash[:16]}"
            )
    if signals or not result.ok:
        print(f"fbuild: error: {error}", file=sys.stderr)
        if signals:
            return 128 + signals[0]
        return 2 if result.config_error else 1  # README, "Exit status"
    return 0


def _deploy(args: argparse.Namespace) -> int:
    from fbuild_watch.boardports import hold_ports
    from fbuild_watch.build import detect_backend
    from fbuild_watch.deploy import FlashCache
    from fbuild_watch.deploy.ports import board_ports
    from fbuild_watch.image.settings import FlashSettings, environ_flash, resolve_flash
    from fbuild_watch.plugins import load_port_schemes
    from fbuild_watch.project_lock import refuse_if_watched

    load_port_schemes()
    backend = detect_backend(Path(args.project), fqbn=args.fqbn)
    refuse_if_watched(backend.project_dir, "deploy")
    cfg = backend.config
    # usage errors (ports, baud) before anything is read from the build
    infos = board_ports(args.port, cfg.port if cfg else ())
    environ_flash(os.environ)  # a bad ESPBAUD is an error before anything is read
    layout = _built_layout(backend).validate()  # never flash what was not validated
    # the project's own flashing settings (before/after/stub/baud/encrypted),
    # under the command line and fbuild.toml (README, "Projects")
    cli_layer = FlashSettings(baud=args.baud, origins=(("baud", "--baud"),)) if args.baud else None
    flash = resolve_flash(layout.settings, cli=cli_layer, config=cfg.flash_layer() if cfg else None)
    for warning in flash.warnings:
        print(f"fbuild: warning: {warning}", file=sys.stderr)
    cache = None if args.no_trust else FlashCache()
    held = hold_ports(  # labgrid places, for the deploy
        infos,
        on_note=lambda line: print(f"fbuild: {line}", file=sys.stderr, flush=True),
        on_warning=lambda line: print(f"fbuild: warning: {line}", file=sys.stderr, flush=True),
        wait_place=args.wait_place,
    )
    try:
        return _deploy_to(args, held.infos, layout, flash, cache)
    finally:
        held.release()


def _deploy_to(
    args: argparse.Namespace,
    infos: list[PortInfo],
    layout: ValidatedLayout,
    flash: ResolvedFlash,
    cache: FlashCache | None,
) -> int:
    import concurrent.futures

    from fbuild_watch.deploy import BoardDeployer, BoardWorker, SessionTrust

    def one(info: PortInfo) -> dict[str, object]:
        conn = BoardWorker(info)
        conn.open()
        try:
            dep = BoardDeployer(
                conn, flash=flash, trust=SessionTrust(enabled=not args.no_trust), cache=cache
            )
            outcome = dep.deploy(layout, full=args.full, app_only=args.app_only).as_dict()
            return {**outcome, "flash_settings": flash.as_dict()}  # each with where it came from
        finally:
            conn.close()

    with concurrent.futures.ThreadPoolExecutor(max_workers=len(infos)) as pool:
        results = list(pool.map(one, infos))
    if args.json:
        print(json.dumps(results[0] if len(results) == 1 else results, indent=2))
    else:
        for r in results:
            print(f"{r['port']}: {r['summary']}")
    failed = [r for r in results if not r["ok"]]
    for r in failed:
        print(
            f"fbuild: error: {r['port']}: deploy failed: {r['error']} ({r['flash_state']})",
            file=sys.stderr,
        )
    return 1 if failed else 0


def _built_layout(backend: Backend) -> FlashLayout:
    """The build's layout; build outputs that are not there yet say how to
    make them."""
    try:
        return backend.load_layout()
    except FbuildError as exc:
        missing = exc.source is not None and not Path(exc.source).exists()
        if not missing:
            raise
        raise type(exc)(
            f"{exc.problem} (no build output yet: run `fbuild build` first)", source=exc.source
        ) from None


def _session_options(args: argparse.Namespace) -> SessionOptions:
    from fbuild_watch.session import SessionOptions

    return SessionOptions(
        project=Path(getattr(args, "project", ".")),
        ports=args.port or [],
        baud=args.baud,
        monitor_baud=args.monitor_baud,
        on_busy=getattr(args, "on_busy", "queue"),
        trust=not getattr(args, "no_trust", False),
        quiet_ms=getattr(args, "debounce_ms", None),
        poll=getattr(args, "poll", False),
        log_file=Path(args.log_file) if args.log_file else None,
        elf=Path(args.elf) if args.elf else None,
        fqbn=getattr(args, "fqbn", None),
        build_on_start=True if getattr(args, "build", False) else None,
        print_filter=args.print_filter,
        timestamps=args.timestamps,
        timestamp_format=args.timestamp_format,
        eol=args.eol,
        # monitor: reset on attach; watch: only when no deploy resets it at start
        reset_on_attach=args.func is _monitor and not args.no_reset,
        reset_if_no_deploy=args.func is _watch and not args.no_reset,
        wait_place=args.wait_place,
    )


def _watch(args: argparse.Namespace) -> int:
    opts = _session_options(args)
    if args.plain or args.json or not sys.stdout.isatty():
        from fbuild_watch.views.lines import run_line_mode

        return run_line_mode(opts, json_mode=args.json, timeout=args.timeout)
    from fbuild_watch.session import open_session
    from fbuild_watch.tui.app import WatchApp

    app = WatchApp(open_session(opts, on_setup_line=_say), timeout=args.timeout)
    code = app.run() or 0
    for line in app.exit_report:  # the screen is gone: say how the last deploy ended
        print(line, file=sys.stderr)
    return code


def _monitor(args: argparse.Namespace) -> int:
    opts = _session_options(args)
    if args.plain or args.json or args.until or not sys.stdout.isatty():
        from fbuild_watch.views.lines import run_line_mode

        return run_line_mode(
            opts, json_mode=args.json, monitor_only=True, until=args.until, timeout=args.timeout
        )
    from fbuild_watch.session import open_session
    from fbuild_watch.tui.app import WatchApp

    session = open_session(opts, monitor_only=True, on_setup_line=_say)
    app = WatchApp(session, monitor_only=True, timeout=args.timeout)
    code = app.run() or 0
    for line in app.exit_report:
        print(line, file=sys.stderr)
    return code


def _say(line: str) -> None:
    """Before the screen is up (waiting for a labgrid place)."""
    print(f"fbuild: {line}", file=sys.stderr, flush=True)


def _lnk(args: argparse.Namespace) -> int:
    from fbuild_watch import cli_lnk as commands

    if args.lnk_command == "pull":
        return commands.pull(Path(args.dir), allow_http=args.allow_http, as_json=args.json)
    if args.lnk_command == "check":
        return commands.check(Path(args.dir), as_json=args.json)
    if args.lnk_command == "ls":
        return commands.ls(Path(args.dir), as_json=args.json)
    return commands.add(
        args.url,
        args.output,
        extract=args.extract,
        allow_http=args.allow_http,
        force=args.force,
        as_json=args.json,
    )


def _sim_serve(args: argparse.Namespace) -> int:
    from fbuild_watch.sim import serve_cli  # its own parser: sim/ loads esptool and unicorn

    return serve_cli.main(args.argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fbuild",
        description="Edit -> build -> flash -> monitor loop for ESP32 boards.",
        epilog=(
            "exit status: 0 ok, 1 runtime failure (failed build or deploy, port missing, "
            "busy or never opened), 2 usage or configuration error, 130 interrupted, 141 stdout "
            'closed by its reader (| head); with --json a failure is also {"ok": false, '
            '"error": ..., "exit_code": N} on stdout'
        ),
    )
    parser.add_argument("--version", action="version", version=f"fbuild-watch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    image = sub.add_parser("image", help="inspect and validate flash images")
    image_sub = image.add_subparsers(dest="image_command", metavar="SUBCOMMAND")
    info = image_sub.add_parser(
        "info",
        help="show and validate a flash layout",
        description=(
            "Show chip, regions, app descriptor and validation result of a flash layout. "
            "PATH is a flasher_args.json, idedata.json, Arduino build dir or project dir; "
            "a single .bin is taken as an app at 0x10000; OFFSET FILE pairs work as with esptool."
        ),
    )
    info.add_argument(
        "paths",
        metavar="PATH",
        nargs="*",
        help="layout file or directory (default: .), a single app .bin, or OFFSET FILE pairs",
    )
    info.add_argument("--chip", help="target chip (default: from the images)")
    info.add_argument("--json", action="store_true", help="print one JSON object")
    info.set_defaults(func=_image_info)
    image.set_defaults(func=lambda _a: _usage(image))

    build = sub.add_parser(
        "build",
        help="run one build and validate its flash layout",
        description=(
            "Detect the project (fbuild.toml, ESP-IDF, PlatformIO, Arduino CLI), run its "
            "incremental build and validate the resulting flash layout. Diagnostics are "
            "printed as file:line:col: severity: message."
        ),
    )
    build.add_argument("project", nargs="?", default=".", metavar="PROJECT")
    build.add_argument("--json", action="store_true", help="print one JSON object")
    build.add_argument("--fqbn", help="Arduino board FQBN (Arduino CLI projects)")
    build.add_argument(
        "--explain",
        action="store_true",
        help="say which build system was chosen and why (and the others it could be); no build",
    )
    build.set_defaults(func=_build)

    deploy = sub.add_parser(
        "deploy",
        help="deploy the last build to the board(s) with the least flash traffic",
        description=(
            "Deploy the existing, validated build outputs. Without session trust this is a "
            "verify-probe: device MD5s (or the confirmed last layout of this board) decide which "
            "4 KiB sectors to write. --full writes everything."
        ),
    )
    deploy.add_argument("project", nargs="?", default=".", metavar="PROJECT")

    def port_options(p: argparse.ArgumentParser) -> None:
        port_help = (
            "device, sim://NAME, socket://HOST:PORT, rfc2217://HOST:PORT or labgrid://PLACE "
            "(repeat for several boards; default: ESPPORT or the one ESP found)"
        )
        p.add_argument("--port", "-p", action="append", metavar="PORT", help=port_help)
        p.add_argument(
            "--baud",
            "-b",
            type=int,
            help="flashing baud (default: [board] baud, ESPBAUD or 460800)",
        )
        p.add_argument(
            "--wait-place",
            nargs="?",
            const=math.inf,
            type=float,
            metavar="S",
            help="labgrid://PLACE held by someone else: wait for it (S seconds; forever)",
        )

    port_options(deploy)
    deploy.add_argument("--full", action="store_true", help="write every region in full")
    deploy.add_argument("--app-only", action="store_true", help="only the app region(s)")
    deploy.add_argument("--no-trust", action="store_true", help="ignore the cached last layout")
    deploy.add_argument("--fqbn", help="Arduino board FQBN (Arduino CLI projects)")
    deploy.add_argument("--json", action="store_true", help="print the outcome as JSON")
    deploy.set_defaults(func=_deploy)

    def board_options(p: argparse.ArgumentParser) -> None:
        port_options(p)
        p.add_argument(
            "--monitor-baud",
            type=int,
            help="the app's console baud (default: the project's: ESP-IDF's console baud, "
            "PlatformIO's monitor_speed, [monitor] baud; else 115200)",
        )
        p.add_argument(
            "--print-filter",
            metavar="SPEC",
            help="show only matching lines: esp-idf-monitor's tag:level specs (wifi:W *:E), "
            '/regex/ or "text"',
        )
        p.add_argument("--timestamps", action="store_true", help="prefix each line with its time")
        p.add_argument(
            "--timestamp-format",
            metavar="FMT",
            help="strftime format of --timestamps (%%3f: milliseconds; default %%H:%%M:%%S.%%3f)",
        )
        p.add_argument(
            "--eol",
            choices=["CR", "LF", "CRLF"],
            help="what ends a line sent to the board (default: the project's, else CRLF)",
        )

        p.add_argument("--elf", help="ELF for crash decoding (default: the build's)")
        p.add_argument(
            "--log-file", metavar="FILE", help="write every byte the board sends to FILE"
        )
        p.add_argument("--plain", action="store_true", help="human lines instead of the TUI")
        p.add_argument("--json", action="store_true", help="one JSON object per event")
        p.add_argument("--timeout", type=float, metavar="S", help="stop after S seconds")

    watch = sub.add_parser(
        "watch",
        help="watch, build, deploy and monitor in one terminal pane",
        description=(
            "Watch the project, rebuild on change, deploy the least flash traffic possible to "
            "the board(s) and show their serial logs. Keys (TUI) or stdin lines (--plain/--json): "
            "f full-flash, b rebuild, r reset, a app-flash, p pause, q quit, send TEXT (s in the "
            "TUI); also t timestamps, c clear, l log to file, / filter, and esp-idf-monitor's "
            "Ctrl+T chords (F/A/R/P/Y/I/L/H/X) and Ctrl+]. "
            "Quitting (q, Ctrl+C) during a deploy waits for it to finish; quitting again "
            "aborts it and reports the flash as partially written. Once the build has compiled "
            "an object or linked an ELF whose loadable contents differ from what the board's "
            "image was made from, the board is taken into its bootloader while the build "
            "goes on (a build that then fails resets it back into its app)."
        ),
    )
    watch.add_argument("project", nargs="?", default=".", metavar="PROJECT")
    board_options(watch)
    watch.add_argument(
        "--on-busy",
        choices=["queue", "restart"],
        default="queue",
        help="changes during a build: one more build after it (queue) or restart it",
    )
    watch.add_argument("--debounce-ms", type=int, help="quiet period before a build (default 30)")
    watch.add_argument(
        "--no-trust",
        action="store_true",
        help="never skip or diff on what this session believes the board holds",
    )
    watch.add_argument(
        "--poll", action="store_true", help="poll the tree instead of filesystem events"
    )
    watch.add_argument(
        "--build", action="store_true", help="build at start even if nothing changed"
    )
    watch.add_argument("--fqbn", help="Arduino board FQBN (Arduino CLI projects)")
    watch.add_argument(
        "--no-reset",
        action="store_true",
        help="when no deploy runs at start (the first build failed), leave the board running "
        "(by default it is reset for its boot log, as esp-idf-monitor does on attach)",
    )
    watch.set_defaults(func=_watch)

    monitor = sub.add_parser(
        "monitor",
        help="the serial monitor alone (decoding, reconnect, log file)",
        description=(
            "Show a board's serial output with crash decoding; reconnects when the port comes back."
        ),
    )
    board_options(monitor)
    monitor.add_argument(
        "--no-reset",
        action="store_true",
        help="do not reset the board on attach (esp-idf-monitor resets it, for the boot log)",
    )
    monitor.add_argument(
        "--until", metavar="REGEX", help="exit 0 when a line matches (1 on --timeout)"
    )
    monitor.set_defaults(func=_monitor)

    lnk = sub.add_parser(
        "lnk",
        help="`.lnk` resource pointers: large assets fetched, verified and cached",
        description=(
            'A NAME.lnk file ({"v": 1, "url": ..., "sha256": ..., "size": N, '
            '"extract": "file"|"zip"|"tar.gz"}) stands in for NAME. Builds fetch the '
            "blob once into the user cache, verify its SHA-256 and materialize it under the "
            "resource dir ([lnk] dir, default .fbuild/resources; FBUILD_RESOURCE_DIR in the "
            "build's environment)."
        ),
    )
    lnk_sub = lnk.add_subparsers(dest="lnk_command", metavar="SUBCOMMAND")
    http_help = "allow plain http:// to non-loopback hosts"
    pull = lnk_sub.add_parser(
        "pull", help="fetch every referenced blob (and materialize it, in a project)"
    )
    pull.add_argument("--allow-http", action="store_true", help=http_help)
    check = lnk_sub.add_parser(
        "check",
        help="re-hash the cached blobs, no network (exit 1 on a missing or corrupt blob)",
    )
    ls = lnk_sub.add_parser("ls", help="list the pointers and their cache state")
    for p in (pull, check, ls):
        p.add_argument("dir", nargs="?", default=".", metavar="DIR")
    add = lnk_sub.add_parser("add", help="download URL once, hash it and write its .lnk")
    add.add_argument("url", metavar="URL")
    add.add_argument(
        "-o",
        "--output",
        metavar="PATH",
        help="the pointer (PATH.lnk, or PATH if it ends in .lnk; default: URL's name + .lnk)",
    )
    add.add_argument("--extract", choices=["file", "zip", "tar.gz"], help="default: from the URL")
    add.add_argument("--allow-http", action="store_true", help=http_help)
    add.add_argument("--force", action="store_true", help="replace an existing pointer")
    for p in (pull, check, ls, add):
        p.add_argument("--json", action="store_true", help="print one JSON object")
        p.set_defaults(func=_lnk)
    lnk.set_defaults(func=lambda _a: _usage(lnk))

    sim = sub.add_parser("sim", help="the virtual ESP32-C3 board")
    sim_sub = sim.add_subparsers(dest="sim_command", metavar="SUBCOMMAND")
    help_ = "serve virtual boards over TCP (socket:// or rfc2217://) for a separate esptool"
    serve = sim_sub.add_parser("serve", help=help_, add_help=False, prefix_chars="\0")
    serve.add_argument("argv", nargs=argparse.REMAINDER)  # all to _sim_serve, -h included
    serve.set_defaults(func=_sim_serve)
    sim.set_defaults(func=lambda _a: _usage(sim))
    return parser


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    if hasattr(signal, "SIGUSR1") and sys.__stderr__ is not None:
        # `kill -USR1 <pid>` prints every thread's stack (a hang, in the field)
        with contextlib.suppress(AttributeError, ValueError, OSError, RuntimeError):
            faulthandler.register(signal.SIGUSR1, file=sys.__stderr__, all_threads=True)
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        return _usage(parser)
    if args.command == "build":
        from fbuild_watch.project_lock import refuse_if_watched

        try:  # a watcher's builds would race this one
            refuse_if_watched(Path(args.project), "build")
        except FbuildError as exc:
            return _failed(args, exc)
    try:
        return int(func(args))
    except FbuildError as exc:
        return _failed(args, exc)
    except KeyboardInterrupt:
        return 130


def _failed(args: argparse.Namespace, exc: FbuildError) -> int:
    """One line on stderr; with --json also one JSON object on stdout."""
    print(f"fbuild: error: {exc}", file=sys.stderr)
    if getattr(args, "json", False):
        doc: dict[str, object] = {"ok": False, "error": str(exc), "exit_code": exc.exit_code}
        if args.command in ("watch", "monitor"):
            doc = {"type": "exit", **doc}
        print(json.dumps(doc), flush=True)
    return exc.exit_code
