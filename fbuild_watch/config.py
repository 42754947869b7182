"""`fbuild.toml`: the project file, strictly validated.

Unknown keys and wrong types are errors naming the file and the key, so a
typo never silently falls back to a default.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fbuild_watch.errors import ConfigError
from fbuild_watch.image.chips import normalize_chip
from fbuild_watch.image.settings import FlashSettings, MonitorSettings, reset_mode

CONFIG_NAME = "fbuild.toml"
# `[build] system`: which build system runs the project ("command": [build] command)
BUILD_SYSTEMS = ("command", "esp-idf", "platformio", "arduino")


@dataclass(frozen=True)
class FlashEntry:
    offset: int
    file: str


@dataclass(frozen=True)
class ProjectConfig:
    path: Path
    command: tuple[str, ...] | None = None
    flasher_args: str | None = None
    flash: tuple[FlashEntry, ...] = ()
    elf: str | None = None
    outputs: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)
    chip: str | None = None
    port: tuple[str, ...] = ()
    baud: int | None = None
    watch_paths: tuple[str, ...] = ()
    watch_ignore: tuple[str, ...] = ()
    debounce_ms: int | None = None
    lnk_dir: str | None = None
    lnk_allow_http: bool = False
    lnk_max_mb: int | None = None
    build_timeout_s: float | None = None  # None: a build may take as long as it takes
    system: str | None = None  # [build] system; None: [build] command, else detected
    build_dir: str | None = None  # [build] dir: ESP-IDF's -B / arduino-cli's --build-path
    before: str | None = None  # [board] before / after / stub: esptool's reset modes
    after: str | None = None
    stub: bool | None = None
    monitor_baud: int | None = None  # [monitor] baud
    # blake2b-128 of the bytes this config was parsed from (as the watch
    # state's file digests): what a build "was built with"
    digest: bytes = b""

    def flash_layer(self) -> FlashSettings:
        """fbuild.toml's layer of the flashing settings (image/settings.py)."""
        origins = []
        for name in ("chip", "before", "after", "stub", "baud", "port"):
            if getattr(self, name) not in (None, ()):
                origins.append(
                    (name + "s" if name == "port" else name, f"{self.path} [board] {name}")
                )
        return FlashSettings(
            chip=self.chip,
            before=self.before,
            after=self.after,
            stub=self.stub,
            baud=self.baud,
            ports=self.port,
            origins=tuple(origins),
        )

    def monitor_layer(self) -> MonitorSettings:
        """[monitor] baud; the monitor's port is the first [board] port."""
        origins = []
        if self.monitor_baud is not None:
            origins.append(("baud", f"{self.path} [monitor] baud"))
        if self.port:
            origins.append(("port", f"{self.path} [board] port"))
        return MonitorSettings(
            baud=self.monitor_baud,
            port=self.port[0] if self.port else None,
            origins=tuple(origins),
        )


_SCHEMA: dict[str, dict[str, type | tuple[type, ...]]] = {
    "build": {
        "command": list,
        "flasher_args": str,
        "elf": str,
        "outputs": list,
        "env": dict,
        "timeout": (int, float),
        "system": str,
        "dir": str,
    },
    "board": {
        "chip": str,
        "port": (str, list),
        "baud": int,
        "before": str,
        "after": str,
        "stub": bool,
    },
    "monitor": {"baud": int},
    "watch": {"paths": list, "ignore": list, "debounce_ms": int},
    "lnk": {"dir": str, "allow_http": bool, "max_mb": int},
}


def _type_name(t: type | tuple[type, ...]) -> str:
    names = {
        str: "a string",
        list: "an array",
        dict: "a table",
        int: "an integer",
        float: "a number",
        bool: "true or false",
    }
    if t == (int, float):
        return "a number"
    if isinstance(t, tuple):
        return " or ".join(names[x] for x in t)
    return names[t]


def _str_list(value: list[Any], where: str, path: Path) -> tuple[str, ...]:
    if not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where} must be an array of strings", source=path)
    return tuple(value)


def load_config(path: Path) -> ProjectConfig:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError("file is missing", source=path) from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"malformed TOML: {exc}", source=path) from None

    for key in doc:
        if key not in (*_SCHEMA, "flash"):
            raise ConfigError(f"unknown section [{key}]", source=path)
    values: dict[str, Any] = {}
    for section, keys in _SCHEMA.items():
        table = doc.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"[{section}] must be a table", source=path)
        for key, value in table.items():
            if key not in keys:
                raise ConfigError(f"unknown key '{key}' in [{section}]", source=path)
            want = keys[key]
            if want is bool:
                bad = not isinstance(value, bool)
            else:
                bad = isinstance(value, bool) or not isinstance(value, want)
            if bad:
                raise ConfigError(
                    f"[{section}] {key} must be {_type_name(want)}, got {type(value).__name__}",
                    source=path,
                )
            values[f"{section}.{key}"] = value

    command = None
    if "build.command" in values:
        command = _str_list(values["build.command"], "[build] command", path)
        if not command:
            raise ConfigError("[build] command must not be empty", source=path)
    env = values.get("build.env", {})
    if not all(isinstance(v, str) for v in env.values()):
        raise ConfigError("[build] env values must be strings", source=path)

    flash: list[FlashEntry] = []
    entries = doc.get("flash", [])
    if not isinstance(entries, list):
        raise ConfigError("[[flash]] must be an array of tables", source=path)
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or set(entry) != {"offset", "file"}:
            raise ConfigError(
                f"[[flash]] entry {i + 1} needs exactly 'offset' and 'file'", source=path
            )
        off = entry["offset"]
        try:
            offset = off if isinstance(off, int) and not isinstance(off, bool) else int(str(off), 0)
        except ValueError:
            raise ConfigError(f"[[flash]] entry {i + 1}: bad offset {off!r}", source=path) from None
        if not isinstance(entry["file"], str):
            raise ConfigError(f"[[flash]] entry {i + 1}: file must be a string", source=path)
        flash.append(FlashEntry(offset, entry["file"]))
    if flash and "build.flasher_args" in values:
        raise ConfigError(
            "give either [build] flasher_args or [[flash]] entries, not both", source=path
        )

    port = values.get("board.port", ())
    ports = (port,) if isinstance(port, str) else _str_list(port, "[board] port", path)
    baud = values.get("board.baud")
    if baud is not None and baud <= 0:
        raise ConfigError("[board] baud must be positive", source=path)
    debounce = values.get("watch.debounce_ms")
    if debounce is not None and not 0 <= debounce <= 10_000:
        raise ConfigError("[watch] debounce_ms must be between 0 and 10000", source=path)
    chip = values.get("board.chip")
    if chip is not None:
        try:
            chip = normalize_chip(chip).name
        except ConfigError as exc:
            raise ConfigError(f"[board] chip: {exc.problem}", source=path) from None

    timeout = values.get("build.timeout")
    if timeout is not None and not 0 < timeout < 1e9:  # also refuses nan and inf
        raise ConfigError("[build] timeout must be a positive number of seconds", source=path)

    system = values.get("build.system")
    if system is not None and system not in BUILD_SYSTEMS:
        raise ConfigError(
            f"[build] system must be one of {', '.join(BUILD_SYSTEMS)}, got {system!r}", source=path
        )
    if system not in (None, "command") and command is not None:
        raise ConfigError(
            f"[build] command runs the build itself; it cannot go with system = {system!r}",
            source=path,
        )
    build_dir = values.get("build.dir")
    if build_dir is not None and not _inside(build_dir):
        raise ConfigError("[build] dir must be a path inside the project", source=path)
    resets = {}
    for kind in ("before", "after"):
        if f"board.{kind}" in values:
            try:
                resets[kind] = reset_mode(
                    values[f"board.{kind}"], kind=kind, where=f"[board] {kind}"
                )
            except ConfigError as exc:
                raise ConfigError(exc.problem, source=path) from None
    monitor_baud = values.get("monitor.baud")
    if monitor_baud is not None and monitor_baud <= 0:
        raise ConfigError("[monitor] baud must be positive", source=path)

    lnk_dir = values.get("lnk.dir")
    if lnk_dir is not None and not _inside(lnk_dir):
        raise ConfigError("[lnk] dir must be a path inside the project", source=path)
    max_mb = values.get("lnk.max_mb")
    if max_mb is not None and max_mb <= 0:
        raise ConfigError("[lnk] max_mb must be positive", source=path)

    return ProjectConfig(
        path=path,
        command=command,
        flasher_args=values.get("build.flasher_args"),
        flash=tuple(flash),
        elf=values.get("build.elf"),
        outputs=_str_list(values.get("build.outputs", []), "[build] outputs", path),
        env=dict(env),
        chip=chip,
        port=ports,
        baud=baud,
        watch_paths=_str_list(values.get("watch.paths", []), "[watch] paths", path),
        watch_ignore=_str_list(values.get("watch.ignore", []), "[watch] ignore", path),
        debounce_ms=debounce,
        lnk_dir=lnk_dir,
        lnk_allow_http=values.get("lnk.allow_http", False),
        lnk_max_mb=max_mb,
        build_timeout_s=float(timeout) if timeout is not None else None,
        system=system,
        build_dir=build_dir,
        before=resets.get("before"),
        after=resets.get("after"),
        stub=values.get("board.stub"),
        monitor_baud=monitor_baud,
        digest=hashlib.blake2b(raw, digest_size=16).digest(),
    )


def _inside(rel: str) -> bool:
    """A relative path that stays inside the project."""
    return bool(rel.strip()) and not Path(rel).is_absolute() and ".." not in Path(rel).parts
