"""Deploy engine: port ownership, board identity, trust, the deploy ladder."""

from __future__ import annotations

from fbuild_watch.deploy.engine import BoardDeployer
from fbuild_watch.deploy.outcome import DeployOutcome
from fbuild_watch.deploy.ports import PortInfo, describe, resolve_ports
from fbuild_watch.deploy.trust import FlashCache, SessionTrust
from fbuild_watch.deploy.worker import BoardWorker

__all__ = [
    "BoardDeployer",
    "BoardWorker",
    "DeployOutcome",
    "FlashCache",
    "PortInfo",
    "SessionTrust",
    "describe",
    "resolve_ports",
]
