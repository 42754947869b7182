"""What this session knows a board holds, and when that knowledge expires.

Session trust: after a verified write we remember the exact bytes per region.
It holds while the board stays present and is the same board: a disconnect
we caused ourselves (our own reset re-enumerating a USB-Serial/JTAG board)
keeps it if the port comes back with the same USB serial number; any other
disconnect, another identity, a failed or interrupted write, an erase, our
port being closed, or a user's full flash clears it.

The persisted cache keeps the last verified layout per board MAC in the user
cache dir (like ESP-IDF 6.1's *_flashed.bin), but it is only a *candidate*
diff base: the next session confirms it with one device MD5 per region.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fbuild_watch.fsutil import atomic_write, user_cache_root

REENUMERATE_WINDOW_S = 5.0


@dataclass
class TrustedImage:
    identity: str  # chip MAC, "aa:bb:cc:dd:ee:ff"
    regions: dict[int, bytes]  # flash offset -> exact bytes known to be there
    image_hash: str
    set_at: float = field(default_factory=time.monotonic)
    usb_serial: str | None = None


class SessionTrust:
    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self.trusted: TrustedImage | None = None
        self.cleared_reason: str | None = "no verified write yet in this session"
        self._own_resets: list[float] = []

    def set(self, image: TrustedImage) -> None:
        if self.enabled:
            self.trusted = image
            self.cleared_reason = None

    def clear(self, reason: str) -> None:
        if self.trusted is not None or self.cleared_reason is None:
            self.cleared_reason = reason
        self.trusted = None

    def note_own_reset(self) -> None:
        self._own_resets.append(time.monotonic())
        del self._own_resets[:-20]

    def _ours(self, t: float) -> bool:
        return any(0 <= t - r <= REENUMERATE_WINDOW_S for r in self._own_resets)

    def check(
        self,
        *,
        connected: bool,
        disconnects: list[float],
        usb_serial: str | None,
        network: bool = False,
    ) -> TrustedImage | None:
        """The trusted image if it still holds, clearing it (with a reason) if
        not. `network`: a link to a server (RFC 2217, raw TCP), which our own
        reset never drops, so no disconnect of it is ours."""
        t = self.trusted
        if t is None:
            return None
        if not connected:
            self.clear("the board is not connected")
            return None
        for edge in disconnects:
            if edge > t.set_at and (network or not self._ours(edge)):
                self.clear("the port disconnected (unplug or reset by someone else)")
                return None
        if t.usb_serial is not None and usb_serial is not None and usb_serial != t.usb_serial:
            self.clear("a different board answered on this port")
            return None
        return t


class FlashCache:
    """Last verified layout per board MAC, persisted across sessions.

    Optional: a cache dir that is missing, full, read-only or not a directory
    makes it "not cached" (one warning per episode), never a failed deploy."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or user_cache_root() / "flashed"
        self._warned = False  # one warning until a save works again
        self._lock = threading.Lock()  # boards deploy on parallel threads

    def _dir(self, identity: str) -> Path:
        return self.root / identity.replace(":", "").lower()

    def save(self, identity: str, regions: dict[int, bytes]) -> str | None:
        """Persist the layout; returns a one-line warning the first time it
        cannot (then None until a save succeeds again). Never raises OSError."""
        try:
            self._save(identity, regions)
        except OSError as exc:
            with self._lock:
                first, self._warned = not self._warned, True
            if not first:
                return None
            where = exc.filename or self.root
            return (
                f"flash cache not saved ({where}: {exc.strerror or exc}); "
                "deploys still work, the next session probes the board"
            )
        with self._lock:
            self._warned = False
        return None

    def _save(self, identity: str, regions: dict[int, bytes]) -> None:
        d = self._dir(identity)
        d.mkdir(parents=True, exist_ok=True)
        manifest = []
        for off, data in sorted(regions.items()):
            name = f"{off:08x}.bin"
            atomic_write(d / name, data)
            manifest.append(
                {
                    "offset": off,
                    "size": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                    "file": name,
                }
            )
        atomic_write(d / "manifest.json", json.dumps({"version": 1, "regions": manifest}).encode())

    def load(self, identity: str, warn: Callable[[str], None] | None = None) -> dict[int, bytes]:
        """The cached layout (regions whose bytes still match the manifest).
        A manifest entry naming a file outside this board's directory (`..`,
        an absolute path, a symlink out) is dropped and `warn` is told."""
        d = self._dir(identity)
        try:
            doc = json.loads((d / "manifest.json").read_text())
            base = d.resolve()
            out = {}
            for r in doc["regions"]:
                file = (d / r["file"]).resolve()
                if not file.is_relative_to(base) or file == base:
                    if warn is not None:
                        warn(
                            f"{d / 'manifest.json'}: entry {r['file']!r} points outside "
                            f"{d}; ignored"
                        )
                    continue
                st = file.stat()
                if not stat.S_ISREG(st.st_mode) or st.st_size != r["size"]:
                    continue  # a stale entry; and never read a device or a huge file
                data = file.read_bytes()
                if len(data) == r["size"] and hashlib.sha256(data).hexdigest() == r["sha256"]:
                    out[int(r["offset"])] = data
            return out
        except (OSError, ValueError, KeyError, TypeError):
            return {}

    def forget(self, identity: str) -> None:
        d = self._dir(identity)
        with_manifest = d / "manifest.json"
        with contextlib.suppress(OSError):
            with_manifest.unlink(missing_ok=True)
