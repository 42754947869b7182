"""Diagnostics from what real builds print (issue 16): GCC/Clang, GNU ld and
lld (undefined reference, region overflow, multiple definition), CMake,
ninja, make/SCons, PlatformIO, arduino-cli and idf.py, with file and line
where the tool names them; the output's last lines when no error is found;
a missing build tool named once, with the next step.

The logs are in tests/data/buildlogs/ (README.md there: where each is from);
one-line samples below name their origin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fbuild_watch.build import detect_backend, run_build
from fbuild_watch.build.diagnostics import Diagnostic, parse_line, parse_output
from fbuild_watch.build.output import BuildOutput
from fbuild_watch.build.runner import DETAIL_TAIL_LINES, BuildResult
from tests.clikit import run_fbuild

LOGS = Path(__file__).resolve().parent / "data" / "buildlogs"
ARDUINO = "C:/Users/[user]/AppData/Local/arduino/sketches"

# log -> the diagnostics it gives, in the compiler's form
EXPECTED: dict[str, list[str]] = {
    "gcc-ld-debug.log": [
        "/tmp/blink/src/other.c:1: error: multiple definition of `shared'; "
        "main.o:/tmp/blink/src/main.c:2: first defined here",
        "/tmp/blink/src/main.c:4: error: undefined reference to `foo' (in function `main')",
    ],
    "gcc-ld-nodebug.log": [
        "error: ld: other.o:(.data+0x0): multiple definition of `shared'; "
        "main.o:(.data+0x0): first defined here",
        "error: main.c:(.text+0x5): undefined reference to `foo' (in function `main')",
    ],
    "gcc-ld-overflow.log": [
        "error: ld: app.elf section `.iram0.text' will not fit in region `iram0_0_seg'",
        "error: ld: region `iram0_0_seg' overflowed by 600 bytes",
        "warning: ld: app.elf has a LOAD segment with RWX permissions",
    ],
    "zig-lld.log": [
        "src/main.c:4: error: undefined symbol: foo",
        "src/main.c:2: error: duplicate symbol: shared",
    ],
    "cmake-ninja-link.log": [
        "error: ld: CMakeFiles/app.dir/src/other.c.o:(.data+0x0): multiple definition of "
        "`shared'; CMakeFiles/app.dir/src/main.c.o:(.data+0x0): first defined here",
        "error: main.c:(.text+0x5): undefined reference to `foo' (in function `main')",
    ],
    "cmake-ninja-compile.log": [
        "/tmp/blink/src/main.c:1:25: error: ‘x’ undeclared (first use in this function)",
        "/tmp/blink/src/main.c:1:25: note: each undeclared identifier is reported only once "
        "for each function it appears in",
        "/tmp/blink/src/main.c:1:26: error: expected ‘;’ before ‘}’ token",
    ],
    "cmake-include.log": [
        "CMakeLists.txt:2: error: include could not find requested file: "
        "/tools/cmake/project.cmake",
    ],
    "make.log": [
        "Makefile.tabs:2: error: missing separator",
        "error: make: No rule to make target 'src/missing.c', needed by 'all'",
    ],
    "idf-undefined-app-main.log": [
        "error: ld: esp-idf/freertos/libfreertos.a(port_common.c.obj):(.literal.main_task+0x0): "
        "undefined reference to `app_main'",
        "H:/esp32/components/freertos/port/port_common.c:98: error: "
        "undefined reference to `app_main' (in function `main_task')",
    ],
    "idf-old-binutils.log": [  # ld says "In function" on a line of its own
        "error: esp-idf/esp32/libesp32.a(cpu_start.c.obj):(.literal.main_task+0x4): "
        "undefined reference to `app_main'",
        "C:/Users/user/Desktop/esp-idf/components/esp32/cpu_start.c:534: error: "
        "undefined reference to `app_main' (in function `main_task')",
    ],
    "arduino-iram-overflow.log": [
        "error: ld: C:\\Users\\[user]\\AppData\\Local\\arduino\\sketches\\"
        "3E0F2FC9B31501DD8C8FD69176C31B58/flocksquawk_m5stick.ino.elf section `.iram0.text' "
        "will not fit in region `iram0_0_seg'",
        "error: ld: IRAM0 segment data does not fit.",
        "error: ld: region `iram0_0_seg' overflowed by 1012 bytes",
    ],
    "pio-iram-overflow.log": [
        "error: ld: .pio/build/Marauder-v7/firmware.elf section `.iram0.text' will not fit in "
        "region `iram0_0_seg'",
        "error: ld: IRAM0 segment data does not fit.",
        "error: ld: region `iram0_0_seg' overflowed by 7048 bytes",
    ],
    "pio-gxx-createprocess.log": [
        "error: xtensa-esp32s3-elf-g++: CreateProcess: No such file or directory",
    ],
    "pio-unknown-board.log": ["error: Unknown board ID 'd1_mini_pro'"],
    "idf-cmake-errors.log": [
        "CMakeLists.txt:9: error: string no output variable specified",
        "CMakeLists.txt:13: error: string begin index: 9 is out of range 0 - 0",
        "CMakeLists.txt:14: error: string sub-command STRIP requires two arguments.",
        "CMakeLists.txt:15: error: string no output variable specified",
        "CMakeLists.txt:49: error: include could not find load file: "
        "E:/ESP32/esp-idf/examples/get-started/esp-at/esp-at/esp-idf/tools/cmake/project.cmake",
    ],
    "idf-cmake-unknown-command.log": [
        'CMakeLists.txt:85: error: Unknown CMake command "idf_build_set_property".',
    ],
    "idf-cmake-python-deps.log": [
        "C:/Users/Desktop/IDF/esp-idf-master/tools/cmake/build.cmake:271: error: Some Python "
        "dependencies must be installed.  Check above message for details.",
    ],
    "idf-cmake-warning.log": [
        "C:/Users/user/esp/esp-idf/tools/cmake/component.cmake:122: warning: Component "
        "directory C:/Users/user/esp/esp-idf/components/esp-idf-lib-master does not contain a "
        "CMakeLists.txt file.  No component will be added",
    ],
    "arduino-cli-platform.log": [
        "error: Error during build: Platform 'Arduino:avr' not found: platform not installed",
        "note: try running `arduino-cli core install Arduino:avr`",
    ],
    "lld-no-line.log": ["error: ld.lld: undefined symbol: errx"],
    "lld-cpp-line.log": [
        "main.cpp:48: error: undefined symbol: vsprintf",
        "main.cpp:51: error: undefined symbol: console",
    ],
    # nothing but the tools' summaries: they are all there is
    "idf-ninja-summary-only.log": [
        "error: ninja: build stopped: subcommand failed.",
        "error: ninja failed with exit code 1, output of the command is in the "
        "C:\\Espressif\\frameworks\\esp-idf-v5.5.2\\mimiclaw\\build\\log\\idf_py_stderr_output_69312"
        " and C:\\Espressif\\frameworks\\esp-idf-v5.5.2\\mimiclaw\\build\\log\\idf_py_stdout_out",
    ],
    "pio-failed-summary-only.log": ["error: PlatformIO: [FAILED] Took 1.94 seconds"],
}
SUMMARY_ONLY = {"idf-ninja-summary-only.log", "pio-failed-summary-only.log"}


def log_lines(name: str) -> list[str]:
    return (LOGS / name).read_text(encoding="utf-8").splitlines()


def test_every_log_is_listed() -> None:
    assert sorted(p.name for p in LOGS.glob("*.log")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_real_logs(name: str) -> None:
    diags = parse_output(log_lines(name))
    assert [d.format() for d in diags] == EXPECTED[name]
    assert all(d.summary for d in diags) == (name in SUMMARY_ONLY)
    for d in diags:  # a place is a file with a line, or none
        assert (d.file is None) == (d.line is None)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_streamed_output_finds_the_same(name: str) -> None:
    """BuildOutput parses only the lines that can matter (a build can print
    millions): streamed in odd chunks, the same diagnostics come out."""
    data = (LOGS / name).read_bytes()
    out = BuildOutput(None, None)
    for i in range(0, len(data), 7):
        out.feed(data[i : i + 7])
    out.close()
    assert out.diagnostics.result() == parse_output(log_lines(name))


# (line, its diagnostic in the compiler's form, a summary?, origin)
ONE_LINERS = [
    ("collect2.exe: error: ld returned 1 exit status",
     "error: collect2: ld returned 1 exit status", True,
     "https://github.com/bertmelis/VitoWiFi/issues/54"),
    ("*** [.pioenvs\\esp8266\\firmware.elf] Error 1",
     "error: *** [.pioenvs\\esp8266\\firmware.elf] Error 1", True,
     "https://github.com/bertmelis/VitoWiFi/issues/54"),
    ("scons: *** [.pioenvs/esp8266/firmware.elf] Error 1",
     "error: *** [.pioenvs/esp8266/firmware.elf] Error 1", True,
     "https://github.com/platformio/platformio-core/issues/119"),
    ("/Users/user/.platformio/packages/toolchain-xtensa/bin/../lib/gcc/xtensa-lx106-elf/4.8.2/"
     "../../../../xtensa-lx106-elf/bin/ld: cannot open linker script file "
     "/Users/user/.platformio/packages/ldscripts/esp8266.ld: No such file or directory",
     "error: ld: cannot open linker script file /Users/user/.platformio/packages/ldscripts/"
     "esp8266.ld: No such file or directory", False,
     "https://github.com/platformio/platformio-core/issues/119"),
    ("Error during build: exit status -1073741515",
     "error: Error during build: exit status -1073741515", True,
     "https://github.com/arduino/arduino-cli/issues/1142"),
    ("Compilation error: open /tmp/3625109955/sketch_merged.cpp: no such file or directory",
     "error: Compilation error: open /tmp/3625109955/sketch_merged.cpp: no such file or directory",
     False, "https://github.com/alexCajas/esp8266RTOSArduCore/issues/1"),
    ("UnknownBoard: Unknown board ID 'seeed_xiao_rp2040'",
     "error: UnknownBoard: Unknown board ID 'seeed_xiao_rp2040'", False,
     "https://github.com/sb-ocr/cad-mouse-mk2/issues/12"),
    ("ld.lld: error: kernel.ld:11: at least one side of the expression must be absolute",
     "kernel.ld:11: error: at least one side of the expression must be absolute", False,
     "https://github.com/llvm/llvm-project/issues/120019"),
    ("clang: error: linker command failed with exit code 1 (use -v to see invocation)",
     "error: clang: linker command failed with exit code 1 (use -v to see invocation)", True,
     "https://github.com/llvm/llvm-project/issues/54700"),
    ("make: *** [Makefile:229: build-GENERIC/firmware.elf] Error 1",
     "error: make: *** [Makefile:229: build-GENERIC/firmware.elf] Error 1", True,
     "https://github.com/thomas-riccardi/micropython-esp8266-bsec-bme680/pull/2"),
    ("xtensa-lx106-elf-ld: region `iram1_0_seg' overflowed by 20 bytes",
     "error: xtensa-lx106-elf-ld: region `iram1_0_seg' overflowed by 20 bytes", False,
     "https://github.com/thomas-riccardi/micropython-esp8266-bsec-bme680/pull/2"),
    ("ninja failed with exit code [1]", "error: ninja failed with exit code [1]", True,
     "https://github.com/espressif/esp-idf/issues/4038"),
    ("FAILED: mkfatfs_Jkearins.elf", "error: ninja: FAILED: mkfatfs_Jkearins.elf", True,
     "https://github.com/jkearins/ESP32_mkfatfs/issues/9"),
    # idf.py's form (tools/idf_py_actions/tools.py: yellow "HINT: " + a hint of hints.yml)
    ("\x1b[0;33mHINT: Run 'idf.py fullclean' and try the build again.\x1b[0m",
     "note: Run 'idf.py fullclean' and try the build again.", False,
     "https://github.com/espressif/esp-idf/blob/master/tools/idf_py_actions/hints.yml"),
    # made here: GNU ld and as 2.40, gcc 12.2.0, ninja 1.11.1, zig cc (ziglang 0.17.1)
    ("/usr/bin/ld:bad.ld:1: syntax error", "bad.ld:1: error: syntax error", False, "here"),
    ("/usr/bin/ld: cannot find -lnosuchlib: No such file or directory",
     "error: ld: cannot find -lnosuchlib: No such file or directory", False, "here"),
    ("bad.s:1: Error: no such instruction: `foo a0,a1'",
     "bad.s:1: error: no such instruction: `foo a0,a1'", False, "here"),
    ("g++: error: unrecognized command-line option ‘-mfoo-bar’",
     "error: g++: unrecognized command-line option ‘-mfoo-bar’", False, "here"),
    ("cc1plus: fatal error: missing.cpp: No such file or directory",
     "error: cc1plus: missing.cpp: No such file or directory", False, "here"),
    ('error: unknown clang option: "-mfoo"', 'error: unknown clang option: "-mfoo"', False, "here"),
    ("ninja: error: loading 'build.ninja': No such file or directory",
     "error: ninja: loading 'build.ninja': No such file or directory", False, "here"),
    ("ninja: fatal: chdir to 'nowhere' - No such file or directory",
     "error: ninja: chdir to 'nowhere' - No such file or directory", False, "here"),
]  # fmt: skip


@pytest.mark.parametrize(("line", "expected", "summary", "origin"), ONE_LINERS)
def test_one_liners(line: str, expected: str, summary: bool, origin: str) -> None:
    d = parse_line(line)
    assert d is not None, origin
    assert (d.format(), d.summary) == (expected, summary)


@pytest.mark.parametrize(
    "line",
    [
        "ninja: Entering directory `build'",
        "ninja: no work to do.",
        "[3/3] Linking C executable app",
        "-- Configuring done",
        "compilation terminated.",
        "/tmp/blink/src/main.c: In function ‘main’:",
        "     iram0_0_seg:      138120 B       128 KB    105.38%",
        "esp8266        FAILED    00:00:01.943",
        "make: *** Waiting for unfinished jobs....",
        "cc1: some warnings being treated as errors",
        "HARDWARE: ESP32C3 160MHz, 320KB RAM, 4MB Flash",
        "Compiling .pio/build/c3/src/main.cpp.o",
        "ar: creating libapp.a",
        "lnk: fetching assets/asset.bin.lnk (768 KiB) from https://example.com/a.bin",
        "fbuild: lnk: 2 files materialized",
    ],
)
def test_not_diagnostics(line: str) -> None:
    assert parse_line(line) is None


def test_summaries_only_when_nothing_specific() -> None:
    lines = log_lines("cmake-ninja-compile.log")
    assert not any(d.summary for d in parse_output(lines))  # "ninja: build stopped" is there
    only = [ln for ln in lines if not ln.startswith("/tmp/blink/src/main.c:")]
    assert [d.format() for d in parse_output(only)] == [
        "error: ninja: FAILED: CMakeFiles/app.dir/src/main.c.o",
        "error: ninja: build stopped: subcommand failed.",
    ]


def test_cmake_message_is_bounded_and_ends() -> None:
    """A CMake message is its indented lines; what comes after is parsed again."""
    lines = ["CMake Error at CMakeLists.txt:3 (message):", *["  " + "word " * 40] * 200]
    lines += ["src/main.c:1:2: error: after it"]
    diags = parse_output(lines)
    assert [d.file for d in diags] == ["CMakeLists.txt", "src/main.c"]
    assert len(diags[0].message) <= 500 and diags[1].message == "after it"


# -- builds that fail: what a person reads under the head line ------------------------
def project(root: Path, command: list[str], extra: str = "") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "src").mkdir(exist_ok=True)
    (root / "fbuild.toml").write_text(
        f'[build]\ncommand = {json.dumps(command)}\nflasher_args = "build/flasher_args.json"\n'
        + extra
    )
    return root


def script_project(root: Path, script: str) -> Path:
    return project(root, [sys.executable, "-c", script])


def test_linker_error_of_a_real_link_has_its_line(tmp_path: Path) -> None:
    """zig cc (clang and ld.lld, as the example builds) linking a call to a
    function that is nowhere: the diagnostic names the calling line."""
    root = project(tmp_path / "p", [sys.executable, "-m", "ziglang", "cc",
                   "-target", "riscv32-freestanding-none", "-g", "-nostdlib",
                   "-Wl,--entry=main", "src/main.c", "-o", "app.elf"])  # fmt: skip
    (root / "src" / "main.c").write_text(
        "extern void foo(void);\n\nint main(void) {\n    foo();\n    return 0;\n}\n"
    )
    result = run_build(detect_backend(root))
    assert not result.ok and result.exit_code not in (0, None)
    found = Diagnostic("src/main.c", 4, None, "error", "undefined symbol: foo")
    assert result.diagnostics == [found]
    assert result.details() == ["src/main.c:4: error: undefined symbol: foo"]


FAILING = (
    "import sys\n"
    "for i in range(30):\n"
    "    print(f'step {i}: \\x1b[31mstill going\\x1b[0m')\n"
    "print('the generator crashed without saying where')\n"
    "print('ninja: build stopped: subcommand failed.')\n"
    "print()\n"
    "sys.exit(3)\n"
)


def test_failed_build_without_an_error_shows_the_last_lines(tmp_path: Path) -> None:
    result = run_build(detect_backend(script_project(tmp_path / "p", FAILING)))
    assert not result.ok and result.exit_code == 3
    # the tool's summary is all that was found: JSON has it; a person gets the tail
    assert [d.format() for d in result.diagnostics] == [
        "error: ninja: build stopped: subcommand failed."
    ]
    log = tmp_path / "p" / ".fbuild" / "build.log"
    tail = [f"  step {i}: still going" for i in range(12, 30)]
    assert result.details() == [
        f"build: no error found in the output; its last {DETAIL_TAIL_LINES} lines "
        f"(all of it in {log.resolve()}):",
        *tail,
        "  the generator crashed without saying where",
        "  ninja: build stopped: subcommand failed.",
    ]


def test_details_of_other_results() -> None:
    diag = Diagnostic("src/a.c", 3, 5, "error", "boom")
    warn = Diagnostic("src/a.c", 1, None, "warning", "unused")
    out = [f"line {i}" for i in range(40)]

    def result(**kw: object) -> BuildResult:
        base: dict[str, object] = dict(ok=False, duration_s=1.0, exit_code=2, output=out,
                                       diagnostics=[])  # fmt: skip
        return BuildResult(**{**base, **kw})  # type: ignore[arg-type]

    assert result(diagnostics=[diag]).details() == ["src/a.c:3:5: error: boom"]
    tail = result(diagnostics=[warn]).details()  # a warning does not say why it failed
    assert tail[0] == "src/a.c:1: warning: unused" and tail[-1] == "  line 39"
    assert len(tail) == 2 + DETAIL_TAIL_LINES
    assert result(ok=True, exit_code=0, diagnostics=[warn]).details() == [
        "src/a.c:1: warning: unused"
    ]
    assert result(cancelled=True).details() == []
    assert result(exit_code=None).details() == []  # never ran: the error says why
    assert result(exit_code=0).details() == []  # built; the layout was wrong: the error says so
    assert result(exit_code=-15, timed_out=True).details()[-1] == "  line 39"
    assert result(output=["", ""]).details() == ["build: it printed nothing"]
    assert result(diagnostics=[warn]).details(tail=False) == ["src/a.c:1: warning: unused"]


# -- a missing build tool: one line, with the next step --------------------------------
@pytest.fixture
def no_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("IDF_PATH", raising=False)
    return empty


def build_quietly(root: Path) -> tuple[BuildResult, list[str]]:
    shown: list[str] = []
    result = run_build(detect_backend(root), shown.append)
    return result, shown


def test_missing_pio_is_said_once_with_the_next_step(tmp_path: Path, no_tools: Path) -> None:
    root = tmp_path / "pio"
    root.mkdir()
    (root / "platformio.ini").write_text("[env:c3]\nplatform = espressif32\nboard = x\n")
    result, shown = build_quietly(root)
    assert result.error == (
        "build failed: pio not found on PATH; "
        "install PlatformIO Core with `pip install platformio`, or put pio on PATH"
    )
    assert result.exit_code is None and not result.ok and not result.config_error
    assert shown == [] and result.details() == []  # the error says it, once
    log = (root / ".fbuild" / "build.log").read_text().splitlines()
    assert log == [f"fbuild: {result.error.removeprefix('build failed: ')}"]  # tried once


def test_missing_idf_py_names_export_sh(
    tmp_path: Path, no_tools: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "idf"
    root.mkdir()
    (root / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.16)\n"
        "include($ENV{IDF_PATH}/tools/cmake/project.cmake)\nproject(hello)\n"
    )
    said = "build failed: idf.py not found on PATH; run `. {}/export.sh` in this shell first, or "
    said += "put idf.py on PATH"
    result, shown = build_quietly(root)
    assert result.error == said.format("$IDF_PATH") and shown == []
    monkeypatch.setenv("IDF_PATH", "/opt/esp-idf")
    result, _ = build_quietly(root)
    assert result.error == said.format("/opt/esp-idf")


def test_missing_arduino_cli_names_its_install(tmp_path: Path, no_tools: Path) -> None:
    root = tmp_path / "Blink"
    root.mkdir()
    (root / "Blink.ino").write_text("void setup() {}\nvoid loop() {}\n")
    (root / "sketch.yaml").write_text("default_fqbn: esp32:esp32:esp32c3\n")
    result, shown = build_quietly(root)
    assert result.error == (
        "build failed: arduino-cli not found on PATH; install arduino-cli "
        "(https://arduino.github.io/arduino-cli/latest/installation/) and put it on PATH"
    )
    assert shown == []


def test_missing_command_points_at_fbuild_toml(tmp_path: Path, no_tools: Path) -> None:
    root = project(tmp_path / "p", ["fbuild-no-such-tool", "all"])
    result, shown = build_quietly(root)
    toml = root.resolve() / "fbuild.toml"
    assert result.error == (
        f"build failed: fbuild-no-such-tool not found on PATH; check [build] command in {toml}"
    )
    assert shown == []


def test_script_whose_interpreter_is_missing(tmp_path: Path) -> None:
    root = project(tmp_path / "p", ["./build.sh"])
    script = root / "build.sh"
    script.write_text("#!/nonexistent/interpreter\necho hi\n")
    script.chmod(0o755)
    result, _ = build_quietly(root)
    assert result.error == (
        "build failed: cannot run ./build.sh: the interpreter on its #! line was not found"
    )
    script.chmod(0o644)
    result, _ = build_quietly(root)
    assert result.error == "build failed: cannot run ./build.sh: Permission denied"


def test_fbuild_build_says_a_missing_tool_once(tmp_path: Path) -> None:
    root = tmp_path / "pio"
    root.mkdir()
    (root / "platformio.ini").write_text("[env:c3]\nplatform = espressif32\nboard = x\n")
    empty = tmp_path / "empty-path"
    empty.mkdir()
    env = {**os.environ, "PATH": str(empty)}
    res = run_fbuild("build", str(root), env=env)
    assert res.returncode == 1
    assert res.stderr.splitlines() == [
        "fbuild: error: build failed: pio not found on PATH; "
        "install PlatformIO Core with `pip install platformio`, or put pio on PATH"
    ]
    assert "not found" not in res.stdout
    res = run_fbuild("build", "--json", str(root), env=env)
    doc = json.loads(res.stdout)
    assert res.returncode == 1 and doc["exit_code"] is None
    assert doc["error"].startswith("build failed: pio not found on PATH; install PlatformIO")


def test_fbuild_build_prints_the_new_diagnostics(tmp_path: Path) -> None:
    """`fbuild build` ends with the errors found (before: nothing for ld's)."""
    lines = (LOGS / "gcc-ld-overflow.log").read_text().splitlines()
    script = "import sys\nprint(" + repr("\n".join(lines)) + ")\nsys.exit(1)\n"
    root = script_project(tmp_path / "p", script)
    res = subprocess.run([sys.executable, "-m", "fbuild_watch", "build", str(root)],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert res.returncode == 1
    assert res.stdout.splitlines()[-3:] == [
        "error: ld: app.elf section `.iram0.text' will not fit in region `iram0_0_seg'",
        "error: ld: region `iram0_0_seg' overflowed by 600 bytes",
        "warning: ld: app.elf has a LOAD segment with RWX permissions",
    ]
