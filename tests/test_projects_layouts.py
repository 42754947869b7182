"""Real ESP-IDF, PlatformIO and Arduino build outputs (tests/data/projects/,
each with its origin in a README): detected as the right kind of project,
loaded with the right files, offsets and chip, and with the flashing and
monitor settings the project's own tool would use (the esptool command
written beside each fixture)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fbuild_watch.build.backends import (
    ArduinoBackend,
    Backend,
    EspIdfBackend,
    PlatformIOBackend,
    detect_backend,
)
from fbuild_watch.image import APP, BOOTLOADER, OTADATA, PARTITION_TABLE
from fbuild_watch.image.info import layout_report, render_text
from fbuild_watch.image.layout import ValidatedLayout
from fbuild_watch.image.settings import esptool_command, resolve_flash, resolve_monitor
from tests.projectkit import PROJECTS, expected_command, materialize


@pytest.fixture(autouse=True)
def _no_installed_platformio(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Board manifests come only from what a test installs, never from a
    ~/.platformio on the machine running the tests; no ESPPORT/ESPBAUD."""
    monkeypatch.setenv("PLATFORMIO_CORE_DIR", str(tmp_path / "no-platformio"))
    for name in ("ESPPORT", "ESPBAUD", "IDF_MONITOR_BAUD", "MONITORBAUD"):
        monkeypatch.delenv(name, raising=False)
    yield


def _project(name: str, tmp_path: Path) -> Path:
    project = materialize(name, tmp_path / name)
    if name == "arduino-export":
        (project / "Fox_ESP32_FW.ino").write_text("void setup() {}\nvoid loop() {}\n")
    return project


def _command(backend: Backend, layout: ValidatedLayout) -> list[str]:
    """What fbuild's settings amount to, as an esptool 5 command line (files
    relative to the directory their layout file is in)."""
    flash = resolve_flash(layout.settings, environ={})
    src = layout.layout.source
    assert src is not None
    base = src.parent if src.is_file() else src
    regions = [(r.offset, r.source.relative_to(base).as_posix()) for r in layout.layout.regions]  # type: ignore[union-attr]
    return esptool_command(regions, flash, chip=layout.layout.chip)


IDF = {
    # fixture: chip, (region, offset) in offset order, flash size, app project name
    "idf-v4.4-esp32c3": ("esp32c3", [(BOOTLOADER, 0), (PARTITION_TABLE, 0x8000), (APP, 0x10000)], None, "hello_world"),
    "idf-v4.4.3-esp32-encrypted": ("esp32", [(BOOTLOADER, 0x1000), (PARTITION_TABLE, 0x10000), (APP, 0x20000)], None, "rsa_encrypt_decrypt"),
    "idf-v5.0.2-esp32s3-encrypted": ("esp32s3", [(BOOTLOADER, 0), (PARTITION_TABLE, 0x8000), (APP, 0x20000), ("storage", 0x120000)], 8 << 20, "wifi_softAP"),
    "idf-v5.1-esp32s2": ("esp32s2", [(BOOTLOADER, 0x1000), (PARTITION_TABLE, 0x8000), (APP, 0x10000)], 2 << 20, "read_rotary"),
    "idf-v5.3.1-esp32c6": ("esp32c6", [(BOOTLOADER, 0), (PARTITION_TABLE, 0x8000), (APP, 0x10000)], None, "SCD30_ZIGBEE"),
    "idf-v5.4-esp32": ("esp32", [(BOOTLOADER, 0x1000), (PARTITION_TABLE, 0x8000), (OTADATA, 0xE000), (APP, 0x20000)], 4 << 20, "esp32-lifecycle-manager"),
    "idf-v5.5.1-esp32p4": ("esp32p4", [(BOOTLOADER, 0x2000), (PARTITION_TABLE, 0x8000), (APP, 0x10000), (OTADATA, 0x310000)], None, "ENIP-Scale"),
    "idf-v6.0-esp32c5-handwritten": ("esp32c5", [(BOOTLOADER, 0x2000), (PARTITION_TABLE, 0x8000), (OTADATA, 0xD000), (APP, 0x10000)], 4 << 20, "secure_c5"),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(IDF))
def test_esp_idf_builds_load_as_idf_py_flashes_them(name: str, tmp_path: Path) -> None:
    project = _project(name, tmp_path)
    backend = detect_backend(project)
    assert isinstance(backend, EspIdfBackend)
    assert "includes project.cmake" in backend.reason
    validated = backend.load_layout().validate()
    chip, regions, size, app_name = IDF[name]
    assert validated.layout.chip == chip
    assert [(r.name, r.offset) for r in validated.layout.regions] == regions
    assert validated.layout.flash_size == size
    # the app descriptor is found on every chip (esptool's memory map of each)
    desc = validated.app_image.app_desc if validated.app_image else None
    assert desc is not None and desc.project_name == app_name
    assert validated.layout.elf == project / "build" / f"{app_name}.elf"
    assert _command(backend, validated) == expected_command(name)


def test_the_encrypted_build_knows_which_regions_are_encrypted(tmp_path: Path) -> None:
    project = _project("idf-v5.0.2-esp32s3-encrypted", tmp_path)
    validated = detect_backend(project).load_layout().validate()
    flash = resolve_flash(validated.settings, environ={})
    assert [r.name for r in validated.encrypted_regions()] == [BOOTLOADER, PARTITION_TABLE, APP]
    assert validated.layout.region("storage") is not None  # the one plaintext partition
    assert (flash.after, flash.stub, flash.resets_after_write) == ("no-reset", False, False)
    assert flash.flash_encryption == "development"  # from the project's sdkconfig
    fa = project / "build" / "flasher_args.json"
    assert flash.origins["stub"] == f"{fa} extra_esptool_args.stub"
    assert flash.origins["encrypted"].startswith(str(fa))
    assert (
        flash.origins["flash_encryption"]
        == f"{project / 'sdkconfig'} CONFIG_SECURE_FLASH_ENC_ENABLED"
    )


@pytest.mark.parametrize(
    ("name", "baud"),
    [("idf-v5.3.1-esp32c6", 115200), ("idf-v6.0-esp32c5-handwritten", 460800)],
)
def test_esp_idf_monitor_baud_is_project_description_monitor_baud(
    name: str, baud: int, tmp_path: Path
) -> None:
    project = _project(name, tmp_path)
    monitor = resolve_monitor(detect_backend(project).monitor_settings(), environ={})
    assert monitor.baud == baud
    desc = project / "build" / "project_description.json"
    assert monitor.origins["baud"] == f"{desc} monitor_baud"


def test_sdkconfig_console_baud_before_the_first_build(tmp_path: Path) -> None:
    """No build yet (no project_description.json): the sdkconfig's console baud."""
    project = _project("idf-v5.0.2-esp32s3-encrypted", tmp_path)
    (project / "build" / "project_description.json").unlink()
    sdk = project / "sdkconfig"
    text = sdk.read_text().replace(
        "CONFIG_ESPTOOLPY_MONITOR_BAUD=115200", "CONFIG_ESPTOOLPY_MONITOR_BAUD=230400"
    )
    sdk.write_text(text)
    monitor = resolve_monitor(detect_backend(project).monitor_settings(), environ={})
    assert (monitor.baud, monitor.origins["baud"]) == (
        230400,
        f"{sdk} CONFIG_ESPTOOLPY_MONITOR_BAUD",
    )


def test_an_idf_py_build_dir_other_than_build_is_found(tmp_path: Path) -> None:
    """`idf.py -B build-c6`: the dir whose project_description.json names
    this project is the build dir (a copy of another project's is not)."""
    project = _project("idf-v5.3.1-esp32c6", tmp_path)
    (project / "build").rename(project / "build-c6")
    desc_path = project / "build-c6" / "project_description.json"
    desc = json.loads(desc_path.read_text())
    foreign = dict(desc, project_path="C:/Users/someone/else")
    (project / "other").mkdir()
    (project / "other" / "flasher_args.json").write_text(
        (project / "build-c6" / "flasher_args.json").read_text()
    )
    (project / "other" / "project_description.json").write_text(json.dumps(foreign))
    desc["project_path"] = str(project)
    desc_path.write_text(json.dumps(desc))
    backend = detect_backend(project)
    assert isinstance(backend, EspIdfBackend)
    assert backend.output_dirs() == [project.resolve() / "build-c6"]
    assert backend.command()[-3:] == ["-B", str(project.resolve() / "build-c6"), "build"]
    layout = backend.load_layout().validate()
    assert layout.layout.source == project.resolve() / "build-c6" / "flasher_args.json"


def test_build_dir_from_fbuild_toml(tmp_path: Path) -> None:
    project = _project("idf-v5.1-esp32s2", tmp_path)
    (project / "build").rename(project / "out-s2")
    (project / "fbuild.toml").write_text('[build]\ndir = "out-s2"\n\n[board]\nbaud = 921600\n')
    backend = detect_backend(project)
    assert isinstance(backend, EspIdfBackend) and backend.config is not None
    layout = backend.load_layout().validate()
    assert layout.layout.chip == "esp32s2"
    flash = resolve_flash(layout.settings, config=backend.config.flash_layer(), environ={})
    assert (flash.baud, flash.origins["baud"]) == (
        921600,
        f"{project / 'fbuild.toml'} [board] baud",
    )


# -- PlatformIO -------------------------------------------------------------------------
def test_platformio_arduino_s3(tmp_path: Path) -> None:
    project = _project("pio-arduino-esp32s3", tmp_path)
    backend = detect_backend(project)
    assert isinstance(backend, PlatformIOBackend)
    layout = backend.load_layout().validate()
    env = project / ".pio" / "build" / "esp32-s3-devkitc-1"
    # idedata.json's Windows paths name files that are in the env dir here
    assert [(r.name, r.offset, r.source) for r in layout.layout.regions] == [
        (BOOTLOADER, 0, env / "bootloader.bin"),
        (PARTITION_TABLE, 0x8000, env / "partitions.bin"),
        (OTADATA, 0xE000, env / "boot_app0.bin"),
        (APP, 0x10000, env / "firmware.bin"),
    ]
    assert layout.layout.elf == env / "firmware.elf"
    assert _command(backend, layout) == expected_command("pio-arduino-esp32s3")
    flash = resolve_flash(layout.settings, environ={})
    ini = project / "platformio.ini"
    assert flash.origins["baud"] == f"{ini} [env:esp32-s3-devkitc-1] upload_speed"
    monitor = resolve_monitor(backend.monitor_settings(), environ={})
    assert (monitor.baud, monitor.port) == (115200, "/dev/cu.usbmodem144101")
    assert monitor.origins["port"] == f"{ini} [env:esp32-s3-devkitc-1] monitor_port"


def test_platformio_espidf_is_platformio_not_esp_idf(tmp_path: Path) -> None:
    """framework = espidf: its CMakeLists.txt includes project.cmake, yet
    the project is built with `pio run` (and there is no build/ to look in)."""
    project = _project("pio-espidf-esp32", tmp_path)
    backend = detect_backend(project)
    assert isinstance(backend, PlatformIOBackend)
    assert backend.command()[:2] == ["pio", "run"]
    assert "framework = espidf" in backend.reason
    assert any('system = "esp-idf"' in alt for alt in backend.alternatives)
    layout = backend.load_layout().validate()
    assert _command(backend, layout) == expected_command("pio-espidf-esp32")
    monitor = resolve_monitor(backend.monitor_settings(), environ={})
    assert monitor.origins["baud"] == f"{project / 'platformio.ini'} [env] monitor_speed"
    assert monitor.warnings == ()  # monitor_filters = direct is what fbuild does anyway


def test_platformio_espidf_before_idedata_prepares_it(tmp_path: Path) -> None:
    project = _project("pio-espidf-esp32-idf43", tmp_path)
    backend = detect_backend(project)
    assert isinstance(backend, PlatformIOBackend)
    assert backend.prepare() == [
        "pio", "run", "-d", str(project.resolve()), "-e", "esp32dev", "-t", "idedata",
    ]  # fmt: skip
    monitor = resolve_monitor(backend.monitor_settings(), environ={})
    flash = resolve_flash(backend.flash_settings(), environ={})
    assert (monitor.port, flash.ports) == ("COM5", ("COM5",))


def test_platformio_board_manifest_when_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An installed espressif32 platform's board JSON supplies the chip, the
    upload baud and the flash size when platformio.ini does not."""
    core = tmp_path / "core"
    boards = core / "platforms" / "espressif32" / "boards"
    boards.mkdir(parents=True)
    for f in (PROJECTS / "pio-boards" / "boards").iterdir():
        (boards / f.name).write_bytes(f.read_bytes())
    monkeypatch.setenv("PLATFORMIO_CORE_DIR", str(core))
    project = _project("pio-espidf-esp32", tmp_path)
    backend = detect_backend(project)
    layout = backend.load_layout().validate()
    flash = resolve_flash(layout.settings, environ={})
    manifest = boards / "esp32dev.json"
    assert (flash.chip, flash.baud) == ("esp32", 460800)
    assert flash.origins["baud"] == f"{manifest} baud"
    assert layout.layout.flash_size == 4 << 20  # esp32dev.json upload.flash_size
    s3 = _project("pio-arduino-esp32s3", tmp_path)
    s3_flash = resolve_flash(detect_backend(s3).load_layout().settings, environ={})
    assert s3_flash.baud == 1500000  # upload_speed beats the manifest's 921600
    assert s3_flash.chip == "esp32s3"


# -- Arduino ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("fqbn", "chip", "boot", "baud"),
    [
        ("esp32:esp32:esp32", "esp32", 0x1000, 115200),
        ("esp32:esp32:esp32c3", "esp32c3", 0x0, 921600),
        ("esp32:esp32:esp32c5", "esp32c5", 0x2000, 921600),
    ],
)
def test_arduino_export_layout(fqbn: str, chip: str, boot: int, baud: int, tmp_path: Path) -> None:
    project = _project("arduino-export", tmp_path)
    backend = detect_backend(project, fqbn=fqbn)
    assert isinstance(backend, ArduinoBackend)
    layout = backend.load_layout().validate()
    export = project.resolve() / "build" / fqbn.replace(":", ".")
    assert layout.layout.source == export
    assert layout.layout.chip == chip
    assert [(r.name, r.offset) for r in layout.layout.regions] == [
        (BOOTLOADER, boot), (PARTITION_TABLE, 0x8000), (OTADATA, 0xE000), (APP, 0x10000)
    ]  # fmt: skip
    flash = resolve_flash(layout.settings, environ={})
    assert flash.baud == baud  # the FQBN's UploadSpeed menu option
    assert flash.origins["baud"] == f"{export / 'build.options.json'} fqbn UploadSpeed"
    if chip == "esp32c3":
        assert _command(backend, layout) == expected_command("arduino-export")


def test_arduino_export_alone_is_a_project(tmp_path: Path) -> None:
    """No sketch.yaml, no --fqbn: one exported build says the FQBN."""
    project = _project("arduino-export", tmp_path)
    for other in ("esp32.esp32.esp32", "esp32.esp32.esp32c5"):
        for f in (project / "build" / other).iterdir():
            f.unlink()
        (project / "build" / other).rmdir()
    backend = detect_backend(project)
    assert isinstance(backend, ArduinoBackend)
    assert "exported build" in backend.reason
    assert backend.command()[3] == "esp32:esp32:esp32c3"
    assert backend.load_layout().validate().layout.chip == "esp32c3"


def test_arduino_prefers_the_newest_of_its_own_build_and_the_export(tmp_path: Path) -> None:
    project = _project("arduino-export", tmp_path)
    backend = detect_backend(project, fqbn="esp32:esp32:esp32c3")
    ours = project.resolve() / "build" / "arduino"
    materialize("arduino-export", tmp_path / "copy")
    (ours).mkdir(parents=True)
    src = tmp_path / "copy" / "build" / "esp32.esp32.esp32c3"
    for f in src.iterdir():
        (ours / f.name).write_bytes(f.read_bytes())
    app = ours / "Fox_ESP32_FW.ino.bin"
    exported = project.resolve() / "build" / "esp32.esp32.esp32c3"
    t = (exported / "Fox_ESP32_FW.ino.bin").stat().st_mtime_ns
    os.utime(app, ns=(t + 10**9, t + 10**9))
    assert backend.load_layout().source == ours
    os.utime(exported / "Fox_ESP32_FW.ino.bin", ns=(t + 2 * 10**9, t + 2 * 10**9))
    assert backend.load_layout().source == exported  # exported again from the IDE


def test_every_fixture_has_a_readme_naming_its_origin() -> None:
    for d in (p for p in PROJECTS.iterdir() if p.is_dir()):
        text = (d / "README.md").read_text()
        assert "Licence:" in text, d
        assert "Repository: github:" in text or "HAND-WRITTEN" in text, d


def test_arduino_extra_images_from_flash_args_and_boards_txt(tmp_path: Path) -> None:
    """Extra images the build writes into its own flash_args (tinyuf2 on
    Adafruit S2/S3 boards) are flashed; so are boards.txt upload.extra_flags
    images when the build's platform is installed here, with its upload.speed."""
    project = _project("arduino-export", tmp_path)
    export = project / "build" / "esp32.esp32.esp32c3"
    (export / "flash_args").write_text(
        (export / "flash_args").read_text() + "0x2d0000 tinyuf2.bin\n"
    )
    (export / "tinyuf2.bin").write_bytes(b"\x00" * 0x1000)
    platform = tmp_path / "hardware" / "esp32" / "3.3.11"
    (platform / "variants" / "c3uf2").mkdir(parents=True)
    (platform / "variants" / "c3uf2" / "srmodels.bin").write_bytes(b"\x01" * 0x2000)
    (platform / "boards.txt").write_text(
        "esp32c3.name=ESP32C3 Dev Module\n"
        "esp32c3.build.variant=c3uf2\n"
        "esp32c3.upload.speed=460800\n"
        'esp32c3.upload.extra_flags=0x310000 "{runtime.platform.path}/variants/{build.variant}/srmodels.bin"\n'
        "esp32c3.menu.UploadSpeed.921600.upload.speed=921600\n"
    )
    options = json.loads((export / "build.options.json").read_text())
    options["hardwareFolders"] = str(platform)
    (export / "build.options.json").write_text(json.dumps(options))
    layout = detect_backend(project, fqbn="esp32:esp32:esp32c3").load_layout().validate()
    extra = [
        (r.name, r.offset, r.source) for r in layout.layout.regions if r.name.startswith("extra")
    ]
    assert extra == [
        ("extra@0x2d0000", 0x2D0000, export / "tinyuf2.bin"),
        ("extra@0x310000", 0x310000, platform / "variants" / "c3uf2" / "srmodels.bin"),
    ]
    flash = resolve_flash(layout.settings, environ={})
    assert flash.baud == 921600  # the FQBN's UploadSpeed=921600 menu choice in boards.txt
    assert flash.origins["baud"] == f"{platform / 'boards.txt'} upload.speed"


def test_image_info_reports_settings_and_revisions(tmp_path: Path) -> None:
    project = _project("idf-v5.0.2-esp32s3-encrypted", tmp_path)
    layout = detect_backend(project).load_layout()
    report, validated = layout_report(layout)
    assert validated is not None
    fa = project / "build" / "flasher_args.json"
    assert report["flash_settings"]["after"] == {
        "value": "no-reset", "from": f"{fa} extra_esptool_args.after"
    }  # fmt: skip
    assert report["flash_settings"]["stub"]["value"] is False
    assert [r["name"] for r in report["regions"] if r["encrypted"]] == [
        "bootloader",
        "partition-table",
        "app",
    ]
    app = next(r for r in report["regions"] if r["name"] == "app")
    assert (app["image"]["min_chip_rev"], app["image"]["max_chip_rev"]) == ("v0.0", None)
    text = render_text(report)
    assert "flashing:   before default-reset, after no-reset, no stub, 460800 baud" in text
    assert "encrypted:  bootloader, partition-table, app (never written in plaintext)" in text


def test_platformio_ini_beside_an_idf_py_build_and_no_pio_build(tmp_path: Path) -> None:
    """A project built with idf.py (build/ holds its build, there is no
    .pio/build) that also has a platformio.ini is built with idf.py; once
    PlatformIO has built it, with pio. Either way the other is explained."""
    project = _project("idf-v5.3.1-esp32c6", tmp_path)
    (project / "platformio.ini").write_text(
        "[env:c6]\nplatform = espressif32\nframework = espidf\n"
    )
    backend = detect_backend(project)
    assert isinstance(backend, EspIdfBackend)
    assert "no .pio/build" in backend.reason
    assert any('system = "platformio"' in alt for alt in backend.alternatives)
    (project / ".pio" / "build").mkdir(parents=True)
    assert isinstance(detect_backend(project), PlatformIOBackend)


def test_arduino_fqbn_option_beats_sketch_yaml_for_upload_speed(tmp_path: Path) -> None:
    (tmp_path / "Blink.ino").write_text("")
    (tmp_path / "sketch.yaml").write_text(
        "default_fqbn: esp32:esp32:esp32c3:UploadSpeed=115200\ndefault_port: /dev/ttyUSB7\n"
    )
    flash = resolve_flash(detect_backend(tmp_path).flash_settings(), environ={})
    assert (flash.baud, flash.ports) == (115200, ("/dev/ttyUSB7",))
    backend = detect_backend(tmp_path, fqbn="esp32:esp32:esp32c3:UploadSpeed=921600")
    flash = resolve_flash(backend.flash_settings(), environ={})
    assert (flash.baud, flash.origins["baud"], flash.ports) == (
        921600, "--fqbn UploadSpeed", ("/dev/ttyUSB7",)
    )  # fmt: skip


def test_image_info_finds_exports_and_build_dirs(tmp_path: Path) -> None:
    from fbuild_watch.errors import ImageError
    from fbuild_watch.image.loaders import find_layout_file, load_layout

    project = _project("arduino-export", tmp_path)
    with pytest.raises(
        ImageError, match=r"several flash layouts found \(build/esp32\.esp32\.esp32"
    ):
        find_layout_file(project)
    only = project / "build" / "esp32.esp32.esp32c5"
    assert load_layout(only).chip == "esp32c5"
    idf = _project("idf-v5.1-esp32s2", tmp_path)
    (idf / "build").rename(idf / "cmake-build")
    assert find_layout_file(idf) == idf / "cmake-build" / "flasher_args.json"
