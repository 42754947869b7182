"""Diagnostics out of build output: GCC/Clang and GNU as, GNU ld and lld,
CMake, ninja, make and SCons, PlatformIO, arduino-cli and idf.py, each in
the compiler's form (`file:line[:col]: severity: message`) where the tool
names a place in a file, else `severity: message`.

A tool's summary of a failure it reported above ("ninja: build stopped",
"collect2: error: ld returned 1 exit status", "*** [...] Error 1", "Error
during build: exit status 1") is kept only when nothing more specific was
found: then it is all there is (and the view adds the output's last lines,
`BuildResult.details`)."""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass, field

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
MAX_LINE = 4096  # a longer line is not a diagnostic (the fuzz tests feed megabytes)
_MAX_MESSAGE = 500  # a CMake message gathered from its indented lines
_MAX_CONTINUATION = 50  # lines a diagnostic's continuation may take
_SUMMARIES = 5

# Bytes that every line parsed below contains (output.BuildOutput decodes and
# parses only those lines: a build can print millions).
WORDS = re.compile(
    rb"rror|RROR|arning|note|fatal|undefined|multiple definition|first defined|overflow|fit"
    rb"|n function|cannot|ld:|ld\.exe:|stopped|FAILED|failed|\*\*\*|HINT|Try running|Unknown"
)

# file:line:col: severity: message (no column: old GCC, GNU as)
_DIAG = re.compile(
    r"^(?P<file>(?:[A-Za-z]:)?[^:\s][^:]*?):(?P<line>\d+):(?:(?P<col>\d+):)?\s*"
    r"(?P<sev>fatal error|error|warning|note|Error|Warning):\s*(?P<msg>.*)$"
)
# a toolchain program's own line: "/path/riscv32-esp-elf-ld: ...", "ld.lld: error: ...",
# "collect2.exe: error: ...", "xtensa-esp32-elf-g++: error: ..." (GNU ld has no space
# after its name before a linker script's "file:line:")
_TOOL = re.compile(
    r"^(?:[A-Za-z]:)?(?:[^\s:]*[/\\])?"
    r"(?P<tool>(?:[\w.+]+-)*(?:ld|ld\.bfd|ld\.gold|ld\.lld|lld|collect2|cc1|cc1plus|cc|gcc|"
    r"g\+\+|c\+\+|clang|clang\+\+|as|ar|objcopy|ninja|zig|fbuild)(?:-\d+(?:\.\d+)*)?)"
    r"(?:\.exe)?:[ ]?(?P<rest>\S.*)$"
)
_SEVERITY = {"fatal error": "error", "fatal": "error", "Error": "error", "Warning": "warning"}
_SEV = re.compile(r"^(?P<sev>fatal error|error|warning|note|fatal):\s*(?P<msg>.*)$")
_LOCATED = re.compile(
    r"^(?P<file>(?:[A-Za-z]:[/\\])?[^:\s()][^:()]*?):(?P<line>\d+):\s*(?P<msg>.+)$"
)
_LOC = re.compile(r"(?P<file>(?:[A-Za-z]:[/\\])?[^:()]+?):(?P<line>\d+)")
# GNU ld's link errors: the location (object, section, source file:line) comes first
_LINK = re.compile(
    r"^(?P<loc>.+?):\s*(?P<msg>(?:undefined reference to|multiple definition of|"
    r"more undefined references to|relocation truncated to fit|dangerous relocation|"
    r"first defined here)\b.*)$"
)
_IN_FUNCTION = re.compile(r"^(?P<obj>.*?):?\s*in function (?P<fn>.+?):\s*$")
# binutils before 2.32: "lib.a(x.o): In function `f':" without ld's name (GCC's own
# "x.c: In function 'f':" is followed by its diagnostics, which do not use it)
_IN_FUNCTION_OLD = re.compile(r"^(?P<obj>\S.*?): In function (?P<fn>.+?):\s*$")
_LLD_OPEN = re.compile(r"^(?:undefined (?:hidden |protected )?symbol|duplicate symbol): ")
_LLD_AT = re.compile(
    r"^>>> (?:referenced by|defined at) (?P<short>\S+?)(?::(?P<line>\d+))?"
    r"(?: \((?P<full>.+):(?P<fline>\d+)\))?(?: in archive .*)?$"
)
_CMAKE_AT = re.compile(
    r"^CMake (?P<sev>Error|Warning|Deprecation Warning|Deprecation Error)(?: \(dev\))?"
    r" (?:at|in) (?P<where>.+):$"
)
_CMAKE = re.compile(
    r"^CMake (?P<sev>Error|Warning|Deprecation Warning|Deprecation Error)(?: \(dev\))?:"
    r"\s*(?P<msg>.*)$"
)
# (no lazy group before an open-ended one: a crafted 4 KiB line must not take seconds)
_CMAKE_WHERE = re.compile(r"^(?P<file>.+?):(?P<line>\d+)(?: \((?P<cmd>[^()]*)\))?$")
_MAKEFILE = re.compile(r"^(?P<file>[^:\s][^:]*):(?P<line>\d+): \*\*\* (?P<msg>.*\S)\s+Stop\.$")
_MAKE = re.compile(r"^(?:\S*/)?g?make(?:\.exe)?(?:\[\d+\])?: \*\*\* (?P<rest>.+)$")
_SCONS = re.compile(r"^(?:scons: )?\*\*\* \[(?P<target>[^\]]+)\] (?P<msg>.+)$")
_ERROR_N = re.compile(r"^(?:\[.*\] )?Error -?\d+(?: \(ignored\))?$")
_NINJA_FAILED = re.compile(r"^FAILED: (?:\[code=-?\d+\] )?(?P<target>.*\S)")
_PIO_RESULT = re.compile(r"^=+ \[(?P<status>FAILED|ERROR)\] (?P<msg>Took .+?) =+$")
_TOOL_ERROR = re.compile(r"^(?P<what>Error [a-z][a-z ]*?|Compilation error): (?P<msg>.+)$")
_EXIT_STATUS = re.compile(r"^exit status -?\d+$")
_PLAIN_ERROR = re.compile(r"^Error: (?P<msg>.+)$")
_EXCEPTION = re.compile(
    r"^(?P<exc>[A-Z][A-Za-z0-9]*(?:Error|Exception)|Unknown[A-Z][A-Za-z0-9]*): (?P<msg>.+)$"
)
_EXIT_CODE = re.compile(r"^(?P<tool>[\w.+-]+) failed with exit code (?:-?\d+|\[-?\d+\])")
_HINT = re.compile(r"^HINT: (?P<msg>.+)$")
_TRY = re.compile(r"^Try running (?P<cmd>`[^`]+`)$")
_BARE = re.compile(r"^(?P<sev>fatal error|error|warning): (?P<msg>.+)$")


@dataclass(frozen=True)
class Diagnostic:
    file: str | None  # with `line` always (a place without a line stays in the message)
    line: int | None
    column: int | None
    severity: str  # "error", "warning", "note"
    message: str
    # a tool's summary of a failure reported elsewhere (see the module's doc)
    summary: bool = False

    def format(self) -> str:
        """The compiler's own form, which editors and terminals link."""
        if self.file is None:
            return f"{self.severity}: {self.message}"
        loc = f"{self.file}:{self.line}"
        if self.column is not None:
            loc += f":{self.column}"
        return f"{loc}: {self.severity}: {self.message}"

    def as_dict(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "severity": self.severity,
            "message": self.message,
        }


def _error(message: str, *, summary: bool = False) -> Diagnostic:
    return Diagnostic(None, None, None, "error", message, summary)


@dataclass
class _Open:
    """A diagnostic its next lines complete: CMake's indented message,
    lld's `>>> referenced by file:line`."""

    kind: str  # "cmake" or "lld"
    diag: Diagnostic  # as it stands when nothing follows
    message: str = ""
    file: str | None = None
    line: int | None = None
    parts: list[str] = field(default_factory=list)
    lines: int = 0

    def close(self) -> Diagnostic:
        d = self.diag
        if self.kind == "cmake" and self.parts:
            text = " ".join(self.parts)
            if len(text) > _MAX_MESSAGE:
                text = text[: _MAX_MESSAGE - 3] + "..."
            msg = f"{self.message}: {text}" if self.message else text
            return Diagnostic(d.file, d.line, None, d.severity, msg)
        if self.kind == "lld" and self.file is not None:
            return Diagnostic(self.file, self.line, None, d.severity, self.message)
        return d


def _clean(text: str) -> str | None:
    if len(text) > MAX_LINE + 64:  # a pathological line is not a diagnostic
        return None
    line = _ANSI.sub("", text).rstrip("\r\n")
    return line if len(line) <= MAX_LINE else None


def _place(loc: str) -> tuple[str, int] | None:
    """`file:line` at the end of GNU ld's location (`obj.o:/src/a.c:12`,
    `lib.a(a.c.obj):C:/src/a.c:12`); None for `a.c:(.text+0x12)`."""
    loc = loc.strip()
    start = 0
    while True:
        m = _LOC.fullmatch(loc, start)
        if m:
            return m["file"], int(m["line"])
        start = loc.find(":", start) + 1
        if start == 0:
            return None


def _link_error(loc: str, msg: str, tool: str | None, function: str | None) -> Diagnostic:
    sev = "note" if msg.startswith("first defined here") else "error"
    if function is not None and not msg.startswith("first defined"):
        msg += f" (in function {function})"
    place = _place(loc)
    if place is not None:
        return Diagnostic(place[0], place[1], None, sev, msg)
    where = f"{tool}: {loc}" if tool else loc
    return Diagnostic(None, None, None, sev, f"{where}: {msg}")


def _parse(line: str, function: str | None = None) -> Diagnostic | _Open | str | None:
    """One line: a diagnostic, one its next lines complete (_Open), or the
    name of the function GNU ld says the next line's error is in (str)."""
    if m := _DIAG.match(line):
        sev = _SEVERITY.get(m["sev"], m["sev"])
        col = int(m["col"]) if m["col"] else None
        return Diagnostic(m["file"], int(m["line"]), col, sev, m["msg"].strip())
    if m := _TOOL.match(line):
        return _tool_line(m["tool"], m["rest"].rstrip(), function)
    if m := _LINK.match(line):
        return _link_error(m["loc"], m["msg"].rstrip(), None, function)
    if m := _IN_FUNCTION_OLD.match(line):
        return m["fn"]
    if line.startswith("CMake "):
        return _cmake(line)
    if m := _MAKEFILE.match(line):
        return Diagnostic(m["file"], int(m["line"]), None, "error", m["msg"].rstrip("."))
    return _summary_or_tool_error(line)


def _tool_line(tool: str, rest: str, function: str | None) -> Diagnostic | _Open | str | None:
    if m := _SEV.match(rest):
        sev = "error" if m["sev"].startswith("fatal") else m["sev"]
        msg = m["msg"].strip()
        if tool == "collect2" and msg.startswith("ld returned"):
            return _error(f"{tool}: {msg}", summary=True)
        if tool.startswith("clang") and msg.startswith("linker command failed"):
            return _error(f"{tool}: {msg}", summary=True)
        if _LLD_OPEN.match(msg):
            return _Open("lld", Diagnostic(None, None, None, sev, f"{tool}: {msg}"), msg)
        if at := _LOCATED.match(msg):  # lld on a linker script: "ld.lld: error: x.ld:3: ..."
            return Diagnostic(at["file"], int(at["line"]), None, sev, at["msg"])
        return Diagnostic(None, None, None, sev, f"{tool}: {msg}")
    if tool == "ninja":
        return _error(f"ninja: {rest}", summary=True) if rest.startswith("build stopped") else None
    if not (tool == "ld" or tool.endswith(("-ld", "ld.bfd", "ld.gold"))):
        return None  # "cc1: some warnings being treated as errors", fbuild's own lines
    # GNU ld says most errors without "error:"
    if m := _IN_FUNCTION.match(rest):
        return m["fn"]
    if m := _LINK.match(rest):
        return _link_error(m["loc"], m["msg"], tool, function)
    if m := _LOCATED.match(rest):  # a linker script's "x.ld:3: syntax error"
        return Diagnostic(m["file"], int(m["line"]), None, "error", m["msg"])
    return _error(f"{tool}: {rest}")


def _cmake(line: str) -> Diagnostic | _Open | None:
    if m := _CMAKE_AT.match(line):
        sev = "error" if m["sev"].endswith("Error") else "warning"
        where = _CMAKE_WHERE.match(m["where"])
        if where:
            head = Diagnostic(where["file"], int(where["line"]), None, sev, f"({where['cmd']})")
            return _Open("cmake", head)
        # "CMake Error in CMakeLists.txt:" has no line: the file stays in the message
        head = Diagnostic(None, None, None, sev, f"CMake: {m['where']}")
        return _Open("cmake", head, head.message)
    if m := _CMAKE.match(line):
        sev = "error" if m["sev"].endswith("Error") else "warning"
        msg = m["msg"].strip()
        head = Diagnostic(None, None, None, sev, f"CMake: {msg}" if msg else "CMake")
        return _Open("cmake", head, head.message)
    return None


def _summary_or_tool_error(line: str) -> Diagnostic | None:
    if m := _MAKE.match(line):
        rest = m["rest"].strip()
        if rest.startswith("Waiting for unfinished jobs"):
            return None
        if _ERROR_N.match(rest):
            return _error(f"make: *** {rest}", summary=True)
        return _error("make: " + re.sub(r"\.?\s+Stop\.$", "", rest))
    if m := _SCONS.match(line):
        if _ERROR_N.match(m["msg"].strip()):
            return _error(f"*** [{m['target']}] {m['msg'].strip()}", summary=True)
        return _error(f"{m['target']}: {m['msg'].strip()}")
    if m := _NINJA_FAILED.match(line):
        return _error(f"ninja: FAILED: {m['target']}", summary=True)
    if m := _PIO_RESULT.match(line):
        return _error(f"PlatformIO: [{m['status']}] {m['msg']}", summary=True)
    if m := _TOOL_ERROR.match(line):  # arduino-cli, Arduino IDE
        msg = m["msg"].strip()
        return _error(f"{m['what']}: {msg}", summary=_EXIT_STATUS.match(msg) is not None)
    if m := _PLAIN_ERROR.match(line):  # PlatformIO: "Error: Unknown board ID 'x'"
        return _error(m["msg"].strip())
    if m := _EXCEPTION.match(line):  # PlatformIO's and Python's exceptions
        return _error(f"{m['exc']}: {m['msg'].strip()}")
    if _EXIT_CODE.match(line):  # idf.py: "ninja failed with exit code 1, output ... in ..."
        return _error(line.strip(), summary=True)
    if line.startswith("-- Configuring incomplete, errors occurred!"):
        return _error("CMake: configuring incomplete, errors occurred", summary=True)
    if m := _HINT.match(line):  # idf.py's advice on a failure it recognised
        return Diagnostic(None, None, None, "note", m["msg"].strip())
    if m := _TRY.match(line):  # arduino-cli's next step
        return Diagnostic(None, None, None, "note", f"try running {m['cmd']}")
    if m := _BARE.match(line):
        sev = "error" if m["sev"] == "fatal error" else m["sev"]
        return Diagnostic(None, None, None, sev, m["msg"].strip())
    return None


def parse_line(text: str) -> Diagnostic | None:
    """One line on its own (the collector also joins a diagnostic's
    continuation lines)."""
    line = _clean(text)
    if line is None:
        return None
    d = _parse(line)
    if isinstance(d, _Open):
        return d.close()
    return d if isinstance(d, Diagnostic) else None


class DiagnosticCollector:
    """Diagnostics found while the output streams by, bounded: the first
    `limit` and the last `tail` after those (a flood of warnings must not
    grow without end, and GCC's errors usually come last). Summaries (the
    module's doc) are kept aside, the last few, for when nothing else is
    found."""

    def __init__(self, limit: int = 500, tail: int = 100) -> None:
        self.limit = limit
        self._first: list[Diagnostic] = []
        self._seen: set[Diagnostic] = set()
        self._last: deque[Diagnostic] = deque(maxlen=tail)
        self._summaries: deque[Diagnostic] = deque(maxlen=_SUMMARIES)
        self._open: _Open | None = None
        self._function: str | None = None  # GNU ld's "in function `f':" for the next line

    def wants(self, raw: bytes) -> bool:
        """Whether a line of output can matter (cheap: most lines do not)."""
        return self._open is not None or self._function is not None or bool(WORDS.search(raw))

    def feed(self, text: str) -> None:
        line = _clean(text)
        if line is None:
            self._close()
            self._function = None
            return
        if self._open is not None:
            if self._continues(self._open, line):
                return
            self._close()
        function, self._function = self._function, None
        d = _parse(line, function)
        if isinstance(d, _Open):
            self._open = d
        elif isinstance(d, str):
            self._function = d
        elif d is not None:
            self._add(d)

    def _continues(self, op: _Open, line: str) -> bool:
        op.lines += 1
        if op.lines > _MAX_CONTINUATION:
            return False
        if op.kind == "cmake":
            if line and not line[0].isspace():
                return False
            text = line.strip()
            if text and sum(map(len, op.parts)) < _MAX_MESSAGE:
                op.parts.append(text)
            return True
        if not line.startswith(">>> "):
            return False
        if op.file is None and (m := _LLD_AT.match(line)):
            if m["full"]:
                op.file, op.line = m["full"], int(m["fline"])
            elif m["line"]:
                op.file, op.line = m["short"], int(m["line"])
        return True

    def _close(self) -> None:
        if self._open is not None:
            op, self._open = self._open, None
            self._add(op.close())

    def _add(self, d: Diagnostic) -> None:
        if d.summary:
            if d not in self._summaries:
                self._summaries.append(d)
            return
        if d in self._seen:  # make prints some twice
            return
        if len(self._first) < self.limit:
            self._first.append(d)
            self._seen.add(d)
        elif not self._last or self._last[-1] != d:
            self._last.append(d)

    def result(self) -> list[Diagnostic]:
        self._close()
        out = list(self._first)
        seen = set(self._seen)
        for d in self._last:
            if d not in seen:
                seen.add(d)
                out.append(d)
        if not any(d.severity == "error" for d in out):
            out.extend(self._summaries)
        return out


def parse_output(lines: list[str]) -> list[Diagnostic]:
    collector = DiagnosticCollector()
    for text in lines:
        collector.feed(text)
    return collector.result()
