"""Reading what ESP-IDF, PlatformIO and Arduino projects say about flashing
and monitoring, from their own files, into settings layers.

Each reader names the file (and field) in every error and warning: a
malformed field is a `LayoutFileError` (exit status 2); a setting fbuild
does not apply is one warning line, never silently dropped.
"""

from __future__ import annotations

import configparser
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from fbuild_watch.errors import ConfigError
from fbuild_watch.image.chips import normalize_chip, parse_flash_size
from fbuild_watch.image.loaders import (
    MAX_JSON_BYTES,
    LayoutFileError,
    load_json,
    read_regular,
)
from fbuild_watch.image.settings import (
    FlashSettings,
    MonitorSettings,
    esptool_flags,
    pio_monitor_filters,
    positive_int,
    reset_mode,
    split_flags,
)

MAX_TEXT_BYTES = MAX_JSON_BYTES
_T = TypeVar("_T")


def _text(path: Path, what: str) -> str:
    raw = read_regular(path, what=what, limit=MAX_TEXT_BYTES)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LayoutFileError(f"cannot read: {exc}", source=path) from None


def _bad(path: Path, problem: str) -> LayoutFileError:
    return LayoutFileError(problem, source=path)


def _checked(path: Path, label: str, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """Run a value check; its ConfigError becomes one line naming the file
    (`label`: the field, when the check's message does not start with it)."""
    try:
        return fn(*args, **kwargs)
    except ConfigError as exc:
        problem = exc.problem if exc.problem.startswith(label) else f"{label}: {exc.problem}"
        raise _bad(path, problem) from None


# == ESP-IDF ========================================================================
def read_sdkconfig(path: Path) -> dict[str, str]:
    """`CONFIG_X=value` lines (quotes removed); `# CONFIG_X is not set` is
    absent from the result."""
    values: dict[str, str] = {}
    for line in _text(path, "sdkconfig").splitlines():
        name, eq, value = line.strip().partition("=")
        if eq and name.startswith("CONFIG_"):
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            values[name] = value
    return values


def sdkconfig_flash(config: Mapping[str, str], *, source: Path) -> FlashSettings:
    """What the sdkconfig says that flasher_args.json does not: flash
    encryption and secure boot (why a build says `after = no-reset`)."""
    origins = []
    encryption = None
    if config.get("CONFIG_SECURE_FLASH_ENC_ENABLED") == "y":
        release = config.get("CONFIG_SECURE_FLASH_ENCRYPTION_MODE_RELEASE") == "y"
        encryption = "release" if release else "development"
        origins.append(("flash_encryption", f"{source} CONFIG_SECURE_FLASH_ENC_ENABLED"))
    secure_boot = None
    if config.get("CONFIG_SECURE_BOOT") == "y":
        secure_boot = True
        origins.append(("secure_boot", f"{source} CONFIG_SECURE_BOOT"))
    return FlashSettings(
        flash_encryption=encryption, secure_boot=secure_boot, origins=tuple(origins)
    )


def sdkconfig_monitor(config: Mapping[str, str], *, source: Path) -> MonitorSettings:
    """The console baud: CONFIG_ESPTOOLPY_MONITOR_BAUD (what idf.py monitor
    uses), else CONFIG_ESP_CONSOLE_UART_BAUDRATE (and its pre-5.0 name)."""
    for name in (
        "CONFIG_ESPTOOLPY_MONITOR_BAUD",
        "CONFIG_ESP_CONSOLE_UART_BAUDRATE",
        "CONFIG_CONSOLE_UART_BAUDRATE",
    ):
        if name in config:
            baud = _checked(source, name, positive_int, config[name], where=name)
            return MonitorSettings(baud=baud, origins=(("baud", f"{source} {name}"),))
    return MonitorSettings()


@dataclass(frozen=True)
class ProjectDescription:
    """ESP-IDF's `build/project_description.json` (the fields fbuild uses)."""

    path: Path
    project_path: str | None
    build_dir: str | None
    app_elf: str | None
    target: str | None
    config_file: str | None
    monitor_baud: int | None
    min_rev: str | None
    idf_version: str | None

    def monitor(self) -> MonitorSettings:
        if self.monitor_baud is None:
            return MonitorSettings()
        return MonitorSettings(
            baud=self.monitor_baud, origins=(("baud", f"{self.path} monitor_baud"),)
        )


def read_project_description(path: Path) -> ProjectDescription:
    doc = load_json(path, what="project description")
    if not isinstance(doc, dict):
        raise _bad(path, "not a JSON object (not an ESP-IDF project_description.json?)")

    def text(key: str) -> str | None:
        value = doc.get(key)
        if value is None or isinstance(value, str):
            return value or None
        raise _bad(path, f"{key} must be a string, got {value!r}")

    baud_text = doc.get("monitor_baud")
    baud = None
    if baud_text not in (None, ""):
        baud = _checked(path, "monitor_baud", positive_int, baud_text, where="monitor_baud")
    return ProjectDescription(
        path=path,
        project_path=text("project_path"),
        build_dir=text("build_dir"),
        app_elf=text("app_elf"),
        target=text("target"),
        config_file=text("config_file"),
        monitor_baud=baud,
        min_rev=text("min_rev"),
        idf_version=text("git_revision"),
    )


def same_path(written: str, here: Path) -> bool:
    """Is `written` (a path a build system recorded, perhaps on Windows)
    the directory `here`?"""
    norm = written.replace("\\", "/").rstrip("/")
    try:
        if Path(norm).resolve() == here.resolve():
            return True
    except OSError:
        pass
    return norm.lower() == here.resolve().as_posix().lower()


# == PlatformIO =====================================================================
_PIO_INTERP = re.compile(r"\$\{([^}]+)\}")
# board_upload.* keys that need no action (they describe what the build used)
_PIO_UPLOAD_QUIET = {
    "maximum_size",
    "maximum_ram_size",
    "require_upload_port",
    "offset_address",
    "flash_size",
    "speed",
    "before_reset",
    "after_reset",
    "protocol",
    "protocols",
    "arduino",
    "disable_flushing",
}
_PIO_MONITOR_UNSUPPORTED = ("monitor_echo", "monitor_parity", "monitor_encoding", "monitor_flags")


class PlatformIOIni:
    """platformio.ini as PlatformIO reads it: `;`/`#` comments (inline too),
    `[env]` defaults, `extends`, `${section.option}` / `${sysenv.VAR}`
    interpolation and `extra_configs`."""

    def __init__(self, path: Path, environ: Mapping[str, str] | None = None) -> None:
        self.path = Path(path)
        self.dir = self.path.parent
        self.environ = dict(os.environ if environ is None else environ)
        self._ini = configparser.ConfigParser(
            inline_comment_prefixes=(";", "#"), interpolation=None, strict=False
        )
        self._ini.optionxform = str  # type: ignore[assignment,method-assign]
        self._read(self.path)
        for pattern in self._multi(self._get("platformio", "extra_configs") or ""):
            # a missing extra config is skipped, as PlatformIO does
            for extra in sorted(self.dir.glob(pattern)) if not Path(pattern).is_absolute() else []:
                self._read(extra)

    def _read(self, path: Path) -> None:
        try:
            self._ini.read_string(_text(path, "platformio.ini"), source=str(path))
        except configparser.Error as exc:
            message = " ".join(str(exc).split())
            raise _bad(path, f"malformed platformio.ini: {message}") from None

    # -- options ----------------------------------------------------------------
    def _get(self, section: str, option: str) -> str | None:
        if self._ini.has_section(section) and self._ini.has_option(section, option):
            return self._ini.get(section, option)
        return None

    def envs(self) -> list[str]:
        return [s[4:] for s in self._ini.sections() if s.startswith("env:")]

    def default_env(self) -> str:
        default = self._multi(self._get("platformio", "default_envs") or "")
        envs = self.envs()
        name = default[0] if default else (envs[0] if envs else "")
        if not name:
            raise _bad(self.path, "no [env:...] section")
        if name not in envs:
            raise _bad(self.path, f"default_envs names '{name}', which has no [env:{name}]")
        return name

    def _chain(self, env: str) -> Iterator[str]:
        """[env:NAME], what it extends (in order), then [env]."""
        seen: set[str] = set()
        todo = [f"env:{env}"]
        while todo:
            section = todo.pop(0)
            if section in seen or not self._ini.has_section(section):
                continue
            seen.add(section)
            yield section
            todo[:0] = self._multi(self._ini.get(section, "extends", fallback=""))
        if "env" not in seen and self._ini.has_section("env"):
            yield "env"

    def option(self, env: str, name: str) -> tuple[str, str] | None:
        """(value, "platformio.ini [section] name") or None."""
        for section in self._chain(env):
            raw = self._get(section, name)
            if raw is not None:
                return self._interpolate(raw, env, 0), f"{self.path} [{section}] {name}"
        return None

    def options(self, env: str, prefix: str) -> dict[str, tuple[str, str]]:
        out: dict[str, tuple[str, str]] = {}
        for section in reversed(list(self._chain(env))):
            for key in self._ini.options(section):
                if key.startswith(prefix):
                    raw = self._ini.get(section, key)
                    out[key] = (self._interpolate(raw, env, 0), f"{self.path} [{section}] {key}")
        return out

    def _interpolate(self, value: str, env: str, depth: int) -> str:
        if depth > 10 or "${" not in value:
            return value

        def sub(m: re.Match[str]) -> str:
            section, _, key = m.group(1).partition(".")
            if section == "sysenv":
                return self.environ.get(key, "")
            if section == "this":
                found = self.option(env, key)
                return found[0] if found else ""
            if section == "platformio" and key == "project_dir":
                return str(self.dir)
            raw = self._get(section, key)
            return "" if raw is None else self._interpolate(raw, env, depth + 1)

        return _PIO_INTERP.sub(sub, value)

    @staticmethod
    def _multi(value: str) -> list[str]:
        """A PlatformIO list option: one per line, or comma-separated."""
        items = []
        for line in value.splitlines():
            items += [x.strip() for x in line.split(",")]
        return [x for x in items if x]

    def list_option(self, env: str, name: str) -> tuple[list[str], str] | None:
        found = self.option(env, name)
        return (self._multi(found[0]), found[1]) if found else None

    # -- what the project says ----------------------------------------------------------
    def framework(self, env: str) -> list[str]:
        found = self.list_option(env, "framework")
        return found[0] if found else []

    def board(self, env: str) -> str | None:
        found = self.option(env, "board")
        return found[0] if found else None

    def build_dir(self) -> Path:
        """[platformio] build_dir, default `<workspace_dir>/build` (.pio/build)."""
        build = self._get("platformio", "build_dir")
        if build:
            return self.dir / self._interpolate(build, "", 0)
        workspace = self._get("platformio", "workspace_dir") or ".pio"
        return self.dir / self._interpolate(workspace, "", 0) / "build"

    def flash_settings(self, env: str, board: BoardManifest | None = None) -> FlashSettings:
        """upload_speed, upload_port, upload_protocol, upload_flags and
        board_upload.*, over the board manifest's upload.* when it is here."""
        # Highest first, as PlatformIO builds esptool's command line (the
        # last of a repeated option wins there): upload_speed and upload_port,
        # board_upload.*, upload_flags (prepended to the platform's own
        # --before/--after/--baud), then the board manifest's upload.*.
        explicit: dict[str, Any] = {}
        origins: list[tuple[str, str]] = []
        warnings: list[str] = []
        found = self.option(env, "upload_speed")
        if found:
            explicit["baud"] = _checked(self.path, found[1], positive_int, found[0], where=found[1])
            origins.append(("baud", found[1]))
        found = self.option(env, "upload_port")
        if found and found[0].strip():
            explicit["ports"] = (found[0].strip(),)
            origins.append(("ports", found[1]))
        found = self.option(env, "upload_protocol")
        if found and found[0].strip() not in ("esptool", ""):
            warnings.append(
                f"{found[1]}: upload protocol '{found[0].strip()}' is not supported "
                "(fbuild flashes with esptool over the serial port); ignored"
            )
        board_upload: dict[str, Any] = {}
        board_origins: list[tuple[str, str]] = []
        for key, (value, where) in self.options(env, "board_upload.").items():
            sub = key[len("board_upload.") :]
            if sub in ("before_reset", "after_reset"):
                kind = sub.split("_")[0]
                board_upload[kind] = _checked(
                    self.path, where, reset_mode, value, kind=kind, where=where
                )
                board_origins.append((kind, where))
            elif sub == "speed":
                board_upload["baud"] = _checked(self.path, where, positive_int, value, where=where)
                board_origins.append(("baud", where))
            elif sub not in _PIO_UPLOAD_QUIET:
                warnings.append(f"{where}: not supported by fbuild; ignored")
        flags = FlashSettings()
        found_flags = self.list_option(env, "upload_flags")
        if found_flags:
            tokens: list[str] = []
            for line in found_flags[0]:
                tokens += _checked(
                    self.path, found_flags[1], split_flags, line, where=found_flags[1]
                )
            flags = _checked(
                self.path, found_flags[1], esptool_flags, tokens, source=found_flags[1]
            )
        stacked = FlashSettings(**explicit, warnings=tuple(warnings), origins=tuple(origins))
        stacked = stacked.over(FlashSettings(**board_upload, origins=tuple(board_origins)))
        stacked = stacked.over(flags)
        if board is not None:
            stacked = stacked.over(board.flash_settings())
        return stacked

    def flash_size(self, env: str, board: BoardManifest | None = None) -> tuple[int, str] | None:
        found = self.option(env, "board_upload.flash_size")
        if found is None and board is not None and board.flash_size_text:
            found = (board.flash_size_text, f"{board.path} upload.flash_size")
        if found is None:
            return None
        size = _checked(self.path, found[1], parse_flash_size, found[0])
        return (size, found[1]) if size else None

    def monitor_settings(self, env: str) -> MonitorSettings:
        values: dict[str, Any] = {}
        origins: list[tuple[str, str]] = []
        warnings: list[str] = []
        found = self.option(env, "monitor_speed")
        if found:
            values["baud"] = _checked(self.path, found[1], positive_int, found[0], where=found[1])
            origins.append(("baud", found[1]))
        found = self.option(env, "monitor_port")
        if found and found[0].strip():
            values["port"] = found[0].strip()
            origins.append(("port", found[1]))
        found = self.option(env, "monitor_eol")
        if found:
            eol = found[0].strip().upper()
            if eol not in ("CR", "LF", "CRLF"):
                raise _bad(self.path, f"{found[1]}: expected CR, LF or CRLF, got {found[0]!r}")
            values["eol"] = eol
            origins.append(("eol", found[1]))
        for line in ("dtr", "rts"):
            found = self.option(env, f"monitor_{line}")
            if found:
                if found[0].strip() not in ("0", "1"):
                    raise _bad(self.path, f"{found[1]}: expected 0 or 1, got {found[0]!r}")
                values[line] = found[0].strip() == "1"
                origins.append((line, found[1]))
        for name in _PIO_MONITOR_UNSUPPORTED:
            found = self.option(env, name)
            if found:
                warnings.append(f"{found[1]}: not supported by fbuild monitor; ignored")
        layer = MonitorSettings(**values, warnings=tuple(warnings), origins=tuple(origins))
        filters = self.list_option(env, "monitor_filters")
        if filters:
            layer = layer.over(pio_monitor_filters(filters[0], source=filters[1]))
        return layer


@dataclass(frozen=True)
class BoardManifest:
    """A PlatformIO board JSON (`boards/<board>.json` in the project, or in
    the installed espressif32 platform): its upload and build defaults."""

    path: Path
    mcu: str | None = None
    speed: int | None = None
    flash_size_text: str | None = None
    before: str | None = None
    after: str | None = None

    def flash_settings(self) -> FlashSettings:
        values: dict[str, Any] = {}
        origins = []
        for name, value in (("chip", self.mcu), ("baud", self.speed),
                            ("before", self.before), ("after", self.after)):  # fmt: skip
            if value is not None:
                values[name] = value
                origins.append((name, f"{self.path} {name}"))
        return FlashSettings(**values, origins=tuple(origins))


def find_board_manifest(
    board: str, project_dir: Path, environ: Mapping[str, str] | None = None
) -> BoardManifest | None:
    """The board's JSON where PlatformIO would look, if it is on this machine."""
    env = os.environ if environ is None else environ
    core = Path(env.get("PLATFORMIO_CORE_DIR") or Path.home() / ".platformio")
    candidates = [project_dir / "boards" / f"{board}.json"]
    candidates += sorted(core.glob("platforms/*/boards"))
    for cand in candidates:
        path = cand if cand.suffix == ".json" else cand / f"{board}.json"
        if path.is_file():
            return read_board_manifest(path)
    return None


def read_board_manifest(path: Path) -> BoardManifest:
    doc = load_json(path, what="board manifest")
    if not isinstance(doc, dict):
        raise _bad(path, "not a JSON object")
    build: dict[str, Any] = doc["build"] if isinstance(doc.get("build"), dict) else {}
    upload: dict[str, Any] = doc["upload"] if isinstance(doc.get("upload"), dict) else {}
    mcu = build.get("mcu")
    chip = None
    if isinstance(mcu, str):
        chip = _checked(path, "build.mcu", normalize_chip, mcu).name
    speed = upload.get("speed")
    before = upload.get("before_reset")
    after = upload.get("after_reset")
    size = upload.get("flash_size")
    return BoardManifest(
        path=path,
        mcu=chip,
        speed=None
        if speed is None
        else _checked(path, "upload.speed", positive_int, speed, where="upload.speed"),
        flash_size_text=size if isinstance(size, str) else None,
        before=None if before is None else _reset(path, before, "before"),
        after=None if after is None else _reset(path, after, "after"),
    )


def _reset(path: Path, value: object, kind: str) -> str:
    where = f"upload.{kind}_reset"
    result: str = _checked(path, where, reset_mode, value, kind=kind, where=where)
    return result


# == Arduino ==========================================================================
@dataclass(frozen=True)
class Fqbn:
    """vendor:arch:board[:Menu=value,...]"""

    vendor: str
    arch: str
    board: str
    options: tuple[tuple[str, str], ...] = ()

    @property
    def base(self) -> str:
        return f"{self.vendor}:{self.arch}:{self.board}"

    @property
    def export_dir_name(self) -> str:
        """arduino-cli --export-binaries / the IDE's export: `build/<this>/`."""
        return self.base.replace(":", ".")

    def option(self, name: str) -> str | None:
        return dict(self.options).get(name)


def parse_fqbn(text: str, *, where: str) -> Fqbn:
    parts = text.strip().split(":")
    if len(parts) < 3 or not all(parts[:3]) or len(parts) > 4:
        raise ConfigError(f"{where}: bad FQBN {text!r} (expected vendor:arch:board[:options])")
    options: list[tuple[str, str]] = []
    if len(parts) == 4 and parts[3]:
        for item in parts[3].split(","):
            key, eq, value = item.partition("=")
            if not eq or not key:
                raise ConfigError(f"{where}: bad FQBN option {item!r} in {text!r}")
            options.append((key.strip(), value.strip()))
    return Fqbn(parts[0], parts[1], parts[2], tuple(options))


def fqbn_flash(fqbn: Fqbn, *, source: str) -> FlashSettings:
    """The board menu choices that change flashing: UploadSpeed (the baud,
    as arduino-esp32's boards.txt maps it), EraseFlash=all (not done)."""
    values: dict[str, Any] = {}
    origins = []
    warnings = []
    speed = fqbn.option("UploadSpeed")
    if speed is not None:
        values["baud"] = positive_int(speed, where=f"{source} UploadSpeed")
        origins.append(("baud", f"{source} UploadSpeed"))
    if fqbn.option("EraseFlash") == "all":
        warnings.append(
            f"{source}: EraseFlash=all (erase the whole flash before writing) is not done by "
            "fbuild, which writes only what differs; ignored"
        )
    return FlashSettings(**values, warnings=tuple(warnings), origins=tuple(origins))


@dataclass(frozen=True)
class SketchProject:
    """sketch.yaml: the FQBN, port and monitor baud of the default profile
    (or the top-level defaults)."""

    path: Path
    fqbn: Fqbn | None
    fqbn_where: str
    port: str | None
    baud: int | None
    profile: str | None

    def flash_settings(self, *, with_fqbn: bool = True) -> FlashSettings:
        """The port, and (`with_fqbn`) the FQBN's menu choices."""
        layer = FlashSettings()
        if self.fqbn is not None and with_fqbn:
            layer = fqbn_flash(self.fqbn, source=self.fqbn_where)
        if self.port:
            layer = FlashSettings(
                ports=(self.port,), origins=(("ports", f"{self.path} port"),)
            ).over(layer)
        return layer

    def monitor_settings(self) -> MonitorSettings:
        values: dict[str, Any] = {}
        origins = []
        if self.port:
            values["port"] = self.port
            origins.append(("port", f"{self.path} port"))
        if self.baud:
            values["baud"] = self.baud
            origins.append(("baud", f"{self.path} port_config.baudrate"))
        return MonitorSettings(**values, origins=tuple(origins))


def read_sketch_yaml(path: Path, *, profile: str | None = None) -> SketchProject:
    # PyYAML comes with esptool; imported here as only Arduino projects need it
    import yaml  # type: ignore[import-untyped]  # noqa: PLC0415

    try:
        doc = yaml.safe_load(_text(path, "sketch.yaml")) or {}
    except yaml.YAMLError as exc:
        raise _bad(path, f"malformed YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(doc, dict):
        raise _bad(path, "not a YAML mapping")

    def string(table: Mapping[str, Any], key: str, where: str) -> str | None:
        value = table.get(key)
        if value is None or isinstance(value, str):
            return value or None
        raise _bad(path, f"{where} must be a string, got {value!r}")

    name = profile or string(doc, "default_profile", "default_profile")
    table: Mapping[str, Any] = doc
    prefix = ""
    if name:
        profiles = doc.get("profiles")
        if not isinstance(profiles, dict) or not isinstance(profiles.get(name), dict):
            raise _bad(path, f"profile '{name}' is not defined under profiles:")
        table = profiles[name]
        prefix = f"profiles.{name}."
    fqbn_key = "fqbn" if name else "default_fqbn"
    fqbn_text = string(table, fqbn_key, prefix + fqbn_key)
    if fqbn_text is None and name:
        fqbn_text = string(doc, "default_fqbn", "default_fqbn")
        fqbn_key, prefix = "default_fqbn", ""
    where = f"{path} {prefix}{fqbn_key}"
    fqbn = (
        _checked(path, prefix + fqbn_key, parse_fqbn, fqbn_text, where=where) if fqbn_text else None
    )
    port_key = "port" if name else "default_port"
    port = string(table, port_key, prefix + port_key)
    if port is None and name:
        port = string(doc, "default_port", "default_port")
    baud = None
    config = table.get("port_config")
    if config is not None:
        if not isinstance(config, dict):
            raise _bad(path, f"{prefix}port_config must be a mapping")
        if "baudrate" in config:
            where_b = f"{prefix}port_config.baudrate"
            baud = _checked(path, where_b, positive_int, config["baudrate"], where=where_b)
    return SketchProject(path, fqbn, where, port, baud, name)


@dataclass(frozen=True)
class BuildOptions:
    """arduino-cli's `build.options.json` beside a build's outputs."""

    path: Path
    fqbn: Fqbn | None
    hardware_folders: tuple[str, ...] = ()
    sketch_location: str | None = None


def read_build_options(path: Path) -> BuildOptions:
    doc = load_json(path, what="build options")
    if not isinstance(doc, dict):
        raise _bad(path, "not a JSON object (not an arduino-cli build.options.json?)")
    fqbn_text = doc.get("fqbn")
    if fqbn_text is not None and not isinstance(fqbn_text, str):
        raise _bad(path, f"fqbn must be a string, got {fqbn_text!r}")
    where = f"{path} fqbn"
    fqbn = _checked(path, "fqbn", parse_fqbn, fqbn_text, where=where) if fqbn_text else None
    folders = doc.get("hardwareFolders") or ""
    if not isinstance(folders, str):
        raise _bad(path, "hardwareFolders must be a string")
    location = doc.get("sketchLocation")
    return BuildOptions(
        path,
        fqbn,
        tuple(dict.fromkeys(f for f in folders.split(",") if f)),
        location if isinstance(location, str) else None,
    )


@dataclass(frozen=True)
class BoardsTxt:
    """What a platform's boards.txt says for one board, menu choices applied."""

    path: Path
    properties: dict[str, str] = field(default_factory=dict)

    def get(self, key: str) -> str | None:
        return self.properties.get(key)


def read_boards_txt(path: Path, fqbn: Fqbn) -> BoardsTxt | None:
    """`<board>.*` properties, with `<board>.menu.<Menu>.<choice>.*` of the
    FQBN's options on top; None when the board is not in the file."""
    props: dict[str, str] = {}
    prefix = fqbn.board + "."
    menus = {f"{prefix}menu.{k}.{v}.": True for k, v in fqbn.options}
    chosen: dict[str, str] = {}
    for line in _text(path, "boards.txt").splitlines():
        key, eq, value = line.strip().partition("=")
        if not eq or key.startswith("#") or not key.startswith(prefix):
            continue
        for menu in menus:
            if key.startswith(menu):
                chosen[key[len(menu) :]] = value
                break
        else:
            if ".menu." not in key:
                props[key[len(prefix) :]] = value
    if not props and not chosen:
        return None
    props.update(chosen)
    return BoardsTxt(path, props)


def find_boards_txt(options: BuildOptions) -> BoardsTxt | None:
    """boards.txt of the build's platform, if that platform is installed here."""
    if options.fqbn is None:
        return None
    for folder in options.hardware_folders:
        path = Path(folder) / "boards.txt"  # a path of another machine is simply not here
        if path.is_file():
            found = read_boards_txt(path, options.fqbn)
            if found is not None:
                return found
    return None


def boards_flash(
    boards: BoardsTxt, *, platform_dir: Path, build_path: Path
) -> tuple[FlashSettings, list[tuple[int, Path]]]:
    """upload.speed and upload.extra_flags of a boards.txt entry: the flags'
    (offset, file) pairs are extra images (tinyuf2, models) for the layout."""
    values: dict[str, Any] = {}
    origins = []
    where = f"{boards.path} upload.speed"
    speed = boards.get("upload.speed")
    if speed:
        values["baud"] = _checked(boards.path, where, positive_int, speed, where=where)
        origins.append(("baud", where))
    layer = FlashSettings(**values, origins=tuple(origins))
    images: list[tuple[int, Path]] = []
    extra = boards.get("upload.extra_flags")
    if extra:
        where = f"{boards.path} upload.extra_flags"
        expanded = extra.replace("{runtime.platform.path}", str(platform_dir)).replace(
            "{build.path}", str(build_path)
        )
        expanded = expanded.replace("{build.variant}", boards.get("build.variant") or "")
        tokens = split_flags(expanded, where=where)
        rest: list[str] = []
        i = 0
        while i < len(tokens):
            if re.fullmatch(r"0x[0-9a-fA-F]+", tokens[i]) and i + 1 < len(tokens):
                images.append((int(tokens[i], 16), Path(tokens[i + 1])))
                i += 2
            else:
                rest.append(tokens[i])
                i += 1
        layer = esptool_flags(rest, source=where).over(layer)
        if "{" in expanded:
            layer = FlashSettings(
                warnings=(f"{where}: unexpanded property in {extra!r}; ignored",)
            ).over(layer)
    return layer, images


__all__ = [
    "BoardManifest",
    "BoardsTxt",
    "BuildOptions",
    "Fqbn",
    "PlatformIOIni",
    "ProjectDescription",
    "SketchProject",
    "boards_flash",
    "find_board_manifest",
    "find_boards_txt",
    "fqbn_flash",
    "parse_fqbn",
    "read_board_manifest",
    "read_boards_txt",
    "read_build_options",
    "read_project_description",
    "read_sdkconfig",
    "read_sketch_yaml",
    "same_path",
    "sdkconfig_flash",
    "sdkconfig_monitor",
]
