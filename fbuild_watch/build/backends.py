"""Build backends: how to build a project and where its outputs are.

Detection order: `fbuild.toml`, ESP-IDF, PlatformIO, Arduino CLI.
"""

from __future__ import annotations

import configparser
import json
import shutil
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

from fbuild_watch.config import CONFIG_NAME, ProjectConfig, load_config
from fbuild_watch.errors import ConfigError
from fbuild_watch.image.layout import FlashLayout
from fbuild_watch.image.loaders import load_arduino_dir, load_flasher_args, load_idedata, load_pairs
from fbuild_watch.lnk.fetch import DEFAULT_MAX_BYTES, FetchPolicy
from fbuild_watch.lnk.resolve import DEFAULT_RESOURCE_DIR
from fbuild_watch.watch.ignore import IgnoreRules

BUILD_LOG_NAME = "build.log"


class NoProjectError(ConfigError):
    """The directory is not a project of any kind we know."""


@dataclass
class Backend:
    """A project and the commands that build it."""

    kind: str
    project_dir: Path
    config: ProjectConfig | None = None
    env: dict[str, str] = field(default_factory=dict)

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

    def build_log_path(self) -> Path:
        """The last build's whole output (`.fbuild/` is never watched, and is
        not any build system's directory)."""
        return self.project_dir / ".fbuild" / BUILD_LOG_NAME

    def build_timeout_s(self) -> float | None:
        """`[build] timeout`; None (the default): no limit."""
        return self.config.build_timeout_s if self.config else None

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
        """Roots of the watch set relative to the project (None: all of it)."""
        return list(self.config.watch_paths) if self.config and self.config.watch_paths else None

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


@dataclass
class EspIdfBackend(Backend):
    def command(self) -> list[str]:
        build = self.project_dir / "build"
        if (build / "build.ninja").exists() and shutil.which("ninja"):
            return ["ninja", "-C", str(build)]  # skips idf.py's ~1 s start-up
        return ["idf.py", "-C", str(self.project_dir), "build"]

    def output_dirs(self) -> list[Path]:
        return [self.project_dir / "build"]

    def load_layout(self) -> FlashLayout:
        layout = load_flasher_args(self.project_dir / "build" / "flasher_args.json", chip=self.chip)
        return _with_elf(layout, self.elf_path())

    def elf_path(self) -> Path | None:
        desc = self.project_dir / "build" / "project_description.json"
        try:
            app_elf = json.loads(desc.read_text()).get("app_elf")
        except (OSError, ValueError, AttributeError):
            return None
        return self.project_dir / "build" / app_elf if isinstance(app_elf, str) else None


@dataclass
class PlatformIOBackend(Backend):
    env_name: str | None = None

    def _env(self) -> str:
        if self.env_name:
            return self.env_name
        ini = configparser.ConfigParser()
        path = self.project_dir / "platformio.ini"
        try:
            ini.read(path, encoding="utf-8")
        except configparser.Error as exc:
            raise ConfigError(f"malformed platformio.ini: {exc}", source=path) from None
        default = ini.get("platformio", "default_envs", fallback="").split(",")[0].strip()
        envs = [s[4:] for s in ini.sections() if s.startswith("env:")]
        name = default or (envs[0] if envs else "")
        if not name:
            raise ConfigError("no [env:...] section", source=path)
        self.env_name = name
        return name

    def command(self) -> list[str]:
        return ["pio", "run", "-d", str(self.project_dir), "-e", self._env()]

    def prepare(self) -> list[str] | None:
        if not self._idedata().exists():
            return ["pio", "run", "-d", str(self.project_dir), "-e", self._env(), "-t", "idedata"]
        return None

    def _idedata(self) -> Path:
        return self.project_dir / ".pio" / "build" / self._env() / "idedata.json"

    def output_dirs(self) -> list[Path]:
        return [self.project_dir / ".pio"]

    def load_layout(self) -> FlashLayout:
        return load_idedata(self._idedata(), chip=self.chip)

    def elf_path(self) -> Path | None:
        try:
            prog = json.loads(self._idedata().read_text()).get("prog_path")
        except (OSError, ValueError, AttributeError):
            return None
        return Path(prog) if isinstance(prog, str) else None


@dataclass
class ArduinoBackend(Backend):
    fqbn: str | None = None

    def _fqbn(self) -> str:
        if self.fqbn:
            return self.fqbn
        sketch = self.project_dir / "sketch.yaml"
        if sketch.exists():
            for line in sketch.read_text(encoding="utf-8").splitlines():
                key, _, value = line.partition(":")
                if key.strip() == "default_fqbn" and value.strip():
                    self.fqbn = value.strip().strip("'\"")
                    return self.fqbn
        raise ConfigError("no FQBN: add default_fqbn to sketch.yaml or pass --fqbn", source=sketch)

    def _build_path(self) -> Path:
        return self.project_dir / "build" / "arduino"

    def command(self) -> list[str]:
        return [
            "arduino-cli", "compile", "--fqbn", self._fqbn(),
            "--build-path", str(self._build_path()), str(self.project_dir),
        ]  # fmt: skip

    def output_dirs(self) -> list[Path]:
        return [self.project_dir / "build"]

    def load_layout(self) -> FlashLayout:
        return load_arduino_dir(self._build_path(), chip=self.chip)

    def elf_path(self) -> Path | None:
        elves = sorted(self._build_path().glob("*.ino.elf"))
        return elves[0] if elves else None


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


def detect_backend(project_dir: Path, *, fqbn: str | None = None) -> Backend:
    """The first of: fbuild.toml, ESP-IDF, PlatformIO, Arduino CLI."""
    d = Path(project_dir).resolve()
    if not d.is_dir():
        raise ConfigError("project directory does not exist", source=project_dir)
    env = {"PYTHON": sys.executable}  # example Makefiles run zig and esptool with it
    toml = d / CONFIG_NAME
    if toml.exists():
        cfg = load_config(toml)
        env.update(cfg.env)
        if cfg.command is None:
            raise ConfigError("[build] command is required", source=toml)
        return CommandBackend("command", d, cfg, env)
    cmake = d / "CMakeLists.txt"
    if (d / "build" / "build.ninja").exists() or (
        cmake.exists() and "project.cmake" in cmake.read_text(encoding="utf-8", errors="replace")
    ):
        return EspIdfBackend("esp-idf", d, None, env)
    if (d / "platformio.ini").exists():
        return PlatformIOBackend("platformio", d, None, env)
    if any(d.glob("*.ino")) and ((d / "sketch.yaml").exists() or fqbn):
        return ArduinoBackend("arduino", d, None, env, fqbn=fqbn)
    raise NoProjectError(
        "no project found (looked for fbuild.toml, an ESP-IDF CMakeLists.txt, "
        "platformio.ini, or a sketch with sketch.yaml/--fqbn)",
        source=d,
    )


__all__ = [
    "ArduinoBackend",
    "Backend",
    "CommandBackend",
    "EspIdfBackend",
    "PlatformIOBackend",
    "detect_backend",
]
