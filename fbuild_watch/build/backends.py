"""Build backends: how to build a project, where its outputs are, and what
its build system says about flashing and monitoring.

Detection order: `fbuild.toml` (`[build] command`, or `[build] system`),
PlatformIO, ESP-IDF, Arduino CLI; `detect_backend` records why it chose
(`Backend.reason`) and what else the directory could have been
(`Backend.alternatives`), for `fbuild build --explain`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fbuild_watch.config import CONFIG_NAME, ProjectConfig, load_config
from fbuild_watch.errors import ConfigError, FbuildError
from fbuild_watch.image.layout import FlashLayout, Region
from fbuild_watch.image.loaders import (
    LayoutFileError,
    load_arduino_dir,
    load_flasher_args,
    load_idedata,
    load_json,
    load_pairs,
    local_file,
    read_regular,
)
from fbuild_watch.image.projectfiles import (
    BoardManifest,
    BuildOptions,
    Fqbn,
    PlatformIOIni,
    ProjectDescription,
    SketchProject,
    boards_flash,
    find_board_manifest,
    find_boards_txt,
    fqbn_flash,
    parse_fqbn,
    read_build_options,
    read_project_description,
    read_sdkconfig,
    read_sketch_yaml,
    same_path,
    sdkconfig_flash,
    sdkconfig_monitor,
)
from fbuild_watch.image.settings import FlashSettings, MonitorSettings
from fbuild_watch.lnk.fetch import DEFAULT_MAX_BYTES, FetchPolicy
from fbuild_watch.lnk.resolve import DEFAULT_RESOURCE_DIR
from fbuild_watch.watch.ignore import IgnoreRules

BUILD_LOG_NAME = "build.log"
IDF_BUILD_DIR = "build"
ARDUINO_BUILD_PATH = "build/arduino"
# Directories never searched for an ESP-IDF build dir (`idf.py -B`).
_NOT_BUILD_DIRS = {"main", "components", "managed_components", "node_modules", "src", "include"}


class NoProjectError(ConfigError):
    """The directory is not a project of any kind we know."""


@dataclass
class Backend:
    """A project and the commands that build it."""

    kind: str
    project_dir: Path
    config: ProjectConfig | None = None
    env: dict[str, str] = field(default_factory=dict)
    reason: str = ""  # why detect_backend chose this kind
    alternatives: list[str] = field(default_factory=list)  # what else it could have been

    def command(self) -> list[str]:
        raise NotImplementedError

    def output_dirs(self) -> list[Path]:
        """Build outputs: the watcher ignores them (no build-triggers-build)."""
        raise NotImplementedError

    def load_layout(self) -> FlashLayout:
        raise NotImplementedError

    def elf_path(self) -> Path | None:
        return None

    @property
    def chip(self) -> str | None:
        return self.config.chip if self.config else None

    def prepare(self) -> list[str] | None:
        """A command to run once before the first build (or None)."""
        return None

    def describe(self) -> str:
        return f"{self.kind} project at {self.project_dir}"

    def missing_tool_hint(self) -> str:
        """The next step when the build's program is not found."""
        return f"check [build] command in {self.project_dir / CONFIG_NAME}"

    def build_log_path(self) -> Path:
        """The last build's whole output (`.fbuild/` is never watched, and is
        not any build system's directory)."""
        return self.project_dir / ".fbuild" / BUILD_LOG_NAME

    def build_timeout_s(self) -> float | None:
        """`[build] timeout`; None (the default): no limit."""
        return self.config.build_timeout_s if self.config else None

    # -- what the build system says about flashing and monitoring ----------------
    def flash_settings(self) -> FlashSettings:
        """The build system's layer of the flashing settings from the
        project's own files (platformio.ini, sketch.yaml, sdkconfig...);
        `load_layout()` puts it under what the build outputs say."""
        return FlashSettings()

    def monitor_settings(self) -> MonitorSettings:
        """The build system's layer of the monitor settings."""
        return MonitorSettings()

    def config_files(self) -> list[Path]:
        """Files whose edit changes how the project is built or flashed (the
        build system re-reads them, or fbuild reads them into its settings):
        a change to one must reload the backend before the next build."""
        return [self.project_dir / CONFIG_NAME]

    def settings_digests(self) -> dict[str, bytes | None]:
        """Project-relative path -> digest of the bytes *this* backend was
        made from (None: absent then), for the files fbuild itself
        interprets to build: WatchSet.fingerprint_with() records a build
        with them, not with what is on disk now (a malformed edit the loop
        could not load is then never recorded as built)."""
        return {CONFIG_NAME: self.config.digest if self.config else None}

    def explain(self) -> dict[str, Any]:
        """Which backend, why, and what it reads: `fbuild build --explain`."""
        try:
            command: list[str] | str = self.command()
        except FbuildError as exc:
            command = f"error: {exc}"
        return {
            "kind": self.kind,
            "project": str(self.project_dir),
            "reason": self.reason,
            "alternatives": list(self.alternatives),
            "command": command,
            "output_dirs": [str(p) for p in self.output_dirs()],
            "config_files": [str(p) for p in self.config_files() if p.exists()],
        }

    def _with_settings(self, layout: FlashLayout) -> FlashLayout:
        """What the build outputs say, over what the project's files say."""
        return replace(layout, settings=layout.settings.over(self.flash_settings()))

    # -- what is watched, and where `.lnk` resources materialize ------------------
    def resource_dir(self) -> Path:
        """Materialized `.lnk` blobs; the build gets it as FBUILD_RESOURCE_DIR."""
        rel = self.config.lnk_dir if self.config and self.config.lnk_dir else DEFAULT_RESOURCE_DIR
        return self.project_dir / rel

    def fetch_policy(self) -> FetchPolicy:
        cfg = self.config
        if cfg is None:
            return FetchPolicy()
        limit = cfg.lnk_max_mb << 20 if cfg.lnk_max_mb else DEFAULT_MAX_BYTES
        return FetchPolicy(allow_http=cfg.lnk_allow_http, max_bytes=limit)

    def watch_paths(self) -> list[str] | None:
        """Roots of the watch set relative to the project (None: all of it).
        With `[watch] paths`, the project's config files are added: an edit
        to one must be seen (and be part of what a build was made from)."""
        if not (self.config and self.config.watch_paths):
            return None
        paths = list(self.config.watch_paths)
        root = self.project_dir.resolve()
        for f in self.config_files():
            try:
                rel = f.resolve().relative_to(root).as_posix()
            except ValueError:
                continue
            if f.is_file() and not any(
                rel == p or rel.startswith(p.rstrip("/") + "/") for p in paths
            ):
                paths.append(rel)
        return paths

    def ignore_rules(self) -> IgnoreRules:
        """Build outputs and materialized resources are never watched: a
        build (or a resolve) must not trigger the next build."""
        return IgnoreRules(
            self.project_dir,
            output_dirs=[*self.output_dirs(), self.resource_dir()],
            patterns=list(self.config.watch_ignore) if self.config else None,
        )


@dataclass
class CommandBackend(Backend):
    """`fbuild.toml` with [build] command: any build system."""

    def _cfg(self) -> ProjectConfig:
        assert self.config is not None
        return self.config

    def command(self) -> list[str]:
        cmd = self._cfg().command
        if not cmd:
            raise ConfigError("[build] command is required", source=self._cfg().path)
        return list(cmd)

    def output_dirs(self) -> list[Path]:
        cfg = self._cfg()
        dirs = [self.project_dir / o for o in cfg.outputs]
        if cfg.flasher_args:
            dirs.append((self.project_dir / cfg.flasher_args).parent)
        for entry in cfg.flash:
            dirs.append((self.project_dir / entry.file).parent)
        return _dedupe([d for d in dirs if d.resolve() != self.project_dir.resolve()])

    def load_layout(self) -> FlashLayout:
        cfg = self._cfg()
        if cfg.flasher_args:
            layout = load_flasher_args(self.project_dir / cfg.flasher_args, chip=cfg.chip)
        elif cfg.flash:
            layout = load_pairs(
                [(e.offset, self.project_dir / e.file) for e in cfg.flash], chip=cfg.chip
            )
        else:
            raise ConfigError(
                "[build] flasher_args or [[flash]] entries are needed to know what to flash",
                source=cfg.path,
            )
        elf = self.elf_path()
        return _with_elf(layout, elf)

    def elf_path(self) -> Path | None:
        cfg = self._cfg()
        if cfg.elf:
            return self.project_dir / cfg.elf
        if cfg.flasher_args:
            fa = self.project_dir / cfg.flasher_args
            try:
                doc = json.loads(fa.read_text())
                app = doc.get("app", {}).get("file")
            except (OSError, ValueError, AttributeError):
                app = None
            if isinstance(app, str):
                cand = (fa.parent / app).with_suffix(".elf")
                return cand if cand.exists() else None
        return None


# == ESP-IDF ========================================================================
@dataclass
class EspIdfBackend(Backend):
    build_dir: Path | None = None  # None: build/ (idf.py's default)

    def _build(self) -> Path:
        return self.build_dir or self.project_dir / IDF_BUILD_DIR

    def command(self) -> list[str]:
        build = self._build()
        if (build / "build.ninja").exists() and shutil.which("ninja"):
            return ["ninja", "-C", str(build)]  # skips idf.py's ~1 s start-up
        cmd = ["idf.py", "-C", str(self.project_dir)]
        if build != self.project_dir / IDF_BUILD_DIR:
            cmd += ["-B", str(build)]
        return [*cmd, "build"]

    def output_dirs(self) -> list[Path]:
        return [self._build()]

    def missing_tool_hint(self) -> str:
        idf = os.environ.get("IDF_PATH") or "$IDF_PATH"
        return f"run `. {idf}/export.sh` in this shell first, or put idf.py on PATH"

    def load_layout(self) -> FlashLayout:
        layout = load_flasher_args(self._build() / "flasher_args.json", chip=self.chip)
        return self._with_settings(_with_elf(layout, self.elf_path()))

    def _description(self) -> ProjectDescription | None:
        path = self._build() / "project_description.json"
        return read_project_description(path) if path.is_file() else None

    def elf_path(self) -> Path | None:
        try:
            desc = self._description()
        except FbuildError:
            return None
        if desc is None or desc.app_elf is None:
            return None
        return self._build() / desc.app_elf

    def _sdkconfig(self) -> Path:
        """The sdkconfig the build uses (project_description's config_file
        when it is this machine's; else the project's)."""
        try:
            desc = self._description()
        except FbuildError:
            desc = None
        if desc is not None and desc.config_file and Path(desc.config_file).is_file():
            return Path(desc.config_file)
        return self.project_dir / "sdkconfig"

    def flash_settings(self) -> FlashSettings:
        sdkconfig = self._sdkconfig()
        if not sdkconfig.is_file():
            return FlashSettings()
        return sdkconfig_flash(read_sdkconfig(sdkconfig), source=sdkconfig)

    def monitor_settings(self) -> MonitorSettings:
        """project_description.json's monitor_baud (what `idf.py monitor`
        uses), else the sdkconfig's console baud."""
        desc = self._description()
        layer = desc.monitor() if desc is not None else MonitorSettings()
        sdkconfig = self._sdkconfig()
        if sdkconfig.is_file():
            layer = layer.over(sdkconfig_monitor(read_sdkconfig(sdkconfig), source=sdkconfig))
        return layer

    def config_files(self) -> list[Path]:
        d = self.project_dir
        files = [*super().config_files(), d / "CMakeLists.txt", d / "main" / "CMakeLists.txt"]
        files += [self._sdkconfig(), *sorted(d.glob("sdkconfig.defaults*"))]
        files += [d / "main" / "idf_component.yml", d / "dependencies.lock"]
        files += _partition_csvs(d, self._sdkconfig())
        return _dedupe(files)


def _partition_csvs(project: Path, sdkconfig: Path) -> list[Path]:
    name = "partitions.csv"
    if sdkconfig.is_file():
        try:
            name = read_sdkconfig(sdkconfig).get("CONFIG_PARTITION_TABLE_CUSTOM_FILENAME", name)
        except FbuildError:
            pass
    return [project / name]


def find_idf_build_dir(project: Path) -> tuple[Path | None, list[str]]:
    """The ESP-IDF build dir of `project`: `build/` when it holds a build
    (build.ninja or flasher_args.json), else a direct subdirectory holding
    flasher_args.json and a project_description.json whose project_path is
    this project (`idf.py -B DIR`). Returns (dir, notes on other candidates)."""
    default = project / IDF_BUILD_DIR
    if (default / "build.ninja").is_file() or (default / "flasher_args.json").is_file():
        return default, []
    found: list[Path] = []
    try:
        children = sorted(p for p in project.iterdir() if p.is_dir())
    except OSError:
        return None, []
    for child in children:
        if child.name.startswith(".") or child.name in _NOT_BUILD_DIRS:
            continue
        if not (child / "flasher_args.json").is_file():
            continue
        try:
            desc = read_project_description(child / "project_description.json")
        except FbuildError:
            continue
        if desc.project_path and same_path(desc.project_path, project):
            found.append(child)
    if not found:
        return None, []
    found.sort(key=lambda p: (p / "flasher_args.json").stat().st_mtime_ns, reverse=True)
    notes = [
        f"ESP-IDF build dirs {', '.join(p.name for p in found)}: using {found[0].name}, "
        "the most recently built (set [build] dir in fbuild.toml to choose)"
    ]
    return found[0], notes if len(found) > 1 else []


# == PlatformIO =====================================================================
@dataclass
class PlatformIOBackend(Backend):
    env_name: str | None = None

    def _ini(self) -> PlatformIOIni:
        path = self.project_dir / "platformio.ini"
        return PlatformIOIni(path)

    def _env(self) -> str:
        if self.env_name:
            return self.env_name
        self.env_name = self._ini().default_env()
        return self.env_name

    def command(self) -> list[str]:
        return ["pio", "run", "-d", str(self.project_dir), "-e", self._env()]

    def missing_tool_hint(self) -> str:
        return "install PlatformIO Core with `pip install platformio`, or put pio on PATH"

    def prepare(self) -> list[str] | None:
        if not self._idedata().exists():
            return ["pio", "run", "-d", str(self.project_dir), "-e", self._env(), "-t", "idedata"]
        return None

    def _build_root(self) -> Path:
        try:
            return self._ini().build_dir()
        except FbuildError:
            return self.project_dir / ".pio" / "build"

    def _idedata(self) -> Path:
        return self._build_root() / self._env() / "idedata.json"

    def output_dirs(self) -> list[Path]:
        root = self._build_root()
        dirs = [self.project_dir / ".pio"]
        if not root.resolve().is_relative_to((self.project_dir / ".pio").resolve()):
            dirs.append(root)
        return dirs

    def _board(self, ini: PlatformIOIni) -> BoardManifest | None:
        """The board's manifest, when PlatformIO is installed here (a broken
        one raises: its defaults would be silently lost otherwise)."""
        board = ini.board(self._env())
        return find_board_manifest(board, self.project_dir) if board else None

    def load_layout(self) -> FlashLayout:
        layout = load_idedata(self._idedata(), chip=self.chip)
        ini = self._ini()
        size = ini.flash_size(self._env(), self._board(ini))
        if size is not None and layout.flash_size is None:
            layout = replace(layout, flash_size=size[0])
        return self._with_settings(layout)

    def elf_path(self) -> Path | None:
        try:
            return load_idedata_elf(self._idedata())
        except FbuildError:
            return None

    def flash_settings(self) -> FlashSettings:
        ini = self._ini()
        return ini.flash_settings(self._env(), self._board(ini))

    def monitor_settings(self) -> MonitorSettings:
        return self._ini().monitor_settings(self._env())

    def framework(self) -> list[str]:
        return self._ini().framework(self._env())

    def describe(self) -> str:
        frameworks = ", ".join(self.framework()) or "no framework"
        return f"platformio project ({frameworks}) at {self.project_dir}"

    def config_files(self) -> list[Path]:
        d = self.project_dir
        files = [*super().config_files(), d / "platformio.ini"]
        try:
            ini = self._ini()
            env = self._env()
            found = ini.option(env, "board_build.partitions")
            if found:
                files.append(d / found[0].strip())
            if "espidf" in ini.framework(env):
                files += [d / "CMakeLists.txt", d / f"sdkconfig.{env}", d / "sdkconfig.defaults"]
        except FbuildError:
            pass
        files += sorted(d.glob("*.ini"))  # extra_configs
        return _dedupe(files)


def load_idedata_elf(path: Path) -> Path | None:
    doc = load_json(path)
    prog = doc.get("prog_path") if isinstance(doc, dict) else None
    return local_file(prog, path.parent) if isinstance(prog, str) else None


# == Arduino ==========================================================================
@dataclass
class ArduinoBackend(Backend):
    fqbn: str | None = None

    def _sketch(self) -> SketchProject | None:
        path = self.project_dir / "sketch.yaml"
        return read_sketch_yaml(path) if path.is_file() else None

    def _fqbn(self) -> str:
        """--fqbn, else sketch.yaml, else the build.options.json of the one
        exported build in build/<fqbn>/."""
        if self.fqbn:
            return self.fqbn
        sketch = self._sketch()
        if sketch is not None and sketch.fqbn is not None:
            options = ",".join(f"{k}={v}" for k, v in sketch.fqbn.options)
            return f"{sketch.fqbn.base}:{options}" if options else sketch.fqbn.base
        exports = arduino_exports(self.project_dir)
        if len(exports) == 1 and exports[0][1].fqbn is not None:
            return exports[0][1].fqbn.base
        raise ConfigError(
            "no FQBN: add default_fqbn to sketch.yaml or pass --fqbn",
            source=self.project_dir / "sketch.yaml",
        )

    def _parsed(self) -> Fqbn:
        return parse_fqbn(self._fqbn(), where="FQBN")

    def _build_path(self) -> Path:
        rel = self.config.build_dir if self.config and self.config.build_dir else ARDUINO_BUILD_PATH
        return self.project_dir / rel

    def _layout_dir(self) -> Path:
        """Our --build-path, or the exported build of this FQBN (build/<fqbn>/)
        when that is newer (the IDE or arduino-cli --export-binaries built it)."""
        ours = self._build_path()
        candidates = [ours]
        try:
            candidates.append(self.project_dir / "build" / self._parsed().export_dir_name)
        except FbuildError:
            pass
        built = [(c, _newest_app(c)) for c in candidates]
        built = [(c, t) for c, t in built if t is not None]
        return max(built, key=lambda ct: ct[1] or 0)[0] if built else ours

    def command(self) -> list[str]:
        return [
            "arduino-cli", "compile", "--fqbn", self._fqbn(),
            "--build-path", str(self._build_path()), str(self.project_dir),
        ]  # fmt: skip

    def output_dirs(self) -> list[Path]:
        return [self.project_dir / "build"]

    def missing_tool_hint(self) -> str:
        return (
            "install arduino-cli (https://arduino.github.io/arduino-cli/latest/installation/)"
            " and put it on PATH"
        )

    def load_layout(self) -> FlashLayout:
        where = self._layout_dir()
        layout = load_arduino_dir(where, chip=self.chip)
        layout, boards_layer = self._with_board_images(layout, where)
        layout = replace(layout, settings=layout.settings.over(boards_layer))
        return self._with_settings(layout)

    def _build_options(self, where: Path | None = None) -> BuildOptions | None:
        path = (where or self._layout_dir()) / "build.options.json"
        return read_build_options(path) if path.is_file() else None

    def _with_board_images(
        self, layout: FlashLayout, where: Path
    ) -> tuple[FlashLayout, FlashSettings]:
        """boards.txt's upload.speed and upload.extra_flags images (tinyuf2,
        models) when the build's platform is installed here; images the
        build's flash_args already lists are not added twice."""
        options = self._build_options(where)
        boards = find_boards_txt(options) if options is not None else None
        if boards is None:
            return layout, FlashSettings()
        layer, images = boards_flash(boards, platform_dir=boards.path.parent, build_path=where)
        known = {r.offset for r in layout.regions}
        extra: list[Region] = []
        for offset, file in images:
            if offset in known:
                continue
            data = read_regular(file, what="extra image", limit=16 << 20)
            extra.append(Region(f"extra@0x{offset:x}", offset, data, file))
        if extra:
            layout = replace(layout, regions=(*layout.regions, *extra))
        return layout, layer

    def elf_path(self) -> Path | None:
        elves = sorted(self._layout_dir().glob("*.ino.elf"))
        return elves[0] if elves else None

    def flash_settings(self) -> FlashSettings:
        """The FQBN's menu choices (UploadSpeed, EraseFlash) from --fqbn, else
        sketch.yaml, else the FQBN the build was made with
        (build.options.json); the port from sketch.yaml."""
        sketch = self._sketch()
        if self.fqbn:
            chosen = fqbn_flash(parse_fqbn(self.fqbn, where="--fqbn"), source="--fqbn")
            port = sketch.flash_settings(with_fqbn=False) if sketch else FlashSettings()
            layer = chosen.over(port)
        else:
            layer = sketch.flash_settings() if sketch is not None else FlashSettings()
        try:
            options = self._build_options()
        except FbuildError:
            options = None
        if options is not None and options.fqbn is not None:
            layer = layer.over(fqbn_flash(options.fqbn, source=f"{options.path} fqbn"))
        return layer

    def monitor_settings(self) -> MonitorSettings:
        sketch = self._sketch()
        return sketch.monitor_settings() if sketch is not None else MonitorSettings()

    def config_files(self) -> list[Path]:
        d = self.project_dir
        files = [*super().config_files(), d / "sketch.yaml", d / "partitions.csv"]
        return _dedupe([*files, d / "build_opt.h"])


def arduino_exports(project: Path) -> list[tuple[Path, BuildOptions]]:
    """Exported builds in `build/<vendor.arch.board>/` (arduino-cli
    --export-binaries, Arduino IDE "Export compiled binary"), with their
    build.options.json."""
    out: list[tuple[Path, BuildOptions]] = []
    build = project / "build"
    if not build.is_dir():
        return out
    for child in sorted(build.iterdir()):
        opts = child / "build.options.json"
        if child.is_dir() and child.name.count(".") >= 2 and opts.is_file():
            try:
                out.append((child, read_build_options(opts)))
            except FbuildError:
                continue
    return out


def _newest_app(build_dir: Path) -> int | None:
    times = [
        p.stat().st_mtime_ns
        for p in build_dir.glob("*.ino.bin")
        if not p.name.endswith((".bootloader.bin", ".partitions.bin", ".merged.bin"))
    ]
    return max(times) if times else None


# == detection ========================================================================
def _dedupe(paths: list[Path]) -> list[Path]:
    out: list[Path] = []
    for p in paths:
        if p not in out:
            out.append(p)
    return out


def _with_elf(layout: FlashLayout, elf: Path | None) -> FlashLayout:
    if elf is None or layout.elf is not None:
        return layout
    return replace(layout, elf=elf)


def _includes_project_cmake(cmake: Path) -> bool:
    try:
        text = read_regular(cmake, what="CMakeLists.txt", limit=1 << 20)
    except FbuildError:
        return False
    return b"project.cmake" in text


def detect_backend(project_dir: Path, *, fqbn: str | None = None) -> Backend:
    """fbuild.toml ([build] command, or [build] system), else PlatformIO,
    ESP-IDF, Arduino CLI, as detected (see `Backend.reason`)."""
    d = Path(project_dir).resolve()
    if not d.is_dir():
        raise ConfigError("project directory does not exist", source=project_dir)
    env = {"PYTHON": sys.executable}  # example Makefiles run zig and esptool with it
    toml = d / CONFIG_NAME
    cfg = load_config(toml) if toml.exists() else None
    if cfg is not None:
        env.update(cfg.env)
        system = cfg.system or ("command" if cfg.command is not None else None)
        if system is None and (cfg.flash or cfg.flasher_args):
            raise ConfigError(
                "[build] command is required with [build] flasher_args or [[flash]]", source=toml
            )
        if system == "command":
            if cfg.command is None:
                raise ConfigError("[build] command is required", source=toml)
            return CommandBackend("command", d, cfg, env, reason=f"{toml} [build] command")
        if system is not None:
            backend = _make(system, d, cfg, env, fqbn, reason=f"{toml} [build] system")
            if isinstance(backend, EspIdfBackend) and cfg.build_dir:
                backend.build_dir = d / cfg.build_dir
            return backend
        try:
            return _detect(d, cfg, env, fqbn)
        except NoProjectError:
            raise ConfigError(
                "[build] command is required (no ESP-IDF, PlatformIO or Arduino project was "
                "found to build instead)",
                source=toml,
            ) from None
    return _detect(d, cfg, env, fqbn)


def _make(
    system: str,
    d: Path,
    cfg: ProjectConfig | None,
    env: dict[str, str],
    fqbn: str | None,
    *,
    reason: str,
    alternatives: list[str] | None = None,
) -> Backend:
    alts = alternatives or []
    if system == "esp-idf":
        build_dir, notes = find_idf_build_dir(d)
        if cfg is not None and cfg.build_dir:
            build_dir, notes = d / cfg.build_dir, []
        return EspIdfBackend("esp-idf", d, cfg, env, reason, [*alts, *notes], build_dir=build_dir)
    if system == "platformio":
        return PlatformIOBackend("platformio", d, cfg, env, reason, alts)
    return ArduinoBackend("arduino", d, cfg, env, reason, alts, fqbn=fqbn)


def _detect(d: Path, cfg: ProjectConfig | None, env: dict[str, str], fqbn: str | None) -> Backend:
    pio = (d / "platformio.ini").is_file()
    cmake = d / "CMakeLists.txt"
    idf_cmake = cmake.is_file() and _includes_project_cmake(cmake)
    idf_dir, _notes = find_idf_build_dir(d)
    sketches = sorted(d.glob("*.ino"))
    exports = arduino_exports(d) if sketches else []
    arduino = bool(sketches) and ((d / "sketch.yaml").is_file() or bool(fqbn) or bool(exports))
    pio_built = pio and (d / ".pio" / "build").is_dir()

    if pio and idf_dir is not None and (idf_dir / "flasher_args.json").is_file() and not pio_built:
        # platformio.ini and an idf.py build of this project, never a pio one:
        # the project is built with idf.py
        return _make(
            "esp-idf", d, cfg, env, fqbn,
            reason=f"{idf_dir / 'flasher_args.json'}: an idf.py build of this project "
            "(and no .pio/build)",
            alternatives=[_alt_pio(d)],
        )  # fmt: skip
    if pio:
        alts = []
        reason = f"{d / 'platformio.ini'}"
        if idf_cmake:
            reason += (
                " (its CMakeLists.txt including project.cmake is PlatformIO's framework = espidf)"
            )
            alts.append(
                f'{cmake} includes project.cmake (ESP-IDF): set [build] system = "esp-idf" '
                f"in {CONFIG_NAME} to build with idf.py"
            )
        if arduino:
            alts.append(f"{sketches[0]} is an Arduino sketch; PlatformIO builds it")
        return _make("platformio", d, cfg, env, fqbn, reason=reason, alternatives=alts)
    if idf_cmake or idf_dir is not None:
        why = (
            f"{cmake} includes project.cmake" if idf_cmake else f"{idf_dir} holds an ESP-IDF build"
        )
        alts = [f"{sketches[0]} is an Arduino sketch"] if arduino else []
        return _make("esp-idf", d, cfg, env, fqbn, reason=why, alternatives=alts)
    if arduino:
        if (d / "sketch.yaml").is_file():
            why = f"{sketches[0]} with {d / 'sketch.yaml'}"
        elif fqbn:
            why = f"{sketches[0]} with --fqbn {fqbn}"
        else:
            why = f"{sketches[0]} with the exported build {exports[0][0]}"
        alts = []
        if len(exports) > 1 and not fqbn and not (d / "sketch.yaml").is_file():
            names = ", ".join(p.name for p, _ in exports)
            alts.append(f"several exported builds ({names}): pass --fqbn or add sketch.yaml")
        return _make("arduino", d, cfg, env, fqbn, reason=why, alternatives=alts)
    raise NoProjectError(
        "no project found (looked for fbuild.toml, platformio.ini, an ESP-IDF CMakeLists.txt "
        "or build dir, or a sketch with sketch.yaml, --fqbn or an exported build)",
        source=d,
    )


def _alt_pio(d: Path) -> str:
    return (
        f'{d / "platformio.ini"} is there too: set [build] system = "platformio" in '
        f"{CONFIG_NAME} to build with pio"
    )


__all__ = [
    "ArduinoBackend",
    "Backend",
    "CommandBackend",
    "EspIdfBackend",
    "LayoutFileError",
    "NoProjectError",
    "PlatformIOBackend",
    "arduino_exports",
    "detect_backend",
    "find_idf_build_dir",
]
