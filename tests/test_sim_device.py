"""The virtual board as one device: names, MAC, flash parts, a flash file
held by one board at a time (port busy otherwise), durable flash, clean
exit of esptool and fbuild processes, and esptool's reset strategies."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import serial

import fbuild_watch.sim as sim
from fbuild_watch.sim.flash import SpiFlash
from fbuild_watch.sim.registry import (
    SimUrlError,
    board_for_url,
    mac_for_name,
    parse_url,
    remove_board,
)
from tests.fwkit import FW_DIR, Build, elf2image, zig_cc
from tests.simkit import esptool_run, sim_process_env

MB = 1 << 20


# -- names, MAC, flash part ------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    ["sim://a/sub", "sim://../x", "sim://..", "sim://.", "sim://a b", "sim://a:1", "sim://a#b"],
)
def test_board_names_are_one_path_component(url: str) -> None:
    with pytest.raises(SimUrlError, match="board name must be letters, digits"):
        parse_url(url)
    # and a port on such a URL says so, instead of opening some other board
    with pytest.raises(serial.SerialException, match="board name must be"):
        serial.serial_for_url(url)


def test_good_names_and_defaults() -> None:
    opts = parse_url("sim://Board_1.v-2")
    assert opts.name == "Board_1.v-2" and opts.flash is not None
    assert opts.flash.name == "Board_1.v-2.flash"
    assert opts.flash_size == 4 * MB and opts.flash_id is None


def test_mac_is_derived_from_the_name_unless_given() -> None:
    a = board_for_url("sim://mac-a?flash=&timing=instant")
    b = board_for_url("sim://mac-b?flash=&timing=instant")
    c = board_for_url("sim://mac-c?flash=&timing=instant&mac=58:cf:79:00:00:07")
    try:
        assert a.identity.mac[:3] == bytes.fromhex("58cf79")  # Espressif's OUI
        assert a.identity.mac == bytes.fromhex("58cf79") + hashlib.sha256(b"mac-a").digest()[:3]
        assert a.identity.mac != b.identity.mac
        assert mac_for_name("mac-a") == a.identity.mac  # stable: the same name, the same MAC
        assert c.identity.mac == bytes.fromhex("58cf79000007")
    finally:
        for n in ("mac-a", "mac-b", "mac-c"):
            remove_board(n)


@pytest.mark.parametrize(
    ("query", "size", "jedec"),
    [
        ("", 4 * MB, 0xC84016),
        ("&flash_size=2MB", 2 * MB, 0xC84015),
        ("&flash_size=8MB", 8 * MB, 0xC84017),
        ("&flash_size=16mb", 16 * MB, 0xC84018),
        ("&flash_id=ef4018", 16 * MB, 0xEF4018),  # size from the capacity byte
        ("&flash_id=0xc84016&flash_size=8MB", 8 * MB, 0xC84016),
    ],
)
def test_flash_part_options(query: str, size: int, jedec: int) -> None:
    board = board_for_url(f"sim://part?flash=&timing=instant{query}")
    try:
        assert board.flash.size == size and len(board.flash.data) == size
        assert board.flash.jedec_id == jedec
    finally:
        remove_board("part")


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("flash_size=3MB", "flash_size must be one of 2MB, 4MB, 8MB, 16MB"),
        ("flash_id=c840", "flash_id must be 3 bytes of hex"),
        ("flash_id=c84030", "capacity byte 0x30 is not a supported size"),
        ("mac=12", "mac must be 6 bytes"),
    ],
)
def test_bad_flash_part_options(query: str, message: str) -> None:
    with pytest.raises(SimUrlError, match=message):
        parse_url(f"sim://x?{query}")


def test_esptool_detects_the_flash_part(tmp_path: Path) -> None:
    env = sim_process_env(tmp_path)
    res = esptool_run(
        "--chip", "esp32c3", "--port", "sim://p8?timing=instant&flash_size=8MB&flash_id=c84017",
        "flash-id", env=env,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout
    assert "Manufacturer: c8" in res.stdout and "Device: 4017" in res.stdout
    assert "Detected flash size: 8MB" in res.stdout


# -- one board per flash file ---------------------------------------------------------
def test_same_name_in_one_process_is_one_board(tmp_path: Path) -> None:
    url = f"sim://same?timing=instant&flash={tmp_path / 'same.flash'}"
    try:
        assert board_for_url(url) is board_for_url(url)  # no "busy" from our own lock
    finally:
        remove_board("same")


def test_second_board_on_one_flash_file_is_busy(tmp_path: Path) -> None:
    image = tmp_path / "shared.flash"
    first = board_for_url(f"sim://first?timing=instant&flash={image}")
    try:
        with pytest.raises(serial.SerialException) as err:
            serial.serial_for_url(f"sim://second?timing=instant&flash={image}")
        text = str(err.value)
        assert "Device or resource busy" in text and str(image) in text
        assert f"process {os.getpid()}" in text  # who holds it
        assert sim.get_board("second") is None
    finally:
        remove_board(first.name)
    # closed: the file is free again, and holds what the first board saved
    again = board_for_url(f"sim://second?timing=instant&flash={image}")
    remove_board(again.name)


def test_memory_only_boards_take_no_lock(tmp_path: Path) -> None:
    env = {"FBUILD_SIM_DIR": str(tmp_path)}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        board = board_for_url("sim://volatile?flash=&timing=instant")
        remove_board(board.name)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    assert list(tmp_path.iterdir()) == []


_HOLDER = """
import sys
import serial
import fbuild_watch.sim
port = serial.serial_for_url(sys.argv[1])
fbuild_watch.sim.get_board(sys.argv[2]).flash.program(0x1000, b"held")
print("ready", flush=True)
sys.stdin.readline()
"""


def test_second_process_gets_port_busy(tmp_path: Path) -> None:
    env = sim_process_env(tmp_path)
    url = "sim://xproc?timing=instant"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, url, "xproc"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        res = esptool_run("--chip", "esp32c3", "--port", url, "flash-id", env=env)
        assert res.returncode != 0
        assert "busy" in res.stdout and f"process {holder.pid}" in res.stdout, res.stdout
    finally:
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.wait(10) == 0
    # the holder exited: its board saved and let go of the flash file
    assert (tmp_path / "sim" / "xproc.flash").read_bytes()[0x1000:0x1004] == b"held"
    res = esptool_run("--chip", "esp32c3", "--port", url, "flash-id", env=env)
    assert res.returncode == 0, res.stdout


def test_stored_image_larger_than_the_flash_is_refused(tmp_path: Path) -> None:
    image = tmp_path / "big.flash"
    image.write_bytes(b"\xff" * (8 * MB))
    with pytest.raises(serial.SerialException, match=r"8 MB image, larger than this 4 MB flash"):
        serial.serial_for_url(f"sim://big?timing=instant&flash={image}")
    SpiFlash(8 * MB, image).close()  # and the refusal let go of the file


# -- durable flash ---------------------------------------------------------------------
def test_flash_file_is_written_when_the_write_completes(firmware: Build, tmp_path: Path) -> None:
    import esptool

    image = tmp_path / "durable.flash"
    board = board_for_url(f"sim://durable?timing=instant&boot=download&flash={image}")
    try:
        esptool.main(
            ["--chip", "esp32c3", "--port", "sim://durable", "--before", "no-reset",
             "--after", "no-reset-stub", "write-flash", "0x10000", str(firmware.app_bin)]
        )  # fmt: skip
        # the board is still running: the file already holds the write (saved
        # when esptool's verify followed it, not at close or after idling)
        app = firmware.app_bin.read_bytes()
        assert image.read_bytes()[0x10000 : 0x10000 + len(app)] == app
        assert board.flash.saves >= 1 and not board.flash.dirty
        assert not list(tmp_path.glob("*.tmp"))
    finally:
        remove_board("durable")


# -- processes exit cleanly, with the flash saved --------------------------------------
def ram_app(out: Path) -> Path:
    elf = zig_cc([FW_DIR / "ram.c"], FW_DIR / "ram.ld", out / "ram.elf")
    return elf2image(elf, out / "ram.bin")


def test_esptool_load_ram_exits_cleanly(tmp_path: Path) -> None:
    """The board thread used to build an emulator while the interpreter
    exited (unicorn's finalizers freeing it): a segfault in most runs."""
    env = sim_process_env(tmp_path)
    image = ram_app(tmp_path)
    for i in range(10):
        res = esptool_run(
            "--chip", "esp32c3", "--port", f"sim://ram{i}?flash=&timing=instant", "load-ram", str(image), env=env
        )  # fmt: skip
        assert res.returncode == 0, f"run {i}: exit {res.returncode}\n{res.stdout[-2000:]}"
        assert "executing at 0x403c0000" in res.stdout


def test_fbuild_deploy_exits_cleanly_with_the_flash_saved(tmp_path: Path) -> None:
    """Instant timing: the hard reset's app boot meets the interpreter's exit
    (before the fix: exit 139 in about half the runs, the flash file unwritten)."""
    from fbuild_watch.build.backends import detect_backend
    from fbuild_watch.build.runner import run_build
    from tests.examplekit import copy_example

    project = copy_example(tmp_path / "proj")
    assert run_build(detect_backend(project)).ok
    build = project / "build"
    regions = {
        0x0: (build / "bootloader.bin").read_bytes(),
        0x8000: (build / "partition-table.bin").read_bytes(),
        0x10000: (build / "blink-c3.bin").read_bytes(),
    }
    env = sim_process_env(tmp_path)
    for i in range(10):
        res = subprocess.run(
            [sys.executable, "-m", "fbuild_watch", "deploy", "--port", f"sim://dep{i}?timing=instant",
             "--no-trust", str(project)],
            capture_output=True, text=True, env=env, timeout=120,
        )  # fmt: skip
        assert res.returncode == 0, f"run {i}: exit {res.returncode}\n{res.stderr[-2000:]}"
        flash = (tmp_path / "sim" / f"dep{i}.flash").read_bytes()
        for off, data in regions.items():
            assert flash[off : off + len(data)] == data, f"run {i}: 0x{off:x} not saved"


# -- esptool's reset strategies reset the board ------------------------------------------
def _stats(path: Path, name: str) -> dict[str, object]:
    board: dict[str, object] = json.loads(path.read_text())[name]
    return board


def test_unix_tight_reset_resets_the_board(tmp_path: Path) -> None:
    """esptool's first strategy sets DTR and RTS together with ioctl(TIOCMSET)
    on port.fileno(); only two attempts, both UnixTightReset: the board must
    really reset into its loader (an erased board never listens otherwise)."""
    env = {**sim_process_env(tmp_path), "SIM_STATS": str(tmp_path / "stats.json")}
    res = esptool_run(
        "--chip", "esp32c3", "--port", "sim://tight?flash=&timing=instant",
        "--connect-attempts", "2", "--after", "no-reset", "chip-id", env=env,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout
    assert "Chip was NOT reset" not in res.stdout
    st = _stats(tmp_path / "stats.json", "tight")
    # one reset into the loader (others: power-on, the ROM's watchdog on an erased flash)
    assert st["download_boots"] == 1
    assert "(DOWNLOAD(USB/UART0/1))" in str(st["tx"])


@pytest.mark.parametrize(
    ("sequence", "kind"),
    [
        ("D0|R1|W0.1|D1|R0|W0.05|D0", "classic, one line at a time"),
        ("U0,1|W0.1|U1,0|W0.05|U0,0", "both lines per ioctl"),
    ],
)
def test_custom_reset_sequences_reset_the_board(tmp_path: Path, sequence: str, kind: str) -> None:
    (tmp_path / "esptool.cfg").write_text(f"[esptool]\ncustom_reset_sequence = {sequence}\n")
    env = {**sim_process_env(tmp_path), "SIM_STATS": str(tmp_path / "stats.json")}
    res = esptool_run(
        "--chip", "esp32c3", "--port", "sim://custom?flash=&timing=instant",
        "--connect-attempts", "1", "--after", "no-reset", "chip-id", env=env, cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, f"{kind}: {res.stdout}"
    st = _stats(tmp_path / "stats.json", "custom")
    assert st["download_boots"] == 1, kind


def test_usb_jtag_reset_resets_the_board(tmp_path: Path) -> None:
    env = {**sim_process_env(tmp_path), "SIM_STATS": str(tmp_path / "stats.json")}
    res = esptool_run(
        "--chip", "esp32c3", "--port", "sim://jtag?flash=&timing=instant&usb=jtag",
        "--before", "usb-reset", "--connect-attempts", "1", "--after", "no-reset-stub", "chip-id",
        env=env,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout
    st = _stats(tmp_path / "stats.json", "jtag")
    assert st["download_boots"] == 1


def test_hard_reset_after_leaves_the_loader(tmp_path: Path) -> None:
    """HardReset pulses RTS alone: it resets a board whose DTR is released, as
    the bootloader reset leaves it (after `--before no-reset` both lines are
    still asserted from the open, and a real devkit does not reset either)."""
    env = {**sim_process_env(tmp_path), "SIM_STATS": str(tmp_path / "stats.json")}
    res = esptool_run(
        "--chip", "esp32c3", "--port", "sim://hard?flash=&timing=instant",
        "--after", "hard-reset", "chip-id", env=env,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout
    st = _stats(tmp_path / "stats.json", "hard")
    # EN pulled low: the chip left its loader into reset (esptool exits at
    # once; the board, in esptool's process, powers off with it)
    states = st["states"]
    assert isinstance(states, list) and "download" in states
    assert "reset" in states[states.index("download") :], states


def test_modem_line_ioctls_on_a_sim_port() -> None:
    import fcntl
    import struct
    import termios

    from esptool.reset import UnixTightReset

    from tests.simkit import new_board, open_port, read_until

    board = new_board()
    port = open_port(board)
    fd = port.fileno()
    assert not os.isatty(fd)

    def get() -> int:
        return int(struct.unpack("I", fcntl.ioctl(fd, termios.TIOCMGET, struct.pack("I", 0)))[0])

    both = termios.TIOCM_DTR | termios.TIOCM_RTS
    assert get() & both == both  # opening a tty raises both lines
    fcntl.ioctl(fd, termios.TIOCMSET, struct.pack("I", termios.TIOCM_RTS))  # EN low, IO0 high
    assert get() & both == termios.TIOCM_RTS and board._rts and not board._dtr
    buf = bytearray(4)
    fcntl.ioctl(fd, termios.TIOCMBIS, struct.pack("I", termios.TIOCM_DTR))
    assert fcntl.ioctl(fd, termios.TIOCMGET, buf) == 0 and struct.unpack("I", buf)[0] & both == both
    # pyserial's setters move one line each, as TIOCMBIS/TIOCMBIC do on a tty
    port.dtr = False
    assert get() & both == termios.TIOCM_RTS
    # the real ioctl still serves everything else
    with pytest.raises(OSError, match="Inappropriate ioctl"):
        fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
    with pytest.raises(OSError):
        fcntl.ioctl(fd, termios.TIOCMGET, 0)  # a pointer argument, as the kernel sees it
    UnixTightReset(port, 0.05)()  # esptool's first bootloader reset, unchanged
    read_until(port, r"rst:0x1 \(POWERON\),boot:0x5 \(DOWNLOAD")
    port.close()
    with pytest.raises(serial.SerialException):
        port.fileno()


def test_deploy_side_lookups_leave_bad_urls_to_the_open() -> None:
    from fbuild_watch.sim.port_scheme import sim_present, sim_usb_serial

    # a reader thread asks this while waiting for the board: no traceback there,
    # the open (which the user sees) says what is wrong with the name
    assert sim_present("sim://a b") is True and sim_usb_serial("sim://a b") is None


def test_closing_the_last_port_frees_the_board_for_the_next_process(tmp_path: Path) -> None:
    """A real serial device is free again once closed; so is a virtual board
    opened by URL (what its chip was doing is handed on: esptool's stub reuse
    and load-ram across processes, checked by the conformance suite)."""
    image = tmp_path / "handover.flash"
    url = f"sim://handover?timing=instant&flash={image}"
    port = serial.serial_for_url(url)
    assert sim.get_board("handover") is not None
    port.close()
    assert sim.get_board("handover") is None  # powered off, flash saved, file free
    code = (
        "import serial, fbuild_watch.sim as sim; "
        f"p = serial.serial_for_url({url!r}); print(sim.get_board('handover').state.value)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr  # not "busy": the first process let go
