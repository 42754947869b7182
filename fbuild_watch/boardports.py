"""The ports a command opens, for `watch`, `monitor` and `deploy` alike:
`labgrid://PLACE` is acquired through labgrid's coordinator and held until
`release()` (nobody else can take the board meanwhile: what keeps trust
sound there); every other port is opened as it is. Nothing here prints: the
caller says how lines reach the user (stderr for `deploy`, events for a
session)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from fbuild_watch.deploy.ports import PortInfo, describe
from fbuild_watch.remote.labgrid import PlaceLease, is_labgrid_url, open_labgrid


@dataclass
class HeldPorts:
    infos: list[PortInfo]  # what to open (a place's RFC 2217 port in its stead)
    on_warning: Callable[[str], None]
    leases: list[PlaceLease] = field(default_factory=list)

    def release(self) -> None:
        """Give the places back (idempotent; on Ctrl+C and SIGTERM too, by
        the caller's `finally`). A problem is one warning line."""
        leases, self.leases = self.leases, []
        for lease in leases:
            problem = lease.release()
            if problem is not None:
                self.on_warning(problem)


def hold_ports(
    infos: list[PortInfo],
    *,
    on_note: Callable[[str], None],
    on_warning: Callable[[str], None],
    wait_place: float | None = None,
    on_lost: Callable[[str, str | None, str], None] | None = None,
) -> HeldPorts:
    """`on_lost(place, serial URL, why)` from the lease's thread when a
    place's lock goes (kicked, deleted, coordinator gone). A place held by
    someone else raises RuntimeFailure naming them (unless `wait_place`).
    `on_note`: progress lines (waiting for a place); `on_warning`: a place
    that could not be given back."""
    held = HeldPorts([], on_warning)
    try:
        for info in infos:
            if not is_labgrid_url(info.url):
                held.infos.append(info)
                continue
            opened: dict[str, str] = {}  # the serial URL, once known (for on_lost)

            def lost(why: str, place: str = info.url, opened: dict[str, str] = opened) -> None:
                if on_lost is not None:
                    on_lost(place, opened.get("url"), why)

            serial_url, lease = open_labgrid(  # labgrid itself is imported only here
                info.url, wait=wait_place, on_lost=lost, on_wait=on_note
            )
            opened["url"] = serial_url
            held.leases.append(lease)
            held.infos.append(describe(serial_url))
    except BaseException:
        held.release()  # the places acquired before the one that failed
        raise
    return held
