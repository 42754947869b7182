"""labgrid:// ports against a real labgrid coordinator and exporter (loopback).

The exporter exports the virtual board served over RFC 2217 (`fbuild sim
serve --protocol rfc2217`) as a NetworkSerialPort; places are made with
labgrid-client, as a lab admin would. labgrid is an optional extra whose
serial fork must not reach .venv: these tests run in .venv-labgrid
(`make test-labgrid`, part of `make test`) and are skipped elsewhere.
"""

from __future__ import annotations

import asyncio
import importlib.util
import itertools
import json
import re
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest

from fbuild_watch.errors import RuntimeFailure, UsageError
from fbuild_watch.remote import labgrid as lg
from tests.clikit import JsonLines
from tests.examplekit import copy_example
from tests.simkit import esptool_run, sim_process_env
from tests.test_remote_watch import the_loop

ROOT = Path(__file__).resolve().parent.parent
HAVE_LABGRID = importlib.util.find_spec("labgrid") is not None
needs_labgrid = pytest.mark.skipif(
    not HAVE_LABGRID,
    reason="labgrid is an optional extra kept out of .venv (its serial fork): "
    "`make test-labgrid` runs these in .venv-labgrid",
)
BIN = Path(sys.executable).parent
EXCEPTHOOK = sys.excepthook  # labgrid's client module replaces it on import
EXPORTER = "lab1"
_places = itertools.count()


# -- no labgrid needed -------------------------------------------------------------
@pytest.mark.parametrize(
    "url",
    [
        "labgrid://",
        "labgrid:///x",
        "labgrid://p/",
        "labgrid://p/a/b",
        "labgrid://p?x=1",
        "rfc2217://h:1",
    ],
)
def test_bad_urls_are_usage_errors(url: str) -> None:
    with pytest.raises(UsageError, match="labgrid"):
        lg.parse_url(url)


def test_url_names_the_place_and_optionally_its_port() -> None:
    assert lg.parse_url("labgrid://rack3-c3") == lg.PlaceRef("rack3-c3", None)
    assert lg.parse_url("labgrid://rack3-c3/console") == lg.PlaceRef("rack3-c3", "console")


def test_coordinator_address_as_labgrid_client_reads_it() -> None:
    assert lg.coordinator_address({}) == "127.0.0.1:20408"
    assert lg.coordinator_address({"LG_COORDINATOR": "lab"}) == "lab:20408"
    assert lg.coordinator_address({"LG_COORDINATOR": "lab:4000"}) == "lab:4000"
    assert lg.coordinator_address({"LG_COORDINATOR": "[::1]"}) == "[::1]:20408"
    assert lg.coordinator_address({"LG_COORDINATOR": "[::1]:4000"}) == "[::1]:4000"


def test_without_the_extra_the_error_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ["labgrid", *(m for m in sys.modules if m.startswith("labgrid."))]:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    monkeypatch.setattr(lg, "_labgrid_mod", None)
    with pytest.raises(RuntimeFailure, match=r"pip install 'fbuild-watch\[labgrid\]'") as exc:
        lg.acquire_place("labgrid://p")
    assert "\n" not in str(exc.value)


def test_the_serial_fork_comes_only_with_the_extra() -> None:
    """labgrid (and with it pyserial-labgrid) is in the `labgrid` extra only;
    a venv without labgrid has no fork; the labgrid venv runs on the fork's
    files, so the deploys below exercise our code on it."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pulls = [
        where
        for where, reqs in [
            ("dependencies", project["dependencies"]),
            *project["optional-dependencies"].items(),
        ]
        if any(re.match(r"(labgrid|pyserial-labgrid)\b", r) for r in reqs)
    ]
    assert pulls == ["labgrid"]
    import serial

    if not HAVE_LABGRID:
        with pytest.raises(metadata.PackageNotFoundError):
            metadata.version("pyserial-labgrid")
        assert serial.__version__ == metadata.version("pyserial")
    else:
        assert serial.__version__ == metadata.version("pyserial-labgrid")


# -- a lab on loopback ---------------------------------------------------------------
def _spawn(
    args: list[str], env: dict[str, str], cwd: Path, ready: str
) -> tuple[subprocess.Popen[str], str]:
    """Start a server; its first line containing `ready` (the rest goes on being read)."""
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        text=True, env=env, cwd=cwd,
    )  # fmt: skip
    assert proc.stdout is not None
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if ready in line:
            # keep draining, or a chatty server blocks on a full pipe
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return proc, line
    proc.wait(timeout=10)
    raise AssertionError(f"{args[0]} exited before {ready!r}:\n{''.join(seen)}")


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Admin:
    """The lab's own view of the coordinator through labgrid's client API
    (a ClientSession on its own loop): waits for states, and does what
    labgrid-client refuses to (deleting a place someone holds)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._loop = lg._shared_loop()
        self._loop.run(self._start(), 10)

    async def _start(self) -> None:
        mods = lg._labgrid()  # labgrid's modules, imported as the lease does
        self.session: Any = mods.client.ClientSession(self.address, asyncio.get_running_loop())
        # a connection of its own: the coordinator tells clients apart by peer address
        await self.session.channel.close()
        self.session.channel = mods.grpc.aio.insecure_channel(
            self.address, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        self.session.stub = mods.pb2_grpc.CoordinatorStub(self.session.channel)
        self.changed = asyncio.Event()
        for hook in ("on_place_changed", "on_place_deleted", "on_resource_changed"):
            orig = getattr(self.session, hook)

            async def wrapped(*args: Any, _orig: Any = orig) -> None:
                await _orig(*args)
                self.changed.set()

            setattr(self.session, hook, wrapped)
        await self.session.start()

    def wait_until(self, what: str, pred: Callable[[Any], bool], timeout: float = 10.0) -> None:
        async def waiting() -> None:
            while not pred(self.session):
                self.changed.clear()
                await self.changed.wait()

        try:
            self._loop.run(waiting(), timeout)
        except TimeoutError:
            raise AssertionError(f"not within {timeout} s: {what}") from None

    def holder(self, place: str) -> str | None:
        async def look() -> str | None:
            await self.session.sync_with_coordinator()
            return self.session.places[place].acquired  # type: ignore[no-any-return]

        return self._loop.run(look(), 10)

    def _rpc(self, method: str, request: str, **fields: str) -> None:
        pb2 = lg._labgrid().pb2

        async def rpc() -> None:
            await getattr(self.session.stub, method)(getattr(pb2, request)(**fields))
            await self.session.sync_with_coordinator()

        self._loop.run(rpc(), 10)

    def create(self, place: str, match: str) -> None:
        self._rpc("AddPlace", "AddPlaceRequest", name=place)
        self._rpc("AddPlaceMatch", "AddPlaceMatchRequest", placename=place, pattern=match)

    def delete(self, place: str) -> None:
        """Also a place someone holds (labgrid-client refuses that)."""
        self._rpc("DeletePlace", "DeletePlaceRequest", name=place)

    def remove(self, place: str) -> None:
        """Released (whoever holds it) and deleted, leaving the port free."""
        if self.holder(place):
            self._rpc("ReleasePlace", "ReleasePlaceRequest", placename=place)
        self.delete(place)

    def close(self) -> None:
        async def stop() -> None:
            await self.session.stop()
            await self.session.close()

        self._loop.run(stop(), 10)


@dataclass
class Lab:
    address: str
    board_port: int  # the served board's RFC 2217 TCP port
    env: dict[str, str]  # for child processes: LG_COORDINATOR, sim dirs
    tmp: Path
    admin: Admin
    coordinator: subprocess.Popen[str]
    exporter: subprocess.Popen[str]

    def client(self, *args: str, user: str = "admin") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "labgrid-client"), *args], env={**self.env, "LG_USERNAME": user},
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=30,
        )  # fmt: skip

    def new_place(self, match: str = f"{EXPORTER}/board/*") -> str:
        name = f"p{next(_places)}"
        self.admin.create(name, match)
        return name


def start_lab(tmp: Path, board_port: int, env: dict[str, str]) -> Lab:
    coord, line = _spawn(
        [str(BIN / "labgrid-coordinator"), "-l", "127.0.0.1:0"], env, tmp, "listening on"
    )
    address = line.split()[-1]
    env = {**env, "LG_COORDINATOR": address, "LG_HOSTNAME": "devbox"}
    (tmp / "exporter.yaml").write_text(
        f"board:\n  NetworkSerialPort:\n    host: 127.0.0.1\n    port: {board_port}\n"
        "    speed: 115200\n    protocol: rfc2217\n"
        # a second board's raw TCP port (never opened here: for the URL only)
        "rawboard:\n  NetworkSerialPort:\n    host: 127.0.0.1\n    port: 9\n"
        "    speed: 74880\n    protocol: raw\n"
    )
    exporter, _ = _spawn(
        [str(BIN / "labgrid-exporter"), "-c", address, "-n", EXPORTER, "--hostname", "127.0.0.1",
         "exporter.yaml"], env, tmp, "Exporter ready",
    )  # fmt: skip
    admin = Admin(address)
    admin.wait_until(
        "the exporter's serial port at the coordinator",
        lambda s: EXPORTER in s.resources and "board" in s.resources[EXPORTER],
    )
    return Lab(address, board_port, env, tmp, admin, coord, exporter)


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("lgboard")
    env = sim_process_env(tmp)
    proc, banner = _spawn(
        [sys.executable, "-m", "fbuild_watch", "sim", "serve", "--protocol", "rfc2217",
         "--listen", "127.0.0.1:0", "--timing", "instant", "--no-persist", "--name", "lgboard"],
        env, tmp, "virtual ESP32-C3",
    )  # fmt: skip
    m = re.search(r"rfc2217://127\.0\.0\.1:(\d+)", banner)
    assert m, banner
    yield int(m.group(1)), env
    _stop(proc)


@pytest.fixture(scope="module")
def lab(
    board: tuple[int, dict[str, str]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Lab]:
    if not HAVE_LABGRID:
        pytest.skip(needs_labgrid.kwargs["reason"])
    the_lab = start_lab(tmp_path_factory.mktemp("lab"), board[0], board[1])
    yield the_lab
    the_lab.admin.close()
    _stop(the_lab.exporter)
    _stop(the_lab.coordinator)


@pytest.fixture
def place(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh place on the board's serial port; this process is alice@devbox."""
    monkeypatch.setenv("LG_COORDINATOR", lab.address)
    monkeypatch.setenv("LG_HOSTNAME", "devbox")
    monkeypatch.setenv("LG_USERNAME", "alice")
    name = lab.new_place()
    yield name
    # whoever holds it now, the next test needs the board's port free
    lab.admin.remove(name)


# -- acquiring -------------------------------------------------------------------------
@needs_labgrid
def test_acquire_holds_the_place_and_its_url_reaches_the_board(lab: Lab, place: str) -> None:
    t0 = time.perf_counter()
    lease = lg.acquire_place(f"labgrid://{place}")
    took = time.perf_counter() - t0
    try:
        assert lease.serial_url == f"rfc2217://127.0.0.1:{lab.board_port}?ign_set_control"
        assert lease.holder == "devbox/alice" and lease.owned and lease.held
        assert (lease.speed, lease.resource) == (
            115200,
            f"{EXPORTER}/board/NetworkSerialPort/NetworkSerialPort",
        )
        assert lab.admin.holder(place) == "devbox/alice"
        # labgrid's own client, as another user, is refused while we hold it
        res = lab.client("-p", place, "acquire", user="bob")
        assert res.returncode != 0 and "already acquired by devbox/alice" in res.stdout
        out = esptool_run("--chip", "esp32c3", "--port", lease.serial_url, "flash-id", env=lab.env)
        assert out.returncode == 0 and "Manufacturer:" in out.stdout, out.stdout
    finally:
        assert lease.release() is None
    assert not lease.held
    assert lab.admin.holder(place) is None
    assert lease.release() is None  # idempotent
    assert sys.excepthook is EXCEPTHOOK
    print(
        f"\nlabgrid acquire: {took * 1000:.0f} ms (first, with imports); lease.acquire_s {lease.acquire_s * 1000:.0f} ms"
    )


def built_example(lab: Lab, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """The example, built, and the environment that reaches the lab."""
    project = copy_example(tmp_path / "proj")
    env = {**lab.env, "FBUILD_CACHE_DIR": str(tmp_path / "cache")}
    built = subprocess.run(
        [sys.executable, "-m", "fbuild_watch", "build", str(project)], env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout
    return project, env


@needs_labgrid
def test_deploy_through_a_place(lab: Lab, place: str, tmp_path: Path) -> None:
    """Our deploy (esptool as a library) over the place's RFC 2217 port, on
    whatever `serial` this venv has: the fork in .venv-labgrid."""
    project, env = built_example(lab, tmp_path)
    with lg.acquire_place(f"labgrid://{place}") as lease:
        res = subprocess.run(
            [sys.executable, "-m", "fbuild_watch", "deploy", str(project), "--port",
             lease.serial_url, "--full", "--json"], env=env,
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads(res.stdout)
    outcome = doc[0] if isinstance(doc, list) else doc
    assert outcome["ok"] and outcome["sectors_written"] > 0, outcome
    assert lab.admin.holder(place) is None


@needs_labgrid
def test_fbuild_deploy_to_a_place_holds_it_for_the_deploy(
    lab: Lab, place: str, tmp_path: Path
) -> None:
    """`fbuild deploy --port labgrid://PLACE`: acquired, deployed through its
    RFC 2217 port, released at the end."""
    project, env = built_example(lab, tmp_path)
    res = subprocess.run(
        [sys.executable, "-m", "fbuild_watch", "deploy", str(project), "--port",
         f"labgrid://{place}", "--json"], env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout + res.stderr
    doc = json.loads(res.stdout)
    outcome = doc[0] if isinstance(doc, list) else doc
    assert outcome["ok"] and outcome["port"].startswith("rfc2217://"), outcome
    assert lab.admin.holder(place) is None  # given back


@needs_labgrid
def test_fbuild_watch_holds_the_place_for_the_session(lab: Lab, place: str, tmp_path: Path) -> None:
    """`fbuild watch --json --port labgrid://PLACE` on the example: the
    initial deploy and its first line, a second `labgrid-client acquire`
    refused while we hold the place, a one-line edit -> sector-delta -> the
    new firmware's first line, and the place released after quit."""
    project = copy_example(tmp_path / "proj")
    env = {**lab.env, "LG_USERNAME": "alice", "FBUILD_CACHE_DIR": str(tmp_path / "cache")}

    def held(_ev: JsonLines) -> None:
        assert lab.admin.holder(place) == "devbox/alice"
        res = lab.client("-p", place, "acquire", user="bob")
        assert res.returncode != 0 and "already acquired by devbox/alice" in res.stdout, res.stdout

    dep = the_loop(project, f"labgrid://{place}", env, during=held)
    assert dep["port"] == f"rfc2217://127.0.0.1:{lab.board_port}?ign_set_control"  # the place's
    assert lab.admin.holder(place) is None  # given back at quit


@needs_labgrid
def test_fbuild_monitor_holds_the_place_while_it_runs(lab: Lab, place: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fbuild_watch", "monitor", "--port", f"labgrid://{place}",
         "--json", "--no-reset", "--timeout", "60"], env=lab.env,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # the port is open: the place is ours
            if '"port_state"' in line and '"connected"' in line:
                break
        assert lab.admin.holder(place) is not None
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert lab.admin.holder(place) is None  # released on SIGTERM


@needs_labgrid
def test_already_acquired_by_us_is_used_and_left_acquired(lab: Lab, place: str) -> None:
    """`labgrid-client acquire` first, then fbuild: labgrid's usual way of
    working. The place is ours either way; it stays acquired after we quit."""
    assert lab.client("-p", place, "acquire", user="alice").returncode == 0
    lease = lg.acquire_place(f"labgrid://{place}")
    assert not lease.owned and lease.held
    lease.release()
    assert lab.admin.holder(place) == "devbox/alice"


# -- someone else holds it ---------------------------------------------------------------
@needs_labgrid
def test_held_by_another_user_is_one_line_naming_them(
    lab: Lab, place: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with lg.acquire_place(f"labgrid://{place}"):
        monkeypatch.setenv("LG_USERNAME", "bob")
        with pytest.raises(lg.PlaceBusy) as exc:
            lg.acquire_place(f"labgrid://{place}")
        assert str(exc.value) == (
            f"labgrid place '{place}' is held by alice on devbox: "
            "wait for it with --wait-place, or ask them to release it"
        )
        assert exc.value.holder == "devbox/alice"
        monkeypatch.setenv("LG_HOSTNAME", "laptop")  # the same user elsewhere is someone else too
        monkeypatch.setenv("LG_USERNAME", "alice")
        with pytest.raises(lg.PlaceBusy, match=r"held by you \(alice\) on devbox"):
            lg.acquire_place(f"labgrid://{place}")
    assert lab.admin.holder(place) is None  # nothing left behind by the refused attempts


@needs_labgrid
def test_wait_place_takes_it_when_released(
    lab: Lab, place: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = lg.acquire_place(f"labgrid://{place}")
    monkeypatch.setenv("LG_USERNAME", "bob")
    waiting = threading.Event()
    lines: list[str] = []
    got: list[lg.PlaceLease | BaseException] = []

    def on_wait(line: str) -> None:
        lines.append(line)
        waiting.set()

    def second() -> None:
        try:
            got.append(lg.acquire_place(f"labgrid://{place}", wait=60, on_wait=on_wait))
        except BaseException as exc:
            got.append(exc)

    t = threading.Thread(target=second)
    t.start()
    assert waiting.wait(10), got
    assert lines == [
        f"labgrid place '{place}' is held by alice on devbox: waiting for it (--wait-place)"
    ]
    released = time.perf_counter()
    first.release()
    t.join(10)
    took = time.perf_counter() - released
    assert len(got) == 1 and isinstance(got[0], lg.PlaceLease), got
    assert got[0].holder == "devbox/bob" and lab.admin.holder(place) == "devbox/bob"
    got[0].release()
    print(f"\nwaiter acquired {took * 1000:.0f} ms after the release")


@needs_labgrid
def test_wait_place_gives_up_after_its_time(
    lab: Lab, place: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with lg.acquire_place(f"labgrid://{place}"):
        monkeypatch.setenv("LG_USERNAME", "bob")
        t0 = time.monotonic()
        with pytest.raises(lg.PlaceBusy, match=r"held by alice on devbox, still after waiting 1 s"):
            lg.acquire_place(f"labgrid://{place}", wait=0.6)
        assert 0.6 <= time.monotonic() - t0 < 5


# -- losing the lock ---------------------------------------------------------------------
def _lost_recorder() -> tuple[list[str], threading.Event, Callable[[str], None]]:
    reasons: list[str] = []
    fired = threading.Event()

    def on_lost(why: str) -> None:
        reasons.append(why)
        fired.set()

    return reasons, fired, on_lost


@needs_labgrid
def test_kicked_by_another_user_is_reported_and_their_lock_kept(lab: Lab, place: str) -> None:
    reasons, fired, on_lost = _lost_recorder()
    lease = lg.acquire_place(f"labgrid://{place}", on_lost=on_lost)
    kicked = time.perf_counter()
    res = lab.client("-p", place, "release", "--kick", user="carol")
    assert res.returncode == 0, res.stdout
    assert fired.wait(10)
    took = time.perf_counter() - kicked
    assert reasons == [f"labgrid place '{place}' was released by someone else"]
    assert not lease.held and lease.lost_reason == reasons[0]
    assert lab.client("-p", place, "acquire", user="carol").returncode == 0
    assert lease.release() is None  # does not release carol's lock
    assert lab.admin.holder(place) == "devbox/carol"
    assert len(reasons) == 1  # once
    print(f"\nlock loss noticed {took * 1000:.0f} ms after starting labgrid-client release --kick")


@pytest.fixture
def own_lab(
    board: tuple[int, dict[str, str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Lab]:
    """A coordinator of the test's own, for tests that break it."""
    if not HAVE_LABGRID:
        pytest.skip(needs_labgrid.kwargs["reason"])
    own = start_lab(tmp_path, board[0], board[1])
    monkeypatch.setenv("LG_COORDINATOR", own.address)
    monkeypatch.setenv("LG_HOSTNAME", "devbox")
    monkeypatch.setenv("LG_USERNAME", "alice")
    yield own
    if own.coordinator.poll() is None:
        own.admin.close()
    _stop(own.exporter)
    _stop(own.coordinator)


@needs_labgrid
def test_place_deleted_is_reported(own_lab: Lab) -> None:
    """(labgrid's coordinator leaves a deleted place's resources acquired:
    hence a coordinator of its own.)"""
    place = own_lab.new_place()
    reasons, fired, on_lost = _lost_recorder()
    lease = lg.acquire_place(f"labgrid://{place}", on_lost=on_lost)
    own_lab.admin.delete(place)
    assert fired.wait(10)
    assert reasons == [f"labgrid place '{place}' was deleted"]
    assert lease.release() is None
    # the orphaned port: one line saying so
    other = own_lab.new_place()
    with pytest.raises(lg.PlaceBusy) as exc:
        lg.acquire_place(f"labgrid://{other}")
    assert str(exc.value) == (
        f"labgrid place '{other}': its serial port {EXPORTER}/board/NetworkSerialPort/NetworkSerialPort "
        f"is in use by place '{place}', which no longer exists (ask the lab's admin)"
    )


_LOSER = """
import sys, threading
from fbuild_watch.remote.labgrid import acquire_place
lost = threading.Event()
def on_lost(why):
    print("lost:", why, flush=True)
    lost.set()
lease = acquire_place(sys.argv[1], on_lost=on_lost)
print("held", flush=True)
lost.wait(30)
print("release:", lease.release(), flush=True)
import logging
print("root log handlers:", logging.getLogger().handlers, flush=True)
"""


@needs_labgrid
def test_coordinator_gone_is_reported_and_release_says_what_to_do(own_lab: Lab) -> None:
    """Without the coordinator nobody can tell who holds the place: that is a
    lost lock. In a process of its own (no pytest log capture), to show that
    labgrid's and grpc's own lines ("coordinator became unavailable") stay off
    the terminal, which the TUI owns."""
    name = own_lab.new_place()
    proc = subprocess.Popen(
        [sys.executable, "-c", _LOSER, f"labgrid://{name}"],
        env={**own_lab.env, "LG_USERNAME": "alice", "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline() == "held\n", proc.communicate(timeout=10)
    own_lab.coordinator.kill()
    own_lab.coordinator.wait()
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and err == "", err
    assert out == (
        f"lost: lost contact with the labgrid coordinator at {own_lab.address}\n"
        f"release: could not release labgrid place '{name}' at {own_lab.address} (unreachable): "
        f"release it with `labgrid-client -p {name} release`\n"
        "root log handlers: []\n"  # labgrid configured no logging behind the app's back
    )


@needs_labgrid
def test_a_hung_coordinator_is_a_lost_lock(own_lab: Lab, monkeypatch: pytest.MonkeyPatch) -> None:
    """The heartbeat: a coordinator that keeps its connections open but stops
    answering (stopped, swapping) is noticed within HEARTBEAT_S + RPC_TIMEOUT_S."""
    monkeypatch.setattr(lg, "HEARTBEAT_S", 0.2)
    monkeypatch.setattr(lg, "RPC_TIMEOUT_S", 1.0)
    name = own_lab.new_place()
    reasons, fired, on_lost = _lost_recorder()
    lease = lg.acquire_place(f"labgrid://{name}", on_lost=on_lost)
    own_lab.coordinator.send_signal(signal.SIGSTOP)
    try:
        assert fired.wait(10)
        assert reasons == [f"the labgrid coordinator at {own_lab.address} stopped answering"]
    finally:
        own_lab.coordinator.send_signal(signal.SIGCONT)
    assert lease.release() is None  # it answers again: the place is given back
    assert own_lab.admin.holder(name) is None


_HOLDER = """
import signal, sys, threading
from fbuild_watch.remote.labgrid import acquire_place
# as fbuild's CLI does: SIGTERM ends the session in order (Ctrl+C is KeyboardInterrupt)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
with acquire_place(sys.argv[1]) as lease:
    print("held", lease.serial_url, flush=True)
    threading.Event().wait()
"""


@needs_labgrid
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_holder_releases_the_place(lab: Lab, place: str, sig: int) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, f"labgrid://{place}"],
        env={**lab.env, "LG_USERNAME": "alice", "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("held rfc2217://"), line + proc.communicate(timeout=10)[1]
    assert lab.admin.holder(place) == "devbox/alice"
    t0 = time.perf_counter()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=15)
    took = time.perf_counter() - t0
    # SystemExit(143); an uncaught KeyboardInterrupt ends Python by SIGINT itself
    assert proc.returncode == (143 if sig == signal.SIGTERM else -signal.SIGINT), err
    assert lab.admin.holder(place) is None
    assert took < 5, took


_WAITER = """
import math, sys
from fbuild_watch.remote.labgrid import acquire_place
acquire_place(sys.argv[1], wait=math.inf, on_wait=lambda line: print(line, flush=True))
"""


@needs_labgrid
def test_ctrl_c_while_waiting_ends_the_wait_and_touches_nothing(lab: Lab, place: str) -> None:
    with lg.acquire_place(f"labgrid://{place}"):
        proc = subprocess.Popen(
            [sys.executable, "-c", _WAITER, f"labgrid://{place}"],
            env={**lab.env, "LG_USERNAME": "bob", "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "waiting for it (--wait-place)" in line, line + proc.communicate(timeout=10)[1]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
        assert proc.returncode == -signal.SIGINT, err
        assert lab.admin.holder(place) == "devbox/alice"


# -- one line for each thing that can be wrong --------------------------------------------
@needs_labgrid
def test_unknown_place(lab: Lab, place: str) -> None:
    with pytest.raises(RuntimeFailure) as exc:
        lg.acquire_place("labgrid://no-such-place")
    assert str(exc.value).startswith(
        f"no labgrid place 'no-such-place' at the coordinator {lab.address} (places there: "
    )
    assert place in str(exc.value)


@needs_labgrid
def test_place_without_a_serial_port(lab: Lab, place: str) -> None:
    empty = lab.new_place(match=f"{EXPORTER}/power/*")
    try:
        with pytest.raises(RuntimeFailure) as exc:
            lg.acquire_place(f"labgrid://{empty}")
        assert (
            str(exc.value)
            == f"labgrid place '{empty}' has no NetworkSerialPort (it matches no resources)"
        )
        with pytest.raises(RuntimeFailure) as exc:
            lg.acquire_place(f"labgrid://{place}/console")
        assert str(exc.value) == (
            f"labgrid place '{place}' has no NetworkSerialPort named 'console' (it has: board)"
        )
        assert lab.admin.holder(empty) is None and lab.admin.holder(place) is None
    finally:
        lab.admin.remove(empty)


@needs_labgrid
def test_no_coordinator(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("LG_COORDINATOR", f"127.0.0.1:{port}")
    t0 = time.monotonic()
    with pytest.raises(RuntimeFailure) as exc:
        lg.acquire_place("labgrid://p")
    assert (
        str(exc.value)
        == f"cannot connect to the labgrid coordinator at 127.0.0.1:{port} (LG_COORDINATOR)"
    )
    assert time.monotonic() - t0 < lg.CONNECT_TIMEOUT_S


@needs_labgrid
def test_a_place_with_several_serial_ports_names_them(lab: Lab, place: str) -> None:
    both = lab.new_place(match=f"{EXPORTER}/*/NetworkSerialPort")
    try:
        with pytest.raises(RuntimeFailure) as exc:
            lg.acquire_place(f"labgrid://{both}")
        assert str(exc.value) == (
            f"labgrid place '{both}' has several NetworkSerialPorts (board, rawboard): "
            f"choose one with labgrid://{both}/NAME"
        )
        assert lab.admin.holder(both) is None
        with lg.acquire_place(f"labgrid://{both}/rawboard") as lease:
            assert (lease.serial_url, lease.speed) == ("socket://127.0.0.1:9", 74880)
            assert lease.resource == f"{EXPORTER}/rawboard/NetworkSerialPort/NetworkSerialPort"
    finally:
        lab.admin.remove(both)


@needs_labgrid
def test_an_ssh_proxied_port_is_refused_before_acquiring(
    lab: Lab, place: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LG_PROXY", "gateway")
    with pytest.raises(RuntimeFailure) as exc:
        lg.acquire_place(f"labgrid://{place}")
    assert str(exc.value) == (
        f"labgrid place '{place}': its serial port is reachable only through an SSH proxy "
        "(LG_PROXY or the exporter's proxy_required), which fbuild does not support"
    )
    assert lab.admin.holder(place) is None
