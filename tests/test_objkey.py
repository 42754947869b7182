"""Object summaries (connect ahead before the link): real objects from zig cc."""

from __future__ import annotations

from pathlib import Path

import pytest

from fbuild_watch.build.objects import ObjectWatch
from fbuild_watch.image.objkey import linked_names, summarize
from tests.fwkit import zig_link, zig_object

APP = """\
static const char banner[] = "hello 1";
volatile int sink;
int scale(int x) { return x * 3; }
void _start(void) { for (const char *p = banner; *p; p++) sink = scale(*p); for (;;) {} }
"""
UNCALLED = "\nint helper(int x) { return x * x + 7; }\n"


@pytest.fixture(scope="module")
def objs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("objkey")
    variants = {
        "base": APP,
        # only debug info differs (line numbers)
        "comment": "// a comment\n\n" + APP.replace("{ for", "{\n  /* loop */\n  for"),
        "code": APP.replace("x * 3", "x * 5"),
        "data": APP.replace("hello 1", "hello 2"),
        # a function nobody calls yet: --gc-sections drops it (and its unwind record)
        "uncalled": APP + UNCALLED,
    }
    out = {name: zig_object(src, tmp / f"{name}.o") for name, src in variants.items()}
    out["elf"] = zig_link(out["base"], tmp / "app.elf")
    return out


def key(obj: Path, kept: frozenset[str] | None) -> bytes:
    summary = summarize(obj.read_bytes())
    assert summary is not None
    return summary.key(kept)


def test_debug_only_edits_keep_the_summary(objs: dict[str, Path]) -> None:
    assert objs["base"].read_bytes() != objs["comment"].read_bytes()
    kept = linked_names(objs["elf"].read_bytes())
    assert key(objs["comment"], kept) == key(objs["base"], kept)
    assert key(objs["comment"], None) == key(objs["base"], None)


def test_code_and_data_edits_change_the_summary(objs: dict[str, Path]) -> None:
    kept = linked_names(objs["elf"].read_bytes())
    base = key(objs["base"], kept)
    assert key(objs["code"], kept) != base
    assert key(objs["data"], kept) != base


def test_code_the_last_link_dropped_does_not_count(objs: dict[str, Path]) -> None:
    kept = linked_names(objs["elf"].read_bytes())
    assert kept is not None and "_start" in kept and "helper" not in kept
    # the object has unwind info: the uncalled function's record is left out too
    assert b".eh_frame" in objs["uncalled"].read_bytes()
    assert key(objs["uncalled"], kept) == key(objs["base"], kept)
    # without knowing what the link kept, every section counts
    assert key(objs["uncalled"], None) != key(objs["base"], None)


def test_partial_or_foreign_files_have_no_summary(objs: dict[str, Path]) -> None:
    data = objs["base"].read_bytes()
    assert summarize(data[: len(data) - 100]) is None  # a compiler still writing it
    assert summarize(objs["elf"].read_bytes()) is None  # linked, not relocatable
    assert summarize(b"not an object") is None
    assert linked_names(b"\x7fELF") is None


def test_object_watch_tells_which_rewrites_change_the_image(
    tmp_path: Path, objs: dict[str, Path]
) -> None:
    build = tmp_path / "build"
    (build / "obj").mkdir(parents=True)
    obj = build / "obj" / "main.c.o"
    elf = build / "app.elf"
    obj.write_bytes(objs["base"].read_bytes())
    elf.write_bytes(objs["elf"].read_bytes())
    watch = ObjectWatch(build, elf)
    watch.refresh()

    run = watch.start()
    assert run.poll() == []  # nothing rewritten yet
    obj.write_bytes(objs["comment"].read_bytes())  # recompiled after a comment edit
    assert run.poll() == [obj]
    assert run.image_changes([obj]) is False
    assert run.poll() == []  # judged once per rewrite
    obj.write_bytes(objs["code"].read_bytes())
    assert run.poll() == [obj]
    assert run.image_changes([obj]) is True

    # a later build compares with what the last one left
    watch.refresh()
    run = watch.start()
    obj.write_bytes(objs["code"].read_bytes())
    assert run.image_changes(run.poll()) is False
