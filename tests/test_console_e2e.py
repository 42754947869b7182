"""The console end to end (#17): a line typed into `fbuild watch --json`
reaches the example firmware on a virtual board, and the firmware answers:
`v` prints its version line again, `c` crashes the way CRASH=1 does and the
crash arrives decoded."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from tests.clikit import watch_json
from tests.examplekit import copy_example

VERSION_LINE = re.compile(r"^I \((\d+)\) blink: blink-c3 version 1\.0\.0$")


def version_line(ev: dict[str, Any]) -> bool:
    return ev["type"] == "serial_line" and VERSION_LINE.match(ev["text"]) is not None


def test_typed_keys_reach_the_firmware_and_it_answers(tmp_path: Path) -> None:
    project = copy_example(tmp_path / "blink-c3")
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["FBUILD_CACHE_DIR"] = str(tmp_path / "cache")
    ev = watch_json(project, "sim://console?timing=instant&flash=", env)
    try:
        boot = ev.expect(version_line)
        # a line of other bytes first: ignored, as are the CR LF ending each line
        mark = len(ev.seen)
        ev.send("send hello")
        ev.send("send v")
        again = ev.expect(version_line, timeout=5)
        between = [e["text"] for e in ev.seen[mark:] if e["type"] == "serial_line"]
        assert not any("ESP-ROM" in t for t in between), between  # an answer, not a reboot
        stamp = VERSION_LINE.match(again["text"])
        first = VERSION_LINE.match(boot["text"])
        assert stamp and first and int(stamp[1]) > int(first[1])
        assert not [e for e in ev.seen if e["type"] in ("crash", "error")]

        ev.send("send c")
        crash = ev.expect(lambda e: e["type"] == "crash", timeout=5)
        assert crash["reason"] == "Store access fault"
        frames = crash["frames"]
        assert frames[0]["function"] == "store_sample", frames
        assert frames[0]["file"].endswith("main.c")
        assert any(f["function"] == "main" for f in frames), frames
    finally:
        ev.kill()
