"""What one deploy did to one board, in numbers a user can check."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class DeployKind(StrEnum):
    """The rung of the deploy ladder that ran (README, "Deploying")."""

    TRUST_SKIP = "trust-skip"
    SECTOR_DELTA = "sector-delta"
    VERIFY_PROBE = "verify-probe"
    FULL = "full"
    FAILED = "failed"


@dataclass
class DeployOutcome:
    port: str
    kind: DeployKind = DeployKind.FAILED
    image_hash: str | None = None
    regions_written: list[str] = field(default_factory=list)
    regions_skipped: list[str] = field(default_factory=list)
    sectors_written: int = 0
    flash_bytes_written: int = 0
    wire_bytes_sent: int = 0
    wire_bytes_received: int = 0
    stub_used: bool = False
    resets: int = 0
    phases: dict[str, float] = field(default_factory=dict)  # seconds
    # (start, end) of the flash write, Unix time: shows boards written at once
    write_window: tuple[float, float] | None = None
    duration_s: float = 0.0
    identity: str | None = None
    error: str | None = None
    flash_state: str | None = None  # after a failure: what is known to be on flash
    log: list[str] = field(default_factory=list)
    # things that did not fail the deploy but the user should know (an
    # optional cache that could not be written, a state entry dropped)
    warnings: list[str] = field(default_factory=list)
    # the link's round trip per command beyond wire time, measured at connect
    rtt_ms: float | None = None
    # the cost model's time for the write it chose (ROM or stub), seconds
    estimate_s: float | None = None
    # what ended the deploy on the board: "hard-reset", "watchdog-reset",
    # "soft-reset", "no-reset" (left in its ROM loader), "no-reset-stub";
    # None when the board was not reset or held (trust-skip, a failure)
    reset_after: str | None = None
    # the words for a board left in its loader (the summary says them)
    stays_in_loader: str | None = None

    @property
    def ok(self) -> bool:
        return self.kind != DeployKind.FAILED

    @property
    def wire_bytes(self) -> int:
        return self.wire_bytes_sent + self.wire_bytes_received

    def summary(self) -> str:
        """One line in words, for the status bar and plain mode; warnings
        ride along so that every view shows them."""
        text = self._summary()
        for w in self.warnings:
            text += f"; warning: {w}"
        return text

    def _summary(self) -> str:
        if self.kind == DeployKind.TRUST_SKIP:
            if self.resets:  # connected ahead of an image the board already held
                return "skipped: board already holds this image (it was reset)"
            return "skipped: board already runs this image"
        if self.kind == DeployKind.FAILED:
            return f"failed: {self.error}"
        kib = self.flash_bytes_written / 1024
        plural = "s" if self.sectors_written != 1 else ""
        what = f"{self.sectors_written} sector{plural} ({kib:.0f} KiB)"
        if self.flash_bytes_written == 0:
            what = "nothing (flash already matched)"
        text = f"{self.kind}: wrote {what} in {self.duration_s:.2f} s"
        if self.stays_in_loader:
            text += f"; {self.stays_in_loader}"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "port": self.port,
            "kind": self.kind,
            "ok": self.ok,
            "summary": self.summary(),
            "image_hash": self.image_hash,
            "regions_written": self.regions_written,
            "regions_skipped": self.regions_skipped,
            "sectors_written": self.sectors_written,
            "flash_bytes_written": self.flash_bytes_written,
            "wire_bytes_sent": self.wire_bytes_sent,
            "wire_bytes_received": self.wire_bytes_received,
            "wire_bytes": self.wire_bytes,
            "stub_used": self.stub_used,
            "resets": self.resets,
            "phases_ms": {k: round(v * 1000, 1) for k, v in self.phases.items()},
            "write_window": (
                [round(t, 6) for t in self.write_window] if self.write_window else None
            ),
            "duration_ms": round(self.duration_s * 1000, 1),
            "identity": self.identity,
            "error": self.error,
            "flash_state": self.flash_state,
            "warnings": list(self.warnings),
            "rtt_ms": None if self.rtt_ms is None else round(self.rtt_ms, 2),
            "estimate_ms": None if self.estimate_s is None else round(self.estimate_s * 1000, 1),
            "reset_after": self.reset_after,
        }
