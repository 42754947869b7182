"""Config files: which files change a build's settings, that they are
watched, and that a build is recorded with the settings it was made with
(a malformed fbuild.toml written while watching is never recorded as built)."""

from __future__ import annotations

from pathlib import Path

from fbuild_watch.build.backends import detect_backend
from fbuild_watch.config import CONFIG_NAME
from fbuild_watch.watch.state import WatchSet
from tests.projectkit import materialize

TOML = """\
[build]
command = ["make"]
env = { CRASH = "0" }

[[flash]]
offset = 0x10000
file = "build/app.bin"

[watch]
paths = ["src"]
"""


def _project(tmp_path: Path) -> Path:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "main.c").write_text("int main(void) { return 0; }\n")
    (tmp_path / CONFIG_NAME).write_text(TOML)
    return tmp_path


def _scan(project: Path) -> tuple[WatchSet, str]:
    backend = detect_backend(project)
    ws = WatchSet(backend.project_dir, backend.ignore_rules(), paths=backend.watch_paths())
    ws.scan()
    return ws, ws.fingerprint_with(backend.settings_digests())


def test_fbuild_toml_is_watched_even_outside_watch_paths(tmp_path: Path) -> None:
    project = _project(tmp_path)
    backend = detect_backend(project)
    assert backend.watch_paths() == ["src", CONFIG_NAME]
    ws = WatchSet(backend.project_dir, backend.ignore_rules(), paths=backend.watch_paths())
    ws.scan()
    assert CONFIG_NAME in ws


def test_an_edit_outside_the_watch_paths_makes_the_next_start_rebuild(tmp_path: Path) -> None:
    project = _project(tmp_path)
    _ws, built = _scan(project)
    (project / CONFIG_NAME).write_text(TOML.replace('CRASH = "0"', 'CRASH = "1"'))
    _ws, now = _scan(project)
    assert now != built  # the README's crash demo: the next build uses CRASH=1


def test_a_malformed_fbuild_toml_is_never_recorded_as_built(tmp_path: Path) -> None:
    """While watching, fbuild.toml becomes malformed: the loop keeps the last
    good backend and builds with it. What is recorded is "built with the good
    fbuild.toml"; the malformed one is never recorded as built."""
    project = _project(tmp_path)
    backend = detect_backend(project)
    ws = WatchSet(backend.project_dir, backend.ignore_rules(), paths=backend.watch_paths())
    ws.scan()
    good = ws.fingerprint_with(backend.settings_digests())
    assert good == ws.fingerprint  # nothing differs from the disk yet
    toml = project / CONFIG_NAME
    toml.write_text("[build]\ncommand = 'not a list'\n")
    ws.mark([str(toml)])
    assert ws.refresh().changed == {CONFIG_NAME}
    # a build made now, with the last good backend, is recorded as made from it
    recorded = ws.fingerprint_with(backend.settings_digests())
    assert recorded == good
    assert ws.fingerprint != good  # not the malformed file on disk
    toml.write_text(TOML)  # fixed back: the recorded build is that one
    _ws, restart = _scan(project)
    assert restart == recorded
    toml.write_text(TOML.replace("make", "ninja"))  # fixed differently: a rebuild
    _ws, restart = _scan(project)
    assert restart != recorded


def test_settings_of_a_project_without_fbuild_toml(tmp_path: Path) -> None:
    project = materialize("idf-v5.3.1-esp32c6", tmp_path / "p")
    backend = detect_backend(project)
    assert backend.settings_digests() == {CONFIG_NAME: None}
    ws = WatchSet(backend.project_dir, backend.ignore_rules(), paths=backend.watch_paths())
    ws.scan()
    assert ws.fingerprint_with(backend.settings_digests()) == ws.fingerprint
    (project / CONFIG_NAME).write_text('[board]\nport = "sim://x"\n')  # created later
    ws.mark([str(project / CONFIG_NAME)])
    ws.refresh()
    assert ws.fingerprint_with(backend.settings_digests()) != ws.fingerprint


def _rel(backend_files: list[Path], root: Path) -> set[str]:
    return {p.resolve().relative_to(root.resolve()).as_posix() for p in backend_files}


def test_config_files_of_each_build_system(tmp_path: Path) -> None:
    idf = materialize("idf-v5.0.2-esp32s3-encrypted", tmp_path / "idf")
    (idf / "sdkconfig.defaults").write_text("")
    (idf / "sdkconfig.defaults.esp32s3").write_text("")
    files = _rel(detect_backend(idf).config_files(), idf)
    assert {CONFIG_NAME, "CMakeLists.txt", "sdkconfig", "sdkconfig.defaults",
            "sdkconfig.defaults.esp32s3", "partitions.csv", "main/CMakeLists.txt"} <= files  # fmt: skip

    pio = materialize("pio-espidf-esp32", tmp_path / "pio")
    files = _rel(detect_backend(pio).config_files(), pio)
    assert {CONFIG_NAME, "platformio.ini", "partitions_example.csv", "CMakeLists.txt",
            "sdkconfig.esp32dev"} <= files  # fmt: skip

    sketch = tmp_path / "ino"
    sketch.mkdir()
    (sketch / "Blink.ino").write_text("")
    (sketch / "sketch.yaml").write_text("default_fqbn: esp32:esp32:esp32c3\n")
    files = _rel(detect_backend(sketch).config_files(), sketch)
    assert {CONFIG_NAME, "sketch.yaml", "partitions.csv"} <= files


def test_explain_says_why_and_what_else(tmp_path: Path) -> None:
    project = materialize("pio-espidf-esp32", tmp_path / "p")
    info = detect_backend(project).explain()
    assert info["kind"] == "platformio"
    assert "framework = espidf" in info["reason"]
    assert info["command"][:2] == ["pio", "run"]
    assert any("esp-idf" in a for a in info["alternatives"])
    assert str(project.resolve() / "platformio.ini") in info["config_files"]
