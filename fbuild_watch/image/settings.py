"""How a project asks to be flashed and monitored, and where each setting came from.

Every source (the build system's files, `fbuild.toml`, the command line, the
environment) is read into a *layer*: a `FlashSettings` or `MonitorSettings`
whose fields are None where that source says nothing. `resolve_flash` and
`resolve_monitor` stack the layers in the documented precedence (command
line, `fbuild.toml`, the build system's files, the environment, defaults)
into a `ResolvedFlash` / `ResolvedMonitor` that says, per field, which
source won. Everything here is pure: no file, port or board is touched.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

from fbuild_watch.errors import ConfigError
from fbuild_watch.image.chips import normalize_chip

DEFAULT_FLASH_BAUD = 460800  # idf.py's and esptool's default with a stub
DEFAULT_MONITOR_BAUD = 115200  # ESP-IDF's CONFIG_ESP_CONSOLE_UART_BAUDRATE default
DEFAULT_BEFORE = "default-reset"
DEFAULT_AFTER = "hard-reset"

# esptool 5 spellings; the underscore forms of esptool 4 (and of ESP-IDF < 6,
# PlatformIO and Arduino) are read as the same thing.
BEFORE_MODES = ("default-reset", "usb-reset", "no-reset", "no-reset-no-sync")
AFTER_MODES = ("hard-reset", "soft-reset", "no-reset", "no-reset-stub", "watchdog-reset")

ORIGIN_DEFAULT = "default"


def reset_mode(value: object, *, kind: str, where: str) -> str:
    """'default_reset' / 'default-reset' -> 'default-reset'; anything else is
    a ConfigError naming `where` (the file and field)."""
    modes = BEFORE_MODES if kind == "before" else AFTER_MODES
    if isinstance(value, str):
        norm = value.strip().lower().replace("_", "-")
        if norm in modes:
            return norm
    raise ConfigError(f"{where}: unknown --{kind} mode {value!r} (one of: {', '.join(modes)})")


def positive_int(value: object, *, where: str) -> int:
    """An integer > 0 from an int or a decimal string, else ConfigError."""
    if isinstance(value, bool):
        raise ConfigError(f"{where}: expected a positive integer, got {value!r}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.strip().isdigit():
        number = int(value.strip())
    else:
        raise ConfigError(f"{where}: expected a positive integer, got {value!r}")
    if number <= 0:
        raise ConfigError(f"{where}: expected a positive integer, got {value!r}")
    return number


# -- flashing -------------------------------------------------------------------------
@dataclass(frozen=True)
class FlashSettings:
    """What one source says about flashing; None/empty: it says nothing.

    `encrypted` holds the flash offsets of regions that must be written
    encrypted (esptool `--encrypt` / `--encrypt-files`): ESP-IDF marks them
    when development-mode flash encryption is on. `extra_flags` are the
    esptool arguments of this source we do not apply, verbatim; each has a
    line in `warnings` naming the file. `origins` maps a field name to the
    source that set it ("flasher_args.json extra_esptool_args.after").
    """

    chip: str | None = None
    before: str | None = None
    after: str | None = None
    stub: bool | None = None
    baud: int | None = None
    ports: tuple[str, ...] = ()
    encrypted: frozenset[int] = frozenset()
    flash_encryption: str | None = None  # "development" / "release" (sdkconfig)
    secure_boot: bool | None = None
    extra_flags: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    origins: tuple[tuple[str, str], ...] = ()

    def origin(self, name: str) -> str | None:
        return dict(self.origins).get(name)

    def over(self, lower: FlashSettings) -> FlashSettings:
        """This layer on top of `lower`: each field this one sets wins;
        flags, warnings and encrypted offsets add up."""
        return _stack(self, lower)


@dataclass(frozen=True)
class ResolvedFlash:
    """The settings a deploy uses, with the source of each (`origins`)."""

    chip: str | None
    before: str
    after: str
    stub: bool  # False: never upload the stub (CONFIG_ESPTOOLPY_NO_STUB, --no-stub)
    baud: int
    ports: tuple[str, ...]  # empty: look for the one ESP-looking port
    encrypted: frozenset[int]
    flash_encryption: str | None
    secure_boot: bool | None
    extra_flags: tuple[str, ...]
    warnings: tuple[str, ...]
    origins: Mapping[str, str]

    @property
    def resets_after_write(self) -> bool:
        """False when the project asks not to be reset after a write
        (`after = no-reset`, forced by ESP-IDF with secure boot or flash
        encryption): the board stays in its ROM loader."""
        return self.after not in ("no-reset", "no-reset-stub")

    def as_dict(self) -> dict[str, Any]:
        """For `--json`: each setting as {"value": ..., "from": ...}."""
        out: dict[str, Any] = {}
        for name in ("chip", "before", "after", "stub", "baud", "ports"):
            value = getattr(self, name)
            out[name] = {
                "value": list(value) if isinstance(value, tuple) else value,
                "from": self.origins.get(name, ORIGIN_DEFAULT),
            }
        out["encrypted_offsets"] = sorted(self.encrypted)
        out["flash_encryption"] = self.flash_encryption
        out["secure_boot"] = self.secure_boot
        out["extra_flags"] = list(self.extra_flags)
        out["warnings"] = list(self.warnings)
        return out


def resolve_flash(
    build: FlashSettings,
    *,
    cli: FlashSettings | None = None,
    config: FlashSettings | None = None,
    environ: Mapping[str, str] | None = None,
) -> ResolvedFlash:
    """Command line, then fbuild.toml, then the build system's files (the
    layout's settings), then ESPPORT/ESPBAUD, then defaults."""
    env = environ_flash(os.environ if environ is None else environ)
    stacked = (cli or FlashSettings()).over((config or FlashSettings()).over(build.over(env)))
    origins = dict(stacked.origins)
    return ResolvedFlash(
        chip=stacked.chip,
        before=stacked.before or DEFAULT_BEFORE,
        after=stacked.after or DEFAULT_AFTER,
        stub=True if stacked.stub is None else stacked.stub,
        baud=stacked.baud or DEFAULT_FLASH_BAUD,
        ports=stacked.ports,
        encrypted=stacked.encrypted,
        flash_encryption=stacked.flash_encryption,
        secure_boot=stacked.secure_boot,
        extra_flags=stacked.extra_flags,
        warnings=_unique(stacked.warnings),
        origins=origins,
    )


def environ_flash(environ: Mapping[str, str]) -> FlashSettings:
    """ESPPORT and ESPBAUD, as ESP-IDF reads them."""
    ports: tuple[str, ...] = ()
    baud = None
    origins = []
    port = environ.get("ESPPORT", "").strip()
    if port:
        ports = (port,)
        origins.append(("ports", "ESPPORT"))
    text = environ.get("ESPBAUD", "").strip()
    if text:
        baud = positive_int(text, where="ESPBAUD")
        origins.append(("baud", "ESPBAUD"))
    return FlashSettings(ports=ports, baud=baud, origins=tuple(origins))


# esptool's global options we apply from a project's extra flags (PlatformIO
# upload_flags, Arduino upload.extra_flags): name -> field. Everything else is
# kept verbatim in `extra_flags` and reported.
_VALUED = {"--chip": "chip", "-c": "chip", "--before": "before", "--after": "after",
           "--baud": "baud", "-b": "baud", "--port": "port", "-p": "port"}  # fmt: skip
# Flags fbuild decides for itself on every write (compression, verification).
_OURS = {"-z", "--compress", "-u", "--no-compress", "--verify", "--no-progress"}


def esptool_flags(tokens: Sequence[str], *, source: str) -> FlashSettings:
    """Known esptool options among `tokens` become settings (each from
    `source`); the rest stays in `extra_flags` with one warning line each."""
    values: dict[str, Any] = {}
    origins: list[tuple[str, str]] = []
    extra: list[str] = []
    warnings: list[str] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        name, eq, inline = tok.partition("=")
        key = name.replace("_", "-") if name.startswith("--") else name
        if key in _VALUED:
            if eq:
                value = inline
            elif i + 1 < len(tokens):
                i += 1
                value = tokens[i]
            else:
                raise ConfigError(f"{source}: {tok} needs a value")
            target = _VALUED[key]
            where = f"{source} {key}"
            if target in ("before", "after"):
                values[target] = reset_mode(value, kind=target, where=where)
            elif target == "baud":
                values[target] = positive_int(value, where=where)
            elif target == "port":
                values["ports"] = (value,)
                target = "ports"
            else:
                try:
                    values[target] = normalize_chip(value).name
                except ConfigError as exc:
                    raise ConfigError(f"{where}: {exc.problem}") from None
            origins.append((target, source))
        elif key == "--no-stub":
            values["stub"] = False
            origins.append(("stub", source))
        elif key in _OURS:
            pass  # fbuild chooses compression and verifies every write itself
        else:
            extra.append(tok)
            warnings.append(f"{source}: esptool option {tok!r} is not supported; ignored")
        i += 1
    return FlashSettings(
        **values, extra_flags=tuple(extra), warnings=tuple(warnings), origins=tuple(origins)
    )


def split_flags(text: str, *, where: str) -> list[str]:
    """A shell-like argument string (as PlatformIO and Arduino pass them)."""
    try:
        return shlex.split(text, posix=True)
    except ValueError as exc:
        raise ConfigError(f"{where}: cannot split {text!r}: {exc}") from None


def esptool_command(
    regions: Iterable[tuple[int, str]],
    flash: ResolvedFlash,
    *,
    chip: str | None = None,
    flash_mode: str | None = None,
    flash_freq: str | None = None,
    flash_size: str | None = None,
) -> list[str]:
    """The esptool 5 command line equivalent to a deploy with these
    settings: `regions` are (offset, file) pairs. Encrypted offsets go after
    `--encrypt-files` (or all of them with `--encrypt`), as ESP-IDF's
    encrypted-flash target writes them. `chip`: the layout's, when the
    settings name none."""
    argv = ["esptool"]
    if flash.chip or chip:
        argv += ["--chip", flash.chip or chip or ""]
    if flash.ports:
        argv += ["--port", flash.ports[0]]
    argv += ["--baud", str(flash.baud), "--before", flash.before, "--after", flash.after]
    if not flash.stub:
        argv.append("--no-stub")
    argv += ["write-flash"]
    argv += ["--flash-mode", flash_mode or "keep", "--flash-freq", flash_freq or "keep"]
    argv += ["--flash-size", flash_size or "keep"]
    ordered = sorted(regions)
    plain = [(o, f) for o, f in ordered if o not in flash.encrypted]
    secret = [(o, f) for o, f in ordered if o in flash.encrypted]
    if secret and not plain:
        argv.append("--encrypt")
        plain, secret = secret, []
    for off, file in plain:
        argv += [f"0x{off:x}", file]
    if secret:
        argv.append("--encrypt-files")
        for off, file in secret:
            argv += [f"0x{off:x}", file]
    return argv


# -- monitoring -------------------------------------------------------------------
# PlatformIO monitor filters and what fbuild does for each. Filters not listed
# are reported as ignored.
PIO_FILTERS: dict[str, str] = {
    "default": "control sequences are made safe (always on)",
    "direct": "bytes are shown as received, colours kept (always on)",
    "colorize": "colours are kept (always on)",
    "esp32_exception_decoder": "crashes are decoded (always on)",
    "esp32_c3_exception_decoder": "crashes are decoded (always on)",
    "time": "timestamps on",
    "log2file": "every byte logged to a file",
}


@dataclass(frozen=True)
class MonitorSettings:
    """What one source says about the serial monitor; None: nothing."""

    baud: int | None = None
    port: str | None = None
    timestamps: bool | None = None
    log_to_file: bool | None = None
    print_filter: str | None = None  # ESP-IDF "tag:level" specs
    eol: str | None = None  # "CR", "LF" or "CRLF": what Enter sends
    dtr: bool | None = None  # the line state to hold while monitoring
    rts: bool | None = None
    warnings: tuple[str, ...] = ()
    origins: tuple[tuple[str, str], ...] = ()

    def origin(self, name: str) -> str | None:
        return dict(self.origins).get(name)

    def over(self, lower: MonitorSettings) -> MonitorSettings:
        return _stack(self, lower)


@dataclass(frozen=True)
class ResolvedMonitor:
    baud: int
    port: str | None
    timestamps: bool
    log_to_file: bool
    print_filter: str | None
    eol: str | None
    dtr: bool | None
    rts: bool | None
    warnings: tuple[str, ...]
    origins: Mapping[str, str]

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name in ("warnings", "origins"):
                continue
            out[f.name] = {
                "value": getattr(self, f.name),
                "from": self.origins.get(f.name, ORIGIN_DEFAULT),
            }
        out["warnings"] = list(self.warnings)
        return out


def resolve_monitor(
    build: MonitorSettings,
    *,
    cli: MonitorSettings | None = None,
    config: MonitorSettings | None = None,
    environ: Mapping[str, str] | None = None,
) -> ResolvedMonitor:
    """Command line, then fbuild.toml, then the build system's files, then
    the environment (IDF_MONITOR_BAUD / MONITORBAUD, ESPPORT), then 115200."""
    env = environ_monitor(os.environ if environ is None else environ)
    s = (cli or MonitorSettings()).over((config or MonitorSettings()).over(build.over(env)))
    return ResolvedMonitor(
        baud=s.baud or DEFAULT_MONITOR_BAUD,
        port=s.port,
        timestamps=bool(s.timestamps),
        log_to_file=bool(s.log_to_file),
        print_filter=s.print_filter,
        eol=s.eol,
        dtr=s.dtr,
        rts=s.rts,
        warnings=_unique(s.warnings),
        origins=dict(s.origins),
    )


def environ_monitor(environ: Mapping[str, str]) -> MonitorSettings:
    baud = None
    port = None
    origins = []
    for name in ("IDF_MONITOR_BAUD", "MONITORBAUD"):
        text = environ.get(name, "").strip()
        if text:
            baud = positive_int(text, where=name)
            origins.append(("baud", name))
            break
    if environ.get("ESPPORT", "").strip():
        port = environ["ESPPORT"].strip()
        origins.append(("port", "ESPPORT"))
    return MonitorSettings(baud=baud, port=port, origins=tuple(origins))


def pio_monitor_filters(names: Iterable[str], *, source: str) -> MonitorSettings:
    """PlatformIO `monitor_filters` mapped to ours; the others are named in
    one warning each."""
    timestamps = None
    log = None
    origins = []
    warnings = []
    for raw in names:
        name = raw.strip()
        if not name:
            continue
        if name not in PIO_FILTERS:
            warnings.append(f"{source}: monitor filter {name!r} is not supported; ignored")
        elif name == "time":
            timestamps = True
            origins.append(("timestamps", source))
        elif name == "log2file":
            log = True
            origins.append(("log_to_file", source))
    return MonitorSettings(
        timestamps=timestamps, log_to_file=log, warnings=tuple(warnings), origins=tuple(origins)
    )


# -- stacking -----------------------------------------------------------------------
_ADDITIVE = ("extra_flags", "warnings")


_Layer = TypeVar("_Layer", FlashSettings, MonitorSettings)


def _stack(upper: _Layer, lower: _Layer) -> _Layer:
    """Field by field: `upper` wins where it says something."""
    values: dict[str, Any] = {}
    up_origins = dict(upper.origins)
    origins = dict(lower.origins)
    for f in fields(upper):
        if f.name == "origins":
            continue
        hi, lo = getattr(upper, f.name), getattr(lower, f.name)
        if f.name in _ADDITIVE:
            values[f.name] = lo + hi
        elif f.name == "encrypted":
            values[f.name] = hi | lo
            if hi and "encrypted" in up_origins:
                origins["encrypted"] = up_origins["encrypted"]
        elif hi is not None and hi != ():
            values[f.name] = hi
            if f.name in up_origins:
                origins[f.name] = up_origins[f.name]
        else:
            values[f.name] = lo
    values["origins"] = tuple(origins.items())
    return replace(upper, **values)


def _unique(lines: Iterable[str]) -> tuple[str, ...]:
    out: list[str] = []
    for line in lines:
        if line not in out:
            out.append(line)
    return tuple(out)


__all__ = [
    "AFTER_MODES",
    "BEFORE_MODES",
    "DEFAULT_FLASH_BAUD",
    "DEFAULT_MONITOR_BAUD",
    "PIO_FILTERS",
    "FlashSettings",
    "MonitorSettings",
    "ResolvedFlash",
    "ResolvedMonitor",
    "environ_flash",
    "environ_monitor",
    "esptool_command",
    "esptool_flags",
    "pio_monitor_filters",
    "reset_mode",
    "resolve_flash",
    "resolve_monitor",
    "split_flags",
]
