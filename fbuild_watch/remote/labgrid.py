"""`labgrid://PLACE[/NAME]` ports: a labgrid place held for the whole session.

The place is acquired through the labgrid coordinator (`LG_COORDINATOR`,
default 127.0.0.1:20408, as for labgrid-client) with labgrid's own client
session and coordinator RPCs (the calls labgrid-client makes), and its
`NetworkSerialPort` becomes the serial URL the deploy and the monitor open
(`rfc2217://HOST:PORT?ign_set_control`, or `socket://` for a raw one).

The lock is what makes session trust sound on a shared board: nobody else can
acquire the place while we hold it. So the lease watches the coordinator's
place stream (and a heartbeat) from its own thread and reports through
`on_lost` the moment the lock is gone: kicked, the place deleted, or the
coordinator out of reach (then we cannot know who holds it). `release()` is
idempotent and also runs at interpreter exit; Ctrl+C and SIGTERM reach it
through the caller's `with` block or `finally` (the caller turns SIGTERM into
an exception or an orderly quit, as `fbuild watch` does).

labgrid (and grpc) are imported only when a labgrid:// port is opened. labgrid
depends on `pyserial-labgrid`, a fork installed as `serial`: the extra is
tested in its own venv (`make test-labgrid`).
"""

from __future__ import annotations

import asyncio
import atexit
import importlib
import logging
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar

from fbuild_watch.errors import RuntimeFailure, UsageError

SCHEME = "labgrid://"
DEFAULT_COORDINATOR = "127.0.0.1:20408"  # labgrid-client's default
CONNECT_TIMEOUT_S = 5.0  # reaching the coordinator at all
RPC_TIMEOUT_S = 10.0  # one coordinator round (acquire, release, sync)
HEARTBEAT_S = 3.0  # a silent coordinator is noticed within HEARTBEAT_S + RPC_TIMEOUT_S
INSTALL_HINT = "pip install 'fbuild-watch[labgrid]'"

T = TypeVar("T")


class PlaceBusy(RuntimeFailure):
    """The place is held by someone else (and we were not to wait, or waited in vain)."""

    def __init__(self, message: str, *, holder: str) -> None:
        super().__init__(message)
        self.holder = holder  # labgrid's "host/user"


@dataclass(frozen=True)
class PlaceRef:
    place: str
    port_name: str | None  # which NetworkSerialPort, for places with several


def is_labgrid_url(url: str) -> bool:
    return url.startswith(SCHEME)


def parse_url(url: str) -> PlaceRef:
    """`labgrid://PLACE` or `labgrid://PLACE/NAME`, NAME choosing among several
    NetworkSerialPorts: the match's name, the resource's name, or its group."""
    if not is_labgrid_url(url):
        raise UsageError(f"not a labgrid URL: {url!r} (expected labgrid://PLACE)")
    rest = url[len(SCHEME) :]
    if any(c in rest for c in "?#") or any(c.isspace() for c in rest):
        raise UsageError(
            f"bad labgrid URL {url!r}: expected labgrid://PLACE or labgrid://PLACE/NAME"
        )
    place, _, name = rest.partition("/")
    if not place or "/" in name or (rest.endswith("/") and not name):
        raise UsageError(
            f"bad labgrid URL {url!r}: expected labgrid://PLACE or labgrid://PLACE/NAME"
        )
    return PlaceRef(place, name or None)


def coordinator_address(env: dict[str, str] | None = None) -> str:
    """LG_COORDINATOR as HOST[:PORT] (port 20408 by default), as labgrid-client reads it."""
    env = dict(os.environ) if env is None else env
    address = env.get("LG_COORDINATOR", "").strip() or DEFAULT_COORDINATOR
    host, sep, port = address.rpartition(":")
    if address.startswith("[") and address.endswith("]"):  # [v6] without a port
        return f"{address}:20408"
    if not sep or not port.isdigit() or (":" in host and not host.startswith("[")):
        return f"{address}:20408"
    return address


def _holder_words(acquired: str, me: str) -> str:
    """labgrid's "host/user" as words: `alice on lab1` (`you (alice) on lab2`)."""
    host, _, user = acquired.partition("/")
    my_user = me.partition("/")[2]
    who = f"you ({user})" if user == my_user else user
    return f"{who} on {host}" if host else who


# -- labgrid, imported lazily --------------------------------------------------
@dataclass(frozen=True)
class _Labgrid:
    client: ModuleType  # labgrid.remote.client
    pb2: ModuleType  # labgrid.remote.generated.labgrid_coordinator_pb2
    pb2_grpc: ModuleType  # labgrid.remote.generated.labgrid_coordinator_pb2_grpc
    grpc: ModuleType


_labgrid_mod: _Labgrid | None = None


class _QuietLogging:
    """Stands in for the `logging` module inside labgrid's client modules,
    which log through the root logger's functions ("coordinator became
    unavailable", a debug line per message). Such a call configures the root
    logger for stderr when the app has no handlers (basicConfig): the lines
    would land in the TUI and change how the app's own warnings print. Every
    such condition reaches the user as one line of ours instead."""

    def __init__(self) -> None:
        self._log = logging.getLogger(f"{__name__}.client")
        self._log.propagate = False
        self._log.addHandler(logging.NullHandler())

    def __getattr__(self, name: str) -> Any:
        if name in ("debug", "info", "warning", "error", "exception", "critical", "log"):
            return getattr(self._log, name)
        return getattr(logging, name)


def _labgrid() -> _Labgrid:
    global _labgrid_mod
    if _labgrid_mod is not None:
        return _labgrid_mod
    hook = sys.excepthook  # labgrid's client module replaces it on import
    try:
        client = importlib.import_module("labgrid.remote.client")
        pb2 = importlib.import_module("labgrid.remote.generated.labgrid_coordinator_pb2")
        pb2_grpc = importlib.import_module("labgrid.remote.generated.labgrid_coordinator_pb2_grpc")
        grpc = importlib.import_module("grpc")
    except ImportError as exc:
        raise RuntimeFailure(
            f"labgrid:// ports need labgrid, which is not installed ({exc.msg}): {INSTALL_HINT}"
        ) from None
    finally:
        sys.excepthook = hook
    quiet = _QuietLogging()
    for module in (client, importlib.import_module("labgrid.remote.common")):
        setattr(module, "logging", quiet)  # noqa: B010 (a module's global, by name)
    _labgrid_mod = _Labgrid(client, pb2, pb2_grpc, grpc)
    return _labgrid_mod


# -- the lease's own event loop ------------------------------------------------
class _LoopThread:
    """An asyncio loop on a daemon thread: labgrid's client is asyncio and
    grpc.aio objects belong to the loop that created them. One for the whole
    process (see _shared_loop)."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout)
        except BaseException:  # timed out, or Ctrl+C while waiting: stop the coroutine too
            fut.cancel()
            raise

    def on_thread(self) -> bool:
        return threading.current_thread() is self.thread


_loop_thread: _LoopThread | None = None
_loop_lock = threading.Lock()


def _shared_loop() -> _LoopThread:
    """The process's one labgrid loop, never closed: grpc.aio's completion
    poller is process-wide and keeps scheduling onto the loops it has seen, so
    a closed loop makes it log 'Event loop is closed' errors."""
    global _loop_thread
    with _loop_lock:
        if _loop_thread is None:
            _loop_thread = _LoopThread("labgrid")
        return _loop_thread


def _rpc_problem(lg: _Labgrid, exc: BaseException) -> str:
    if isinstance(exc, lg.grpc.aio.AioRpcError):
        code = exc.code()
        if code == lg.grpc.StatusCode.UNAVAILABLE:
            return "unreachable"  # grpc's details: a paragraph of connection attempts
        if code == lg.grpc.StatusCode.DEADLINE_EXCEEDED:
            return "no answer"
        return str(exc.details() or code.name)
    if isinstance(exc, (TimeoutError, FutureTimeout)):
        return "no answer"
    return str(exc) or type(exc).__name__


# -- the lease -------------------------------------------------------------------
class PlaceLease:
    """A held labgrid place and the serial URL of its NetworkSerialPort."""

    def __init__(
        self,
        ref: PlaceRef,
        coordinator: str,
        on_lost: Callable[[str], None] | None,
        on_wait: Callable[[str], None] | None,
    ) -> None:
        self.place = ref.place
        self.ref = ref
        self.coordinator = coordinator
        self.serial_url = ""
        self.speed = 115200  # the port's configured baud (the app console's)
        self.resource = ""  # exporter/group/cls/name of the serial port
        self.holder = ""  # who holds the lock for us: labgrid's "host/user"
        self.owned = True  # False: already acquired by us (labgrid-client acquire); left acquired
        self.acquire_s = 0.0
        self._on_lost = on_lost
        self._on_wait = on_wait
        self._lg = _labgrid()
        self._loop = _shared_loop()
        self._session: Any = None
        self._changed: asyncio.Event | None = None
        self._state_lock = threading.Lock()
        self._active = False  # holding and watching: loss is reported
        self._lost: str | None = None
        self._kicked = False  # the coordinator says someone else (or nobody) holds it
        self._released = False
        self._release_problem: str | None = None
        self._tasks: list[asyncio.Task[None]] = []  # our watchers on the shared loop
        self._asked = False  # an AcquirePlace went out: a failed attempt may hold the place

    # -- public ------------------------------------------------------------------
    @property
    def held(self) -> bool:
        """True while the place's lock is ours (trust may be kept)."""
        with self._state_lock:
            return self._active and self._lost is None

    @property
    def lost_reason(self) -> str | None:
        return self._lost

    def release(self) -> str | None:
        """Give the place back (if we took it). Idempotent; never raises: a
        release that failed is returned as one line for the user."""
        with self._state_lock:
            if self._released:
                return self._release_problem
            self._released = True
            self._active = False
        atexit.unregister(self.release)
        if self._loop.on_thread():  # from on_lost: the loop cannot wait on itself
            threading.Thread(target=self._finish_release, daemon=True).start()
            return None
        self._finish_release()
        return self._release_problem

    def __enter__(self) -> PlaceLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -- acquiring ---------------------------------------------------------------
    def _acquire(self, wait: float | None) -> None:
        t0 = time.perf_counter()
        deadline = None if wait is None else time.monotonic() + max(wait, 0.0)
        try:
            self._loop.run(self._connect(), CONNECT_TIMEOUT_S + RPC_TIMEOUT_S)
            budget = RPC_TIMEOUT_S * 3 if wait is None else max(wait, 0.0) + RPC_TIMEOUT_S * 3
            if math.isinf(budget):
                budget = threading.TIMEOUT_MAX
            self._loop.run(self._take(deadline), budget)
        except BaseException as exc:
            self._abandon()
            if isinstance(exc, (TimeoutError, FutureTimeout)):
                raise RuntimeFailure(
                    f"labgrid coordinator at {self.coordinator} stopped answering "
                    f"while acquiring place '{self.place}'"
                ) from None
            raise
        self.acquire_s = time.perf_counter() - t0
        atexit.register(self.release)

    async def _connect(self) -> None:
        lg = self._lg
        try:
            session = lg.client.ClientSession(self.coordinator, self._loop.loop)
        except Exception as exc:
            raise RuntimeFailure(
                f"bad labgrid coordinator address {self.coordinator!r} (LG_COORDINATOR): {exc}"
            ) from None
        # The coordinator tells clients apart by their TCP peer address, and
        # grpc shares one connection between channels to the same address: a
        # second session in this process (two boards, or a lease and a test's
        # observer) would be refused. A channel with a subchannel pool of its
        # own gets its own connection; keepalive as labgrid's client sets it.
        await session.channel.close()
        options = [
            ("grpc.keepalive_time_ms", 7500),
            ("grpc.keepalive_timeout_ms", 10000),
            ("grpc.http2.ping_timeout_ms", 10000),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.use_local_subchannel_pool", 1),
        ]
        session.channel = channel = lg.grpc.aio.insecure_channel(self.coordinator, options=options)
        session.stub = lg.pb2_grpc.CoordinatorStub(channel)
        self._session = session
        self._changed = asyncio.Event()
        self.holder = f"{session.gethostname()}/{session.getuser()}"
        state = channel.get_state(try_to_connect=True)
        ready, failure = (
            lg.grpc.ChannelConnectivity.READY,
            lg.grpc.ChannelConnectivity.TRANSIENT_FAILURE,
        )
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                while state not in (ready, failure):
                    await channel.wait_for_state_change(state)
                    state = channel.get_state(try_to_connect=True)
        except TimeoutError:
            raise RuntimeFailure(
                f"no answer from the labgrid coordinator at {self.coordinator} "
                f"(LG_COORDINATOR) within {CONNECT_TIMEOUT_S:.0f} s"
            ) from None
        if state == failure:
            raise RuntimeFailure(
                f"cannot connect to the labgrid coordinator at {self.coordinator} (LG_COORDINATOR)"
            )
        # Place and resource updates arrive on the session's stream; wrap its
        # handlers (instance attributes win over the class's) to hear them.
        changed, deleted = session.on_place_changed, session.on_place_deleted
        resource_changed = session.on_resource_changed

        async def on_resource_changed(*args: Any) -> None:
            await resource_changed(*args)
            if self._changed is not None:
                self._changed.set()

        async def on_place_changed(place_pb2: Any) -> None:
            await changed(place_pb2)
            self._place_event(str(place_pb2.name))

        async def on_place_deleted(name: str) -> None:
            await deleted(name)
            self._place_event(name, deleted=True)

        session.on_place_changed = on_place_changed
        session.on_place_deleted = on_place_deleted
        session.on_resource_changed = on_resource_changed
        try:
            async with asyncio.timeout(RPC_TIMEOUT_S):
                await session.start()
        except (TimeoutError, lg.client.Error):
            raise RuntimeFailure(
                f"the labgrid coordinator at {self.coordinator} (LG_COORDINATOR) did not "
                "start a client session (not a labgrid coordinator, or another version?)"
            ) from None
        self._tasks.append(asyncio.get_running_loop().create_task(self._watch_stream()))

    def _find_place(self) -> Any:
        places: dict[str, Any] = self._session.places
        if self.place in places:
            return places[self.place]
        user = self._session.getuser()
        for place in places.values():
            if self.place in place.aliases or f"{user}:{self.place}" in place.aliases:
                return place
        known = ", ".join(sorted(places)) or "none"
        raise RuntimeFailure(
            f"no labgrid place '{self.place}' at the coordinator {self.coordinator} "
            f"(places there: {known})"
        )

    def _serial_ports(self, place: Any) -> list[tuple[str, tuple[str, str, str, str], Any]]:
        """(name, path, entry) of every NetworkSerialPort the place matches."""
        found = []
        for exporter, groups in sorted(self._session.resources.items()):
            for group, resources in sorted(groups.items()):
                for rname, entry in sorted(resources.items()):
                    path = (exporter, group, entry.cls, rname)
                    match = place.getmatch(path)
                    if match is None or entry.cls != "NetworkSerialPort":
                        continue
                    # its name: the match's (add-named-match), a resource name of its
                    # own, or else its group (an unnamed resource is named for its class)
                    name = match.rename or (rname if rname != entry.cls else group)
                    found.append((name, path, entry))
        return found

    def _pick_port(self, place: Any) -> tuple[tuple[str, str, str, str], Any]:
        ports = self._serial_ports(place)
        names = ", ".join(n for n, _, _ in ports)
        if self.ref.port_name is not None:
            ports = [p for p in ports if p[0] == self.ref.port_name]
            if not ports:
                raise RuntimeFailure(
                    f"labgrid place '{place.name}' has no NetworkSerialPort named "
                    f"'{self.ref.port_name}' (it has: {names or 'none'})"
                )
        if not ports:
            matched = [
                f"{e}/{g}/{entry.cls}/{r}"
                for e, groups in sorted(self._session.resources.items())
                for g, resources in sorted(groups.items())
                for r, entry in sorted(resources.items())
                if place.getmatch((e, g, entry.cls, r)) is not None
            ]
            what = ", ".join(matched) if matched else "no resources"
            raise RuntimeFailure(
                f"labgrid place '{place.name}' has no NetworkSerialPort (it matches {what})"
            )
        if len(ports) > 1:
            raise RuntimeFailure(
                f"labgrid place '{place.name}' has several NetworkSerialPorts ({names}): "
                f"choose one with labgrid://{place.name}/NAME"
            )
        _, path, entry = ports[0]
        extra = entry.params.get("extra") or {}
        if extra.get("proxy_required") or os.environ.get("LG_PROXY"):
            raise RuntimeFailure(
                f"labgrid place '{place.name}': its serial port is reachable only through "
                "an SSH proxy (LG_PROXY or the exporter's proxy_required), which fbuild "
                "does not support"
            )
        if not entry.avail:
            raise RuntimeFailure(
                f"labgrid place '{place.name}': its serial port {'/'.join(path)} is not "
                f"available (is the exporter '{path[0]}' running?)"
            )
        return path, entry

    async def _take(self, deadline: float | None) -> None:
        lg, session = self._lg, self._session
        assert self._changed is not None
        told_waiting = False
        started = time.monotonic()
        while True:
            why: str | None = None
            self._changed.clear()  # before looking: an update from here on wakes the wait
            if session.stopping.is_set():
                raise RuntimeFailure(
                    f"lost contact with the labgrid coordinator at {self.coordinator}"
                )
            place = self._find_place()
            path, _ = self._pick_port(place)
            holder: str | None = place.acquired
            if holder == self.holder:
                # acquired before we came (labgrid-client acquire): theirs to release
                self.owned = False
                break
            if holder is None:
                request = lg.pb2.AcquirePlaceRequest(placename=place.name)
                self._asked = True
                try:
                    async with asyncio.timeout(RPC_TIMEOUT_S):
                        await session.stub.AcquirePlace(request)
                        await session.sync_with_coordinator()
                    break
                except lg.grpc.aio.AioRpcError as exc:
                    code = exc.code()
                    refused = (
                        lg.grpc.StatusCode.FAILED_PRECONDITION,
                        lg.grpc.StatusCode.PERMISSION_DENIED,
                    )
                    if code not in refused:
                        why = _rpc_problem(lg, exc)
                        raise RuntimeFailure(
                            f"labgrid refused to acquire place '{place.name}': {why}"
                        ) from None
                    await session.sync_with_coordinator()
                    place = self._find_place()
                    holder = place.acquired
                    if holder is None:  # free, yet refused: reserved, or a resource held elsewhere
                        why = self._refusal(place, path, _rpc_problem(lg, exc))
                        if deadline is None:
                            raise PlaceBusy(why, holder="") from None
            busy = why or self._busy_line(place, holder)
            if deadline is None:
                raise PlaceBusy(
                    f"{busy}: wait for it with --wait-place, or ask them to release it",
                    holder=holder or "",
                )
            if not told_waiting and self._on_wait is not None:
                self._on_wait(f"{busy}: waiting for it (--wait-place)")
                told_waiting = True
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise TimeoutError
                async with asyncio.timeout(None if math.isinf(remaining) else remaining):
                    await self._changed.wait()
            except TimeoutError:
                waited = time.monotonic() - started
                raise PlaceBusy(
                    f"{busy}, still after waiting {waited:.0f} s (--wait-place)",
                    holder=holder or "",
                ) from None
        await self._confirm(path)

    def _busy_line(self, place: Any, holder: str | None) -> str:
        if holder:
            return f"labgrid place '{place.name}' is held by {_holder_words(holder, self.holder)}"
        if place.reservation:
            return f"labgrid place '{place.name}' is reserved for someone else"
        return f"labgrid place '{place.name}' cannot be acquired now"

    def _refusal(self, place: Any, path: tuple[str, str, str, str], problem: str) -> str:
        entry = self._session.resources.get(path[0], {}).get(path[1], {}).get(path[3])
        if entry is not None and entry.acquired and entry.acquired != place.name:
            other = self._session.places.get(entry.acquired)
            if other is None:
                by = ", which no longer exists (ask the lab's admin)"
            elif other.acquired:
                by = f", held by {_holder_words(other.acquired, self.holder)}"
            else:
                by = ""
            return (
                f"labgrid place '{place.name}': its serial port {'/'.join(path)} is in use "
                f"by place '{entry.acquired}'{by}"
            )
        return f"labgrid refused to acquire place '{place.name}': {problem}"

    async def _confirm(self, path: tuple[str, str, str, str]) -> None:
        """We hold the place: take the port it was given, and start watching."""
        place = self._find_place()
        if place.acquired != self.holder:
            raise RuntimeFailure(f"labgrid place '{place.name}' was taken by someone else at once")
        if tuple(path) not in {tuple(p) for p in place.acquired_resources}:
            raise RuntimeFailure(
                f"labgrid place '{place.name}' was acquired without its serial port "
                f"{'/'.join(path)} (is the exporter '{path[0]}' running?)"
            )
        # A USB port's exporter starts ser2net on acquire and only then
        # publishes its TCP port: wait for that update.
        assert self._changed is not None
        try:
            async with asyncio.timeout(RPC_TIMEOUT_S):
                while True:
                    self._changed.clear()
                    exporter, group, _, name = path
                    params: dict[str, Any] = self._session.resources[exporter][group][name].params
                    host, port = str(params.get("host") or ""), params.get("port")
                    if host and isinstance(port, int):
                        break
                    await self._changed.wait()
        except (TimeoutError, KeyError):
            raise RuntimeFailure(
                f"labgrid place '{place.name}': its serial port {'/'.join(path)} got no TCP "
                "port (did ser2net start on the exporter?)"
            ) from None
        protocol = str(params.get("protocol", "rfc2217"))
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # IPv6 literal
        if protocol == "rfc2217":
            # ser2net does not answer SET_CONTROL; labgrid's own driver sets this too
            self.serial_url = f"rfc2217://{host}:{port}?ign_set_control"
        elif protocol == "raw":
            self.serial_url = f"socket://{host}:{port}"
        else:
            raise RuntimeFailure(
                f"labgrid place '{place.name}': serial protocol {protocol!r} is neither "
                "rfc2217 nor raw"
            )
        self.speed = int(params.get("speed") or 115200)
        self.resource = "/".join(path)
        self.place = str(place.name)
        with self._state_lock:
            self._active = True
        self._tasks.append(asyncio.get_running_loop().create_task(self._beat()))

    # -- watching ------------------------------------------------------------------
    def _place_event(self, name: str, *, deleted: bool = False) -> None:
        if self._changed is not None:
            self._changed.set()
        if name != self.place or not self._active:
            return
        if deleted:
            self._lose(f"labgrid place '{name}' was deleted", kicked=True)
            return
        acquired = self._session.places[name].acquired
        if acquired == self.holder:
            return
        if acquired:
            self._lose(
                f"labgrid place '{name}' is now held by {_holder_words(acquired, self.holder)}",
                kicked=True,
            )
        else:
            self._lose(f"labgrid place '{name}' was released by someone else", kicked=True)

    async def _watch_stream(self) -> None:
        await self._session.stopping.wait()
        if self._changed is not None:
            self._changed.set()
        self._lose(f"lost contact with the labgrid coordinator at {self.coordinator}")

    async def _beat(self) -> None:
        """A coordinator that stopped answering (hung, or the link silently
        gone) is as good as a lost lock: we cannot see who holds the place."""
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            try:
                async with asyncio.timeout(RPC_TIMEOUT_S):
                    ok = await self._session.sync_with_coordinator()
            except TimeoutError:
                ok = False
            if not ok:
                self._lose(f"the labgrid coordinator at {self.coordinator} stopped answering")
                return

    def _lose(self, why: str, *, kicked: bool = False) -> None:
        with self._state_lock:
            if not self._active or self._lost is not None:
                return
            self._lost = why
            self._kicked = kicked
        if self._on_lost is not None:
            try:
                self._on_lost(why)
            except Exception:
                logging.getLogger(__name__).exception("on_lost callback failed")

    # -- releasing -------------------------------------------------------------------
    def _finish_release(self) -> None:
        problem = None
        if self.owned and not self._kicked and self._session is not None:
            try:
                self._loop.run(self._give_back(), RPC_TIMEOUT_S)
            except BaseException as exc:
                problem = (
                    f"could not release labgrid place '{self.place}' at {self.coordinator} "
                    f"({_rpc_problem(self._lg, exc)}): release it with "
                    f"`labgrid-client -p {self.place} release`"
                )
        self._release_problem = problem
        self._close()

    async def _give_back(self) -> None:
        # fromuser: released only if it is still ours (never someone who took it after a kick)
        request = self._lg.pb2.ReleasePlaceRequest(placename=self.place, fromuser=self.holder)
        await self._session.stub.ReleasePlace(request, timeout=RPC_TIMEOUT_S)

    def _abandon(self) -> None:
        """Acquiring failed or was interrupted: give back what this attempt took."""
        with self._state_lock:
            self._released = True
        if self._asked and self.owned:
            try:
                self._loop.run(self._give_back_if_taken(), RPC_TIMEOUT_S)
            except BaseException:
                pass  # the failure being raised is the line the user sees
        self._close()

    async def _give_back_if_taken(self) -> None:
        session = self._session
        if session.stopping.is_set():
            return
        await session.sync_with_coordinator()
        place = session.places.get(self.place)
        if place is not None and place.acquired == self.holder:
            await self._give_back()

    def _close(self) -> None:
        if self._session is not None:
            try:
                self._loop.run(self._stop_session(), 5.0)
            except BaseException:
                pass  # closing a dead link: nothing more to tell

    async def _stop_session(self) -> None:
        for task in self._tasks:
            task.cancel()
        session = self._session
        if session.pump_task is not None:
            await session.stop()
        await session.close()


def acquire_place(
    url: str,
    *,
    wait: float | None = None,
    on_lost: Callable[[str], None] | None = None,
    on_wait: Callable[[str], None] | None = None,
    coordinator: str | None = None,
) -> PlaceLease:
    """Acquire the place of `labgrid://PLACE[/NAME]` and find its serial port.

    wait: None fails at once (PlaceBusy, naming the holder) if someone else
    holds the place; a number of seconds (math.inf: no limit) waits for it.
    on_wait(line) is told once that we are waiting. on_lost(reason) is called
    once, from the lease's thread, when the lock is no longer ours; it must
    not block. Every failure is a RuntimeFailure (UsageError for a bad URL)
    with one line for the user."""
    ref = parse_url(url)
    lease = PlaceLease(ref, coordinator or coordinator_address(), on_lost, on_wait)
    lease._acquire(wait)
    return lease


def open_labgrid(
    url: str,
    *,
    wait: float | None = None,
    on_lost: Callable[[str], None] | None = None,
    on_wait: Callable[[str], None] | None = None,
) -> tuple[str, PlaceLease]:
    """For the port-scheme registry: (serial URL to open, lease to release)."""
    lease = acquire_place(url, wait=wait, on_lost=on_lost, on_wait=on_wait)
    return lease.serial_url, lease
