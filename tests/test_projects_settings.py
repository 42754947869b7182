"""Flashing and monitor settings from every source, their precedence, and
every malformed field: one line naming the file and the field, exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fbuild_watch.build.backends import PlatformIOBackend, detect_backend
from fbuild_watch.config import load_config
from fbuild_watch.errors import ConfigError, FbuildError
from fbuild_watch.image.loaders import LayoutFileError, load_flasher_args, load_idedata
from fbuild_watch.image.projectfiles import PlatformIOIni, read_sketch_yaml
from fbuild_watch.image.settings import (
    FlashSettings,
    MonitorSettings,
    esptool_flags,
    resolve_flash,
    resolve_monitor,
)
from tests.projectkit import materialize

FBUILD = [sys.executable, "-m", "fbuild_watch"]


# -- precedence ---------------------------------------------------------------------
def test_flash_precedence_cli_toml_build_environment_default() -> None:
    build = FlashSettings(
        baud=921600, ports=("/dev/ttyUSB1",), after="no-reset", stub=False,
        origins=(("baud", "pio"), ("ports", "pio"), ("after", "fa"), ("stub", "fa")),
    )  # fmt: skip
    env = {"ESPPORT": "/dev/ttyENV", "ESPBAUD": "115200"}
    flash = resolve_flash(build, environ=env)
    assert (flash.baud, flash.ports, flash.after, flash.stub, flash.before) == (
        921600, ("/dev/ttyUSB1",), "no-reset", False, "default-reset"
    )  # fmt: skip
    assert flash.origins["baud"] == "pio" and "before" not in flash.origins  # default
    toml = FlashSettings(baud=230400, origins=(("baud", "fbuild.toml [board] baud"),))
    cli = FlashSettings(ports=("sim://x",), origins=(("ports", "--port"),))
    flash = resolve_flash(build, cli=cli, config=toml, environ=env)
    assert (flash.baud, flash.ports) == (230400, ("sim://x",))
    assert flash.origins["baud"] == "fbuild.toml [board] baud"
    assert flash.origins["ports"] == "--port"
    only_env = resolve_flash(FlashSettings(), environ=env)
    assert (only_env.baud, only_env.ports) == (115200, ("/dev/ttyENV",))
    assert only_env.origins == {"baud": "ESPBAUD", "ports": "ESPPORT"}
    assert resolve_flash(FlashSettings(), environ={}).baud == 460800
    report = flash.as_dict()
    assert report["baud"] == {"value": 230400, "from": "fbuild.toml [board] baud"}
    assert report["before"] == {"value": "default-reset", "from": "default"}


def test_monitor_precedence_and_environment() -> None:
    build = MonitorSettings(baud=74880, origins=(("baud", "project_description.json"),))
    assert resolve_monitor(build, environ={"MONITORBAUD": "9600"}).baud == 74880
    assert resolve_monitor(MonitorSettings(), environ={"IDF_MONITOR_BAUD": "9600"}).baud == 9600
    assert resolve_monitor(MonitorSettings(), environ={}).baud == 115200
    cli = MonitorSettings(baud=2000000, origins=(("baud", "--monitor-baud"),))
    got = resolve_monitor(build, cli=cli, environ={})
    assert (got.baud, got.origins["baud"]) == (2000000, "--monitor-baud")


def test_esptool_flags_known_applied_unknown_reported() -> None:
    layer = esptool_flags(
        ["--no-stub", "--before=no_reset", "-b", "921600", "-z", "--trace", "--chip", "ESP32-S3"],
        source="platformio.ini [env:x] upload_flags",
    )
    assert (layer.stub, layer.before, layer.baud, layer.chip) == (
        False,
        "no-reset",
        921600,
        "esp32s3",
    )
    assert layer.extra_flags == ("--trace",)
    assert layer.warnings == (
        "platformio.ini [env:x] upload_flags: esptool option '--trace' is not supported; ignored",
    )


# -- PlatformIO ---------------------------------------------------------------------
INI = """\
[platformio]
default_envs = c3

[common]
speed = 921600

[env]
platform = espressif32
monitor_speed = 115200   ; inline comments, as PlatformIO allows
monitor_filters = esp32_exception_decoder, time, log2file, colorize, hexlify

[env:base]
board = esp32-c3-devkitm-1
upload_flags =
    --no-stub
    --after=no_reset

[env:c3]
extends = env:base
framework = arduino
upload_speed = ${common.speed}
upload_port = ${sysenv.FB_TEST_PORT}
board_upload.before_reset = usb_reset
board_upload.use_1200bps_touch = yes
monitor_eol = LF
monitor_rts = 0
monitor_dtr = 0
monitor_echo = yes
"""


def test_platformio_ini_flash_and_monitor_settings(tmp_path: Path) -> None:
    ini_path = tmp_path / "platformio.ini"
    ini_path.write_text(INI)
    ini = PlatformIOIni(ini_path, environ={"FB_TEST_PORT": "/dev/ttyACM3"})
    assert ini.default_env() == "c3"
    flash = resolve_flash(ini.flash_settings("c3"), environ={})
    assert (flash.baud, flash.ports, flash.before, flash.after, flash.stub) == (
        921600, ("/dev/ttyACM3",), "usb-reset", "no-reset", False
    )  # fmt: skip
    assert flash.origins["baud"] == f"{ini_path} [env:c3] upload_speed"
    assert flash.origins["before"] == f"{ini_path} [env:c3] board_upload.before_reset"
    assert flash.origins["stub"] == f"{ini_path} [env:base] upload_flags"
    assert flash.warnings == (
        f"{ini_path} [env:c3] board_upload.use_1200bps_touch: not supported by fbuild; ignored",
    )
    monitor = resolve_monitor(ini.monitor_settings("c3"), environ={})
    assert (monitor.baud, monitor.timestamps, monitor.log_to_file) == (115200, True, True)
    assert (monitor.eol, monitor.dtr, monitor.rts) == ("LF", False, False)
    assert monitor.origins["timestamps"] == f"{ini_path} [env] monitor_filters"
    assert set(monitor.warnings) == {
        f"{ini_path} [env:c3] monitor_echo: not supported by fbuild monitor; ignored",
        f"{ini_path} [env] monitor_filters: monitor filter 'hexlify' is not supported; ignored",
    }


def test_platformio_upload_protocol_other_than_esptool_is_reported(tmp_path: Path) -> None:
    (tmp_path / "platformio.ini").write_text(
        "[env:ota]\nboard = esp32dev\nupload_protocol = espota\nupload_port = 192.168.1.7\n"
    )
    backend = detect_backend(tmp_path)
    assert isinstance(backend, PlatformIOBackend)
    warnings = backend.flash_settings().warnings
    assert warnings == (
        f"{tmp_path.resolve() / 'platformio.ini'} [env:ota] upload_protocol: upload protocol "
        "'espota' is not supported (fbuild flashes with esptool over the serial port); ignored",
    )


def test_the_nozzlenat_style_ini_reads(tmp_path: Path) -> None:
    """From github:aggerritsen/NozzleNAT: an inline comment after a value, a
    missing extra_configs file, board_upload.flash_size."""
    (tmp_path / "platformio.ini").write_text(
        "[platformio]\ndefault_envs = esp32dev\nsrc_dir = main\nextra_configs = private.ini\n"
        "[env:esp32dev]\nplatform = espressif32@6.5.0   ; ships ESP-IDF 5.1.2\n"
        "framework = espidf\nboard = esp32dev\nmonitor_speed = 115200\n"
        "board_upload.flash_size = 4MB\n"
    )
    ini = PlatformIOIni(tmp_path / "platformio.ini")
    assert ini.framework("esp32dev") == ["espidf"]
    assert ini.flash_size("esp32dev") == (
        4 << 20, f"{tmp_path / 'platformio.ini'} [env:esp32dev] board_upload.flash_size"
    )  # fmt: skip


# -- sketch.yaml --------------------------------------------------------------------------
def test_sketch_yaml_profile_port_and_baud(tmp_path: Path) -> None:
    (tmp_path / "sketch.yaml").write_text(
        "default_profile: c3\n"
        "default_port: /dev/ttyUSB9\n"
        "profiles:\n"
        "  c3:\n"
        "    fqbn: esp32:esp32:esp32c3:UploadSpeed=460800,EraseFlash=all\n"
        "    port: /dev/ttyACM0\n"
        "    port_config:\n"
        "      baudrate: 74880\n"
    )
    sketch = read_sketch_yaml(tmp_path / "sketch.yaml")
    flash = resolve_flash(sketch.flash_settings(), environ={})
    where = tmp_path / "sketch.yaml"
    assert (flash.baud, flash.ports) == (460800, ("/dev/ttyACM0",))
    assert flash.origins["baud"] == f"{where} profiles.c3.fqbn UploadSpeed"
    assert flash.warnings == (
        f"{where} profiles.c3.fqbn: EraseFlash=all (erase the whole flash before writing) is "
        "not done by fbuild, which writes only what differs; ignored",
    )
    monitor = resolve_monitor(sketch.monitor_settings(), environ={})
    assert (monitor.baud, monitor.port) == (74880, "/dev/ttyACM0")
    (tmp_path / "Blink.ino").write_text("")
    backend = detect_backend(tmp_path)
    assert backend.command()[3] == "esp32:esp32:esp32c3:UploadSpeed=460800,EraseFlash=all"


# -- fbuild.toml --------------------------------------------------------------------------
def test_fbuild_toml_board_and_monitor_keys(tmp_path: Path) -> None:
    (tmp_path / "fbuild.toml").write_text(
        '[board]\nbefore = "no_reset"\nafter = "no-reset"\nstub = false\nport = "sim://a"\n'
        "[monitor]\nbaud = 74880\n"
    )
    cfg = load_config(tmp_path / "fbuild.toml")
    flash = resolve_flash(FlashSettings(after="hard-reset"), config=cfg.flash_layer(), environ={})
    assert (flash.before, flash.after, flash.stub, flash.ports) == (
        "no-reset", "no-reset", False, ("sim://a",)
    )  # fmt: skip
    assert flash.origins["after"] == f"{tmp_path / 'fbuild.toml'} [board] after"
    monitor = resolve_monitor(MonitorSettings(baud=115200), config=cfg.monitor_layer(), environ={})
    assert (monitor.baud, monitor.port) == (74880, "sim://a")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[board]\nafter = "reboot"\n', r"\[board\] after: unknown --after mode 'reboot'"),
        ('[board]\nstub = "no"\n', r"\[board\] stub must be true or false, got str"),
        ("[monitor]\nbaud = 0\n", r"\[monitor\] baud must be positive"),
        ('[build]\nsystem = "make"\n', r"\[build\] system must be one of"),
        ('[build]\nsystem = "esp-idf"\ncommand = ["make"]\n', "cannot go with system"),
        ('[build]\ndir = "../elsewhere"\n', r"\[build\] dir must be a path inside the project"),
        ('[build]\nflasher_args = "b/fa.json"\n', r"\[build\] command is required with"),
    ],
)
def test_fbuild_toml_new_keys_are_checked(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "fbuild.toml").write_text(text)
    with pytest.raises(ConfigError, match=message) as exc:
        detect_backend(tmp_path)
    assert str(exc.value).startswith(str(tmp_path.resolve() / "fbuild.toml") + ": ")
    assert exc.value.exit_code == 2


def test_fbuild_toml_without_a_command_keeps_the_build_system(tmp_path: Path) -> None:
    project = materialize("pio-espidf-esp32", tmp_path / "p")
    (project / "fbuild.toml").write_text(
        '[build]\nenv = { CRASH = "1" }\n[watch]\npaths = ["main"]\n'
    )
    backend = detect_backend(project)
    assert isinstance(backend, PlatformIOBackend)
    assert backend.env["CRASH"] == "1"
    (project / "fbuild.toml").write_text('[build]\nsystem = "esp-idf"\n')
    assert detect_backend(project).kind == "esp-idf"


# -- malformed fields ----------------------------------------------------------------------
def _fa(tmp_path: Path, **changes: object) -> Path:
    project = materialize("idf-v5.3.1-esp32c6", tmp_path / "p")
    fa = project / "build" / "flasher_args.json"
    doc = json.loads(fa.read_text())
    for dotted, value in changes.items():
        section, _, key = dotted.partition("__")
        if key:
            doc[section][key] = value
        else:
            doc[section] = value
    fa.write_text(json.dumps(doc))
    return fa


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"extra_esptool_args__after": "reboot"},
            "extra_esptool_args.after: unknown --after mode 'reboot'",
        ),
        ({"extra_esptool_args__before": 3}, "extra_esptool_args.before: unknown --before mode 3"),
        (
            {"extra_esptool_args__stub": "yes"},
            "extra_esptool_args.stub must be true or false, got 'yes'",
        ),
        ({"extra_esptool_args__chip": "esp99"}, "extra_esptool_args.chip: unknown chip 'esp99'"),
        ({"extra_esptool_args": []}, "extra_esptool_args must be an object"),
        ({"app__encrypted": "maybe"}, 'app.encrypted must be "true" or "false", got \'maybe\''),
        ({"app__offset": "0xzz"}, "app.offset: bad flash offset '0xzz'"),
        (
            {"flash_settings__flash_size": "huge"},
            "flash_settings.flash_size: bad flash size 'huge'",
        ),
        ({"flash_settings__flash_mode": 4}, "flash_settings.flash_mode must be a string, got 4"),
        ({"flash_settings": "dio"}, "flash_settings must be an object"),
    ],
)
def test_malformed_flasher_args_fields(
    tmp_path: Path, changes: dict[str, object], message: str
) -> None:
    fa = _fa(tmp_path, **changes)
    with pytest.raises(LayoutFileError) as exc:
        load_flasher_args(fa)
    assert str(exc.value).startswith(f"{fa}: {message}"), str(exc.value)
    assert "\n" not in str(exc.value)
    assert exc.value.exit_code == 2


def test_unknown_flasher_args_fields_are_reported_not_dropped(tmp_path: Path) -> None:
    fa = _fa(tmp_path, extra_esptool_args__trace=True, flash_encryption_key="k")
    layout = load_flasher_args(fa)
    assert layout.settings.warnings == (
        f"{fa}: extra_esptool_args.trace is not supported by fbuild; ignored",
        f"{fa}: field 'flash_encryption_key' is not known to fbuild; ignored",
    )


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d["extra"].__setitem__("flash_images", {}), "extra.flash_images must be a list"),
        (lambda d: d["extra"]["flash_images"][0].pop("path"), "extra.flash_images[0] needs 'offset' and 'path'"),
        (lambda d: d["extra"]["flash_images"][1].__setitem__("offset", "-1"), "extra.flash_images[1].offset: bad flash offset '-1'"),
        (lambda d: d["extra"].__setitem__("application_offset", None), "extra.application_offset: bad flash offset None"),
    ],
)  # fmt: skip
def test_malformed_idedata_fields(tmp_path: Path, mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    project = materialize("pio-espidf-esp32", tmp_path / "p")
    idedata = project / ".pio" / "build" / "esp32dev" / "idedata.json"
    doc = json.loads(idedata.read_text())
    mutate(doc)
    idedata.write_text(json.dumps(doc))
    with pytest.raises(LayoutFileError) as exc:
        load_idedata(idedata)
    assert str(exc.value) == f"{idedata}: {message}"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("upload_speed = fast", "[env:esp32dev] upload_speed: expected a positive integer, got 'fast'"),
        ("monitor_speed = 0", "[env:esp32dev] monitor_speed: expected a positive integer, got '0'"),
        ("monitor_eol = NL", "[env:esp32dev] monitor_eol: expected CR, LF or CRLF, got 'NL'"),
        ("monitor_rts = yes", "[env:esp32dev] monitor_rts: expected 0 or 1, got 'yes'"),
        ("board_upload.after_reset = reboot", "[env:esp32dev] board_upload.after_reset: unknown --after mode 'reboot'"),
        ("upload_flags = --baud", "[env:esp32dev] upload_flags: --baud needs a value"),
        ("upload_flags = --chip 'esp32", "[env:esp32dev] upload_flags: cannot split"),
    ],
)  # fmt: skip
def test_malformed_platformio_ini_fields(tmp_path: Path, line: str, message: str) -> None:
    project = materialize("pio-espidf-esp32", tmp_path / "p")
    ini = project / "platformio.ini"
    ini.write_text(ini.read_text() + line + "\n")
    backend = detect_backend(project)
    with pytest.raises(LayoutFileError) as exc:
        backend.flash_settings()
        backend.monitor_settings()
    text = str(exc.value)
    assert text.startswith(f"{ini.resolve()}: {ini.resolve()} {message}"), text
    assert "\n" not in text


def test_malformed_platformio_ini_syntax(tmp_path: Path) -> None:
    (tmp_path / "platformio.ini").write_text("[env:x\nboard = esp32dev\n")
    with pytest.raises(FbuildError) as exc:
        detect_backend(tmp_path).command()
    assert str(exc.value).startswith(
        f"{tmp_path.resolve() / 'platformio.ini'}: malformed platformio.ini"
    )
    assert exc.value.exit_code == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("default_fqbn: [esp32\n", "malformed YAML"),
        ("default_fqbn: esp32-only\n", "default_fqbn: "),
        ("default_fqbn: 42\n", "default_fqbn must be a string, got 42"),
        ("default_profile: nope\n", "profile 'nope' is not defined under profiles:"),
        ("profiles:\n  a:\n    fqbn: esp32:esp32:esp32\n    port_config:\n      baudrate: fast\n"
         "default_profile: a\n", "profiles.a.port_config.baudrate: expected a positive integer"),
    ],
)  # fmt: skip
def test_malformed_sketch_yaml_fields(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "sketch.yaml").write_text(text)
    with pytest.raises(LayoutFileError) as exc:
        read_sketch_yaml(tmp_path / "sketch.yaml")
    assert str(exc.value).startswith(f"{tmp_path / 'sketch.yaml'}: {message}"), str(exc.value)
    assert "\n" not in str(exc.value)


def test_a_malformed_flasher_args_exits_2_in_one_line(tmp_path: Path) -> None:
    fa = _fa(tmp_path, extra_esptool_args__after="reboot")
    res = subprocess.run(
        [*FBUILD, "image", "info", str(fa)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip() == (
        f"fbuild: error: {fa}: extra_esptool_args.after: unknown --after mode 'reboot' "
        "(one of: hard-reset, soft-reset, no-reset, no-reset-stub, watchdog-reset)"
    )


def test_fbuild_toml_without_a_command_nor_a_build_system(tmp_path: Path) -> None:
    (tmp_path / "fbuild.toml").write_text('[lnk]\ndir = "res"\n')
    with pytest.raises(ConfigError) as exc:
        detect_backend(tmp_path)
    assert str(exc.value).startswith(
        f"{tmp_path.resolve() / 'fbuild.toml'}: [build] command is required (no ESP-IDF"
    )
